// Unit tests of herald-core.js: node --test web/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  BACKOFF, backoffDelay, restartDelay, closeAction, compareIds, parseId, Cursors, Heartbeat,
  connectURL, defaultURL,
} from '../herald-core.js';

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
