// Tests of the Herald client over Server-Sent Events, and of its fallback
// from WebSocket, against a fake EventSource, a fake WebSocket and a fake
// clock: node --test web/test/
import assert from 'node:assert/strict';

import { FakeEventSource, FakeSocket, latest, latestStream, clock, test, flush, startClient } from './fakes.mjs';

// client starts a Herald over SSE; random is fixed so delays are known.
const client = (opts = {}) => startClient({
  url: 'ws://gw/ws', WebSocket: FakeSocket, EventSource: FakeEventSource, transport: 'sse',
  random: () => 0.5, ...opts,
});

test('sse: a stream per channel set, replies by position, each event once', async () => {
  const { h, states, got } = await client();
  const es = latestStream();
  assert.equal(es.url, 'http://gw/sse', 'the /sse beside /ws');
  assert.equal(es.withCredentials, true, 'the session cookie, on any origin');
  es.welcome('a', '42', 25, { last: '100-0' });
  assert.equal(h.state, 'open');
  assert.equal(h.mode, 'sse');
  assert.equal(states.at(-1)[1].transport, 'sse');

  // Subscribing means a new stream with the new channel set: one for a
  // burst, a moment after the current one began.
  const a = h.subscribe('public:a');
  const e = h.subscribe('effect:e');
  assert.equal(FakeEventSource.all.length, 1);
  clock.tick(1000);
  await flush();
  const es2 = latestStream();
  assert.equal(FakeEventSource.all.length, 2);
  assert.ok(es.closed, 'the old stream is closed');
  assert.deepEqual(es2.params('channel'), ['public:a', 'effect:e']);
  assert.deepEqual(es2.params('lastEventId'), ['1.2s-0'], 'the personal channel resumes from its last');
  const welcomes = [];
  h.on('welcome', (f) => welcomes.push(f.node));
  es2.welcome('b', '42', 25, { recovered: true });
  assert.deepEqual(states.map((s) => s[0]), ['connecting', 'open'], 'a new stream is no news to the state');
  assert.deepEqual(welcomes, ['b']);
  assert.equal(h.node, 'b');

  es2.frame({ type: 'subscribed', ref: 1, channel: 'public:a', recovered: true, last: '200-0' });
  es2.frame({ type: 'error', ref: 2, channel: 'effect:e', code: 'forbidden', message: 'not allowed' });
  assert.deepEqual(await a, { channel: 'public:a', recovered: true });
  await assert.rejects(e, (err) => err.code === 'forbidden' && err.channel === 'effect:e');
  es2.event('public:a', '201-0');
  es2.event('public:a', '201-0');
  es2.event('user:42', '101-0');
  es2.event('effect:e', '1-0'); // refused: not the app's
  assert.deepEqual(got, ['public:a 201-0', 'user:42 101-0']);
});

test('sse: after an error it reconnects itself, every channel from its cursor, with a fresh ticket', async () => {
  let n = 0;
  const { h, states } = await client({ ticket: () => 't' + ++n });
  let es = latestStream();
  assert.deepEqual(es.params('ticket'), ['t1']);
  assert.equal(es.withCredentials, false, 'a ticket needs no cookie');
  es.welcome('a', '42', 25, { last: '5-0' });
  h.subscribe('public:a');
  h.subscribe('public:quiet');
  clock.tick(1000);
  await flush();
  es = latestStream();
  es.welcome('a', '42', 25, { recovered: true });
  es.frame({ type: 'subscribed', ref: 1, channel: 'public:a', recovered: true, last: '10-0' });
  es.frame({ type: 'subscribed', ref: 2, channel: 'public:quiet', recovered: true, last: '20-0' });
  es.event('user:42', '6-0');
  es.event('public:a', '11-2');

  es.fail(); // EventSource would retry the old URL and ticket by itself
  assert.ok(es.closed, 'the client retries, not EventSource');
  assert.equal(h.state, 'reconnecting');
  assert.equal(states.at(-1)[1].delay, 250);
  clock.tick(250);
  await flush();
  es = latestStream();
  assert.deepEqual(es.params('ticket'), ['t3']);
  assert.deepEqual(es.params('channel'), ['public:a', 'public:quiet']);
  assert.deepEqual(es.params('lastEventId'), ['1.6-0.b-2.k-0'], 'user 6-0, public:a 11-2, public:quiet 20-0 in base 36');
  es.welcome('a', '42', 25, { recovered: true });
  assert.equal(states.at(-1)[1].resumed, true);
});

test('sse: resync is reported for a channel whose history was exceeded', async () => {
  const { h } = await client();
  const resyncs = [];
  h.on('resync', (ch) => resyncs.push(ch));
  let es = latestStream();
  es.welcome();
  h.subscribe('public:a', null, { since: '7-0' });
  clock.tick(1000);
  await flush();
  es = latestStream();
  assert.deepEqual(es.params('lastEventId'), ['1..7-0']);
  es.welcome('a', '42', 25);
  es.frame({ type: 'subscribed', ref: 1, channel: 'public:a', recovered: false });
  assert.deepEqual(resyncs, ['public:a']);
});

test('sse: close frames end the stream as close codes end a socket', async () => {
  const { h, states } = await client({ backoff: { restart: 800 } });
  let es = latestStream();
  es.welcome();
  es.frame({ type: 'close', code: 1012, reason: 'server restart' });
  assert.ok(es.closed);
  assert.equal(states.at(-1)[0], 'reconnecting');
  assert.equal(states.at(-1)[1].code, 1012);
  assert.equal(states.at(-1)[1].delay, 400, 'promptly, within the restart spread');
  clock.tick(400);
  await flush();
  es = latestStream();
  es.welcome();
  const pending = h.subscribe('public:b');
  es.frame({ type: 'close', code: 4001, reason: 'session revoked' });
  assert.equal(h.state, 'closed');
  assert.equal(states.at(-1)[1].reason, 'unauthorized');
  await assert.rejects(pending, /unauthorized/);
  clock.tick(60000);
  await flush();
  assert.equal(FakeEventSource.all.length, 2, 'never reconnects');
});

test('sse: heartbeats keep a quiet stream; missing ones replace it', async () => {
  const { h, states } = await client();
  const es = latestStream();
  es.welcome('a', '42', 10);
  for (let i = 0; i < 5; i++) {
    clock.tick(10000);
    es.ping();
  }
  assert.equal(h.state, 'open');
  clock.tick(20000);
  assert.equal(h.state, 'open', 'two heartbeats missed is not yet dead');
  clock.tick(10000);
  assert.equal(h.state, 'reconnecting');
  assert.equal(states.at(-1)[1].reason, 'heartbeat timeout');
  assert.ok(es.closed);
});

test('sse: unsubscribe is local until the next stream; a transient refusal asks again', async () => {
  const { h, got } = await client();
  let es = latestStream();
  es.welcome();
  h.subscribe('public:a');
  const busy = h.subscribe('public:busy');
  clock.tick(1000);
  await flush();
  es = latestStream();
  es.welcome();
  es.frame({ type: 'subscribed', ref: 1, channel: 'public:a', recovered: true, last: '1-0' });
  es.frame({ type: 'error', ref: 2, channel: 'public:busy', code: 'unavailable', message: 'try again' });
  h.unsubscribe('public:a');
  assert.equal(FakeEventSource.all.length, 2, 'no new stream to leave a channel');
  es.event('public:a', '2-0');
  assert.deepEqual(got, [], 'its events are dropped');
  clock.tick(2000); // asked again: a new stream, without public:a
  await flush();
  es = latestStream();
  assert.equal(FakeEventSource.all.length, 3);
  assert.deepEqual(es.params('channel'), ['public:busy']);
  es.welcome();
  es.frame({ type: 'subscribed', ref: 1, channel: 'public:busy', recovered: true, last: '1-0' });
  assert.deepEqual(await busy, { channel: 'public:busy', recovered: true });
});

test('auto: sockets that keep failing to open fall back to SSE, same API', async () => {
  const { h, states } = await client({ transport: 'auto' });
  const sub = h.subscribe('public:a');
  for (let i = 0; i < 3; i++) {
    assert.equal(FakeEventSource.all.length, 0);
    latest().drop(1006); // a proxy refuses the upgrade
    clock.tick(states.at(-1)[1].delay);
    await flush();
  }
  assert.equal(FakeSocket.all.length, 3);
  assert.equal(h.mode, 'sse');
  assert.equal(states.at(-1)[1].transport, 'sse');
  const es = latestStream();
  assert.deepEqual(es.params('channel'), ['public:a']);
  es.welcome();
  es.frame({ type: 'subscribed', ref: 1, channel: 'public:a', recovered: true, last: '1-0' });
  assert.deepEqual(await sub, { channel: 'public:a', recovered: true });
  assert.equal(states.at(-1)[1].transport, 'sse');
});

test('auto: a socket that never opens falls back at once', async () => {
  const { h } = await client({ transport: 'auto', connectTimeout: 3000 });
  clock.tick(3000);
  clock.tick(1000);
  await flush();
  assert.equal(h.mode, 'sse');
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(FakeEventSource.all.length, 1);
});

test('auto: once a socket worked, failures are just reconnects', async () => {
  const { h, states } = await client({ transport: 'auto' });
  latest().welcome();
  for (let i = 0; i < 5; i++) {
    latest().drop(1006);
    clock.tick(states.at(-1)[1].delay);
    await flush();
  }
  assert.equal(h.mode, 'websocket');
  assert.equal(FakeEventSource.all.length, 0);
  assert.equal(FakeSocket.all.length, 6);
});

test('auto: without an EventSource, sockets it is', async () => {
  const { h, states } = await client({ transport: 'auto', EventSource: undefined });
  for (let i = 0; i < 4; i++) {
    latest().drop(1006);
    clock.tick(states.at(-1)[1].delay);
    await flush();
  }
  assert.equal(h.mode, 'websocket');
});

test('sse: no EventSource stops the client and says why', async () => {
  const { h, states } = await client({ EventSource: undefined });
  assert.equal(h.state, 'closed');
  assert.equal(states.at(-1)[1].reason, 'no EventSource implementation');
});
