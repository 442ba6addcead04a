// Tests of the Herald client's reconnect and resume bookkeeping against a
// fake WebSocket and a fake clock: node --test web/test/
// Plain node:test and node:assert only (Node 18 and later): no mock timers,
// no hooks.
import assert from 'node:assert/strict';

import { FakeSocket, latest, clock, test, flush, startClient } from './fakes.mjs';

// client starts a Herald on the fake socket; random is fixed so delays are
// known. Its transport is WebSocket alone: the SSE fallback has its own tests
// (sse.test.mjs), and a Node with a global EventSource must not change these.
const client = (opts = {}) =>
  startClient({ url: 'ws://gw/ws', WebSocket: FakeSocket, transport: 'websocket', random: () => 0.5, ...opts });

test('connects, greets, delivers events by name and once per id', async () => {
  const { h, states, got } = await client();
  const ws = latest();
  assert.equal(ws.url, 'ws://gw/ws');
  const byName = [];
  h.on('effect.complete', (data) => byName.push(data.id));
  ws.welcome('a', '42');
  assert.equal(h.state, 'open');
  assert.equal(h.node, 'a');
  ws.event('user:42', '10-0');
  ws.event('user:42', '10-0');
  ws.event('user:42', '9-0');
  ws.event('user:42', '11-0');
  assert.deepEqual(got, ['user:42 10-0', 'user:42 11-0']);
  assert.deepEqual(byName, ['10-0', '11-0']);
  assert.deepEqual(states.map((s) => s[0]), ['connecting', 'open']);
});

test('reconnects with backoff and resumes every channel after its last id', async () => {
  const { h, states, got } = await client();
  let ws = latest();
  ws.welcome('a');
  const effect = [];
  const sub = h.subscribe('effect:e1', (d, f) => effect.push(f.id));
  assert.deepEqual(ws.sent.at(-1), { type: 'subscribe', ref: ws.sent.at(-1).ref, channel: 'effect:e1' });
  ws.frame({ type: 'subscribed', ref: ws.sent.at(-1).ref, channel: 'effect:e1' });
  assert.deepEqual(await sub, { channel: 'effect:e1', recovered: undefined });
  ws.event('user:42', '100-0');
  ws.event('effect:e1', '200-3');

  ws.drop(1006);
  const [state, info] = states.at(-1);
  assert.equal(state, 'reconnecting');
  assert.equal(info.attempt, 1);
  assert.equal(info.delay, 250, 'first retry: half of base 500 with random 0.5');
  assert.equal(FakeSocket.all.length, 1, 'no connect before the delay');
  clock.tick(250);
  await flush();
  ws = latest();
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(ws.url, 'ws://gw/ws?since=100-0', 'personal channel resumes on connect');
  ws.welcome('b');
  assert.equal(h.node, 'b');
  const resub = ws.sent.find((f) => f.type === 'subscribe');
  assert.equal(resub.channel, 'effect:e1');
  assert.equal(resub.since, '200-3', 'each channel resumes after its own last id');
  ws.frame({ type: 'subscribed', ref: resub.ref, channel: 'effect:e1', recovered: true });
  // The replay overlaps what was delivered: only the new events reach the app.
  ws.event('user:42', '100-0');
  ws.event('user:42', '101-0');
  ws.event('effect:e1', '200-3');
  ws.event('effect:e1', '201-0');
  assert.deepEqual(got, ['user:42 100-0', 'effect:e1 200-3', 'user:42 101-0', 'effect:e1 201-0']);
  assert.deepEqual(effect, ['200-3', '201-0']);
  assert.equal(states.at(-1)[1].resumed, true);
});

test('backoff grows while connects fail and starts over after a stable connection', async () => {
  const { states } = await client({ backoff: { base: 100, cap: 1000 } });
  const delays = [];
  for (let i = 0; i < 6; i++) {
    latest().drop(1006); // refused handshake
    delays.push(states.at(-1)[1].delay);
    clock.tick(states.at(-1)[1].delay);
    await flush();
  }
  assert.deepEqual(delays, [50, 100, 200, 400, 500, 500], 'half the ceiling each time, capped');
  latest().welcome();
  clock.tick(6000); // stable for a while
  latest().drop(1006);
  assert.equal(states.at(-1)[1].delay, 50, 'back to the first step');
  assert.equal(states.at(-1)[1].attempt, 1);
});

test('1012 reconnects promptly with jitter, even after failures', async () => {
  const { states } = await client({ backoff: { base: 1000, cap: 30000, restart: 800 } });
  for (let i = 0; i < 4; i++) {
    latest().drop(1006);
    clock.tick(states.at(-1)[1].delay);
    await flush();
  }
  latest().welcome();
  latest().drop(1012, 'server restart');
  const [state, info] = states.at(-1);
  assert.equal(state, 'reconnecting');
  assert.equal(info.code, 1012);
  assert.equal(info.delay, 400, 'within the restart spread, not the grown backoff');
});

test('4001 stops for good and reports why', async () => {
  const { h, states } = await client();
  latest().welcome();
  const pending = h.subscribe('effect:e2');
  latest().drop(4001, 'session revoked');
  assert.equal(h.state, 'closed');
  assert.equal(states.at(-1)[1].reason, 'unauthorized');
  assert.equal(states.at(-1)[1].code, 4001);
  await assert.rejects(pending, /unauthorized/);
  clock.tick(60000);
  await flush();
  assert.equal(FakeSocket.all.length, 1, 'never reconnects');
});

test('a dead link is found by missed heartbeats and replaced', async () => {
  const { h, states } = await client();
  const ws = latest();
  ws.welcome('a', '42', 10); // pings every 5 s
  clock.tick(5000);
  assert.deepEqual(ws.sent.at(-1).type, 'ping');
  ws.frame({ type: 'pong', ref: ws.sent.at(-1).ref });
  clock.tick(5000);
  clock.tick(5000);
  assert.equal(h.state, 'open', 'one unanswered ping is not yet dead');
  clock.tick(5000);
  assert.equal(h.state, 'reconnecting');
  assert.equal(states.at(-1)[1].reason, 'heartbeat timeout');
  assert.equal(ws.closedWith.code, 4000);
});

test('a handshake without a welcome times out', async () => {
  const { h } = await client({ connectTimeout: 3000 });
  latest().open();
  clock.tick(3000);
  assert.equal(h.state, 'reconnecting');
});

test('ticket: fetched for every connect, 401 stops', async () => {
  let n = 0;
  const { h } = await client({
    ticket: async () => {
      n++;
      if (n === 3) throw Object.assign(new Error('no session'), { status: 401 });
      return 't' + n;
    },
  });
  assert.equal(latest().url, 'ws://gw/ws?ticket=t1');
  latest().welcome();
  latest().event('user:42', '5-0');
  latest().drop(1001);
  clock.tick(1000);
  await flush();
  assert.equal(latest().url, 'ws://gw/ws?ticket=t2&since=5-0');
  latest().drop(1006);
  clock.tick(1000);
  await flush();
  assert.equal(h.state, 'closed');
  assert.equal(FakeSocket.all.length, 2);
});

test('subscribe errors: refused ones reject and drop, unavailable retries', async () => {
  const { h } = await client();
  const ws = latest();
  ws.welcome();
  const refused = h.subscribe('effect:other');
  const f1 = ws.sent.at(-1);
  ws.frame({ type: 'error', ref: f1.ref, code: 'forbidden', message: 'not yours' });
  await assert.rejects(refused, (err) => err.code === 'forbidden');
  const later = h.subscribe('effect:busy');
  const f2 = ws.sent.at(-1);
  ws.frame({ type: 'error', ref: f2.ref, code: 'unavailable', message: 'try again' });
  clock.tick(2000);
  const f3 = ws.sent.at(-1);
  assert.equal(f3.channel, 'effect:busy');
  assert.notEqual(f3.ref, f2.ref);
  ws.frame({ type: 'subscribed', ref: f3.ref, channel: 'effect:busy', recovered: true });
  assert.deepEqual(await later, { channel: 'effect:busy', recovered: true });
});

test('resync is reported when a resumed subscription lost history', async () => {
  const { h } = await client();
  let ws = latest();
  ws.welcome();
  const resyncs = [];
  h.on('resync', (ch) => resyncs.push(ch));
  h.subscribe('effect:e3');
  ws.frame({ type: 'subscribed', ref: ws.sent.at(-1).ref, channel: 'effect:e3', recovered: false });
  assert.deepEqual(resyncs, [], 'a fresh subscribe has nothing to recover');
  ws.event('effect:e3', '7-0');
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  ws = latest();
  ws.welcome();
  const sub = ws.sent.find((f) => f.type === 'subscribe');
  assert.equal(sub.since, '7-0');
  ws.frame({ type: 'subscribed', ref: sub.ref, channel: 'effect:e3', recovered: false });
  assert.deepEqual(resyncs, ['effect:e3']);
});

test('resync is reported when the personal channel could not be resumed', async () => {
  const { h } = await client();
  let ws = latest();
  ws.welcome('a', '42');
  const resyncs = [];
  h.on('resync', (ch) => resyncs.push(ch));
  ws.event('user:42', '3-0');
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  ws = latest();
  assert.equal(ws.url, 'ws://gw/ws?since=3-0');
  ws.open();
  ws.frame({ type: 'welcome', conn: 'c2', user: '42', node: 'b', heartbeat: 25, recovered: false });
  assert.deepEqual(resyncs, ['user:42']);
});

test('a message carrying several frames separated by newlines delivers each', async () => {
  const { got } = await client();
  const ws = latest();
  ws.welcome('a', '42');
  const frames = ['10-0', '11-0', '12-0'].map((id) => JSON.stringify({ type: 'event', channel: 'user:42', id, event: 'e', data: { id }, ts: 0 }));
  ws.onmessage({ data: frames.join('\n') });
  assert.deepEqual(got, ['user:42 10-0', 'user:42 11-0', 'user:42 12-0']);
});

test('a gap notice is a resync of its channel; later events still arrive', async () => {
  const { h, got } = await client();
  const ws = latest();
  ws.welcome('a', '42');
  const resyncs = [];
  h.on('resync', (ch) => resyncs.push(ch));
  ws.event('user:42', '3-0');
  ws.frame({ type: 'gap', channel: 'user:42' });
  ws.event('user:42', '9-0');
  assert.deepEqual(resyncs, ['user:42']);
  assert.deepEqual(got, ['user:42 3-0', 'user:42 9-0']);
});

test('a subscription the server ends (owned by another user) rejects and is not renewed', async () => {
  const { h } = await client();
  let ws = latest();
  ws.welcome('a', '42');
  const errors = [];
  h.on('error', (e) => errors.push(e.code + ' ' + e.channel));
  const p = h.subscribe('effect:e9');
  ws.frame({ type: 'unsubscribed', channel: 'effect:e9', reason: 'forbidden' });
  await assert.rejects(p, (err) => err.code === 'forbidden' && err.channel === 'effect:e9');
  assert.deepEqual(errors, ['forbidden effect:e9']);
  ws.event('effect:e9', '5-0'); // a late event of it is not handed out
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  ws = latest();
  ws.welcome('a', '42');
  assert.deepEqual(ws.subscribes(), [], 'an ended subscription is not renewed');
});

test('an unusable frame is reported and skipped; the link stays', async () => {
  const { h, got, states } = await client();
  const ws = latest();
  ws.welcome('a', '42');
  const errors = [];
  h.on('error', (e) => errors.push(e.code));
  ws.onmessage({ data: '{"type":"event","channel":"user:42",' });
  ws.onmessage({ data: 'null' });
  ws.event('user:42', '4-0');
  assert.deepEqual(errors, ['bad_frame', 'bad_frame']);
  assert.deepEqual(got, ['user:42 4-0']);
  assert.equal(ws.closedWith, null);
  assert.deepEqual(states.map((s) => s[0]), ['connecting', 'open']);
});

test('unsubscribe: events in flight are dropped, a later subscribe starts fresh', async () => {
  const { h, got } = await client();
  const ws = latest();
  ws.welcome();
  const a = () => {};
  const b = () => {};
  h.subscribe('public:news', a);
  h.subscribe('public:news', b);
  ws.frame({ type: 'subscribed', ref: ws.sent.at(-1).ref, channel: 'public:news' });
  ws.event('public:news', '1-0');
  h.unsubscribe('public:news', a);
  assert.notEqual(ws.sent.at(-1).type, 'unsubscribe', 'b still listens');
  h.unsubscribe('public:news', b);
  assert.equal(ws.sent.at(-1).type, 'unsubscribe');
  ws.event('public:news', '2-0');
  assert.deepEqual(got, ['public:news 1-0']);
  h.subscribe('public:news');
  assert.equal(ws.sent.at(-1).since, undefined);
});

test('reserved names never reach event-name listeners', async () => {
  const { h, got } = await client();
  const ws = latest();
  const states = [];
  h.on('state', (s) => states.push(s));
  ws.welcome();
  ws.event('user:42', '1-0', 'state', { evil: true });
  assert.deepEqual(states, ['open']);
  assert.deepEqual(got, ['user:42 1-0'], "still delivered to 'event'");
});

test('reconnect() moves to a new socket promptly; close() ends everything', async () => {
  const { h, states } = await client();
  const first = latest();
  first.welcome('a');
  h.reconnect();
  assert.equal(first.closedWith.code, 1000);
  assert.equal(states.at(-1)[1].delay, 500, 'restart spread 1000 × 0.5');
  clock.tick(500);
  await flush();
  latest().welcome('b');
  assert.equal(h.node, 'b');
  h.close();
  assert.equal(h.state, 'closed');
  assert.equal(latest().closedWith.code, 1000);
  clock.tick(60000);
  await flush();
  assert.equal(FakeSocket.all.length, 2);
});

// --- resume before the first event (welcome and subscribed carry `last`) ---

test('a reconnect before the first event resumes the personal channel from welcome.last', async () => {
  const { got } = await client();
  let ws = latest();
  ws.welcome('a', '42', 25, { last: '40-0' });
  ws.drop(1006); // 41-0 is published while the client is away
  clock.tick(1000);
  await flush();
  ws = latest();
  assert.equal(ws.url, 'ws://gw/ws?since=40-0');
  ws.welcome('b', '42', 25, { recovered: true });
  ws.event('user:42', '41-0'); // the replay
  assert.deepEqual(got, ['user:42 41-0']);

  // A welcome's last never moves a cursor the client has.
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  latest().welcome('c', '42', 25, { last: '30-0' });
  latest().drop(1006);
  clock.tick(1000);
  await flush();
  assert.equal(latest().url, 'ws://gw/ws?since=41-0');
});

test('an event in flight when the server read welcome.last is delivered; the resume point stays', async () => {
  const { got } = await client();
  const ws = latest();
  ws.welcome('a', '42', 25, { last: '40-0' });
  ws.event('user:42', '39-0');
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  assert.deepEqual(got, ['user:42 39-0']);
  assert.equal(latest().url, 'ws://gw/ws?since=40-0');
});

test('a subscribed reply\'s last is where the subscription resumes until an event comes', async () => {
  const { h, got } = await client();
  let ws = latest();
  ws.welcome();
  h.subscribe('effect:e1');
  h.subscribe('public:kept', null, { since: '80-0' });
  h.subscribe('public:seen');
  const [a, b, c] = ws.subscribes();
  ws.frame({ type: 'subscribed', ref: a.ref, channel: 'effect:e1', recovered: true, last: '70-0' });
  ws.frame({ type: 'subscribed', ref: b.ref, channel: 'public:kept', recovered: true });
  ws.event('public:seen', '9-0');
  ws.frame({ type: 'subscribed', ref: c.ref, channel: 'public:seen', recovered: true, last: '8-0' });
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  ws = latest();
  ws.welcome();
  const since = Object.fromEntries(ws.subscribes().map((f) => [f.channel, f.since]));
  assert.deepEqual(since, { 'effect:e1': '70-0', 'public:kept': '80-0', 'public:seen': '9-0' },
    'seeded from last; a stored or delivered cursor is never overwritten');
  const resub = ws.subscribes()[0];
  ws.frame({ type: 'subscribed', ref: resub.ref, channel: 'effect:e1', recovered: true });
  ws.event('effect:e1', '71-0'); // published while away, replayed
  assert.deepEqual(got, ['public:seen 9-0', 'effect:e1 71-0']);
});

// --- pacing (the server refuses frames over 10/s, burst 20, and closes with 4008) ---

// refusedBy replays the times frames were sent through the server's token
// bucket and counts the frames it would refuse.
function refusedBy(times, rate = 10, burst = 20) {
  let tokens = burst;
  let at = times[0] ?? 0;
  let refused = 0;
  for (const t of times) {
    tokens = Math.min(burst, tokens + ((t - at) * rate) / 1000);
    at = t;
    if (tokens >= 1) tokens--;
    else refused++;
  }
  return refused;
}

test('31 subscriptions are paced within the bucket, after every welcome', async () => {
  const { h } = await client();
  let ws = latest();
  ws.welcome();
  const subs = [];
  for (let i = 0; i < 31; i++) subs.push(h.subscribe('public:c' + i));
  assert.equal(ws.subscribes().length, 15, 'a burst of 15 at once');
  clock.tick(125);
  assert.equal(ws.subscribes().length, 16, 'then 8 a second');
  clock.tick(2000);
  assert.equal(ws.subscribes().length, 31);
  for (const f of ws.subscribes()) ws.frame({ type: 'subscribed', ref: f.ref, channel: f.channel, recovered: true });
  assert.equal((await Promise.all(subs)).length, 31);
  assert.equal(refusedBy(ws.sentAt), 0, 'the server refuses none');

  ws.drop(1006);
  clock.tick(1000);
  await flush();
  ws = latest();
  ws.welcome(); // renews all 31
  assert.equal(ws.subscribes().length, 15);
  clock.tick(5000);
  assert.equal(ws.subscribes().length, 31);
  assert.equal(refusedBy(ws.sentAt), 0);
  assert.equal(refusedBy(ws.sentAt, 8, 15), 0, 'nor the client\'s own bucket');
  assert.deepEqual(new Set(ws.subscribes().map((f) => f.channel)).size, 31);
});

test('pings wait behind queued frames; sendRate and sendBurst are options', async () => {
  const { h } = await client({ sendRate: 4, sendBurst: 2 });
  const ws = latest();
  ws.welcome('a', '42', 2); // a ping every second
  for (let i = 0; i < 12; i++) h.subscribe('public:p' + i);
  for (let t = 0; t < 3000; t += 50) {
    clock.tick(50);
    // The server answers each subscribe as it comes.
    const f = ws.sent.at(-1);
    if (f.type === 'subscribe' && !f.answered) {
      f.answered = true;
      ws.frame({ type: 'subscribed', ref: f.ref, channel: f.channel });
    }
  }
  const types = ws.sent.map((f) => f.type);
  assert.equal(types.filter((t) => t === 'subscribe').length, 12);
  assert.ok(types.lastIndexOf('subscribe') < types.indexOf('ping'), `no ping before the last subscribe: ${types}`);
  assert.equal(refusedBy(ws.sentAt, 4, 2), 0);
  assert.equal(h.state, 'open', 'answers to queued frames keep the link alive');
});

test('a close 4008 (sent too fast for this server) halves the pace for good', async () => {
  const { h } = await client({ sendRate: 40, sendBurst: 40 });
  for (let i = 0; i < 31; i++) h.subscribe('public:c' + i);
  latest().welcome();
  assert.equal(latest().subscribes().length, 31);
  latest().drop(4008, 'message rate exceeded');
  clock.tick(1000);
  await flush();
  latest().welcome();
  assert.equal(latest().subscribes().length, 20, 'burst 20');
  assert.equal(refusedBy(latest().sentAt), 0);
  clock.tick(50);
  assert.equal(latest().subscribes().length, 21, 'then 20 a second');
  latest().drop(4008);
  clock.tick(1000);
  await flush();
  latest().welcome();
  assert.equal(latest().subscribes().length, 10);
});

test('rate_limited answers to a subscribe: asked again later, the promise waits for the real answer', async () => {
  const { h } = await client();
  const ws = latest();
  ws.welcome();
  let settled = false;
  const p = h.subscribe('public:busy');
  p.then(() => { settled = true; }, () => { settled = true; });
  const f1 = ws.sent.at(-1);
  ws.frame({ type: 'error', ref: f1.ref, code: 'rate_limited', message: 'too many messages, slow down' });
  h.subscribe('public:next');
  assert.equal(ws.sent.at(-1), f1, 'the server\'s bucket is empty: ours too');
  clock.tick(125);
  assert.equal(ws.sent.at(-1).channel, 'public:next');
  clock.tick(2000);
  await flush();
  assert.equal(settled, false);
  const again = ws.subscribes().filter((f) => f.channel === 'public:busy');
  assert.equal(again.length, 2, 'sent once more');
  assert.notEqual(again[1].ref, f1.ref);
  ws.frame({ type: 'subscribed', ref: again[1].ref, channel: 'public:busy', recovered: true, last: '5-0' });
  assert.deepEqual(await p, { channel: 'public:busy', recovered: true });
});

test('unsubscribe: a refused one is sent again, a queued subscribe is dropped instead', async () => {
  const { h } = await client({ sendBurst: 1 });
  const ws = latest();
  ws.welcome();
  h.subscribe('public:a');
  const sa = ws.sent.at(-1);
  ws.frame({ type: 'subscribed', ref: sa.ref, channel: 'public:a' });
  clock.tick(1000);
  h.unsubscribe('public:a');
  const ua = ws.sent.at(-1);
  assert.equal(ua.type, 'unsubscribe');
  ws.frame({ type: 'error', ref: ua.ref, code: 'rate_limited', message: 'slow down' });
  clock.tick(2000);
  const again = ws.sent.at(-1);
  assert.deepEqual([again.type, again.channel], ['unsubscribe', 'public:a']);
  assert.notEqual(again.ref, ua.ref);
  ws.frame({ type: 'unsubscribed', ref: again.ref, channel: 'public:a' });

  h.subscribe('public:b'); // sent: the bucket has refilled
  h.subscribe('public:c'); // queued
  h.unsubscribe('public:c');
  clock.tick(5000);
  assert.deepEqual(ws.sent.slice(-1).map((f) => f.type + ' ' + f.channel), ['subscribe public:b'],
    'public:c never reached the server: nothing to undo');
});

// --- late replies ---

test('a late reply to an abandoned subscribe does not answer a newer one of the same channel', async () => {
  const { h } = await client();
  let ws = latest();
  ws.welcome();
  h.subscribe('public:n');
  const r1 = ws.sent.at(-1).ref;
  h.unsubscribe('public:n');
  let settled = false;
  const p2 = h.subscribe('public:n');
  p2.then(() => { settled = true; }, () => { settled = true; });
  const r2 = ws.sent.at(-1).ref;
  assert.notEqual(r1, r2);
  ws.frame({ type: 'subscribed', ref: r1, channel: 'public:n', recovered: true, last: '90-0' }); // the old one's
  ws.frame({ type: 'error', ref: r1, code: 'forbidden', message: 'stale' });
  await flush();
  assert.equal(settled, false, 'still waiting for its own answer');
  ws.frame({ type: 'error', ref: r2, code: 'unavailable', message: 'try again' });
  clock.tick(2000);
  const r3 = ws.sent.at(-1);
  assert.deepEqual([r3.type, r3.channel], ['subscribe', 'public:n'], 'not believed subscribed: asked again');
  ws.frame({ type: 'subscribed', ref: r3.ref, channel: 'public:n', recovered: true });
  assert.deepEqual(await p2, { channel: 'public:n', recovered: true });
  ws.drop(1006);
  clock.tick(1000);
  await flush();
  ws = latest();
  ws.welcome();
  assert.equal(ws.subscribes()[0].since, undefined, 'the old reply\'s last was not taken');
});

// --- never stuck in connecting ---

test('a ticket callback that never settles times out and is retried with backoff', async () => {
  let calls = 0;
  let lateTicket;
  const { h, states } = await client({
    connectTimeout: 3000,
    ticket: () => {
      calls++;
      if (calls === 1) return new Promise((resolve) => { lateTicket = resolve; });
      if (calls === 2) return new Promise(() => {});
      return 't' + calls;
    },
  });
  assert.equal(h.state, 'connecting');
  clock.tick(3000);
  await flush();
  assert.equal(h.state, 'reconnecting');
  assert.equal(states.at(-1)[1].error, 'ticket timeout');
  assert.equal(states.at(-1)[1].delay, 250);
  lateTicket('late'); // answers after all: ignored
  await flush();
  assert.equal(FakeSocket.all.length, 0);
  clock.tick(250);
  await flush();
  clock.tick(3000);
  await flush();
  assert.equal(states.at(-1)[1].delay, 500, 'the backoff grows');
  clock.tick(500);
  await flush();
  assert.equal(calls, 3);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(latest().url, 'ws://gw/ws?ticket=t3');
  latest().welcome();
  assert.equal(h.state, 'open');
});

test('a WebSocket constructor that throws: a bad URL stops, anything else retries', async () => {
  class BadURL {
    constructor(url) { throw new DOMException(`Failed to construct 'WebSocket': The URL '${url}' is invalid.`, 'SyntaxError'); }
  }
  const bad = await client({ WebSocket: BadURL });
  assert.equal(bad.h.state, 'closed');
  assert.equal(bad.states.at(-1)[1].reason, 'invalid url');
  assert.match(bad.states.at(-1)[1].error, /is invalid/);
  await assert.rejects(bad.h.subscribe('public:x'), /client closed/);

  let tries = 0;
  class Blocked extends FakeSocket {
    constructor(url) {
      if (++tries <= 2) throw new DOMException('blocked', 'SecurityError');
      super(url);
    }
  }
  const errors = [];
  const { h, states } = await client({ WebSocket: Blocked });
  h.on('error', (e) => errors.push(e.name));
  assert.equal(h.state, 'reconnecting');
  assert.equal(states.at(-1)[1].error, 'blocked');
  clock.tick(states.at(-1)[1].delay);
  await flush();
  clock.tick(states.at(-1)[1].delay);
  await flush();
  assert.equal(tries, 3);
  assert.deepEqual(errors, ['SecurityError']);
  latest().welcome();
  assert.equal(h.state, 'open');
});

// --- backoff after a heartbeat timeout ---

test('a heartbeat timeout after a stable connection starts the backoff over; an early one does not', async () => {
  const { states } = await client();
  const fail = async (n) => {
    for (let i = 0; i < n; i++) {
      latest().drop(1006);
      clock.tick(states.at(-1)[1].delay);
      await flush();
    }
  };
  await fail(6);
  let ws = latest();
  ws.welcome('a', '42', 10); // pings every 5 s
  for (let i = 0; i < 720; i++) { // an hour, answered
    clock.tick(5000);
    ws.frame({ type: 'pong', ref: ws.sent.at(-1).ref });
  }
  clock.tick(15000); // then silence
  assert.equal(states.at(-1)[1].reason, 'heartbeat timeout');
  assert.equal(states.at(-1)[1].attempt, 1);
  assert.equal(states.at(-1)[1].delay, 250);

  clock.tick(250);
  await flush();
  await fail(3);
  ws = latest();
  ws.welcome('a', '42', 2); // pings every second: dead after 3 s, not stable
  clock.tick(3000);
  assert.equal(states.at(-1)[1].reason, 'heartbeat timeout');
  assert.equal(states.at(-1)[1].attempt, 5, 'a short-lived link keeps the grown backoff');
});
