// TypeScript declarations of hubbub.js and of the wire protocol, version 1.
//
// The message types below are written from the JSON Schema that `hubbub schema`
// prints (the msgspec types of hubbub.messages); tests/test_js_schema.py checks
// that every `type` tag here and in hubbub.js exists there, and the reverse.
// Served by the hub at <prefix>/hubbub.d.ts, beside <prefix>/hubbub.js.

// -- the wire protocol (PROTOCOL.md §3) ----------------------------------------------------

/** Any JSON value: what `data` carries. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** A place in a channel's stream; an offset means nothing under another epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Who sent a publication, or who is present: stamped by the server. */
export interface ClientInfo {
  user: string;
  client: string;
  name?: string | null;
  info?: { [key: string]: JsonValue } | null;
}

// Client → server

export interface SubscribeCommand {
  type: "subscribe";
  channel: string;
  id?: number | null;
  recover?: Position | null;
  history?: number | null;
  token?: string | null;
}

export interface UnsubscribeCommand {
  type: "unsubscribe";
  channel: string;
  id?: number | null;
}

export interface PublishCommand {
  type: "publish";
  channel: string;
  data: JsonValue;
  id?: number | null;
  echo?: boolean | null;
  idempotency_key?: string | null;
}

export interface HistoryCommand {
  type: "history";
  channel: string;
  id?: number | null;
  limit?: number | null;
  since?: Position | null;
  reverse?: boolean;
}

export interface PresenceCommand {
  type: "presence";
  channel: string;
  id?: number | null;
}

export interface RefreshCommand {
  type: "refresh";
  token: string;
  id?: number | null;
}

export interface PongCommand {
  type: "pong";
  id?: number | null;
}

export type Command =
  | SubscribeCommand
  | UnsubscribeCommand
  | PublishCommand
  | HistoryCommand
  | PresenceCommand
  | RefreshCommand
  | PongCommand;

// Server → client

/** A publication. `offset`/`epoch` only where the channel keeps history. */
export interface Message<T = JsonValue> {
  type: "message";
  channel: string;
  data: T;
  ts: number;
  offset?: number | null;
  epoch?: string | null;
  sender?: ClientInfo | null;
}

export interface Subscribed {
  type: "subscribed";
  channel: string;
  publications: Message[];
  id?: number | null;
  offset?: number | null;
  epoch?: string | null;
  /** Only when `recover` was asked. */
  recovered?: boolean | null;
}

export interface Welcome {
  type: "welcome";
  client: string;
  user: string;
  node: string;
  ping: number;
  pong_timeout: number;
  expires: number | null;
  subscribed: Subscribed[];
  version?: number;
}

export interface Unsubscribed {
  type: "unsubscribed";
  channel: string;
  id?: number | null;
}

export interface Join {
  type: "join";
  channel: string;
  user: string;
  client: string;
  info?: { [key: string]: JsonValue } | null;
  name?: string | null;
}

export interface Leave {
  type: "leave";
  channel: string;
  user: string;
  client: string;
  info?: { [key: string]: JsonValue } | null;
  name?: string | null;
}

export interface Ack {
  type: "ack";
  id?: number | null;
  offset?: number | null;
  epoch?: string | null;
  expires?: number | null;
}

export interface History {
  type: "history";
  channel: string;
  publications: Message[];
  id?: number | null;
  offset?: number | null;
  epoch?: string | null;
}

export interface Presence {
  type: "presence";
  channel: string;
  clients: { [client: string]: ClientInfo };
  users: number;
  id?: number | null;
}

export interface ErrorMessage {
  type: "error";
  code: number;
  reason: string;
  id?: number | null;
}

export interface Ping {
  type: "ping";
}

export interface Disconnect {
  type: "disconnect";
  code: number;
  reason: string;
  reconnect: boolean;
}

export type ServerMessage =
  | Welcome
  | Subscribed
  | Unsubscribed
  | Message
  | Join
  | Leave
  | Ack
  | History
  | Presence
  | ErrorMessage
  | Ping
  | Disconnect;

// -- the client ----------------------------------------------------------------------------

export declare const PROTOCOL_VERSION: 1;
export declare const SUBPROTOCOL: "hubbub.v1.json";

/** The server's `error` (code and reason as sent), or a failure to get an answer. */
export declare class HubbubError extends Error {
  constructor(code: number, reason: string, command?: object);
  readonly code: number;
  readonly reason: string;
  /** The command that failed, `id` included, where there is one. */
  readonly command?: object;
}

/** No reply within the timeout (code 408); the command may still have run. */
export declare class HubbubTimeoutError extends HubbubError {
  constructor(ms: number, command?: object);
}

/** Not connected (code 0), or the connection closed before the reply (code: the close code). */
export declare class HubbubConnectionError extends HubbubError {}

/** Exponential back-off with full jitter: random in [0, min(cap, base * 2^attempt)) ms. */
export declare function backoffDelay(attempt: number, base?: number, cap?: number): number;

export type TokenSource = string | null | (() => string | null | Promise<string | null>);

export interface HubbubOptions {
  /** The WebSocket endpoint; default: `ws` beside the module (`<prefix>/ws`). */
  url?: string | URL;
  /**
   * The connection JWT, sent as the `bearer.<jwt>` subprotocol. A function is called
   * again before every reconnect and before `expires` (then sent with `refresh`).
   * Leave it out to rely on the cookie (or anonymous access).
   */
  token?: TokenSource;
  /** Extra query parameters of the WebSocket URL. */
  params?: Record<string, string | number>;
  /** Ask for batched frames (`?batch=1`). */
  batch?: boolean;
  /** Milliseconds to wait for a reply (and for `welcome`); default 10000. */
  timeout?: number;
  /** Back-off base and cap in milliseconds; defaults 500 and 30000. */
  backoffBase?: number;
  backoffCap?: number;
  /** Consecutive failed connection attempts before giving up; default Infinity. */
  maxAttempts?: number;
  /** Seconds before the token's `expires` to refresh it; default 30. */
  refreshBefore?: number;
  /** Connect in the constructor (default true). */
  connect?: boolean;
  /** No console warnings for errors also dispatched as "error" events. */
  quiet?: boolean;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: typeof WebSocket;
}

export type ClientState = "idle" | "connecting" | "connected" | "reconnecting" | "disconnected" | "closed";

/** Where a delivered publication comes from. */
export type Source = "live" | "history" | "recovered";

export interface DeliveryInfo {
  source: Source;
  subscription: Subscription;
}

export interface SubscribedInfo {
  channel: string;
  subscribed: Subscribed;
  subscription: Subscription;
  /** true/false when `recover` was asked; undefined for a fresh subscription. */
  recovered: boolean | undefined;
  /** Publications delivered to onMessage from this reply (duplicates dropped). */
  delivered: number;
  /** Not the first `subscribed` of this subscription (a reconnect or a recovery). */
  resubscribed: boolean;
}

export interface UnrecoveredInfo {
  channel: string;
  subscribed: Subscribed;
  subscription: Subscription;
}

export interface SubscribeOptions<T = JsonValue> {
  /** Ask for the last n publications on the first subscribe (not on recovery). */
  history?: number;
  /** A channel token (§4), or a function returning one (called on every subscribe). */
  token?: string | ((channel: string) => string | Promise<string>);
  /** Every publication, exactly once and in order for channels with history. */
  onMessage?: (message: Message<T>, info: DeliveryInfo) => void;
  /** After each `subscribed` (first time, reconnects, recoveries). */
  onSubscribed?: (info: SubscribedInfo) => void;
  /**
   * Missed publications could not be recovered: reload the state from the application.
   * Return a Promise to hold live messages until the reload is done; resolve it with
   * the position the reload reflects (a `history` reply will do) so that live messages
   * already in it are skipped.
   */
  onUnrecovered?: (info: UnrecoveredInfo) => void | Promise<Position | History | null | undefined | void>;
  onJoin?: (event: Join) => void;
  onLeave?: (event: Leave) => void;
  /** The server removed the subscription (`unsubscribed` without `id`). */
  onUnsubscribed?: (info: { channel: string }) => void;
  /** The subscribe was refused (403, 404…) or must be retried (429, 500, 503). */
  onError?: (error: HubbubError) => void;
}

export declare class Subscription<T = JsonValue> {
  /** Made by `HubbubClient.subscribe` (or by the client for server-made subscriptions). */
  constructor(client: HubbubClient, channel: string, options: SubscribeOptions<T>);
  readonly client: HubbubClient;
  readonly channel: string;
  readonly options: SubscribeOptions<T>;
  /** The last position seen, or null for channels without history. */
  readonly position: Position | null;
  readonly state: "pending" | "subscribed" | "unsubscribed" | "failed";
  /** Made by the server (personal channel, token `channels` claim). */
  readonly serverSide: boolean;
  /** Live publications dropped because their offset was already seen. */
  readonly duplicates: number;
  /** Recoveries started while connected because of a gap or an epoch change. */
  readonly gaps: number;
  /** Resolves with the first `subscribed`; rejects when refused or unsubscribed first. */
  readonly ready: Promise<Subscribed>;
  unsubscribe(): Promise<void>;
}

export interface HubbubEventMap {
  /**
   * `attempt` while connecting; `code`, `reason`, `delay` and `attempt` when reconnecting
   * after a close; `client` and `user` (from the `welcome`) once connected; `code` and
   * `reason` when disconnected or closed.
   */
  state: {
    state: ClientState;
    code?: number;
    reason?: string;
    delay?: number;
    attempt?: number;
    client?: string;
    user?: string;
  };
  welcome: Welcome;
  disconnect: { code: number; reason: string; reconnect: boolean };
  close: { code: number; reason: string; reconnect: boolean; delay: number | null };
  error: { error: unknown };
  message: { message: Message; source: Source; subscription: Subscription | null };
  unrecovered: UnrecoveredInfo;
  unsubscribed: { channel: string; subscription: Subscription };
  join: Join;
  leave: Leave;
}

export declare class HubbubClient extends EventTarget {
  constructor(options?: HubbubOptions);
  readonly state: ClientState;
  readonly welcome: Welcome | null;
  /** "#<user>" once welcomed; "" for anonymous clients. */
  readonly personalChannel: string;
  readonly subscriptions: Map<string, Subscription>;
  /** Listen to an event; returns a function that stops listening. */
  on<K extends keyof HubbubEventMap>(
    type: K,
    listener: (detail: HubbubEventMap[K], event: CustomEvent<HubbubEventMap[K]>) => void,
  ): () => void;
  connected(options?: { timeout?: number }): Promise<Welcome>;
  connect(): void;
  close(code?: number, reason?: string): void;
  subscribe<T = JsonValue>(channel: string, options?: SubscribeOptions<T>): Subscription<T>;
  subscription(channel: string): Subscription | undefined;
  publish(channel: string, data: JsonValue, options?: { echo?: boolean; timeout?: number }): Promise<Ack>;
  history(
    channel: string,
    options?: { limit?: number; since?: Position; reverse?: boolean; timeout?: number },
  ): Promise<History>;
  presence(channel: string, options?: { timeout?: number }): Promise<Presence>;
  refresh(options?: { timeout?: number }): Promise<Ack>;
  request(command: Command | { type: string; [key: string]: unknown }, options?: { timeout?: number }): Promise<ServerMessage>;
}

export declare function connect(options?: HubbubOptions): HubbubClient;

export interface ListenOptions<T = JsonValue> {
  /** The SSE endpoint; default: `sse` beside the module (`<prefix>/sse`). */
  url?: string | URL;
  /** Sent as `?token=` (EventSource cannot send headers; it may reach access logs). */
  token?: string;
  withCredentials?: boolean;
  /** Resume from this event id (`?last_event_id=`). */
  lastEventId?: string;
  onMessage?: (message: Message<T>) => void;
  onOpen?: () => void;
  onError?: (error: HubbubError) => void;
  onUnrecovered?: (info: { channel: string; previous: Position | null; message?: Message<T>; subscribed?: Subscribed }) => void;
  onDisconnect?: (goodbye: Partial<Disconnect>) => void;
  EventSource?: typeof EventSource;
}

export interface Listener {
  readonly source: EventSource | null;
  readonly lastEventId: string | null;
  close(): void;
}

/** Listen-only over Server-Sent Events (`<prefix>/sse?channel=…`). */
export declare function listen<T = JsonValue>(channels: string | string[], options?: ListenOptions<T>): Listener;
