'use strict';
// What the load and receive processes share: the clock, the payload, latency histograms,
// an open-loop send schedule and the JSON-lines conversation with the Python controller.

const readline = require('node:readline');

// Every payload starts with "bench":"<step>:<seq>:<sent us>"; servers that re-encode JSON may
// put a space after the colon.
const MARK = '"bench":';
const SPACE = 0x20;
const MARK_BUF = Buffer.from(MARK);
const QUOTE = 0x22;
// Latency histogram buckets grow by 2%: bucket b holds latencies up to 1.02^b microseconds.
const LOG_GROWTH = Math.log(1.02);
const SCHEDULE_BATCH = 2000; // the most sends one turn of the event loop makes

/** Microseconds on the monotonic clock, which every process on the machine shares. */
function nowUs() {
  return Number(process.hrtime.bigint() / 1000n);
}

/** A JSON object of `size` bytes that carries the step, the sequence number and the send time. */
function payload(step, seq, sentUs, size) {
  const head = `{${MARK}"${step}:${seq}:${sentUs}","pad":"`;
  const padding = Math.max(0, size - head.length - 2);
  return `${head}${'x'.repeat(padding)}"}`;
}

/** Every [step, seq, sentUs] a frame (Buffer or string) carries, in order. */
function markers(data) {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  const found = [];
  let at = buf.indexOf(MARK_BUF);
  while (at >= 0) {
    let from = at + MARK_BUF.length;
    while (buf[from] === SPACE) from += 1;
    if (buf[from] !== QUOTE) {
      at = buf.indexOf(MARK_BUF, from);
      continue;
    }
    from += 1;
    const end = buf.indexOf(QUOTE, from);
    if (end < 0) break;
    const parts = buf.toString('latin1', from, end).split(':');
    if (parts.length === 3) found.push([Number(parts[0]), Number(parts[1]), Number(parts[2])]);
    at = buf.indexOf(MARK_BUF, end);
  }
  return found;
}

class Histogram {
  constructor() {
    this.buckets = new Map();
    this.count = 0;
    this.max = 0;
    this.sum = 0;
  }

  add(us) {
    const value = Math.max(us, 1);
    const bucket = Math.ceil(Math.log(value) / LOG_GROWTH);
    this.buckets.set(bucket, (this.buckets.get(bucket) || 0) + 1);
    this.count += 1;
    this.sum += value;
    if (value > this.max) this.max = value;
  }

  toJSON() {
    return { count: this.count, max_us: this.max, sum_us: this.sum, buckets: Object.fromEntries(this.buckets) };
  }
}

/** What one process received for one step. */
class StepStats {
  constructor() {
    this.count = 0;
    this.duplicates = 0;
    this.lastUs = 0;
    this.latency = new Histogram();
  }
}

/** Counts every payload received, per step, once per connection. */
class Receipts {
  constructor() {
    this.steps = new Map();
    this.frames = 0;
  }

  /** Record `data` arriving on connection `conn` (an object this class may annotate). */
  record(conn, data) {
    this.frames += 1;
    const found = markers(data);
    if (found.length === 0) return;
    const now = nowUs();
    if (!conn.seen) conn.seen = new Map();
    for (const [step, seq, sentUs] of found) {
      let seen = conn.seen.get(step);
      if (!seen) {
        seen = new Set();
        conn.seen.set(step, seen);
      }
      let stats = this.steps.get(step);
      if (!stats) {
        stats = new StepStats();
        this.steps.set(step, stats);
      }
      if (seen.has(seq)) {
        stats.duplicates += 1;
        continue;
      }
      seen.add(seq);
      stats.count += 1;
      stats.lastUs = now;
      stats.latency.add(now - sentUs);
    }
  }

  summary(step) {
    const stats = this.steps.get(step) || new StepStats();
    return { step, count: stats.count, duplicates: stats.duplicates, last_us: stats.lastUs, frames: this.frames };
  }

  /** The step's full record, after which the step is forgotten. */
  take(step, conns) {
    const record = { ...this.summary(step), latency: (this.steps.get(step) || new StepStats()).latency.toJSON() };
    this.steps.delete(step);
    for (const conn of conns) if (conn.seen) conn.seen.delete(step);
    return record;
  }
}

/**
 * Send `rate` messages a second for `duration` seconds on a fixed schedule, whatever the
 * receivers do: message i is due at start + i / rate and carries that time, so a sender that
 * falls behind shows up as latency, not as a lower rate. `send(i, text)` sends message i.
 */
function runSchedule({ step, rate, duration, size }, send) {
  return new Promise((resolve) => {
    const total = Math.max(1, Math.round(rate * duration));
    const intervalUs = 1e6 / rate;
    const startUs = nowUs();
    let sent = 0;
    let lagMaxUs = 0;
    const turn = () => {
      const now = nowUs();
      const due = Math.min(total, Math.floor((now - startUs) / intervalUs) + 1, sent + SCHEDULE_BATCH);
      for (; sent < due; sent += 1) {
        const at = Math.round(startUs + sent * intervalUs);
        send(sent, payload(step, sent, at, size));
        lagMaxUs = Math.max(lagMaxUs, nowUs() - at);
      }
      if (sent >= total) {
        resolve({ event: 'sent', step, sent, start_us: startUs, end_us: nowUs(), lag_max_ms: lagMaxUs / 1000 });
        return;
      }
      // Behind schedule after a full batch: carry on at once; otherwise sleep until the next
      // send is due (timers fire in whole milliseconds, so sends go out in small bursts).
      if (sent === due && due < total && nowUs() - startUs >= sent * intervalUs) setImmediate(turn);
      else setTimeout(turn, Math.min(Math.max(1, (startUs + sent * intervalUs - nowUs()) / 1000), 50));
    };
    turn();
  });
}

function emit(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

/**
 * Talk to the controller: the first JSON line on stdin is the configuration, given to
 * `start(config)`; every later line is a command for `handle(command)`. The process exits when
 * stdin closes, or after `config.max_seconds` (an hour unless told) whatever happens.
 */
function serve(start, handle, onClose) {
  const lines = readline.createInterface({ input: process.stdin });
  let started = false;
  const fail = (error) => emit({ event: 'error', detail: String(error && error.stack ? error.stack : error) });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    const message = JSON.parse(line);
    if (!started) {
      started = true;
      setTimeout(() => process.exit(2), (message.max_seconds || 3600) * 1000).unref();
      Promise.resolve(start(message)).catch(fail);
      return;
    }
    Promise.resolve(handle(message)).catch(fail);
  });
  lines.on('close', () => {
    onClose();
    setTimeout(() => process.exit(0), 200).unref();
  });
}

/** Run `open(i)` for i in [0, count) with at most `limit` in flight; each resolves or rejects. */
async function bounded(count, limit, open) {
  let next = 0;
  const results = new Array(count);
  const worker = async () => {
    while (next < count) {
      const i = next;
      next += 1;
      try {
        results[i] = { ok: true, value: await open(i) };
      } catch (error) {
        results[i] = { ok: false, error: String(error && error.message ? error.message : error) };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  return results;
}

/** Reject after `ms` unless `promise` settles first. */
function deadline(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

module.exports = { Histogram, Receipts, bounded, deadline, emit, markers, nowUs, payload, runSchedule, serve };
