// The fakes the client's tests play the server and the clock with: a
// WebSocket, an EventSource, timers and Date.now, and the test wrapper that
// installs them. Plain node:test and node:assert only (Node 18 and later):
// no mock timers, no hooks.
import { test as nodeTest } from 'node:test';
import assert from 'node:assert/strict';

import { Herald } from '../herald.js';

// FakeSocket records what the client sends; the test plays the server.
export class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.sentAt = []; // the (fake) time of each frame sent
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); this.sentAt.push(Date.now()); }
  close(code, reason) { this.closedWith = { code, reason }; this.readyState = 3; }
  // server side
  open() { this.readyState = 1; this.onopen?.({}); }
  frame(f) { this.onmessage?.({ data: JSON.stringify(f) }); }
  welcome(node = 'a', user = '42', heartbeat = 25, more = {}) {
    this.open();
    this.frame({ type: 'welcome', conn: 'c-' + FakeSocket.all.length, user, node, heartbeat, ...more });
  }
  subscribes() { return this.sent.filter((f) => f.type === 'subscribe'); }
  event(channel, id, event = 'effect.complete', data = { id }) {
    this.frame({ type: 'event', channel, id, event, data, ts: 0 });
  }
  drop(code = 1006, reason = '') { this.readyState = 3; this.onclose?.({ code, reason }); }
}
export const latest = () => FakeSocket.all.at(-1);

// FakeEventSource is an EventSource the test plays the server of: frames
// come as messages, heartbeats as 'ping' events.
export class FakeEventSource {
  static all = [];
  constructor(url, init = {}) {
    this.url = url;
    this.withCredentials = !!init.withCredentials;
    this.readyState = 0;
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  addEventListener(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(fn);
  }
  close() { this.closed = true; this.readyState = 2; }
  // the URL's query parameters of name, in order
  params(name) { return new URL(this.url).searchParams.getAll(name); }
  // server side
  open() { this.readyState = 1; this.onopen?.({}); }
  frame(f) { if (!this.closed) this.onmessage?.({ data: JSON.stringify(f) }); }
  ping() { if (!this.closed) for (const fn of this.listeners.get('ping') || []) fn({ data: '' }); }
  welcome(node = 'a', user = '42', heartbeat = 25, more = {}) {
    this.open();
    this.frame({ type: 'welcome', conn: 'c-' + FakeEventSource.all.length, user, node, heartbeat, ...more });
  }
  event(channel, id, event = 'effect.complete', data = { id }) {
    this.frame({ type: 'event', channel, id, event, data, ts: 0 });
  }
  // a network error (EventSource would retry: CONNECTING) or a refusal (CLOSED)
  fail(readyState = 0) { this.readyState = readyState; this.onerror?.({}); }
}
export const latestStream = () => FakeEventSource.all.at(-1);

// FakeClock stands in for setTimeout, setInterval and Date.now while a test
// runs; tick(ms) moves time and runs what falls due, in order.
export class FakeClock {
  now = 1_700_000_000_000;
  seq = 0;
  timers = new Map(); // id -> {at, fn, every}
  saved = null;

  install() {
    const g = globalThis;
    this.saved = [g.setTimeout, g.clearTimeout, g.setInterval, g.clearInterval, Date.now];
    g.setTimeout = (fn, ms = 0) => this.add(fn, ms, 0);
    g.setInterval = (fn, ms = 0) => this.add(fn, ms, Math.max(1, ms));
    g.clearTimeout = g.clearInterval = (id) => { this.timers.delete(id); };
    Date.now = () => this.now;
  }

  uninstall() {
    const g = globalThis;
    [g.setTimeout, g.clearTimeout, g.setInterval, g.clearInterval, Date.now] = this.saved;
  }

  add(fn, ms, every) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.now + Math.max(0, Number(ms) || 0), fn, every });
    return id;
  }

  tick(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      }
      if (!next) break;
      const [id, t] = next;
      this.now = t.at;
      if (t.every) t.at += t.every;
      else this.timers.delete(id);
      t.fn();
    }
    this.now = end;
  }
}

// The running test's clock and clients (live bindings for the importers).
export let clock;
export let clients;

// test runs fn with a fresh fake clock and closes the clients it made, which
// must leave no timer and no unhandled rejection behind.
export function test(name, fn) {
  nodeTest(name, async () => {
    FakeSocket.all = [];
    FakeEventSource.all = [];
    clients = [];
    clock = new FakeClock();
    clock.install();
    const rejections = [];
    const onRejection = (err) => rejections.push(err);
    process.on('unhandledRejection', onRejection);
    try {
      await fn();
      clients.forEach((h) => h.close());
      assert.equal(clock.timers.size, 0, 'timers left after close()');
      await flush();
      assert.deepEqual(rejections, [], 'unhandled rejections');
    } finally {
      process.off('unhandledRejection', onRejection);
      try {
        clients.forEach((h) => h.close());
      } finally {
        clock.uninstall();
      }
    }
  });
}

// flush lets queued microtasks (the deferred connect, ticket promises) run:
// setImmediate (not faked) comes after all of them.
export const flush = () => new Promise((resolve) => setImmediate(resolve));


// startClient starts a Herald with opts, closed when the test ends, and
// records the states it reports and the events it delivers.
export async function startClient(opts) {
  const h = new Herald(opts);
  clients.push(h);
  const states = [];
  h.on('state', (s, info) => states.push([s, info]));
  const got = [];
  h.on('event', (f) => got.push(f.channel + ' ' + f.id));
  await flush();
  return { h, states, got };
}
