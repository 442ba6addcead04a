// Herald browser client: one WebSocket to the gateway, with reconnects,
// heartbeats, subscriptions and per-channel de-duplication (PROTOCOL §3-4).
// Dependency-free ES module; no work happens at import time.
//
//   const h = new Herald();                        // same origin, session cookie
//   h.on('state', (state, info) => …);             // connecting|open|reconnecting|closed
//   h.on('welcome', (frame) => …);                 // {conn, user, node, heartbeat}
//   h.on('effect.complete', (data, frame) => …);   // any event frame, by its `event`
//   await h.subscribe('effect:' + id, (data, frame) => …);
//   h.close();

const BACKOFF_BASE = 500; // ms
const BACKOFF_CAP = 15000; // ms
const DEFAULT_HEARTBEAT = 25; // s

// Close codes (PROTOCOL §4).
const CLOSE_RESTART = 1012;
const CLOSE_REVOKED = 4001;

// compareIds orders event ids "{ms}-{seq}" numerically by both parts.
export function compareIds(a, b) {
  const [am, as] = String(a).split('-').map(Number);
  const [bm, bs] = String(b).split('-').map(Number);
  return am - bm || (as || 0) - (bs || 0);
}

export class Herald {
  // opts.url: WebSocket URL (default ws(s)://location.host/ws, cookie auth).
  // opts.ticket: async () => string; each connect fetches a one-time ticket
  //   and passes it as ?ticket=. An error with status 401 stops the client.
  // opts.WebSocket: constructor to use instead of the global one.
  constructor(opts = {}) {
    this.url = opts.url || defaultURL();
    this.ticket = opts.ticket || null;
    this.WS = opts.WebSocket || globalThis.WebSocket;
    this.state = 'idle';
    this.heartbeat = DEFAULT_HEARTBEAT;
    this.user = null;
    this.ws = null;
    this.attempt = 0; // failed connects since the last welcome
    this.ref = 0;
    this.listeners = new Map(); // name -> Set<fn>
    this.subs = new Map(); // channel -> {fns, ok, waiters}
    this.refs = new Map(); // ref -> channel, for subscribe replies
    this.lastIds = new Map(); // channel -> last delivered event id
    this.timers = {};
    this.stopped = false;
    // Connect once the caller has had a chance to add listeners.
    queueMicrotask(() => this.stopped || this.connect());
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  // subscribe resolves on the server's `subscribed` and rejects on its
  // `error`; the subscription is renewed after every reconnect.
  subscribe(channel, fn) {
    let sub = this.subs.get(channel);
    if (!sub) {
      sub = { fns: new Set(), ok: false, waiters: [] };
      this.subs.set(channel, sub);
      if (this.state === 'open') this.sendSubscribe(channel);
    }
    if (fn) sub.fns.add(fn);
    if (sub.ok) return Promise.resolve();
    return new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
  }

  unsubscribe(channel) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    this.subs.delete(channel);
    settle(sub, new Error(`unsubscribed from ${channel}`));
    this.send({ type: 'unsubscribe', ref: ++this.ref, channel });
  }

  close() {
    if (this.state === 'closed') return;
    this.stopped = true;
    this.teardown(1000, 'client closed');
    for (const sub of this.subs.values()) settle(sub, new Error('client closed'));
    this.setState('closed', { reason: 'client' });
  }

  // --- connection ---

  async connect() {
    if (this.state === 'idle') this.setState('connecting');
    if (!this.WS) return this.stop('no WebSocket implementation');
    let url = this.url;
    try {
      const params = [];
      if (this.ticket) params.push('ticket=' + encodeURIComponent(await this.ticket()));
      const since = this.user && this.lastIds.get('user:' + this.user);
      if (since) params.push('since=' + encodeURIComponent(since));
      if (params.length) url += (url.includes('?') ? '&' : '?') + params.join('&');
    } catch (err) {
      if (this.stopped) return;
      if (err && err.status === 401) return this.stop('unauthorized');
      this.emit('error', err);
      return this.retry({ error: String(err && err.message || err) });
    }
    if (this.stopped) return;
    const ws = new this.WS(url);
    this.ws = ws;
    let opened = false;
    this.watch(); // also bounds a handshake that hangs
    ws.onopen = () => { opened = true; };
    ws.onmessage = (m) => this.receive(m.data);
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.teardown();
      this.closed(e.code, e.reason, opened);
    };
    ws.onerror = () => {}; // a close always follows
  }

  closed(code, reason, opened) {
    if (this.stopped) return;
    const info = { code, reason, opened };
    if (code === CLOSE_REVOKED) return this.stop('unauthorized', info);
    if (code === CLOSE_RESTART) return this.retry(info, Math.random() * 1000);
    this.retry(info); // 1001, 1006, 4008, 4009 and the rest: back off and retry
  }

  retry(info, delay) {
    if (delay === undefined) {
      delay = Math.random() * Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** this.attempt);
    }
    this.attempt++;
    this.setState('reconnecting', { ...info, attempt: this.attempt, delay: Math.round(delay) });
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }

  stop(reason, info = {}) {
    this.stopped = true;
    this.teardown();
    for (const sub of this.subs.values()) settle(sub, new Error(reason));
    this.setState('closed', { ...info, reason });
  }

  // teardown drops the current socket and its timers; the socket's own
  // events are ignored from here on.
  teardown(code, reason) {
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    this.timers = {};
    const ws = this.ws;
    this.ws = null;
    this.refs.clear();
    for (const sub of this.subs.values()) sub.ok = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(code || 1000, reason || ''); } catch { /* already closing */ }
  }

  // watch restarts the dead-link timer: no frame for 2×heartbeat and the
  // socket is dropped and replaced.
  watch() {
    clearTimeout(this.timers.dead);
    this.timers.dead = setTimeout(() => {
      this.teardown(4000, 'heartbeat timeout');
      this.retry({ reason: 'heartbeat timeout' });
    }, this.heartbeat * 2000);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  sendSubscribe(channel) {
    const ref = ++this.ref;
    this.refs.set(ref, channel);
    const frame = { type: 'subscribe', ref, channel };
    const since = this.lastIds.get(channel);
    if (since) frame.since = since;
    this.send(frame);
  }

  // --- frames ---

  receive(text) {
    this.watch();
    let f;
    try { f = JSON.parse(text); } catch { return; }
    switch (f.type) {
      case 'welcome':
        this.attempt = 0;
        this.user = f.user;
        this.heartbeat = f.heartbeat > 0 ? f.heartbeat : DEFAULT_HEARTBEAT;
        this.watch();
        this.timers.ping = setInterval(() => this.send({ type: 'ping', ref: ++this.ref }), this.heartbeat * 1000);
        this.setState('open', { node: f.node });
        this.emit('welcome', f);
        for (const channel of this.subs.keys()) this.sendSubscribe(channel);
        break;
      case 'event':
        this.deliver(f);
        break;
      case 'subscribed': {
        const sub = this.subs.get(this.refs.get(f.ref));
        this.refs.delete(f.ref);
        if (sub) { sub.ok = true; settle(sub); }
        this.emit('subscribed', f);
        break;
      }
      case 'error': {
        const channel = this.refs.get(f.ref);
        this.refs.delete(f.ref);
        const sub = this.subs.get(channel);
        if (sub) {
          this.subs.delete(channel);
          settle(sub, Object.assign(new Error(f.message || f.code), { code: f.code, channel }));
        }
        this.emit('error', f);
        break;
      }
      // pong and unsubscribed only keep the link alive
    }
  }

  deliver(f) {
    if (f.id) {
      const last = this.lastIds.get(f.channel);
      if (last && compareIds(f.id, last) <= 0) return; // already delivered
      this.lastIds.set(f.channel, f.id);
    }
    const sub = this.subs.get(f.channel);
    if (sub) for (const fn of sub.fns) call(fn, f.data, f);
    this.emit(f.event, f.data, f);
  }

  setState(state, info = {}) {
    this.state = state;
    this.emit('state', state, info);
  }

  emit(name, ...args) {
    const set = this.listeners.get(name);
    if (set) for (const fn of [...set]) call(fn, ...args);
  }
}

function settle(sub, err) {
  const waiters = sub.waiters;
  sub.waiters = [];
  for (const w of waiters) err ? w.reject(err) : w.resolve();
}

function call(fn, ...args) {
  try { fn(...args); } catch (err) { console.error('herald listener failed:', err); }
}

function defaultURL() {
  if (typeof location === 'undefined') return 'ws://localhost/ws';
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
}
