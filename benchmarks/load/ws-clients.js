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

const WebSocket = require('ws');
const packets = require('./mqtt-packets');
const { Histogram, Receipts, bounded, deadline, emit, nowUs, runSchedule, serve } = require('./common');

let config = {};
const receipts = new Receipts();
const conns = [];
let closed = 0;

function fill(template, room) {
  return template.split('{room}').join(room);
}

function openWs(room) {
  return new Promise((resolve, reject) => {
    const conn = { room, ready: false };
    const ws = new WebSocket(fill(config.url, room), { origin: config.origin, perMessageDeflate: false });
    conn.ws = ws;
    ws.on('open', () => {
      if (!config.welcome) {
        conn.ready = true;
        resolve(conn);
      }
    });
    ws.on('message', (data) => {
      if (!conn.ready) {
        conn.ready = true; // the welcome, which may replay old payloads: not counted
        receipts.frames += 1;
        resolve(conn);
        return;
      }
      receipts.record(conn, data);
    });
    ws.on('error', (error) => reject(error));
    ws.on('close', () => {
      if (conn.ready) closed += 1;
      reject(new Error('closed before it was ready'));
    });
  });
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
      if (conn.ready) closed += 1;
      reject(new Error('closed before it was ready'));
    });
  });
}

async function connectAll() {
  const handshake = new Histogram();
  const open = config.mode === 'mqtt-ws' ? openMqttWs : openWs;
  const results = await bounded(config.rooms.length, config.concurrency || 100, async (i) => {
    const started = nowUs();
    const conn = await deadline(open(config.rooms[i], i), config.timeout_ms || 30000, 'handshake');
    handshake.add(nowUs() - started);
    return conn;
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
      default:
        emit({ event: 'error', detail: `unknown command ${command.cmd}` });
    }
  },
  closeAll,
);
