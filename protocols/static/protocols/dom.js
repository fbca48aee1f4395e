// Gateway: small DOM and formatting helpers shared by the room page's modules.
// Everything from the network is shown with textContent, never parsed as HTML.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const pad = (n) => String(n).padStart(2, "0");

/** A Date from the gateway's ISO timestamps (or now when missing or unreadable). */
export function toDate(ts) {
  const date = ts ? new Date(ts) : new Date();
  return Number.isNaN(date.getTime()) ? new Date() : date;
}

/** Milliseconds since the epoch of a frame's ts, or NaN. */
export function toMillis(ts) {
  return typeof ts === "string" ? Date.parse(ts) : NaN;
}

/** Local wall-clock time, HH:MM:SS. */
export function clock(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** A <time class="time"> element showing local HH:MM:SS, with the full date on hover. */
export function timeEl(ts) {
  const date = toDate(ts);
  const node = el("time", "time", clock(date));
  node.dateTime = date.toISOString();
  node.title = date.toLocaleString();
  return node;
}

/** Bytes encoded by a base64 string. */
export function base64Bytes(text) {
  const clean = String(text).replace(/[\s=]/g, "");
  return Math.floor((clean.length * 3) / 4);
}

/** A message's payload as text: strings as-is, base64 as a note, other JSON compact. */
export function messageText(frame) {
  const message = frame.message;
  if (frame.encoding === "base64") return `(binary, ${base64Bytes(message)} bytes) ${message}`;
  if (typeof message === "string") return message;
  if (message === undefined) return "";
  try {
    return JSON.stringify(message);
  } catch {
    return String(message);
  }
}
