// Unit tests of herald.js's pure parts: node --test web/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  BACKOFF, backoffDelay, restartDelay, closeAction, compareIds, parseId, Cursors, Heartbeat,
  TokenBucket, SEND_RATE, SEND_BURST, connectURL, defaultURL, streamURL, encodeCursor, sseURLFrom,
} from '../herald.js';

const fixed = (x) => () => x;
const almostOne = 1 - Number.EPSILON;

test('backoff ceiling doubles from base and stops at cap', () => {
  const opts = { base: 500, cap: 15000 };
  const ceilings = [0, 1, 2, 3, 4, 5, 6, 10, 100].map((n) => backoffDelay(n, opts, fixed(almostOne)));
  const want = [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000];
  ceilings.forEach((got, i) => assert.ok(Math.abs(got - want[i]) < 1e-6, `attempt ${i}: got ${got}, want ≈${want[i]}`));
});

test('backoff is full jitter: uniform from 0 up to the ceiling', () => {
  assert.equal(backoffDelay(3, {}, fixed(0)), 0);
  assert.equal(backoffDelay(3, {}, fixed(0.5)), 0.5 * BACKOFF.base * 8);
  // Many draws of the real random stay in range and spread out.
  const draws = Array.from({ length: 2000 }, () => backoffDelay(4));
  assert.ok(draws.every((d) => d >= 0 && d < BACKOFF.base * 16));
  const low = draws.filter((d) => d < BACKOFF.base * 8).length;
  assert.ok(low > 800 && low < 1200, `${low} of 2000 draws in the lower half`);
});

test('backoff survives absurd attempts and bad input', () => {
  for (const n of [1e6, Infinity, -3, NaN, undefined, '2']) {
    const d = backoffDelay(n, { base: 100, cap: 1000 }, fixed(almostOne));
    assert.ok(Number.isFinite(d) && d >= 0 && d <= 1000, `attempt ${n}: ${d}`);
  }
  assert.ok(Math.abs(backoffDelay('2', { base: 100, cap: 1000 }, fixed(almostOne)) - 400) < 1e-6);
});

test('restart delay is prompt but spread', () => {
  assert.equal(restartDelay(1000, fixed(0)), 0);
  assert.ok(restartDelay(1000, fixed(almostOne)) < 1000);
  assert.ok(restartDelay(undefined, fixed(almostOne)) < BACKOFF.restart);
});

test('close codes: 4001 stops, 1012 restarts, the rest back off', () => {
  assert.equal(closeAction(4001), 'stop');
  assert.equal(closeAction(1012), 'restart');
  for (const code of [1000, 1001, 1006, 1008, 1011, 4008, 4009, undefined]) assert.equal(closeAction(code), 'backoff');
});

test('event ids order numerically by both parts', () => {
  assert.deepEqual(parseId('1732600000000-7'), [1732600000000, 7]);
  assert.equal(parseId('nope'), null);
  assert.ok(compareIds('1-2', '1-10') < 0, 'seq compares as a number');
  assert.ok(compareIds('9-0', '10-0') < 0, 'ms compares as a number');
  assert.ok(compareIds('1732600000001-0', '1732600000000-99') > 0);
  assert.equal(compareIds('5-5', '5-5'), 0);
  assert.ok(compareIds('a', 'b') < 0 && compareIds('b', 'a') > 0, 'other forms: string order');
});

test('cursors deliver each event once, per channel', () => {
  const c = new Cursors();
  assert.equal(c.since('user:1'), undefined);
  assert.ok(c.accept('user:1', '100-0'));
  assert.ok(c.accept('user:1', '100-1'));
  assert.ok(!c.accept('user:1', '100-1'), 'the same id again is a duplicate');
  assert.ok(!c.accept('user:1', '99-5'), 'an older id is a duplicate');
  assert.ok(c.accept('effect:x', '50-0'), 'channels have their own ids');
  assert.equal(c.since('user:1'), '100-1');
  assert.equal(c.since('effect:x'), '50-0');
  assert.ok(c.accept('user:1', undefined), 'no id: cannot tell, deliver');
  assert.equal(c.since('user:1'), '100-1');
});

test('cursors: replay after a reconnect overlapping live events', () => {
  const c = new Cursors();
  const delivered = [];
  const feed = (ids) => ids.forEach((id) => c.accept('user:1', id) && delivered.push(id));
  feed(['1-0', '2-0', '3-0']); // before the drop
  // The resume replays from since=3-0, but a server may also send what the
  // client saw (a replay window rounded down): none of it twice.
  assert.equal(c.since('user:1'), '3-0');
  feed(['2-0', '3-0', '4-0', '5-0', '5-0', '6-0']);
  assert.deepEqual(delivered, ['1-0', '2-0', '3-0', '4-0', '5-0', '6-0']);
});

test('cursors: set keeps the newest, forget starts over', () => {
  const c = new Cursors();
  c.set('effect:x', '10-0');
  assert.equal(c.since('effect:x'), '10-0');
  c.set('effect:x', '5-0');
  assert.equal(c.since('effect:x'), '10-0', 'an older stored id does not rewind');
  assert.ok(!c.accept('effect:x', '10-0'));
  c.forget('effect:x');
  assert.equal(c.since('effect:x'), undefined);
  assert.ok(c.accept('effect:x', '1-0'));
  c.set('effect:x', '');
  assert.equal(c.since('effect:x'), '1-0');
});

test('cursors: a seed is the resume point until an event comes, never a filter', () => {
  const c = new Cursors();
  c.seed('user:1', '50-0');
  assert.equal(c.since('user:1'), '50-0', 'no event yet: resume from the seed');
  c.seed('user:1', '60-0');
  assert.equal(c.since('user:1'), '50-0', 'a channel with a resume point keeps it');
  // Events in flight when the server read its last arrive after it.
  assert.ok(c.accept('user:1', '49-0'), 'an event below the seed is new');
  assert.equal(c.since('user:1'), '50-0', 'the resume point never moves back');
  assert.ok(c.accept('user:1', '50-0'), 'so is one at the seed');
  assert.ok(c.accept('user:1', '51-0'));
  assert.equal(c.since('user:1'), '51-0');
  assert.ok(!c.accept('user:1', '51-0'));

  c.accept('effect:x', '10-0');
  c.seed('effect:x', '99-0');
  assert.equal(c.since('effect:x'), '10-0', 'a delivered cursor is never overwritten');
  c.set('public:a', '7-0');
  c.seed('public:a', '3-0');
  assert.equal(c.since('public:a'), '7-0', 'nor is an app-given one');

  c.seed('public:b', undefined);
  c.seed('public:b', '');
  assert.equal(c.since('public:b'), undefined, 'no last: nothing');
  c.seed('public:b', '0-0');
  assert.equal(c.since('public:b'), '0-0', 'an empty channel resumes from its start');
  c.forget('public:b');
  assert.equal(c.since('public:b'), undefined);
});

test('token bucket: a burst, then the rate, never more', () => {
  assert.ok(SEND_RATE < 10 && SEND_BURST < 20, 'below the server defaults');
  const b = new TokenBucket(8, 15, 1000);
  for (let i = 0; i < 15; i++) assert.equal(b.take(1000), 0, `burst frame ${i}`);
  assert.equal(b.take(1000), 125, 'then one every 1000/8 ms');
  assert.equal(b.take(1060), 65, 'a wait spends nothing');
  assert.equal(b.take(1125), 0);
  assert.equal(b.take(1125), 125);
  // Sending whenever allowed for 10 s: never more than burst + rate·t.
  const sent = [];
  for (let now = 2000; now < 12000; now++) if (b.take(now) === 0) sent.push(now);
  for (const t of sent) {
    const inFirst = sent.filter((s) => s <= t).length;
    assert.ok(inFirst <= 15 + ((t - 1125) * 8) / 1000 + 1e-9, `${inFirst} frames by ${t}`);
  }
  assert.ok(sent.length >= 80 - 1 && sent.length <= 80 + 15, `${sent.length} frames in 10 s`);
});

test('token bucket: idle time refills up to the burst only; empty and bad input', () => {
  const b = new TokenBucket(10, 3, 0);
  for (let i = 0; i < 3; i++) b.take(0);
  assert.equal(b.take(60_000) + b.take(60_000) + b.take(60_000), 0, 'a minute idle: the burst again');
  assert.ok(b.take(60_000) > 0, 'but no more');
  b.empty(120_000);
  assert.equal(b.take(120_000), 100, 'emptied: wait for the next token');
  const back = new TokenBucket(10, 1, 5000);
  back.take(5000);
  assert.equal(back.take(1000), 100, 'a clock set back adds nothing, and freezes nothing');
  assert.equal(back.take(1100), 0);
  const odd = new TokenBucket(0, -1, 0);
  assert.equal(odd.rate, SEND_RATE);
  assert.equal(odd.burst, SEND_BURST);
});

test('heartbeat: dead after the missed pings in a row, alive on any frame', () => {
  const hb = new Heartbeat(2);
  assert.equal(hb.tick(), 'ping');
  assert.equal(hb.tick(), 'ping');
  assert.equal(hb.tick(), 'dead');
  const alive = new Heartbeat(2);
  for (let i = 0; i < 10; i++) {
    assert.equal(alive.tick(), 'ping');
    alive.seen(); // the pong
  }
  // A late tick (throttled timers) after an answered ping is not a miss.
  assert.equal(alive.tick(), 'ping');
});

test('connect URL carries a ticket and the resume point, escaped', () => {
  assert.equal(connectURL('ws://h/ws'), 'ws://h/ws');
  assert.equal(connectURL('ws://h/ws', { ticket: 'a+b/c', since: '1-2' }), 'ws://h/ws?ticket=a%2Bb%2Fc&since=1-2');
  assert.equal(connectURL('ws://h/ws?x=1', { since: '3-4' }), 'ws://h/ws?x=1&since=3-4');
  assert.equal(defaultURL({ protocol: 'https:', host: 'rt.example.com' }), 'wss://rt.example.com/ws');
  assert.equal(defaultURL({ protocol: 'http:', host: '127.0.0.1:8080' }), 'ws://127.0.0.1:8080/ws');
});

test('SSE: stream URLs carry the ticket, the channels and the cursor', () => {
  assert.equal(streamURL('http://gw/sse'), 'http://gw/sse');
  assert.equal(streamURL('http://gw/sse', { ticket: 't 1', channels: ['effect:a', 'public:b&c'], cursor: '1.a-1' }),
    'http://gw/sse?ticket=t%201&channel=effect%3Aa&channel=public%3Ab%26c&lastEventId=1.a-1');
  assert.equal(streamURL('http://gw/sse?x=1', { channels: ['public:a'] }), 'http://gw/sse?x=1&channel=public%3Aa');
});

test('SSE: the cursor holds every id by position, in base 36', () => {
  assert.equal(encodeCursor([]), undefined);
  assert.equal(encodeCursor([undefined, '']), undefined);
  assert.equal(encodeCursor(['100-0']), '1.2s-0');
  assert.equal(encodeCursor([undefined, '1702420406568-3', 'junk', '5-0', undefined]), '1..lq2x5kq0-3..5-0');
  assert.equal(encodeCursor(['18446744073709551615-18446744073709551615']), '1.3w5e11264sgsf-3w5e11264sgsf', 'exact past 2^53');
  assert.equal(encodeCursor(['18446744073709551616-0', '1-1']), '1..1-1', 'past 2^64: no id, rather than a refused cursor');
});

test('SSE: the /sse URL beside a /ws one', () => {
  assert.equal(sseURLFrom('ws://gw/ws'), 'http://gw/sse');
  assert.equal(sseURLFrom('wss://rt.example.com:8443/herald/ws?x=1'), 'https://rt.example.com:8443/herald/sse?x=1');
  assert.equal(sseURLFrom('wss://rt.example.com/socket'), null);
  assert.equal(sseURLFrom('https://rt.example.com/ws'), null);
  assert.equal(sseURLFrom('ws://gw'), null);
});
