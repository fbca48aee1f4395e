'use strict';
// The few MQTT 3.1.1 packets a light MQTT-over-WebSocket client needs: CONNECT, SUBSCRIBE
// and QoS 0 PUBLISH, written by hand so that receiving costs the same as for any WebSocket
// client (the payloads are found in the frames, as for the rooms' own WebSocket).

function remainingLength(length) {
  const bytes = [];
  let left = length;
  do {
    let byte = left % 128;
    left = Math.floor(left / 128);
    if (left > 0) byte |= 0x80;
    bytes.push(byte);
  } while (left > 0);
  return Buffer.from(bytes);
}

function utf8(text) {
  const body = Buffer.from(text);
  const length = Buffer.alloc(2);
  length.writeUInt16BE(body.length);
  return Buffer.concat([length, body]);
}

function packet(firstByte, body) {
  return Buffer.concat([Buffer.from([firstByte]), remainingLength(body.length), body]);
}

/** CONNECT with a clean session and no keepalive (the broker never times the client out). */
function connect(clientId) {
  const header = Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 0]);
  return packet(0x10, Buffer.concat([header, utf8(clientId)]));
}

/** SUBSCRIBE to one filter at QoS 0. */
function subscribe(filter, packetId = 1) {
  const id = Buffer.alloc(2);
  id.writeUInt16BE(packetId);
  return packet(0x82, Buffer.concat([id, utf8(filter), Buffer.from([0])]));
}

/** PUBLISH at QoS 0. */
function publish(topic, text) {
  return packet(0x30, Buffer.concat([utf8(topic), Buffer.from(text)]));
}

/** The packet types (first bytes, flags cleared) of the whole packets in `buf`. */
function packetTypes(buf) {
  const types = [];
  let at = 0;
  while (at < buf.length) {
    let length = 0;
    let shift = 1;
    let i = at + 1;
    for (; i < buf.length; i += 1) {
      length += (buf[i] & 0x7f) * shift;
      shift *= 128;
      if ((buf[i] & 0x80) === 0) break;
    }
    types.push(buf[at] & 0xf0);
    at = i + 1 + length;
  }
  return types;
}

const CONNACK = 0x20;
const SUBACK = 0x90;

module.exports = { CONNACK, SUBACK, connect, packetTypes, publish, subscribe };
