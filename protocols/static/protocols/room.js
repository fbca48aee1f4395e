// Gateway room: live log over a WebSocket shared with MQTT devices and the HTTP API.
"use strict";

(() => {
  const MAX_ENTRIES = 500;
  const MAX_SEEN = 1000;
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const REFUSED = new Set([1008, 4400, 4401, 4403]);
  const SOURCES = { ws: "browser", mqtt: "device", http: "api" };
  const STATUS_TEXT = { connecting: "connecting…", open: "connected", closed: "reconnecting…" };

  const room = JSON.parse(document.getElementById("room-data").textContent);
  const statusEl = document.getElementById("status");
  const log = document.getElementById("log");
  const form = document.getElementById("send");
  const input = document.getElementById("message");
  const button = form.querySelector("button[type=submit]");

  const seen = new Set();
  const state = { socket: null };
  let delay = BACKOFF_MIN;
  let retryTimer = null;
  let stopped = false;

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/ws/rooms/${encodeURIComponent(room)}/`;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(key, text) {
    statusEl.dataset.state = key;
    statusEl.textContent = text ?? STATUS_TEXT[key];
    button.disabled = key !== "open";
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 8;
  }

  function append(li) {
    const stick = atBottom();
    log.append(li);
    while (log.childElementCount > MAX_ENTRIES) log.firstElementChild.remove();
    if (stick) log.scrollTop = log.scrollHeight;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function timeEl(ts) {
    // ts may be epoch seconds, epoch milliseconds or an ISO string; default now.
    let date;
    if (typeof ts === "number") date = new Date(ts < 1e12 ? ts * 1000 : ts);
    else date = ts ? new Date(ts) : new Date();
    if (Number.isNaN(date.getTime())) return el("time", "time", "--:--:--");
    const node = el("time", "time", `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`);
    node.dateTime = date.toISOString();
    return node;
  }

  function remember(id) {
    seen.add(id);
    if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value);
  }

  function base64Length(text) {
    const clean = String(text).replace(/\s/g, "");
    const padding = clean.endsWith("==") ? 2 : clean.endsWith("=") ? 1 : 0;
    return Math.max(0, Math.floor((clean.length * 3) / 4) - padding);
  }

  function renderBody(frame) {
    const body = el("span", "body");
    if (frame.encoding === "base64") {
      body.classList.add("binary");
      body.append(el("span", "note", `(binary, ${base64Length(frame.message)} bytes)`), " ");
      body.append(el("code", null, String(frame.message)));
    } else if (typeof frame.message === "string") {
      body.textContent = frame.message;
    } else {
      body.classList.add("json");
      body.textContent = JSON.stringify(frame.message);
    }
    return body;
  }

  function showMessage(frame) {
    if (frame.id != null) {
      if (seen.has(frame.id)) return;
      remember(frame.id);
    }
    const source = String(frame.source ?? "");
    const li = el("li", "entry");
    if (frame.id != null) li.dataset.id = String(frame.id);
    li.dataset.source = source;
    const who = frame.sender ?? frame.topic ?? "";
    li.append(
      timeEl(frame.ts),
      el("span", `badge badge-${source || "unknown"}`, SOURCES[source] ?? (source || "?")),
      el("span", frame.sender == null ? "sender topic" : "sender", String(who)),
      renderBody(frame),
    );
    append(li);
  }

  function showNotice(text, className = "notice") {
    const li = el("li", className);
    li.append(timeEl(), el("span", "body", text));
    append(li);
  }

  function onFrame(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      showNotice("Received a frame that is not JSON.", "error");
      return;
    }
    if (frame?.type === "message") showMessage(frame);
    else if (frame?.type === "error") {
      showNotice(`Error ${frame.code ?? ""}: ${frame.detail ?? ""}`.trim(), "error");
    }
  }

  function connect() {
    retryTimer = null;
    setStatus("connecting");
    const socket = new WebSocket(url);
    state.socket = socket;
    socket.addEventListener("open", () => {
      delay = BACKOFF_MIN;
      setStatus("open");
    });
    socket.addEventListener("message", onFrame);
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return;
      if (REFUSED.has(event.code)) {
        stopped = true;
        setStatus("closed", "refused");
        statusEl.classList.add("refused");
        showNotice(`The room refused the connection (code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`, "error");
        return;
      }
      if (stopped) return;
      setStatus("closed");
      const wait = Math.round(delay / 2 + Math.random() * (delay / 2));
      delay = Math.min(delay * 2, BACKOFF_MAX);
      retryTimer = setTimeout(connect, wait);
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    const socket = state.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      message = text;
    }
    socket.send(JSON.stringify({ message }));
    input.value = "";
    input.focus();
  });

  window.addEventListener("pagehide", () => {
    stopped = true;
    clearTimeout(retryTimer);
    state.socket?.close(1000);
  });

  window.addEventListener("pageshow", (event) => {
    if (!event.persisted || !stopped || statusEl.classList.contains("refused")) return;
    stopped = false;
    delay = BACKOFF_MIN;
    connect();
  });

  window.gatewayRoom = state;
  connect();
})();
