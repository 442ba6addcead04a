// Herald client core: the pure parts of herald.js (backoff, close-code
// policy, event-id order, per-channel resume bookkeeping, heartbeats, send
// pacing, URLs).
// No I/O, no timers, no globals: each piece is unit-tested under Node
// (web/test/*.test.mjs). herald.js re-exports what apps may want.

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

// defaultURL is the gateway's /ws on the page's own origin.
export function defaultURL(loc = globalThis.location) {
  if (!loc || !loc.host) return 'ws://localhost/ws';
  return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
}
