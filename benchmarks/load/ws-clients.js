'use strict';
// Browsers: many WebSocket connections in one process, each in one room. They count and time
// every payload they receive and, when told, send payloads on an open-loop schedule.
//
// The configuration (the first line on stdin):
//   mode       "ws" (the rooms' own WebSocket) or "mqtt-ws" (MQTT over a broker's WebSocket)
//   url        ws: a URL with {room} in it; mqtt-ws: the broker's ws:// URL
//   origin     the Origin header (ws mode)
//   rooms      one room per connection
//   welcome    ws mode: the server sends a welcome frame first; a client is ready once it came
//   subscribe  mqtt-ws mode: a topic filter with {room}, subscribed at QoS 0
//   publish    mqtt-ws mode: the topic with {room} that sending publishes to
//   concurrency, timeout_ms  handshakes in flight at once, and the limit for each
//   track_seq  ws mode: remember the highest seq each connection saw (for `churn`, `reconnect`)
//   reconnect  {base_ms, cap_ms, timeout_ms}: a connection the server closes comes back as the
//              room page does, after a full-jitter wait that doubles from base_ms up to cap_ms,
//              giving each handshake timeout_ms, with ?since=<the last seq it saw> (ws mode);
//              the `reconnects` command reports how that went
//
// The `churn` command (ws mode) closes `count` connections, the next ones round the list, every
// other one abruptly (no close handshake), and opens them again in the same rooms; with
// `resume`, every other one comes back with ?since=<the last seq it saw>, and the messages its
// welcome replays are counted (as are welcomes that report a gap).

const WebSocket = require('ws');
const packets = require('./mqtt-packets');
const { Histogram, Receipts, bounded, deadline, emit, markers, nowUs, runSchedule, serve } = require('./common');

let config = {};
const receipts = new Receipts();
const conns = [];
let closed = 0; // connections the server closed (not those `churn` closed)
const churned = { reconnects: 0, resumed: 0, replayed: 0, gaps: 0, failed: 0, errors: [] };
let churnNext = 0;
// Connections the server closed that came back by themselves (`reconnect` in the config).
const storm = {
  closed: 0, back: 0, attempts: 0, failed: 0, busy: 0, given_up: 0, replayed: 0, gaps: 0,
  errors: {}, // failed attempts by what failed them (busy ones aside)
  handshake: new Histogram(), // the attempt that succeeded: open to welcome
  away: new Histogram(), // closed to welcomed again
};
const MAX_ATTEMPTS = 30;
const SEQ = /"seq":\s*(\d+)/g;
const GAP = /"gap":\s*true/;
// A handshake the server had no turn for: {"type": "error", "code": "busy", "retry_after": s}.
const BUSY = /"code":\s*"busy".*"retry_after":\s*([\d.]+)/;

/** The highest seq a frame mentions (a message's, or a welcome's watermark), or 0. */
function highestSeq(data) {
  let highest = 0;
  for (const match of data.toString().matchAll(SEQ)) highest = Math.max(highest, Number(match[1]));
  return highest;
}

function fill(template, room) {
  return template.split('{room}').join(room);
}

function openWs(room, index, since = null, tally = churned) {
  return new Promise((resolve, reject) => {
    const conn = { room, ready: false, seq: 0, closing: false };
    const url = fill(config.url, room) + (since === null ? '' : `?since=${since}`);
    const ws = new WebSocket(url, { origin: config.origin, perMessageDeflate: false });
    conn.ws = ws;
    ws.on('open', () => {
      if (!config.welcome) {
        conn.ready = true;
        resolve(conn);
      }
    });
    ws.on('message', (data) => {
      if (!conn.ready && config.welcome) {
        const busy = BUSY.exec(data.toString());
        if (busy) {
          conn.retryAfterMs = Number(busy[1]) * 1000; // the close follows
          return;
        }
      }
      if (config.track_seq) conn.seq = Math.max(conn.seq, highestSeq(data));
      if (!conn.ready) {
        conn.ready = true; // the welcome, which may replay old payloads: not counted
        receipts.frames += 1;
        if (since !== null) {
          tally.replayed += markers(data).length;
          if (GAP.test(data.toString())) tally.gaps += 1;
        }
        resolve(conn);
        return;
      }
      receipts.record(conn, data);
    });
    ws.on('error', (error) => {
      // A busy server's close can end in a reset: its turn still stands.
      if (conn.retryAfterMs !== undefined) error.retryAfterMs = conn.retryAfterMs;
      reject(error);
    });
    ws.on('close', () => {
      if (conn.ready && !conn.closing) {
        closed += 1;
        if (config.reconnect) comeBack(index, conn, nowUs(), 0);
      }
      const error = new Error(conn.retryAfterMs === undefined ? 'closed before it was ready' : 'busy');
      error.retryAfterMs = conn.retryAfterMs;
      reject(error);
    });
  });
}

/** The turn (ms) a busy server gave the attempt that failed with `error`, if it gave one. */
function turnOf(error) {
  return error ? error.retryAfterMs : undefined;
}

/** How long to wait for a turn of `ms`: a little jitter, as the room page adds. */
function atTurn(ms) {
  return ms * (1 + 0.1 * Math.random());
}

/** Open connection `index` again after the server closed it, as the room page does. */
function comeBack(index, old, closedAt, attempt, retryAfterMs) {
  if (attempt === 0) storm.closed += 1;
  if (attempt >= MAX_ATTEMPTS) {
    storm.given_up += 1;
    return;
  }
  const { base_ms: base, cap_ms: cap, timeout_ms: limit } = config.reconnect;
  // The server's turn when it gave one, else the page's backoff.
  const wait = retryAfterMs === undefined
    ? Math.random() * Math.min(cap, base * 2 ** attempt)
    : atTurn(retryAfterMs);
  setTimeout(async () => {
    storm.attempts += 1;
    const started = nowUs();
    const since = old.seq > 0 ? old.seq : null;
    const opening = config.mode === 'mqtt-ws' ? openMqttWs(old.room, index) : openWs(old.room, index, since, storm);
    try {
      const conn = await deadline(opening, limit || config.timeout_ms || 30000, 'reconnect');
      conn.seq = Math.max(conn.seq || 0, old.seq || 0);
      conns[index] = conn;
      storm.back += 1;
      storm.handshake.add(nowUs() - started);
      storm.away.add(nowUs() - closedAt);
    } catch (error) {
      opening.then((late) => { late.closing = true; late.ws.terminate(); }, () => {});
      storm.failed += 1;
      const turn = turnOf(error);
      if (turn !== undefined) storm.busy += 1;
      else {
        const kind = String(error && error.message ? error.message : error).replace(/ [\d.:]+$/, '');
        storm.errors[kind] = (storm.errors[kind] || 0) + 1;
      }
      // A busy server's turn is not a failure of this client's: it does not bring giving up nearer.
      comeBack(index, old, closedAt, turn === undefined ? attempt + 1 : attempt, turn);
    }
  }, wait);
}

/** MQTT over the broker's WebSocket: ready once the broker acknowledged the subscription. */
function openMqttWs(room, index) {
  return new Promise((resolve, reject) => {
    const conn = { room, ready: false };
    const ws = new WebSocket(config.url, ['mqtt'], { perMessageDeflate: false });
    conn.ws = ws;
    ws.on('open', () => {
      ws.send(packets.connect(`bench-ws-${process.pid}-${index}`));
      if (config.subscribe) ws.send(packets.subscribe(fill(config.subscribe, room)));
    });
    ws.on('message', (data) => {
      if (!conn.ready) {
        // CONNACK comes first, then SUBACK when subscribing; nothing else comes before them.
        const wanted = config.subscribe ? packets.SUBACK : packets.CONNACK;
        if (packets.packetTypes(data).includes(wanted)) {
          conn.ready = true;
          resolve(conn);
        }
        return;
      }
      receipts.record(conn, data);
    });
    ws.on('error', (error) => reject(error));
    ws.on('close', () => {
      if (conn.ready) {
        closed += 1;
        if (config.reconnect) comeBack(index, conn, nowUs(), 0);
      }
      reject(new Error('closed before it was ready'));
    });
  });
}

async function connectAll() {
  const handshake = new Histogram();
  const open = config.mode === 'mqtt-ws' ? openMqttWs : openWs;
  const results = await bounded(config.rooms.length, config.concurrency || 100, async (i) => {
    const started = nowUs();
    for (let attempt = 1; ; attempt += 1) {
      try {
        const conn = await deadline(open(config.rooms[i], i), config.timeout_ms || 30000, 'handshake');
        handshake.add(nowUs() - started);
        return conn;
      } catch (error) {
        // A busy server gave a turn: come back then, as the room page does.
        const turn = turnOf(error);
        if (turn === undefined || attempt >= MAX_ATTEMPTS) throw error;
        await new Promise((resolve) => setTimeout(resolve, atTurn(turn)));
      }
    }
  });
  const errors = [];
  for (const result of results) {
    if (result.ok) conns.push(result.value);
    else if (errors.length < 5) errors.push(result.error);
  }
  emit({
    event: 'ready',
    connected: conns.length,
    failed: results.length - conns.length,
    errors,
    handshake: handshake.toJSON(),
  });
}

function sendTo(conn, text) {
  if (conn.ws.readyState !== WebSocket.OPEN) return;
  if (config.mode === 'mqtt-ws') conn.ws.send(packets.publish(fill(config.publish, conn.room), text));
  else conn.ws.send(`{"message":${text}}`);
}

function closeAll() {
  for (const conn of conns) conn.ws.terminate();
}

/** Close `count` connections and open them again (see `churn` at the top); the totals so far. */
async function churn({ count, resume }) {
  const picks = [];
  for (let k = 0; k < Math.min(count, conns.length); k += 1) {
    picks.push([churnNext % conns.length, churnNext]);
    churnNext += 1;
  }
  await bounded(picks.length, config.concurrency || 8, async (k) => {
    const [index, n] = picks[k];
    const old = conns[index];
    old.closing = true;
    if (n % 2 === 0) old.ws.close(1000);
    else old.ws.terminate();
    const since = resume && Math.floor(n / 2) % 2 === 0 && old.seq > 0 ? old.seq : null;
    const opening = openWs(old.room, index, since);
    try {
      conns[index] = await deadline(opening, config.timeout_ms || 30000, 'reconnect');
      churned.reconnects += 1;
      if (since !== null) churned.resumed += 1;
    } catch (error) {
      // The slot keeps the closed connection until its turn comes round again; a handshake
      // that completes after the deadline is closed at once.
      opening.then((late) => { late.closing = true; late.ws.terminate(); }, () => {});
      churned.failed += 1;
      if (churned.errors.length < 5) churned.errors.push(String(error && error.message ? error.message : error));
    }
  });
  return { event: 'churned', ...churned, errors: churned.errors.slice() };
}

serve(
  (given) => {
    config = given;
    return connectAll();
  },
  async (command) => {
    switch (command.cmd) {
      case 'stats':
        emit({ event: 'stats', ...receipts.summary(command.step), closed });
        break;
      case 'report':
        emit({ event: 'report', ...receipts.take(command.step, conns), closed });
        break;
      case 'send': {
        const senders = conns;
        emit(await runSchedule(command, (i, text) => sendTo(senders[i % senders.length], text)));
        break;
      }
      case 'close':
        closeAll();
        emit({ event: 'closed' });
        break;
      case 'churn':
        emit(await churn(command));
        break;
      case 'reconnects':
        emit({
          event: 'reconnects',
          ...storm,
          errors: Object.entries(storm.errors).sort((a, b) => b[1] - a[1]).slice(0, 5)
            .map(([kind, n]) => `${n} x ${kind}`),
          handshake: storm.handshake.toJSON(),
          away: storm.away.toJSON(),
        });
        break;
      default:
        emit({ event: 'error', detail: `unknown command ${command.cmd}` });
    }
  },
  closeAll,
);
