// A Node program using the packed @heraldgw/client, as an app would:
// type-checked with tsc, run as tsc emits it (Node resolves the package),
// and bundled with esbuild. e2e/npm_test.go drives it through its stdout.
//
//   node example.js WS_URL HTTP_BASE SESSION_ID EFFECT_ID
//
// It connects with one-time tickets, subscribes to effect:EFFECT_ID and
// prints a line at each step; once the effect's completion came on both
// channels it prints "done" and exits.
import { Herald, compareIds, type EffectComplete, type EventFrame, type State } from '@heraldgw/client';

const [url, base, sid, effect] = process.argv.slice(2);
const say = (...words: string[]): void => console.log(words.join(' '));

async function ticket(): Promise<string> {
  const res = await fetch(base + '/api/tickets', { method: 'POST', headers: { Authorization: 'Bearer ' + sid } });
  if (!res.ok) throw Object.assign(new Error('ticket: HTTP ' + res.status), { status: res.status });
  const body = (await res.json()) as { ticket: string };
  return body.ticket;
}

const h = new Herald({ url, ticket });
const seen = new Set<string>();
let subscribing = false;

function finish(what: string): void {
  seen.add(what);
  if (seen.has('effect') && seen.has('user')) {
    say('done');
    h.close();
  }
}

h.on('state', (state: State, info) => {
  if (state === 'closed' && info.reason !== 'client') {
    say('failed', info.reason ?? '', info.error ?? '');
    process.exitCode = 1;
  }
});
h.on('welcome', (frame) => {
  say('open', frame.node);
  if (subscribing) return;
  subscribing = true;
  h.subscribe<EffectComplete>('effect:' + effect, (data, f: EventFrame<EffectComplete>) => {
    say('effect', data.userEffectId, data.resultUrl, String(compareIds(f.id, f.id)));
    finish('effect');
  }).then((r) => say('subscribed', r.channel), (err: Error) => {
    say('failed', err.message);
    process.exitCode = 1;
    h.close();
  });
});
h.on('effect.complete', (data, frame) => {
  if (frame.channel.startsWith('user:')) {
    say('user', data.userEffectId);
    finish('user');
  }
});

// Never called: the types must refuse each line below its expect-error
// comment; tsc fails on an unused one, so types that were `any` fail too.
export function typeErrors(c: Herald): void {
  // @ts-expect-error a channel is a string
  void c.subscribe(42);
  // @ts-expect-error no such state
  const s: State = 'opening';
  // @ts-expect-error resultUrl is a string
  const n: number = ({} as EffectComplete).resultUrl;
  // @ts-expect-error no such transport
  void new Herald({ transport: 'polling' });
  // @ts-expect-error the transport in use is never 'auto'
  const m: 'auto' = c.mode;
  void s;
  void n;
  void m;
}
