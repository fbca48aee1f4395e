'use strict';
// Devices and MQTT subscribers: MQTT connections over TCP in one process. When told, they
// publish payloads on an open-loop schedule; the first connection may subscribe, and counts
// and times every payload it receives.
//
// The configuration (the first line on stdin):
//   url        the broker, mqtt://127.0.0.1:PORT
//   clients    how many connections (devices) to open
//   subscribe  topic filters the first connection subscribes to (QoS 0), or []
//   qos        the QoS of publications
//
// A `send` command may say `"retain": true`: its publications are then retained messages.

const mqtt = require('mqtt');
const { Receipts, bounded, deadline, emit, runSchedule, serve } = require('./common');

let config = {};
const receipts = new Receipts();
const clients = [];

function open(index) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(config.url, {
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 0,
      keepalive: 600,
      clientId: `bench-mqtt-${process.pid}-${index}`,
    });
    const conn = { client };
    client.on('connect', () => {
      const filters = index === 0 ? config.subscribe || [] : [];
      if (filters.length === 0) {
        resolve(conn);
        return;
      }
      client.subscribe(filters, { qos: 0 }, (error) => (error ? reject(error) : resolve(conn)));
    });
    client.on('message', (_topic, message) => receipts.record(conn, message));
    client.on('error', reject);
    client.on('close', () => reject(new Error('closed before it was ready')));
  });
}

async function connectAll() {
  const results = await bounded(config.clients, 50, (i) => deadline(open(i), 30000, 'connect'));
  const errors = [];
  for (const result of results) {
    if (result.ok) clients.push(result.value);
    else if (errors.length < 5) errors.push(result.error);
  }
  emit({ event: 'ready', connected: clients.length, failed: results.length - clients.length, errors });
}

function closeAll() {
  for (const conn of clients) conn.client.end(true);
}

serve(
  (given) => {
    config = given;
    return connectAll();
  },
  async (command) => {
    switch (command.cmd) {
      case 'stats':
        emit({ event: 'stats', ...receipts.summary(command.step), closed: 0 });
        break;
      case 'report':
        emit({ event: 'report', ...receipts.take(command.step, clients), closed: 0 });
        break;
      case 'send': {
        // Topic j is always published by the same connection: topic j belongs to device j % N.
        const topics = command.topics;
        const options = { qos: config.qos || 0, retain: Boolean(command.retain) };
        emit(
          await runSchedule(command, (i, text) => {
            const j = i % topics.length;
            clients[j % clients.length].client.publish(topics[j], text, options);
          }),
        );
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
