// Gateway room: the device panel, one row per MQTT topic with its latest value.
import { el, messageText, timeEl, toMillis } from "./dom.js";

/** The numeric top-level fields of a JSON object message, as [field, value] pairs. */
export function numericFields(message) {
  if (message === null || typeof message !== "object" || Array.isArray(message)) return [];
  return Object.entries(message).filter(([, v]) => typeof v === "number" && Number.isFinite(v));
}

/** How a device message names its series: sender, or topic when there is none. */
export const deviceName = (frame) => String(frame.sender ?? frame.topic ?? "");

export class DevicePanel {
  constructor(table, empty = null) {
    this.body = table.tBodies[0] ?? table.appendChild(document.createElement("tbody"));
    this.empty = empty;
    this.rows = new Map(); // topic -> {tr, at, id}
  }

  /** Show a device message (live, from history, or a retained state). */
  update(frame) {
    const topic = String(frame.topic ?? frame.sender ?? "");
    const at = toMillis(frame.ts);
    const id = frame.id == null ? null : String(frame.id);
    let row = this.rows.get(topic);
    if (row) {
      if (id !== null && id === row.id) {
        // The same message again (a state that is also in history): it is no longer only state.
        if (!frame.retained) delete row.tr.dataset.retained;
        return;
      }
      if (at < row.at) return; // older than what the row shows
    } else {
      const tr = el("tr");
      tr.dataset.topic = topic;
      tr.append(el("td", "device"), el("td", "value"), el("td", "updated"));
      this.body.append(tr);
      row = { tr, at: -Infinity, id: null };
      this.rows.set(topic, row);
      if (this.empty) this.empty.hidden = true;
    }
    const [device, value, updated] = row.tr.cells;
    device.textContent = deviceName(frame);
    device.title = topic;
    value.textContent = messageText(frame);
    value.title = value.textContent.length > 80 ? value.textContent.slice(0, 2000) : "";
    updated.replaceChildren(timeEl(frame.ts));
    if (frame.retained) row.tr.dataset.retained = "true";
    else delete row.tr.dataset.retained;
    row.at = Number.isNaN(at) ? Date.now() : at;
    row.id = id;
  }

  /** The welcome's room state: fill the panel, and drop states that were cleared meanwhile. */
  refresh(retained) {
    const topics = new Set(retained.map((frame) => String(frame.topic ?? frame.sender ?? "")));
    for (const [topic, row] of this.rows) {
      if (row.tr.dataset.retained === "true" && !topics.has(topic)) {
        row.tr.remove();
        this.rows.delete(topic);
      }
    }
    retained.forEach((frame) => this.update({ ...frame, retained: true }));
    if (this.empty) this.empty.hidden = this.rows.size > 0;
  }
}
