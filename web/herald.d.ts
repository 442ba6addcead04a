// Type declarations of herald.js, the Herald browser client (PROTOCOL §3-5).

/** Connection state: `idle` before the first connect, `closed` for good. */
export type State = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/**
 * How the client connects: `auto` (WebSocket, falling back to Server-Sent
 * Events by itself when sockets keep failing to open), or one of the two.
 */
export type Transport = 'auto' | 'websocket' | 'sse';

/** What a `state` listener gets with the state. */
export interface StateInfo {
  /** `open`: the replica serving the socket (the welcome frame's `node`). */
  node?: string | null;
  user?: string | null;
  conn?: string | null;
  /** `open`: the connect asked to resume the personal channel (`?since=`). */
  resumed?: boolean;
  /** `open`, `reconnecting`: the transport of this (or the next) connection. */
  transport?: 'websocket' | 'sse';
  /** `reconnecting`: retries since the last stable connection. */
  attempt?: number;
  /** `reconnecting`: milliseconds until the next connect. */
  delay?: number;
  /** The WebSocket close code and reason, when a socket closed (or an SSE stream's close frame told them; 1006 for a stream that failed). */
  code?: number;
  /**
   * Also why the client stopped (`closed`): `client` (close()), `unauthorized`,
   * `invalid url`, `no WebSocket implementation`, `no EventSource implementation`.
   */
  reason?: string;
  /** false when the handshake itself was refused (401, 403, 429, 503: the page cannot see which). */
  opened?: boolean;
  /** A ticket callback's failure (or `ticket timeout`), or the WebSocket constructor's. */
  error?: string;
}

/** `{"type":"welcome"}` (PROTOCOL §4). */
export interface WelcomeFrame {
  type: 'welcome';
  conn: string;
  user: string;
  node: string;
  /** Seconds between the server's pings. */
  heartbeat: number;
  /** Present when the connect asked to resume (`?since=`). */
  recovered?: boolean;
  /** Without `?since=`: the personal channel's newest event id, the client's resume point until an event comes. */
  last?: string;
}

/** `{"type":"event"}`: one published event. */
export interface EventFrame<T = unknown> {
  type: 'event';
  channel: string;
  /** `{ms}-{seq}`, increasing per channel. */
  id: string;
  event: string;
  data: T;
  /** Milliseconds since the epoch. */
  ts: number;
}

export interface SubscribedFrame {
  type: 'subscribed';
  ref: number;
  channel: string;
  /** false: the history no longer covered what was missed; refetch the state. */
  recovered?: boolean;
  /** Without `since`: the channel's newest event id, the client's resume point until an event comes. */
  last?: string;
}

export interface ErrorFrame {
  type: 'error';
  /** The frame's ref; over SSE, the channel's position in the stream's URL. */
  ref?: number;
  /** bad_frame: the server sent a frame the client could not use (reported, skipped). */
  code: 'forbidden' | 'bad_request' | 'not_found' | 'rate_limited' | 'unavailable' | 'bad_frame' | string;
  message: string;
  /** The channel of a subscription the server ended by itself (code: its reason), or that an SSE stream refused. */
  channel?: string;
  /** The start of an unusable frame (code bad_frame). */
  frame?: string;
}

/** Events of a channel were lost on the server's side and could not be recovered. */
export interface GapFrame {
  type: 'gap';
  channel: string;
}

/** The `data` of an `effect.complete` event: the classic job-complete JSON. */
export interface EffectComplete {
  userEffectId: string;
  resultUrl: string;
  /** Milliseconds since the epoch. */
  timestamp: number;
  userId?: string;
  [field: string]: unknown;
}

/** Reconnect timing, in milliseconds. */
export interface Backoff {
  /** Ceiling of the first retry's delay. */
  base: number;
  /** No ceiling grows past this. */
  cap: number;
  /** After a 1012 (server restart), reconnect within this. */
  restart: number;
}

/**
 * What the client uses of a WebSocket: the browser's, Node 22's global one
 * and the `ws` package's all fit. Declared here so that the types need no
 * DOM library.
 */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

/** What the client uses of an EventSource: the browser's fits. */
export interface EventSourceLike {
  readonly readyState: number;
  close(): void;
  addEventListener(type: string, listener: (event: unknown) => void): void;
  onopen: unknown;
  onmessage: unknown;
  onerror: unknown;
}

export interface HeraldOptions {
  /** WebSocket URL; default `ws(s)://location.host/ws` (session cookie). */
  url?: string;
  /**
   * Fetches a one-time ticket (`POST /api/tickets` done by your backend)
   * before every connect, for pages on another origin. Throw an error with
   * `status: 401` to stop the client.
   */
  ticket?: () => string | Promise<string>;
  backoff?: Partial<Backoff>;
  /** Milliseconds for a ticket, and from opening a socket to its welcome; default 10000. */
  connectTimeout?: number;
  /**
   * Frames the client sends per second, at most; default 8. Keep it below
   * the server's `HERALD_CLIENT_MSG_RATE` (default 10).
   */
  sendRate?: number;
  /**
   * Frames the client sends at once, at most; default 15 (server:
   * `HERALD_CLIENT_MSG_BURST`, 20). A close 4008 (too fast) halves both.
   */
  sendBurst?: number;
  /**
   * A WebSocket constructor to use instead of the global one: on Node 18
   * and 20, which have none without `--experimental-websocket`, the `ws`
   * package's.
   */
  WebSocket?: new (url: string) => WebSocketLike;
  /** Default `auto`. */
  transport?: Transport;
  /** The gateway's `/sse` URL; default `url` with http(s) for ws(s) and `/sse` for `/ws`. */
  sseUrl?: string;
  /** An EventSource constructor to use instead of the global one. */
  EventSource?: new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;
  /** Returns a number in [0, 1); default Math.random. */
  random?: () => number;
}

export type EventListener<T = unknown> = (data: T, frame: EventFrame<T>) => void;

export interface SubscribeResult {
  channel: string;
  recovered?: boolean;
}

export class Herald {
  constructor(opts?: HeraldOptions);

  readonly state: State;
  /** From the welcome frame; null before the first one. */
  readonly user: string | null;
  readonly node: string | null;
  readonly conn: string | null;
  /** Seconds between the server's pings, from the welcome frame. */
  readonly heartbeat: number;
  /** The transport in use (or next): `sse` once `auto` fell back. */
  readonly mode: 'websocket' | 'sse';

  on(name: 'state', fn: (state: State, info: StateInfo) => void): () => void;
  on(name: 'welcome', fn: (frame: WelcomeFrame) => void): () => void;
  on(name: 'subscribed', fn: (frame: SubscribedFrame) => void): () => void;
  /** The history no longer covered a gap on channel: refetch its state. */
  on(name: 'resync', fn: (channel: string, frame: SubscribedFrame | WelcomeFrame | GapFrame) => void): () => void;
  /** Error frames from the server and ticket callback failures. */
  on(name: 'error', fn: (err: ErrorFrame | Error) => void): () => void;
  /** Every event delivered, whatever its name. */
  on(name: 'event', fn: (frame: EventFrame) => void): () => void;
  on(name: 'effect.complete', fn: EventListener<EffectComplete>): () => void;
  /** Events by their `event` name (except the reserved names above). */
  on<T = unknown>(name: string, fn: EventListener<T>): () => void;

  /**
   * Subscribes to a channel (`effect:{id}`, `public:{name}`); renewed after
   * every reconnect, resuming after the last event delivered (or, before the
   * first, after the channel's newest event when it was subscribed). Rejects
   * with an Error carrying `code` (forbidden, not_found, bad_request) when
   * refused; `unavailable` and `rate_limited` are asked again, the promise
   * pending until the answer. Over SSE a subscribe makes a new stream with
   * the new channel set (one for a burst of them), every channel resuming.
   */
  subscribe<T = unknown>(channel: string, fn?: EventListener<T>, opts?: { since?: string }): Promise<SubscribeResult>;
  /** Removes fn, or every callback of channel; the last one ends the subscription (over SSE, with the next stream: its events are dropped meanwhile). */
  unsubscribe(channel: string, fn?: EventListener<any>): void;
  /** Drops the socket and connects again shortly, to any replica. */
  reconnect(): void;
  /** Ends the client for good. */
  close(): void;
}

export const CLOSE_NORMAL: 1000;
export const CLOSE_RESTART: 1012;
export const CLOSE_REVOKED: 4001;
export const CLOSE_RATE_LIMITED: 4008;
export const BACKOFF: Readonly<Backoff>;

/** Full-jitter delay before retry `attempt` (0-based): uniform in [0, min(cap, base·2^attempt)). */
export function backoffDelay(attempt: number, backoff?: Partial<Backoff>, random?: () => number): number;
/** Delay after a 1012: uniform in [0, spread). */
export function restartDelay(spread?: number, random?: () => number): number;
export function closeAction(code: number): 'stop' | 'restart' | 'backoff';
export function parseId(id: string): [number, number] | null;
/** Orders event ids `{ms}-{seq}`: negative when a is older. */
export function compareIds(a: string, b: string): number;
export function connectURL(base: string, params?: { ticket?: string; since?: string }): string;
export function defaultURL(loc?: { protocol: string; host: string }): string;
/** The SSE URL of a stream: ticket, channels (the personal one implied), resume cursor. */
export function streamURL(base: string, params?: { ticket?: string; channels?: string[]; cursor?: string }): string;
/** The resume cursor of a stream from the ids to resume after: the personal channel's, then the URL's channels'. */
export function encodeCursor(ids: Array<string | undefined | null>): string | undefined;
/** `ws(s)://host/…/ws` → `http(s)://host/…/sse`; null for other URLs. */
export function sseURLFrom(url: string): string | null;

/** Per-channel id of the newest event delivered: the resume point and the de-duplication filter. */
export class Cursors {
  accept(channel: string, id?: string | null): boolean;
  /** The newer of the last id delivered and the seed. */
  since(channel: string): string | undefined;
  set(channel: string, id: string): void;
  /** A resume point from the server's `last`, kept only when channel has none yet; not a filter. */
  seed(channel: string, id?: string | null): void;
  forget(channel: string): void;
}

/** Counts unanswered pings: `tick()` says `dead` after `missed` in a row. */
export class Heartbeat {
  constructor(missed?: number);
  seen(): void;
  tick(): 'ping' | 'dead';
}

/** Default pace of the client's frames: per second, and at once. */
export const SEND_RATE: number;
export const SEND_BURST: number;

/** Paces frames: up to `burst` at once, then `rate` a second; times in ms are passed in. */
export class TokenBucket {
  constructor(rate?: number, burst?: number, now?: number);
  /** Spends a token and returns 0, or returns the ms until one is there. */
  take(now: number): number;
  /** Spends every token. */
  empty(now: number): void;
}
