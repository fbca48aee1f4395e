// Gateway room: a small canvas line chart of numeric device fields against time, with a legend.
import { el } from "./dom.js";

const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#ae3ec9", "#e8590c", "#0c8599", "#c2255c",
  "#5f3dc4", "#74b816", "#a61e4d", "#1971c2", "#846358"];

function niceStep(range, ticks) {
  const raw = range / ticks;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const f = raw / pow;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * pow;
}

export const formatNumber = (v) => (Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(6))));

export class LineChart {
  constructor(canvas, legend, { windowMs = 300_000, maxPoints = 300, maxSeries = 24, minInterval = 200 } = {}) {
    Object.assign(this, { canvas, legend, windowMs, maxPoints, maxSeries, minInterval });
    this.series = new Map(); // name -> {points: [[t, v]], color, li, hidden}
    this.skew = 0; // gateway clock minus ours, so the time axis follows the gateway's timestamps
    this.pending = false;
    this.last = 0;
    new ResizeObserver(() => this.schedule()).observe(canvas);
    setInterval(() => this.series.size && this.schedule(), 1000); // let the time axis move on
  }

  add(name, t, v) {
    let s = this.series.get(name);
    if (!s) {
      if (this.series.size >= this.maxSeries) return;
      s = { points: [], color: PALETTE[this.series.size % PALETTE.length], hidden: false };
      s.li = el("li");
      s.li.dataset.series = name;
      const button = el("button", "series");
      button.type = "button";
      button.setAttribute("aria-pressed", "true");
      const swatch = el("span", "swatch");
      swatch.style.background = s.color;
      button.append(swatch, el("span", "name", name), el("span", "latest"));
      button.addEventListener("click", () => {
        s.hidden = !s.hidden;
        button.setAttribute("aria-pressed", String(!s.hidden));
        this.schedule();
      });
      s.li.append(button);
      this.legend.append(s.li);
      this.series.set(name, s);
    }
    const { points } = s;
    if (points.length && t < points[points.length - 1][0]) {
      points.splice(points.findIndex((p) => p[0] > t), 0, [t, v]); // late arrival: keep time order
    } else {
      points.push([t, v]);
      s.li.querySelector(".latest").textContent = formatNumber(v);
    }
    if (points.length > this.maxPoints) points.splice(0, points.length - this.maxPoints);
    s.li.dataset.points = String(points.length);
    this.schedule();
  }

  /** Redraw soon: at most once per minInterval, on an animation frame. */
  schedule() {
    if (this.pending) return;
    this.pending = true;
    const wait = Math.max(0, this.last + this.minInterval - performance.now());
    setTimeout(() => requestAnimationFrame(() => this.draw()), wait);
  }

  draw() {
    this.pending = false;
    this.last = performance.now();
    const { canvas } = this;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const style = getComputedStyle(canvas);
    const ink = style.color;
    const grid = style.getPropertyValue("--chart-grid").trim() || "rgba(127,127,127,.25)";
    const font = Math.max(11, Math.min(16, Math.round(w / 40)));
    ctx.font = `${font}px ${style.fontFamily}`;
    ctx.fillStyle = ink;

    const end = Date.now() + this.skew;
    const start = end - this.windowMs;
    let lo = Infinity;
    let hi = -Infinity;
    for (const s of this.series.values()) {
      const drop = s.points.findIndex((p) => p[0] >= start);
      if (drop !== 0) s.points.splice(0, drop < 0 ? s.points.length : drop);
      s.li.dataset.points = String(s.points.length);
      if (s.hidden) continue;
      for (const [, v] of s.points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
    if (lo === Infinity) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.globalAlpha = 0.7;
      ctx.fillText(this.series.size ? "No data in the last 5 minutes" : "Waiting for device data…", w / 2, h / 2);
      ctx.globalAlpha = 1;
      return;
    }
    if (lo === hi) { lo -= 1; hi += 1; }
    const step = niceStep(hi - lo, Math.max(2, Math.floor(h / (font * 4))));
    lo = Math.floor(lo / step) * step;
    hi = Math.ceil(hi / step) * step;
    const labels = [];
    for (let v = lo; v <= hi + step / 2; v += step) labels.push([v, formatNumber(Number(v.toPrecision(12)))]);
    const left = Math.ceil(Math.max(...labels.map(([, s]) => ctx.measureText(s).width))) + 10;
    const top = font * 0.8;
    const bottom = h - font * 1.8;
    const right = w - 8;
    const x = (t) => left + ((t - start) / this.windowMs) * (right - left);
    const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);

    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const [v, text] of labels) {
      ctx.beginPath(); ctx.moveTo(left, Math.round(y(v)) + 0.5); ctx.lineTo(right, Math.round(y(v)) + 0.5); ctx.stroke();
      ctx.fillText(text, left - 6, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const minute = 60_000;
    const every = (right - left) / (this.windowMs / minute) < font * 4 ? 2 * minute : minute;
    for (let t = Math.ceil(start / every) * every; t <= end; t += every) {
      const d = new Date(t);
      ctx.fillText(`${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`, x(t), bottom + font * 0.4);
    }

    ctx.lineWidth = w > 700 ? 3 : 2;
    ctx.lineJoin = "round";
    for (const s of this.series.values()) {
      if (s.hidden || !s.points.length) continue;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.beginPath();
      s.points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.stroke();
      const [t, v] = s.points[s.points.length - 1];
      ctx.beginPath(); ctx.arc(x(t), y(v), ctx.lineWidth + 1, 0, 2 * Math.PI); ctx.fill();
    }
  }
}
