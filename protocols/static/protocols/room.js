// Gateway room: a live page over one WebSocket shared with MQTT devices and the HTTP API.
// Chat log on the left; connection, presence, device values and a chart on the right.
import { el, toMillis } from "./dom.js";
import { DevicePanel, deviceName, numericFields } from "./devices.js";
import { Log } from "./log.js";
import { LineChart } from "./plot.js";
import { PresenceList } from "./presence.js";

const BACKOFF_MIN = 500;
const BACKOFF_MAX = 10_000;
const CONNECT_TIMEOUT = 15_000;
// Close codes after which reconnecting would only be refused again.
const FINAL = {
  4401: "sign-in or token not accepted",
  4403: "no access to this room",
  1008: "too many connections or messages",
  1009: "a message was too big",
};

const room = JSON.parse(document.getElementById("room-data").textContent);
const page = document.getElementById("room");
const statusEl = document.getElementById("status");
const form = document.getElementById("send");
const input = document.getElementById("message");
const sendButton = form.querySelector("button[type=submit]");

const log = new Log(document.getElementById("log"), { max: 500, jump: document.getElementById("jump") });
const devices = new DevicePanel(document.getElementById("devices"), document.getElementById("devices-empty"));
const presence = new PresenceList(document.getElementById("presence"), document.getElementById("presence-count"));
const listButton = document.getElementById("presence-list");
let listCursor = null; // where the next page of a big room's member list starts
let listStarted = false; // a page of it was asked for
listButton.addEventListener("click", askForMembers);
const chart = new LineChart(document.getElementById("chart"), document.getElementById("chart-legend"));

const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const baseUrl = `${scheme}//${location.host}/ws/rooms/${encodeURIComponent(room)}/`;

let socket = null; // the current socket (kept after it closes, for inspection)
let lastSeq = null; // highest seq seen: where a reconnect resumes
const RESUME_OVERLAP = 20;
let delay = BACKOFF_MIN;
let retryAfter = null; // ms: the turn a busy gateway gave for the next attempt
const RETRY_AFTER_MAX = 300_000;
let retryTimer = null;
let countdown = null;
let connectTimer = null;
let stopped = false; // refused, or the page is going away
let refocus = false;

function setStatus(state, text) {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
  const open = state === "open";
  if (!open && document.activeElement === input) refocus = true;
  input.disabled = !open;
  sendButton.disabled = !open;
  if (open && refocus) {
    refocus = false;
    input.focus();
  }
}

function seeSeq(seq) {
  if (typeof seq === "number" && Number.isFinite(seq) && (lastSeq === null || seq > lastSeq)) lastSeq = seq;
}

/** A message frame, live or from a welcome: log, device panel, chart. */
function onMessage(frame, live) {
  seeSeq(frame.seq);
  if (!log.message(frame)) return; // shown already
  if (frame.source !== "mqtt") return;
  devices.update(frame);
  const at = toMillis(frame.ts);
  const t = Number.isNaN(at) ? Date.now() + chart.skew : at;
  if (live && !Number.isNaN(at)) chart.skew = at - Date.now();
  const name = deviceName(frame);
  for (const [field, value] of numericFields(frame.message)) chart.add(`${name}.${field}`, t, value);
}

function onWelcome(frame) {
  delay = BACKOFF_MIN; // a healthy connection: the next failure starts the backoff afresh
  if (frame.gap) log.gap();
  const retained = Array.isArray(frame.retained) ? frame.retained : [];
  devices.refresh(retained.filter((m) => m && typeof m === "object"));
  for (const message of Array.isArray(frame.messages) ? frame.messages : []) {
    if (message && typeof message === "object") onMessage(message, false);
  }
  seeSeq(frame.seq);
  if (lastSeq === null) lastSeq = 0; // an empty room: resume from its beginning
  const total = Number.isInteger(frame.presence_count) ? frame.presence_count : null;
  const members = Array.isArray(frame.presence) ? frame.presence : [];
  // A big room's welcome holds the count alone; the list comes a page at a time on request.
  presence.reset(total !== null && total > members.length ? null : members, total);
  listCursor = null;
  listStarted = false;
  showListButton();
}

function showListButton() {
  listButton.hidden = presence.listed || (listStarted && listCursor === null);
  listButton.textContent = listStarted ? "Show more" : "Show who is here";
}

/** Ask for the next page of a big room's member list. */
function askForMembers() {
  if (socket?.readyState !== WebSocket.OPEN) return;
  socket.send(JSON.stringify({ type: "presence.list", cursor: listCursor ?? "0" }));
  listButton.disabled = true;
}

function onMemberPage(frame) {
  if (presence.listed) return; // the room is small again: the whole list is shown
  presence.page(frame.members);
  listCursor = typeof frame.cursor === "string" ? frame.cursor : null;
  listStarted = true;
  listButton.disabled = false;
  showListButton();
}

function onFrame(event) {
  let frame;
  try {
    frame = JSON.parse(event.data);
  } catch {
    log.notice("The gateway sent a frame that is not JSON.");
    return;
  }
  if (!frame || typeof frame !== "object") return;
  switch (frame.type) {
    case "welcome":
      onWelcome(frame);
      break;
    case "message":
      onMessage(frame, true);
      break;
    case "presence":
      presence.update(frame);
      showListButton();
      break;
    case "presence.list":
      onMemberPage(frame);
      break;
    case "error":
      if (frame.code === "busy" && Number.isFinite(frame.retry_after) && frame.retry_after >= 0) {
        retryAfter = Math.min(frame.retry_after * 1000, RETRY_AFTER_MAX); // the close follows
      } else {
        log.error(frame);
      }
      break;
    default:
      break; // newer gateways may add frame types: ignore what we do not know
  }
}

function refused(code, reason) {
  stopped = true;
  const why = FINAL[code] + (reason ? ` (${reason})` : "");
  setStatus("closed", `refused: ${why}`);
  statusEl.dataset.code = String(code);
  statusEl.classList.add("refused");
  let extra = null;
  if ((code === 4401 || code === 4403) && page.dataset.signedIn !== "true" && page.dataset.loginUrl) {
    extra = el("a", "login", "Log in");
    extra.href = page.dataset.loginUrl;
  }
  log.notice(`The gateway closed the connection: ${why}. Not reconnecting; reload the page to try again.`,
    "notice refused", extra);
}

function scheduleRetry() {
  // A busy gateway's turn (with a little jitter), else a full-jitter backoff.
  const busy = retryAfter !== null;
  const wait = busy ? retryAfter * (1 + 0.1 * Math.random()) : Math.random() * delay;
  if (!busy) delay = Math.min(delay * 2, BACKOFF_MAX);
  retryAfter = null;
  const at = Date.now() + wait;
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((at - Date.now()) / 1000));
    setStatus("closed", busy ? `the gateway is busy: reconnecting in ${seconds} s…` : `reconnecting in ${seconds} s…`);
  };
  tick();
  clearInterval(countdown);
  countdown = setInterval(tick, 250);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, wait);
}

function connect() {
  clearTimeout(retryTimer);
  clearInterval(countdown);
  retryTimer = null;
  retryAfter = null;
  if (stopped) return;
  setStatus("connecting", "connecting…");
  // Several gateway processes can deliver a room's messages a few seqs out of order, so a
  // resume asks for a little overlap; messages already shown are skipped by id.
  const since = lastSeq === null ? null : Math.max(0, lastSeq - RESUME_OVERLAP);
  const url = since === null ? baseUrl : `${baseUrl}?since=${encodeURIComponent(since)}`;
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (error) {
    log.notice(`Could not open a connection: ${error.message}`);
    scheduleRetry();
    return;
  }
  socket = ws;
  clearTimeout(connectTimer);
  // A handshake that hangs (a sleeping laptop, a silent proxy) is given up and retried.
  connectTimer = setTimeout(() => ws.readyState === WebSocket.CONNECTING && ws.close(), CONNECT_TIMEOUT);
  ws.addEventListener("open", () => {
    clearTimeout(connectTimer);
    if (socket === ws) setStatus("open", "live");
  });
  ws.addEventListener("message", (event) => {
    if (socket === ws) onFrame(event);
  });
  ws.addEventListener("close", (event) => {
    clearTimeout(connectTimer);
    if (socket !== ws || stopped) return;
    if (event.code in FINAL) refused(event.code, event.reason);
    else scheduleRetry();
  });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (!text.trim() || !socket || socket.readyState !== WebSocket.OPEN) return;
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

// Back online: do not wait out the backoff.
window.addEventListener("online", () => {
  if (retryTimer !== null && !stopped) connect();
});

window.addEventListener("pagehide", () => {
  if (statusEl.classList.contains("refused")) return;
  stopped = true;
  clearTimeout(retryTimer);
  clearInterval(countdown);
  retryTimer = null;
  socket?.close(1000);
});

// Restored from the back/forward cache: resume where we were.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted || statusEl.classList.contains("refused")) return;
  stopped = false;
  delay = BACKOFF_MIN;
  connect();
});

window.gatewayRoom = {
  get socket() {
    return socket;
  },
  get lastSeq() {
    return lastSeq;
  },
  get shown() {
    return log.shown;
  },
};

connect();
