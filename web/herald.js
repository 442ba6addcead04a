// Herald browser client: one WebSocket to the gateway, with reconnects,
// resume, heartbeats, subscriptions, paced sends and per-channel
// de-duplication (PROTOCOL §3-5); where WebSockets keep failing to open (a
// proxy that blocks them), the same over Server-Sent Events (§3a). A
// dependency-free ES module (types: herald.d.ts); no work
// happens at import time. One file, nothing to build: copy it alone, or
// install the package. The pure parts (no I/O, no timers) are at the end.
//
//   const h = new Herald();                        // same origin, session cookie
//   const h = new Herald({ url: 'wss://rt.example.com/ws',   // another origin:
//     ticket: async () => (await (await fetch('/herald-ticket')).json()).ticket });
//   h.on('state', (state, info) => …);             // connecting|open|reconnecting|closed
//   h.on('welcome', (frame) => …);                 // {conn, user, node, heartbeat}
//   h.on('effect.complete', (data, frame) => …);   // event frames, by their `event`
//   await h.subscribe('effect:' + id, (data, frame) => …);
//   h.on('resync', (channel) => …);                // history lost: refetch that state
//   h.close();

const DEFAULT_HEARTBEAT = 25; // s, until the welcome frame says otherwise
const CONNECT_TIMEOUT = 10000; // ms for a ticket, and from opening a socket to its welcome
const MISSED_PINGS = 2; // unanswered pings (sent every heartbeat/2) that mean a dead link
const STABLE_AFTER = 5000; // ms a connection must last before the backoff starts over
// 'auto': WebSockets that fail before their welcome, in a row and before any
// ever worked, that switch the client to SSE (one that never even opens
// within connectTimeout switches it at once).
const WS_FAILURES_BEFORE_SSE = 3;
// SSE: ms between the start of a stream and a new one for changed channels,
// so that a burst of subscribes makes one new stream.
const RESTREAM_GAP = 1000;

// The client's own notifications. A server event with one of these names
// reaches the app through 'event' listeners and subscription callbacks only.
const RESERVED = new Set(['state', 'welcome', 'subscribed', 'resync', 'error', 'event']);

// Errors worth asking again for (the rest drop the subscription).
const TRANSIENT = new Set(['unavailable', 'rate_limited']);

export class Herald {
  // opts.url: WebSocket URL (default ws(s)://location.host/ws, cookie auth);
  //   one the WebSocket refuses as malformed stops the client ('closed',
  //   reason 'invalid url').
  // opts.ticket: () => string | Promise<string>; each connect fetches a
  //   one-time ticket and passes it as ?ticket=. An error with status 401
  //   stops the client ('closed', reason 'unauthorized').
  // opts.backoff: {base, cap, restart} in ms (see BACKOFF).
  // opts.connectTimeout: ms for a ticket, and from opening a socket to its
  //   welcome.
  // opts.sendRate, opts.sendBurst: pace of the frames sent (per second, and
  //   at once); keep them below the server's HERALD_CLIENT_MSG_RATE/BURST.
  // opts.WebSocket: constructor to use instead of the global one.
  // opts.transport: 'auto' (default: WebSocket, falling back to SSE by
  //   itself when sockets keep failing to open), 'websocket' or 'sse'.
  // opts.sseUrl: the gateway's /sse URL (default: opts.url's, http(s) for
  //   ws(s) and /sse for /ws).
  // opts.EventSource: constructor to use instead of the global one.
  // opts.random: () => [0,1), for tests; Math.random by default.
  constructor(opts = {}) {
    this.url = opts.url || defaultURL();
    this.ticket = opts.ticket || null;
    this.WS = opts.WebSocket || globalThis.WebSocket;
    this.ES = 'EventSource' in opts ? opts.EventSource : globalThis.EventSource;
    this.sseUrl = opts.sseUrl || sseURLFrom(this.url);
    this.transport = ['websocket', 'sse'].includes(opts.transport) ? opts.transport : 'auto';
    // The transport of the current (or next) connection.
    this.mode = this.transport === 'sse' || (this.transport === 'auto' && !this.WS && this.ES) ? 'sse' : 'websocket';
    this.wsFailures = 0; // 'auto': sockets in a row that failed before their welcome
    this.wsWorked = false; // a socket got its welcome once: no fallback any more
    this.backoff = { ...BACKOFF, ...opts.backoff };
    this.connectTimeout = opts.connectTimeout ?? CONNECT_TIMEOUT;
    this.random = opts.random || Math.random;
    this.sendRate = opts.sendRate ?? SEND_RATE;
    this.sendBurst = opts.sendBurst ?? SEND_BURST;

    this.state = 'idle';
    this.user = null; // from the welcome frame
    this.node = null; // replica serving the socket
    this.conn = null; // connection id
    this.heartbeat = DEFAULT_HEARTBEAT;

    this.ws = null; // the connection: a WebSocket, or an EventSource (mode 'sse')
    this.linkOpened = false; // the current connection opened
    this.welcomed = false; // the current connection got its welcome
    this.streamed = null; // mode 'sse': the channels in the current stream's URL
    this.restreaming = false; // mode 'sse': a new stream for changed channels, while 'open'
    this.gen = 0; // connect generation: a stale connect gives up
    this.attempt = 0; // retries since the last stable connection
    this.openedAt = 0;
    this.resumeFrom = undefined; // since= of the current socket
    this.ref = 0;
    this.outbox = []; // frames waiting for the bucket (of the current socket)
    this.bucket = null;
    this.listeners = new Map(); // name -> Set<fn>
    this.subs = new Map(); // channel -> {channel, fns, ok, recovered, waiters}
    this.refs = new Map(); // ref -> {frame, sub}: a request awaiting its answer
    this.cursors = new Cursors();
    this.beat = new Heartbeat(MISSED_PINGS);
    this.timers = {};
    this.stopped = false;
    this.onOnline = () => {
      if (this.state === 'reconnecting' && this.timers.retry) this.connectNow();
    };
    globalThis.addEventListener?.('online', this.onOnline);
    // Connect once the caller has had a chance to add listeners.
    queueMicrotask(() => this.stopped || this.connect());
  }

  // on adds a listener and returns a function that removes it.
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name)?.delete(fn);
  }

  // subscribe resolves with {channel, recovered} on the server's
  // `subscribed` and rejects on its error (forbidden, not_found, …). The
  // subscription is renewed after every reconnect, resuming after the last
  // event delivered; opts.since resumes after an id the app kept.
  subscribe(channel, fn, { since } = {}) {
    if (this.stopped) return Promise.reject(new Error('client closed'));
    if (since) this.cursors.set(channel, since);
    let sub = this.subs.get(channel);
    if (!sub) {
      sub = { channel, fns: new Set(), ok: false, recovered: undefined, waiters: [] };
      this.subs.set(channel, sub);
      if (this.state === 'open') this.sendSubscribe(sub);
    }
    if (fn) sub.fns.add(fn);
    if (sub.ok) return Promise.resolve({ channel, recovered: sub.recovered });
    const p = new Promise((resolve, reject) => sub.waiters.push({ resolve, reject }));
    // A subscribe the app does not await must not end as an unhandled
    // rejection; refusals also reach 'error' listeners.
    p.catch(() => {});
    return p;
  }

  // unsubscribe removes fn from channel, or every callback without fn; the
  // server subscription ends with the last one.
  unsubscribe(channel, fn) {
    const sub = this.subs.get(channel);
    if (!sub) return;
    if (fn) {
      sub.fns.delete(fn);
      if (sub.fns.size) return;
    }
    this.subs.delete(channel);
    this.cursors.forget(channel);
    settle(sub, new Error(`unsubscribed from ${channel}`));
    // A stream keeps the channel until the next one; its events are dropped.
    if (this.mode === 'sse') return;
    // A subscribe still queued never reached the server: drop it instead.
    const queued = this.outbox.findIndex((f) => f.type === 'subscribe' && f.channel === channel);
    if (queued >= 0) this.refs.delete(this.outbox.splice(queued, 1)[0].ref);
    else this.request({ type: 'unsubscribe', ref: ++this.ref, channel });
  }

  // reconnect drops the socket and connects again shortly (jittered), to
  // whichever replica the load balancer picks; nothing is missed.
  reconnect() {
    if (this.stopped) return;
    this.teardown(CLOSE_NORMAL, 'client reconnect');
    this.retry({ reason: 'requested' }, restartDelay(this.backoff.restart, this.random));
  }

  // close ends the client for good.
  close() {
    if (this.stopped) return;
    this.stop('client');
  }

  // --- connection ---

  async connect() {
    delete this.timers.retry;
    if (this.stopped) return;
    if (this.state === 'idle') this.setState('connecting');
    if (this.mode === 'sse' && !this.ES) return this.stop('no EventSource implementation');
    if (this.mode === 'sse' && !this.sseUrl) return this.stop('invalid url', { error: 'no sseUrl' });
    if (this.mode === 'websocket' && !this.WS) return this.stop('no WebSocket implementation');
    const gen = ++this.gen;
    let ticket;
    if (this.ticket) {
      try {
        ticket = await this.fetchTicket();
      } catch (err) {
        if (this.stopped || gen !== this.gen) return;
        const info = { error: String((err && err.message) || err) };
        if (err && err.status === 401) return this.stop('unauthorized', info);
        this.emit('error', err);
        return this.retry(info);
      }
      if (this.stopped || gen !== this.gen) return;
    }
    this.resumeFrom = this.user ? this.cursors.since(userChannel(this.user)) : undefined;
    if (this.mode === 'sse') return this.openStream(ticket);
    const ws = this.open(() => new this.WS(connectURL(this.url, { ticket, since: this.resumeFrom })));
    if (!ws) return;
    this.bucket = new TokenBucket(this.sendRate, this.sendBurst, Date.now()); // per socket, like the server's
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      const { linkOpened, welcomed } = this;
      this.teardown();
      if (!welcomed) this.wsFailed(!linkOpened, false);
      this.closed(e.code, e.reason, linkOpened);
    };
    ws.onerror = () => {}; // a close always follows
  }

  // openStream connects over Server-Sent Events (PROTOCOL §3a): the
  // channels go in the URL, each resuming from its cursor, and their
  // replies come with ref = position. A stream cannot send: a change of
  // channels is a new stream (restream). The client reconnects by itself
  // (fresh ticket, current channels, its own backoff) rather than let
  // EventSource retry the old URL.
  openStream(ticket) {
    const subs = [...this.subs.values()];
    const channels = subs.map((sub) => sub.channel);
    const cursor = encodeCursor([this.resumeFrom, ...channels.map((ch) => this.cursors.since(ch))]);
    const url = streamURL(this.sseUrl, { ticket, channels, cursor });
    const es = this.open(() => new this.ES(url, { withCredentials: !this.ticket }));
    if (!es) return;
    this.streamed = new Set(channels);
    subs.forEach((sub, i) => {
      const frame = { type: 'subscribe', ref: i + 1, channel: sub.channel };
      const since = this.cursors.since(sub.channel);
      if (since) frame.since = since;
      this.refs.set(frame.ref, { frame, sub });
    });
    es.addEventListener('ping', () => { if (this.ws === es) this.beat.seen(); });
    es.onerror = () => {
      if (this.ws !== es) return;
      const opened = this.linkOpened;
      this.teardown();
      this.closed(1006, '', opened);
    };
  }

  // open makes a connection with make (a WebSocket or an EventSource) and
  // bounds its welcome; null when the constructor threw.
  open(make) {
    let link;
    try {
      link = make();
    } catch (err) {
      // A malformed URL (SyntaxError) stays malformed; anything else may pass.
      const info = { error: String((err && err.message) || err) };
      if (err && err.name === 'SyntaxError') this.stop('invalid url', info);
      else {
        this.emit('error', err);
        this.retry(info);
      }
      return null;
    }
    this.ws = link;
    this.linkOpened = false;
    // Bounds a handshake or welcome that never comes.
    this.timers.connect = setTimeout(() => this.dead(link, 'connect timeout'), this.connectTimeout);
    link.onopen = () => { if (this.ws === link) this.linkOpened = true; };
    // A message holds one frame or several separated by "\n" (frames
    // never contain a line break).
    link.onmessage = (m) => {
      if (this.ws !== link) return;
      if (typeof m.data === 'string' && m.data.includes('\n')) {
        for (const part of m.data.split('\n')) if (this.ws === link) this.receive(part);
      } else this.receive(m.data);
    };
    return link;
  }

  // wsFailed counts a socket that failed before its welcome. With transport
  // 'auto', before any socket ever worked, enough of them in a row (or one
  // that never opened within connectTimeout) switch the client to SSE for
  // good: a proxy in the way refuses or holds every upgrade.
  wsFailed(neverOpened, timedOut) {
    if (this.transport !== 'auto' || this.mode !== 'websocket' || this.wsWorked) return;
    if (!this.ES || !this.sseUrl) return;
    this.wsFailures++;
    if ((neverOpened && timedOut) || this.wsFailures >= WS_FAILURES_BEFORE_SSE) {
      this.mode = 'sse';
      this.attempt = 0;
    }
  }

  // restream replaces the stream by one with the channels the app has now,
  // each resuming from its cursor, without leaving state 'open'.
  restream() {
    delete this.timers.restream;
    if (this.stopped || this.mode !== 'sse' || !this.welcomed) return;
    this.teardown(CLOSE_NORMAL, 'channels changed');
    this.restreaming = true;
    this.connect();
  }

  // scheduleRestream asks for a new stream once the channels changed: at
  // once, or RESTREAM_GAP after the current one began.
  scheduleRestream() {
    if (this.mode !== 'sse' || !this.welcomed || this.timers.restream) return;
    const wait = Math.max(0, this.openedAt + RESTREAM_GAP - Date.now());
    this.timers.restream = setTimeout(() => this.restream(), wait);
  }

  // fetchTicket calls opts.ticket, giving up after connectTimeout.
  fetchTicket() {
    let timer;
    return new Promise((resolve, reject) => {
      timer = this.timers.connect = setTimeout(() => reject(new Error('ticket timeout')), this.connectTimeout);
      Promise.resolve().then(() => this.ticket()).then(resolve, reject);
    }).finally(() => clearTimeout(timer));
  }

  connectNow() {
    clearTimeout(this.timers.retry);
    this.connect();
  }

  closed(code, reason, opened) {
    if (this.stopped) return;
    // opened: the handshake succeeded. A refused one (401, 403, 429, 503)
    // shows as 1006 without it: the page cannot see the HTTP status.
    const info = { code, reason, opened };
    if (code === CLOSE_RATE_LIMITED) {
      // The server allows less than we sent (a lower HERALD_CLIENT_MSG_RATE):
      // halve the pace for good.
      this.sendRate = Math.max(1, this.sendRate / 2);
      this.sendBurst = Math.max(1, Math.floor(this.sendBurst / 2));
    }
    switch (closeAction(code)) {
      case 'stop': return this.stop('unauthorized', info);
      case 'restart': return this.retry(info, restartDelay(this.backoff.restart, this.random));
      default: return this.retry(info);
    }
  }

  retry(info, delay) {
    this.gen++; // a connect still waiting for its ticket gives up
    this.restreaming = false;
    if (delay === undefined) delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt++;
    this.setState('reconnecting', { ...info, attempt: this.attempt, delay: Math.round(delay), transport: this.mode });
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }

  // dead replaces a connection that stopped answering.
  dead(ws, reason) {
    if (this.ws !== ws || this.stopped) return;
    const { linkOpened, welcomed } = this;
    this.teardown(4000, reason);
    if (!welcomed) this.wsFailed(!linkOpened, true);
    this.retry({ reason });
  }

  stop(reason, info = {}) {
    this.stopped = true;
    this.restreaming = false;
    this.gen++;
    this.teardown(CLOSE_NORMAL, reason === 'client' ? 'client closed' : reason);
    globalThis.removeEventListener?.('online', this.onOnline);
    for (const sub of this.subs.values()) settle(sub, new Error(reason === 'client' ? 'client closed' : reason));
    this.setState('closed', { ...info, reason });
  }

  // teardown drops the current socket, its queued frames and every timer;
  // the socket's own events are ignored from here on. A socket that lasted
  // makes the backoff start over.
  teardown(code, reason) {
    for (const t of Object.values(this.timers)) { clearTimeout(t); clearInterval(t); }
    this.timers = {};
    if (this.openedAt && Date.now() - this.openedAt >= STABLE_AFTER) this.attempt = 0;
    this.openedAt = 0;
    const ws = this.ws;
    this.ws = null;
    this.welcomed = false;
    this.streamed = null;
    this.outbox = [];
    this.refs.clear();
    for (const sub of this.subs.values()) sub.ok = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    // An EventSource takes no arguments, and stops retrying.
    try { ws.close(code || CLOSE_NORMAL, reason || ''); } catch { /* already closing */ }
  }

  // send queues a frame for the open socket. Frames leave in order, paced by
  // the bucket, so the server never has to refuse one for rate.
  send(frame) {
    if (!this.ws || this.mode !== 'websocket' || this.ws.readyState !== 1) return;
    this.outbox.push(frame);
    this.flush();
  }

  flush() {
    while (this.outbox.length && !this.timers.flush && this.ws?.readyState === 1) {
      const wait = this.bucket.take(Date.now());
      if (wait) {
        this.timers.flush = setTimeout(() => { delete this.timers.flush; this.flush(); }, wait);
        return;
      }
      this.ws.send(JSON.stringify(this.outbox.shift()));
    }
  }

  // request sends a frame whose answer matters (subscribe, unsubscribe).
  request(frame, sub) {
    this.refs.set(frame.ref, { frame, sub });
    this.send(frame);
  }

  sendSubscribe(sub) {
    if (this.mode === 'sse') return this.scheduleRestream();
    const frame = { type: 'subscribe', ref: ++this.ref, channel: sub.channel };
    const since = this.cursors.since(sub.channel);
    if (since) frame.since = since;
    this.request(frame, sub);
  }

  // askAgain repeats a request that was refused for now, unless it is moot.
  askAgain({ frame, sub }) {
    if (sub) {
      if (this.subs.get(sub.channel) === sub && !sub.ok) this.sendSubscribe(sub);
    } else if (!this.subs.has(frame.channel)) {
      this.request({ ...frame, ref: ++this.ref });
    }
  }

  // --- frames ---

  // receive handles one server frame. A frame it cannot use (not JSON, not
  // an object) is reported to 'error' listeners and skipped: the link
  // stays, nothing reconnects over it.
  receive(text) {
    this.beat.seen();
    let f;
    try { f = JSON.parse(text); } catch { f = null; }
    if (!f || typeof f !== 'object') {
      this.emit('error', { type: 'error', code: 'bad_frame', message: 'unusable frame from the server', frame: String(text).slice(0, 200) });
      return;
    }
    switch (f.type) {
      case 'welcome': return this.welcome(f);
      case 'event': return this.deliver(f);
      case 'subscribed': return this.subscribed(f);
      case 'error': return this.failed(f);
      case 'unsubscribed': return this.unsubscribed(f);
      // Events of the channel were lost on the server's side: the app
      // refetches what it derives from the channel.
      case 'gap': return this.emit('resync', f.channel, f);
      // SSE: the server ends the stream, as it would close a socket.
      case 'close':
        if (this.mode !== 'sse') return;
        this.teardown();
        return this.closed(f.code, f.reason, true);
      default: // a pong only proves the link alive
    }
  }

  // unsubscribed answers an unsubscribe (with its ref) or tells that the
  // server ended a subscription by itself (with a reason: an effect that
  // belongs to another user). The latter drops the subscription like a
  // refusal: its promise rejects and 'error' listeners hear the reason.
  unsubscribed(f) {
    if (f.ref !== undefined) {
      this.refs.delete(f.ref);
      return;
    }
    const sub = this.subs.get(f.channel);
    if (sub) {
      this.subs.delete(sub.channel);
      this.cursors.forget(sub.channel);
      settle(sub, Object.assign(new Error(`unsubscribed from ${f.channel}: ${f.reason}`), { code: f.reason, channel: f.channel }));
    }
    this.emit('error', { type: 'error', code: f.reason || 'unsubscribed', channel: f.channel, message: 'the server ended this subscription' });
  }

  welcome(f) {
    clearTimeout(this.timers.connect);
    delete this.timers.connect;
    if (this.user && this.user !== f.user) this.cursors.forget(userChannel(this.user));
    this.user = f.user;
    this.node = f.node || null;
    this.conn = f.conn || null;
    this.heartbeat = f.heartbeat > 0 ? f.heartbeat : DEFAULT_HEARTBEAT;
    this.openedAt = Date.now();
    // Without ?since= the welcome names the personal channel's newest id.
    this.cursors.seed(userChannel(this.user), f.last);
    this.beat = new Heartbeat(MISSED_PINGS);
    this.welcomed = true;
    const ws = this.ws;
    const sse = this.mode === 'sse';
    if (!sse) {
      this.wsWorked = true;
      this.wsFailures = 0;
    }
    // A socket is pinged every heartbeat/2; a stream gets the server's
    // heartbeat every heartbeat.
    this.timers.ping = setInterval(() => {
      if (this.beat.tick() === 'dead') this.dead(ws, 'heartbeat timeout');
      // Queued frames get answers too: a ping only when nothing waits.
      else if (!sse && !this.outbox.length) this.send({ type: 'ping', ref: ++this.ref });
    }, this.heartbeat * (sse ? 1000 : 500));
    const resumed = this.resumeFrom !== undefined;
    // A new stream for changed channels is no news to the app's state.
    if (!this.restreaming) this.setState('open', { node: this.node, user: this.user, conn: this.conn, resumed, transport: this.mode });
    this.restreaming = false;
    this.emit('welcome', f);
    // A welcome may say whether the personal channel's history covered the gap.
    if (resumed && f.recovered === false) this.emit('resync', userChannel(this.user), f);
    if (!sse) for (const sub of this.subs.values()) this.sendSubscribe(sub);
    // Subscribed while the stream was being made: the next one has them.
    else if ([...this.subs.keys()].some((ch) => !this.streamed.has(ch))) this.scheduleRestream();
  }

  // current is the subscription a reply is for, if the app still has it: a
  // late reply to an abandoned subscribe of the same channel is not.
  current(req) {
    const sub = req && req.sub;
    return sub && this.subs.get(sub.channel) === sub ? sub : null;
  }

  subscribed(f) {
    const req = this.refs.get(f.ref);
    this.refs.delete(f.ref);
    const sub = this.current(req);
    if (sub) {
      this.cursors.seed(sub.channel, f.last); // resume from here if no event comes before a reconnect
      sub.ok = true;
      sub.recovered = f.recovered;
      settle(sub, null, { channel: sub.channel, recovered: f.recovered });
      if (req.frame.since && f.recovered === false) this.emit('resync', sub.channel, f);
    }
    this.emit('subscribed', f);
  }

  failed(f) {
    const req = this.refs.get(f.ref);
    this.refs.delete(f.ref);
    // The server's bucket is empty: ours starts again from empty too.
    if (f.code === 'rate_limited') this.bucket?.empty(Date.now());
    const sub = this.current(req);
    if (req && TRANSIENT.has(f.code)) {
      // Ask again later on this socket (through the queue); a subscription
      // stays, its promise pending until a real answer.
      const key = 'again:' + f.ref;
      const ws = this.ws;
      this.timers[key] = setTimeout(() => {
        delete this.timers[key];
        if (this.ws === ws) this.askAgain(req);
      }, backoffDelay(1, this.backoff, this.random) + 250);
    } else if (sub) {
      this.subs.delete(sub.channel);
      this.cursors.forget(sub.channel);
      settle(sub, Object.assign(new Error(f.message || f.code), { code: f.code, channel: sub.channel }));
    }
    this.emit('error', f);
  }

  // deliver hands an event to the app once: events of channels the app left
  // and events at or below the channel's cursor (a replay overlapping what
  // arrived live) are dropped.
  deliver(f) {
    const ch = f.channel;
    const sub = this.subs.get(ch);
    if (!sub && ch !== userChannel(this.user)) return;
    if (!this.cursors.accept(ch, f.id)) return;
    if (sub) for (const fn of sub.fns) call(fn, f.data, f);
    this.emit('event', f);
    if (!RESERVED.has(f.event)) this.emit(f.event, f.data, f);
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

function userChannel(user) {
  return 'user:' + user;
}

function settle(sub, err, value) {
  const waiters = sub.waiters;
  sub.waiters = [];
  for (const w of waiters) err ? w.reject(err) : w.resolve(value);
}

function call(fn, ...args) {
  try { fn(...args); } catch (err) { console.error('herald listener failed:', err); }
}

// --- the pure parts: backoff, close-code policy, event-id order, per-channel
// resume bookkeeping, heartbeats, send pacing, URLs. No I/O, no timers, no
// globals; unit-tested under Node (web/test/core.test.mjs). ---

// Close codes the client acts on (PROTOCOL §4).
export const CLOSE_NORMAL = 1000;
export const CLOSE_RESTART = 1012; // server restart: reconnect to any replica, with jitter
export const CLOSE_REVOKED = 4001; // session expired or revoked: stop
export const CLOSE_RATE_LIMITED = 4008; // the client sent too fast: it slows down

// Defaults of the reconnect policy, in milliseconds.
export const BACKOFF = Object.freeze({
  base: 500, // ceiling of the first retry's delay
  cap: 15000, // no ceiling grows past this
  restart: 1000, // after 1012, reconnect within this (uniformly spread)
});

// backoffDelay is the delay before retry number `attempt` (0 for the first
// retry after a failure): "full jitter", uniform in [0, min(cap, base·2^attempt)),
// so clients that failed together do not come back together. `random`
// returns a number in [0, 1), like Math.random.
export function backoffDelay(attempt, { base = BACKOFF.base, cap = BACKOFF.cap } = {}, random = Math.random) {
  const n = Math.max(0, Math.floor(Number(attempt) || 0));
  const ceiling = Math.min(cap, base * 2 ** Math.min(n, 52)); // 2^52·base is past any cap
  return random() * ceiling;
}

// restartDelay is the delay after a 1012 close: prompt, but spread over
// `spread` ms, so a draining replica's clients do not land on the others at
// the same instant.
export function restartDelay(spread = BACKOFF.restart, random = Math.random) {
  return random() * spread;
}

// closeAction says what a client does when its socket closes with `code`:
// 'stop' (the session is gone: report, never retry), 'restart' (prompt
// jittered reconnect) or 'backoff' (1001, 1006, 1008, 4008, 4009, …).
export function closeAction(code) {
  if (code === CLOSE_REVOKED) return 'stop';
  if (code === CLOSE_RESTART) return 'restart';
  return 'backoff';
}

// parseId splits an event id "{ms}-{seq}" into two numbers; null when the
// id does not have that form.
export function parseId(id) {
  const m = /^(\d+)-(\d+)$/.exec(String(id));
  return m ? [Number(m[1]), Number(m[2])] : null;
}

// compareIds orders event ids "{ms}-{seq}" numerically by both parts
// (negative: a before b). Ids of another form compare as strings, so the
// order is total either way.
export function compareIds(a, b) {
  const pa = parseId(a);
  const pb = parseId(b);
  if (!pa || !pb) return String(a) < String(b) ? -1 : String(a) > String(b) ? 1 : 0;
  return pa[0] - pb[0] || pa[1] - pb[1];
}

// Cursors keeps, per channel, the id of the newest event handed to the app:
// the `since` of the next resume, and the filter that hands each event to the
// app at most once (ids increase per channel, so anything at or below the
// cursor was delivered already, or is older than what was).
//
// Before the first event of a channel, the server's `last` (welcome,
// subscribed) seeds the resume point, so a reconnect before that first event
// still resumes. A seed is not a filter: an event at or below it that arrives
// afterwards (in flight when the server read its `last`) is still new.
export class Cursors {
  constructor() {
    this.last = new Map(); // channel -> id of the newest event delivered
    this.seeds = new Map(); // channel -> the server's newest id when the channel had no cursor
  }

  // accept records id on channel and reports whether the event is new.
  // Events without an id cannot be de-duplicated and are always new.
  accept(channel, id) {
    if (id === undefined || id === null || id === '') return true;
    const last = this.last.get(channel);
    if (last !== undefined && compareIds(id, last) <= 0) return false;
    this.last.set(channel, String(id));
    return true;
  }

  // since is the id to resume channel from, or undefined (nothing known):
  // the newer of the last event delivered and the seed.
  since(channel) {
    const last = this.last.get(channel);
    const seed = this.seeds.get(channel);
    if (last === undefined || seed === undefined) return last ?? seed;
    return compareIds(seed, last) > 0 ? seed : last;
  }

  // set starts channel from a known id (an app that stored it), unless a
  // newer one was seen already.
  set(channel, id) {
    if (!id) return;
    const last = this.last.get(channel);
    if (last === undefined || compareIds(id, last) > 0) this.last.set(channel, String(id));
  }

  // seed gives channel a resume point from the server's `last`, only when it
  // has none yet: a cursor never moves back and is never overwritten.
  seed(channel, id) {
    if (id && this.since(channel) === undefined) this.seeds.set(channel, String(id));
  }

  // forget drops channel: a later subscribe starts fresh.
  forget(channel) {
    this.last.delete(channel);
    this.seeds.delete(channel);
  }
}

// Heartbeat finds a dead link: the client pings every interval and calls
// seen() on every frame; tick() says 'dead' once `missed` pings in a row got
// no frame back. Counting unanswered pings, not elapsed time, keeps a tab
// whose timers the browser throttles (background tabs) from being judged dead.
export class Heartbeat {
  constructor(missed = 2) {
    this.missed = missed;
    this.unanswered = 0;
  }

  seen() {
    this.unanswered = 0;
  }

  // tick is called once per interval: 'ping' (send one now) or 'dead'.
  tick() {
    if (this.unanswered >= this.missed) return 'dead';
    this.unanswered++;
    return 'ping';
  }
}

// Default pace of the client's frames: below the server's defaults
// (HERALD_CLIENT_MSG_RATE 10/s, HERALD_CLIENT_MSG_BURST 20), which answers
// frames over its rate with rate_limited and closes with 4008 after ten.
export const SEND_RATE = 8; // frames per second
export const SEND_BURST = 15;

// TokenBucket paces frames: up to `burst` at once, then `rate` a second. The
// time (ms) is passed in.
export class TokenBucket {
  constructor(rate = SEND_RATE, burst = SEND_BURST, now = 0) {
    this.rate = rate > 0 ? rate : SEND_RATE;
    this.burst = burst >= 1 ? Math.floor(burst) : SEND_BURST;
    this.tokens = this.burst;
    this.at = now;
  }

  // take spends a token and returns 0, or returns the ms until one is there
  // (spending nothing).
  take(now) {
    this.refill(now);
    if (this.tokens >= 1 - 1e-9) {
      this.tokens = Math.max(0, this.tokens - 1);
      return 0;
    }
    return Math.max(1, Math.ceil(((1 - this.tokens) * 1000) / this.rate));
  }

  // empty spends every token, as the server's bucket is when it refuses a
  // frame for rate.
  empty(now) {
    this.refill(now);
    this.tokens = 0;
  }

  refill(now) {
    const elapsed = Math.max(0, now - this.at); // a clock set back adds nothing
    this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.rate) / 1000);
    this.at = now;
  }
}

// connectURL adds the one-time ticket and the personal channel's resume
// point to the WebSocket URL. Nothing long-lived goes into a URL.
export function connectURL(base, { ticket, since } = {}) {
  const params = [];
  if (ticket) params.push('ticket=' + encodeURIComponent(ticket));
  if (since) params.push('since=' + encodeURIComponent(since));
  if (!params.length) return base;
  return base + (base.includes('?') ? '&' : '?') + params.join('&');
}

// streamURL is the SSE URL of a stream (PROTOCOL §3a): the one-time
// ticket, the channels (the personal one is implied) and the resume cursor.
export function streamURL(base, { ticket, channels = [], cursor } = {}) {
  const params = [];
  if (ticket) params.push('ticket=' + encodeURIComponent(ticket));
  for (const ch of channels) params.push('channel=' + encodeURIComponent(ch));
  if (cursor) params.push('lastEventId=' + encodeURIComponent(cursor));
  if (!params.length) return base;
  return base + (base.includes('?') ? '&' : '?') + params.join('&');
}

const MAX_ID_PART = (1n << 64n) - 1n;

// encodeCursor writes the resume cursor of a stream (PROTOCOL §3a) from
// the ids to resume after, by position: the personal channel's first, then
// each channel of the URL's. "1", then per slot "." and the id with both
// parts in base 36, or nothing; undefined when there is no id at all.
export function encodeCursor(ids) {
  const slots = ids.map((id) => {
    const m = /^(\d+)-(\d+)$/.exec(String(id ?? ''));
    if (!m) return '';
    const [ms, seq] = [BigInt(m[1]), BigInt(m[2])];
    return ms > MAX_ID_PART || seq > MAX_ID_PART ? '' : ms.toString(36) + '-' + seq.toString(36);
  });
  while (slots.length && !slots[slots.length - 1]) slots.pop();
  return slots.length ? '1.' + slots.join('.') : undefined;
}

// sseURLFrom is the /sse URL beside a WebSocket URL ending in /ws:
// ws(s)://host/ws → http(s)://host/sse; null for any other URL.
export function sseURLFrom(url) {
  const m = /^(wss?):\/\/([^/?#]+)(\/[^?#]*)?(\?[^#]*)?(#.*)?$/.exec(String(url));
  if (!m || !/\/ws$/.test(m[3] || '')) return null;
  return (m[1] === 'wss' ? 'https' : 'http') + '://' + m[2] + m[3].slice(0, -2) + 'sse' + (m[4] || '');
}

// defaultURL is the gateway's /ws on the page's own origin.
export function defaultURL(loc = globalThis.location) {
  if (!loc || !loc.host) return 'ws://localhost/ws';
  return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
}
