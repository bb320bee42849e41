// hubbub.js: the browser client of the hubbub wire protocol, version 1 (PROTOCOL.md).
//
// One dependency-free ES module. The hub serves it at <prefix>/hubbub.js, so
//   import { HubbubClient } from "https://chat.example/hub/hubbub.js";
// connects to that same hub (<prefix>/ws) unless told otherwise. Types: hubbub.d.ts.
//
// What it does for the application, so no message is ever lost silently:
// - answers `ping`, and declares a connection dead when nothing arrives for
//   `ping + pong_timeout` seconds (a half-open TCP connection never closes by itself);
// - reconnects with exponential back-off and full jitter, honouring
//   `disconnect.reconnect` and the close codes of PROTOCOL.md §7;
// - keeps the last position (offset, epoch) of every subscription and resubscribes
//   with `recover` after a reconnect; `recovered: false` reaches the application
//   through `onUnrecovered`, which may return a Promise to hold live messages back
//   while the application reloads its state;
// - checks every live offset: a duplicate is dropped, a gap or a new epoch makes it
//   resubscribe with `recover` while connected (§5, §9);
// - matches replies to commands by `id` and rejects their Promises with a
//   HubbubError (the server's code and reason) or a HubbubTimeoutError.

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = "hubbub.v1.json";

// Closes after which reconnecting cannot help (§7), unless a `disconnect` message said
// otherwise; 4401 is decided apart (a token function can give the new token it needs).
// The server's table (hubbub/_closes.py) is the source: a test checks this list against it.
const FINAL_CLOSE_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010, 4403]);
const TOKEN_EXPIRED = 4401;
// Subscribe errors worth retrying on the same connection: the command was not executed.
const RETRY_CODES = new Set([429, 500, 503]);
// A token function that keeps returning the same expiring token must not spin.
const MIN_REFRESH_DELAY = 1_000;
// Gap recoveries in a row (no message delivered in order between them) before the
// client gives up on the connection and reconnects with back-off instead.
const MAX_RECOVERY_STREAK = 3;
// Reopening an SSE stream over a gap: at most this many times before accepting it.
const MAX_SSE_REOPENS = 3;
const DEFAULTS = Object.freeze({
  timeout: 10_000, // ms to wait for a reply (and for `welcome` after connecting)
  backoffBase: 500, // ms: the first retry waits up to this long
  backoffCap: 30_000, // ms: no retry waits longer than this
  maxAttempts: Infinity, // consecutive failed connection attempts before giving up
  refreshBefore: 30, // seconds before `expires` to fetch a new token and send `refresh`
});

/** An error the server answered (`error` frame), or a failure to get an answer. */
export class HubbubError extends Error {
  constructor(code, reason, command = undefined) {
    super(`${reason} (${code})`);
    this.name = "HubbubError";
    this.code = code;
    this.reason = reason;
    this.command = command;
  }
}

/** No reply within the command's timeout (code 408). The command may still have run. */
export class HubbubTimeoutError extends HubbubError {
  constructor(ms, command = undefined) {
    super(408, `no reply within ${ms} ms`, command);
    this.name = "HubbubTimeoutError";
  }
}

/** Not connected, or the connection closed before the reply came (code: the close code, or 0). */
export class HubbubConnectionError extends HubbubError {
  constructor(code, reason, command = undefined) {
    super(code, reason, command);
    this.name = "HubbubConnectionError";
  }
}

function defaultUrl(path) {
  // The module is served from <prefix>/hubbub.js: the endpoints are its siblings.
  return new URL(path, import.meta.url);
}

function toWebSocketUrl(url) {
  const target = new URL(url, globalThis.location?.href ?? import.meta.url);
  if (target.protocol === "http:") target.protocol = "ws:";
  if (target.protocol === "https:") target.protocol = "wss:";
  return target;
}

function positionOf(message) {
  return message.offset != null && message.epoch != null
    ? { offset: message.offset, epoch: message.epoch }
    : null;
}

function isThenable(value) {
  return value != null && typeof value.then === "function";
}

/** Exponential back-off with full jitter: a random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap) {
  return Math.random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/** Where the application stands in one channel: handlers, position, recovery state. */
export class Subscription {
  constructor(client, channel, options) {
    this.client = client;
    this.channel = channel;
    this.options = { ...options };
    /** The last position seen ({offset, epoch}), or null for channels without history. */
    this.position = null;
    /** "pending" | "subscribed" | "unsubscribed" | "failed" */
    this.state = "pending";
    /** Made by the server (personal channel, token `channels`): listed in `welcome`. */
    this.serverSide = false;
    /** Live messages dropped because their offset was already seen. */
    this.duplicates = 0;
    /** Recoveries started while connected because of a gap or an epoch change. */
    this.gaps = 0;
    this._busy = false; // a recovery or the application's reload is in flight
    this._held = []; // live messages waiting for it, in arrival order
    this._retry = 0;
    this._retryTimer = null;
    this._everSubscribed = false;
    this._live = false; // subscribed on the current connection
    this._streak = 0; // recoveries in a row without a message delivered in between
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // the failure also reaches onError; an unread one is no crash
  }

  /** Leave the channel. Resolves when the server confirmed (at once when offline). */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }

  _call(name, ...args) {
    const handler = this.options[name];
    if (typeof handler !== "function") return undefined;
    try {
      return handler(...args);
    } catch (error) {
      this.client._report(error);
      return undefined;
    }
  }
}

/**
 * A connection to a hub that survives disconnects.
 *
 * Events (CustomEvent, details in hubbub.d.ts): "state", "welcome", "disconnect",
 * "close", "error", "message" (publications of channels without an onMessage),
 * "unrecovered", "unsubscribed".
 */
export class HubbubClient extends EventTarget {
  #options;
  #ws = null;
  #generation = 0; // bumps on every (re)connect and close: stale callbacks check it
  #state = "idle";
  #nextId = 1;
  #pending = new Map(); // id -> {resolve, reject, timer, command}
  #subscribing = new Map(); // id of a `subscribe` in flight -> Subscription
  #subs = new Map(); // channel -> Subscription
  #attempt = 0;
  #retryTimer = null;
  #welcomeTimer = null;
  #watchdog = null;
  #idleLimit = 0;
  #refreshTimer = null;
  #disconnectHint = null; // `disconnect.reconnect` for the close that follows
  #welcome = null;
  #connectedWaiters = [];

  /**
   * @param {object} [options] see HubbubOptions in hubbub.d.ts.
   */
  constructor(options = {}) {
    super();
    this.#options = { ...DEFAULTS, ...options };
    if (options.connect !== false) this.connect();
  }

  get state() {
    return this.#state;
  }

  /** The `welcome` of the current connection, or null. */
  get welcome() {
    return this.#welcome;
  }

  /** This user's personal channel ("#<user>"), once welcomed; "" for anonymous clients. */
  get personalChannel() {
    const user = this.#welcome?.user;
    return user ? `#${user}` : "";
  }

  /** Every subscription the application (or the server) holds, by channel. */
  get subscriptions() {
    return new Map(this.#subs);
  }

  /** Listen to an event; returns a function that stops listening. */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail, event);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /** Resolves with the `welcome` once connected (at once if connected now). */
  connected({ timeout = this.#options.timeout } = {}) {
    if (this.#state === "connected") return Promise.resolve(this.#welcome);
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        this.#connectedWaiters = this.#connectedWaiters.filter((w) => w !== waiter);
        reject(new HubbubTimeoutError(timeout));
      }, timeout);
      this.#connectedWaiters.push(waiter);
    });
  }

  /** Open the connection (done by the constructor unless `connect: false`). */
  connect() {
    if (this.#state === "connecting" || this.#state === "connected") return;
    this.#attempt = 0;
    this.#open();
  }

  /** Close for good (code 1000): no reconnect; pending commands are rejected. */
  close(code = 1000, reason = "") {
    this.#generation += 1;
    clearTimeout(this.#retryTimer);
    const ws = this.#ws;
    this.#teardown(new HubbubConnectionError(code, reason || "closed by the client"));
    if (ws && ws.readyState <= 1) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close(1000); // browsers accept only 1000 and 3000-4999, reasons up to 123 bytes
      }
    }
    this.#setState("closed", { code, reason });
    for (const waiter of this.#connectedWaiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new HubbubConnectionError(code, "the client was closed"));
    }
  }

  // -- the application's API -----------------------------------------------------------

  /**
   * Subscribe to `channel` (or attach handlers to a subscription already held, such
   * as the personal channel). Survives reconnects until `unsubscribe()`.
   */
  subscribe(channel, options = {}) {
    let sub = this.#subs.get(channel);
    if (sub) {
      Object.assign(sub.options, options);
      return sub;
    }
    sub = new Subscription(this, channel, options);
    this.#subs.set(channel, sub);
    if (this.#state === "connected") this.#sendSubscribe(sub);
    return sub;
  }

  /** The subscription to `channel`, if any. */
  subscription(channel) {
    return this.#subs.get(channel);
  }

  /** Publish; resolves with the `ack` (its `offset`/`epoch` where the channel keeps history). */
  publish(channel, data, { echo, timeout } = {}) {
    const command = { type: "publish", channel, data };
    if (echo !== undefined) command.echo = echo;
    return this.request(command, { timeout });
  }

  /** Read a channel's history; resolves with the `history` reply. */
  history(channel, { limit, since, reverse, timeout } = {}) {
    const command = { type: "history", channel };
    if (limit !== undefined) command.limit = limit;
    if (since !== undefined) command.since = since;
    if (reverse !== undefined) command.reverse = reverse;
    return this.request(command, { timeout });
  }

  /** Who is in a channel; resolves with the `presence` reply. */
  presence(channel, { timeout } = {}) {
    return this.request({ type: "presence", channel }, { timeout });
  }

  /** Fetch a new token from the `token` function and send `refresh`; resolves with the `ack`. */
  async refresh({ timeout } = {}) {
    if (typeof this.#options.token !== "function") {
      throw new HubbubError(400, "refresh needs a token function (options.token)");
    }
    const generation = this.#generation;
    const token = await this.#options.token();
    if (generation !== this.#generation) {
      throw new HubbubConnectionError(0, "the connection changed while fetching the token");
    }
    const ack = await this.request({ type: "refresh", token }, { timeout });
    this.#scheduleRefresh(ack.expires);
    return ack;
  }

  /**
   * Send any command with a fresh `id` and resolve with the reply carrying it. Rejects
   * with HubbubError (the server's `error`), HubbubTimeoutError or HubbubConnectionError.
   */
  request(command, { timeout } = {}) {
    const ms = timeout ?? this.#options.timeout;
    return new Promise((resolve, reject) => {
      const id = this.#nextId++;
      const message = { ...command, id };
      if (!this.#send(message)) {
        reject(new HubbubConnectionError(0, "not connected", message));
        return;
      }
      const entry = { resolve, reject, command: message, timer: null };
      entry.timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new HubbubTimeoutError(ms, message));
      }, ms);
      this.#pending.set(id, entry);
    });
  }

  // -- the connection ------------------------------------------------------------------

  async #open() {
    const generation = ++this.#generation;
    this.#setState(this.#attempt ? "reconnecting" : "connecting", { attempt: this.#attempt });
    let token = null;
    try {
      const option = this.#options.token;
      token = typeof option === "function" ? await option() : option ?? null;
    } catch (error) {
      if (generation !== this.#generation) return;
      this.#report(error);
      this.#afterClose(1006, "the token provider failed", true);
      return;
    }
    if (generation !== this.#generation) return;

    const url = toWebSocketUrl(this.#options.url ?? defaultUrl("ws"));
    for (const [key, value] of Object.entries(this.#options.params ?? {})) {
      url.searchParams.set(key, String(value));
    }
    if (this.#options.batch) url.searchParams.set("batch", "1");
    // The token travels as a subprotocol entry beside ours, never in the URL (access logs).
    const protocols = token ? [SUBPROTOCOL, `bearer.${token}`] : [SUBPROTOCOL];
    const WebSocketClass = this.#options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new WebSocketClass(url.href, protocols);
    } catch (error) {
      this.#report(error);
      this.#afterClose(1006, String(error?.message ?? error), false);
      return;
    }
    this.#ws = ws;
    this.#disconnectHint = null;
    ws.addEventListener("message", (event) => {
      if (this.#ws === ws) this.#onFrame(event.data);
    });
    ws.addEventListener("close", (event) => {
      if (this.#ws === ws) this.#onClose(event.code, event.reason);
    });
    // Bounded: a server that accepts but never says `welcome` is given up on.
    this.#welcomeTimer = setTimeout(() => {
      if (this.#ws === ws) this.#abandon(4408, "no welcome from the server");
    }, this.#options.timeout);
  }

  // Drop a connection we no longer trust without waiting for its close handshake.
  #abandon(code, reason) {
    const ws = this.#ws;
    this.#ws = null;
    try {
      ws?.close(4000, reason.slice(0, 120));
    } catch {
      // already closing
    }
    this.#onClose(code, reason);
  }

  #onClose(code, reason) {
    this.#ws = null;
    const hint = this.#disconnectHint;
    this.#teardown(new HubbubConnectionError(code, reason || "connection closed"));
    let retry = hint ?? (code !== TOKEN_EXPIRED && !FINAL_CLOSE_CODES.has(code));
    if (code === TOKEN_EXPIRED && typeof this.#options.token === "function") {
      retry = true; // a token function can give us the new token §7 asks for
    }
    this.#afterClose(code, reason, retry);
  }

  #afterClose(code, reason, retry) {
    if (this.#state === "closed") return;
    if (!retry || this.#attempt >= this.#options.maxAttempts) {
      this.#setState("disconnected", { code, reason });
      this.#emit("close", { code, reason, reconnect: false, delay: null });
      return;
    }
    const delay = backoffDelay(this.#attempt, this.#options.backoffBase, this.#options.backoffCap);
    this.#attempt += 1;
    this.#setState("reconnecting", { code, reason, delay, attempt: this.#attempt });
    this.#emit("close", { code, reason, reconnect: true, delay });
    const generation = this.#generation;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      if (generation === this.#generation) this.#open();
    }, delay);
  }

  // Whatever belonged to the connection ends with it; positions survive to recover from.
  #teardown(error) {
    clearTimeout(this.#welcomeTimer);
    clearTimeout(this.#watchdog);
    clearTimeout(this.#refreshTimer);
    this.#watchdog = null;
    this.#welcome = null;
    this.#ws = null;
    for (const entry of this.#pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(new HubbubConnectionError(error.code, error.reason, entry.command));
    }
    this.#pending.clear();
    this.#subscribing.clear();
    for (const sub of this.#subs.values()) {
      clearTimeout(sub._retryTimer);
      sub._retryTimer = null;
      sub._busy = false;
      sub._live = false;
      sub._held = []; // not yet delivered, so `recover` brings them back
    }
  }

  #send(message) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1 || this.#welcome === null) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  #setState(state, detail = {}) {
    this.#state = state;
    this.#emit("state", { state, ...detail });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _report(error) {
    this.#report(error);
  }

  #report(error) {
    // A failing application handler must not break the client: surface it and go on.
    this.#emit("error", { error });
    if (!this.#options.quiet) console.warn("hubbub:", error);
  }

  #armWatchdog() {
    clearTimeout(this.#watchdog);
    if (!this.#idleLimit) return;
    this.#watchdog = setTimeout(() => {
      if (this.#ws) this.#abandon(4408, "no message from the server in time");
    }, this.#idleLimit);
  }

  #scheduleRefresh(expires) {
    clearTimeout(this.#refreshTimer);
    if (expires == null || typeof this.#options.token !== "function") return;
    const due = expires * 1000 - this.#options.refreshBefore * 1000 - Date.now();
    const generation = this.#generation;
    this.#refreshTimer = setTimeout(() => {
      if (generation !== this.#generation) return;
      this.refresh().catch((error) => this.#report(error));
    }, Math.max(MIN_REFRESH_DELAY, Math.min(due, 2 ** 31 - 1)));
  }

  // -- frames in -----------------------------------------------------------------------

  #onFrame(data) {
    this.#armWatchdog();
    if (typeof data !== "string") return; // we only speak hubbub.v1.json
    // With ?batch=1 a frame may carry several messages, one per line.
    for (const text of data.split("\n")) {
      if (!text.trim()) continue;
      let message;
      try {
        message = JSON.parse(text);
      } catch (error) {
        this.#report(new HubbubError(400, `unreadable frame from the server: ${error.message}`));
        continue;
      }
      if (!message || typeof message !== "object") continue;
      try {
        this.#handle(message);
      } catch (error) {
        // A message of an unexpected shape: report it, keep the connection.
        this.#report(error);
      }
    }
  }

  #handle(message) {
    switch (message.type) {
      case "welcome":
        this.#onWelcome(message);
        return;
      case "ping":
        this.#send({ type: "pong" });
        return;
      case "subscribed":
        this.#onSubscribed(message);
        break;
      case "message":
        this.#onMessage(message);
        return;
      case "join":
      case "leave":
        this.#onPresenceEvent(message);
        return;
      case "unsubscribed":
        if (message.id == null) this.#onRemoved(message);
        break;
      case "error":
        if (message.id == null) {
          this.#report(new HubbubError(message.code, message.reason));
          return;
        }
        if (this.#subscribing.has(message.id)) this.#onSubscribeError(message);
        break;
      case "disconnect":
        this.#disconnectHint = Boolean(message.reconnect);
        this.#emit("disconnect", {
          code: message.code,
          reason: message.reason,
          reconnect: Boolean(message.reconnect),
        });
        return;
      case "ack":
      case "history":
      case "presence":
        break;
      default:
        break; // a newer server's message: ignored (forward compatibility)
    }
    if (message.id == null) return;
    const entry = this.#pending.get(message.id);
    if (!entry) return; // timed out already
    this.#pending.delete(message.id);
    clearTimeout(entry.timer);
    if (message.type === "error") {
      entry.reject(new HubbubError(message.code, message.reason, entry.command));
    } else {
      entry.resolve(message);
    }
  }

  #onWelcome(message) {
    clearTimeout(this.#welcomeTimer);
    this.#welcome = message;
    this.#attempt = 0;
    this.#idleLimit = ((message.ping ?? 25) + (message.pong_timeout ?? 10)) * 1000;
    this.#armWatchdog();
    this.#scheduleRefresh(message.expires);
    const serverMade = new Set();
    for (const entry of message.subscribed ?? []) {
      serverMade.add(entry.channel);
      let sub = this.#subs.get(entry.channel);
      if (!sub) {
        sub = new Subscription(this, entry.channel, {});
        this.#subs.set(entry.channel, sub);
      }
      sub.serverSide = true;
      if (sub.position) {
        // Held before: recover what was missed while live delivery goes on (§9).
        this.#sendSubscribe(sub);
      } else {
        this.#onSubscribedFor(sub, entry);
      }
    }
    for (const sub of this.#subs.values()) {
      if (!serverMade.has(sub.channel)) {
        sub.serverSide = false;
        this.#sendSubscribe(sub);
      }
    }
    this.#setState("connected", { client: message.client, user: message.user });
    this.#emit("welcome", message);
    for (const waiter of this.#connectedWaiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.resolve(message);
    }
  }

  // -- subscriptions -------------------------------------------------------------------

  async #sendSubscribe(sub) {
    if (this.#subs.get(sub.channel) !== sub || this.#welcome === null) return;
    sub._busy = true; // live messages wait for the reply (none is lost: they are held)
    const command = { type: "subscribe", channel: sub.channel };
    if (sub.position) {
      command.recover = { ...sub.position };
    } else if (sub.options.history && !sub._everSubscribed) {
      command.history = sub.options.history;
    }
    let token = sub.options.token;
    if (typeof token === "function") {
      const generation = this.#generation;
      try {
        token = await token(sub.channel);
      } catch (error) {
        this.#failSubscription(sub, new HubbubError(403, `channel token: ${error?.message ?? error}`));
        return;
      }
      if (generation !== this.#generation || this.#subs.get(sub.channel) !== sub) return;
    }
    if (token) command.token = token;
    if (sub._live && !sub.serverSide) {
      // Recovering while connected: only a server-made subscription may be recovered in
      // place (§9); ours is left and taken again, `recover` filling what fell between.
      sub._live = false;
      this.#send({ type: "unsubscribe", channel: sub.channel, id: this.#nextId++ });
    }
    const id = this.#nextId++;
    if (!this.#send({ ...command, id })) return; // the next welcome sends it
    this.#subscribing.set(id, sub);
    const generation = this.#generation;
    // A reply that never comes would hold live messages forever: give up on the connection.
    setTimeout(() => {
      if (generation === this.#generation && this.#subscribing.get(id) === sub) {
        this.#report(new HubbubTimeoutError(this.#options.timeout, command));
        this.#abandon(4408, `no reply to subscribe ${sub.channel}`);
      }
    }, this.#options.timeout);
  }

  #onSubscribed(message) {
    let sub;
    if (message.id != null) {
      sub = this.#subscribing.get(message.id);
      this.#subscribing.delete(message.id);
    } else {
      // The server subscribed us (HTTP API subscribe of this user).
      sub = this.#subs.get(message.channel);
      if (!sub) {
        sub = new Subscription(this, message.channel, {});
        this.#subs.set(message.channel, sub);
      }
      sub.serverSide = true;
    }
    if (!sub || this.#subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
    this.#onSubscribedFor(sub, message);
  }

  #onSubscribedFor(sub, message) {
    const resubscribed = sub._everSubscribed;
    sub._everSubscribed = true;
    sub._live = true;
    sub._retry = 0;
    sub.state = "subscribed";
    const recovered = message.recovered ?? undefined;
    if (recovered === false) {
      // Nothing can be recovered: the application reloads, then live delivery resumes
      // after the position its reload reflects.
      sub.position = positionOf(message);
      sub._busy = true;
      this.#dropStale(sub, message);
      const detail = { channel: sub.channel, subscribed: message, subscription: sub };
      this.#emit("unrecovered", detail);
      const reload = sub._call("onUnrecovered", detail);
      sub._call("onSubscribed", { ...detail, recovered: false, delivered: 0, resubscribed });
      sub._resolve(message);
      if (isThenable(reload)) {
        const generation = this.#generation;
        Promise.resolve(reload).then(
          (position) => {
            if (generation !== this.#generation || this.#subs.get(sub.channel) !== sub) return;
            const reloaded = position && typeof position === "object" ? positionOf(position) : null;
            if (reloaded) sub.position = reloaded;
            this.#release(sub);
          },
          (error) => {
            this.#report(error);
            if (generation === this.#generation && this.#subs.get(sub.channel) === sub) this.#release(sub);
          },
        );
      } else {
        this.#release(sub);
      }
      return;
    }
    const source = recovered === true ? "recovered" : "history";
    let delivered = 0;
    for (const publication of message.publications ?? []) {
      if (this.#isOld(sub, publication)) {
        sub.duplicates += 1;
        continue;
      }
      const position = positionOf(publication);
      if (position) sub.position = position;
      this.#deliver(sub, publication, source);
      delivered += 1;
    }
    const top = positionOf(message);
    if (top && !this.#isOld(sub, top)) sub.position = top;
    this.#dropStale(sub, message);
    sub._call("onSubscribed", {
      channel: sub.channel,
      subscribed: message,
      subscription: sub,
      recovered,
      delivered,
      resubscribed,
    });
    sub._resolve(message);
    this.#release(sub);
  }

  // Messages held while the reply was on its way that name another epoch than the reply
  // came before it on this connection: the reply is the newer truth. Keeping them would
  // start the same recovery again and again.
  #dropStale(sub, reply) {
    if (reply.epoch == null) return;
    sub._held = sub._held.filter((held) => held.epoch == null || held.epoch === reply.epoch);
  }

  #onSubscribeError(message) {
    const sub = this.#subscribing.get(message.id);
    this.#subscribing.delete(message.id);
    if (!sub || this.#subs.get(sub.channel) !== sub) return;
    const error = new HubbubError(message.code, message.reason, { type: "subscribe", channel: sub.channel });
    if (RETRY_CODES.has(message.code)) {
      // Not executed (rate limit, broker trouble): try again later on this connection.
      sub._call("onError", error);
      const delay = backoffDelay(sub._retry++, this.#options.backoffBase, this.#options.backoffCap);
      const generation = this.#generation;
      sub._retryTimer = setTimeout(() => {
        if (generation === this.#generation) this.#sendSubscribe(sub);
      }, delay);
      return;
    }
    this.#failSubscription(sub, error);
  }

  #failSubscription(sub, error) {
    this.#subs.delete(sub.channel);
    sub.state = "failed";
    sub._busy = false;
    sub._held = [];
    sub._call("onError", error);
    sub._reject(error);
    this.#report(error);
  }

  async _unsubscribe(sub) {
    if (this.#subs.get(sub.channel) !== sub) return;
    this.#subs.delete(sub.channel);
    clearTimeout(sub._retryTimer);
    sub.state = "unsubscribed";
    sub._held = [];
    sub._reject(new HubbubConnectionError(0, "unsubscribed"));
    if (this.#state !== "connected") return;
    try {
      await this.request({ type: "unsubscribe", channel: sub.channel });
    } catch (error) {
      // 404: the server had already dropped it; offline: nothing left to undo.
      if (!(error instanceof HubbubConnectionError) && error.code !== 404) throw error;
    }
  }

  #onRemoved(message) {
    const sub = this.#subs.get(message.channel);
    if (!sub) return;
    this.#subs.delete(message.channel);
    sub.state = "unsubscribed";
    sub._held = [];
    sub._call("onUnsubscribed", { channel: message.channel });
    this.#emit("unsubscribed", { channel: message.channel, subscription: sub });
  }

  // -- publications --------------------------------------------------------------------

  #isOld(sub, message) {
    const last = sub.position;
    return last !== null && message.epoch === last.epoch && message.offset <= last.offset;
  }

  #onMessage(message) {
    const sub = this.#subs.get(message.channel);
    if (!sub) {
      this.#emit("message", { message, source: "live", subscription: null });
      return;
    }
    this.#onLive(sub, message);
  }

  #onLive(sub, message) {
    const position = positionOf(message);
    if (!position) {
      this.#deliver(sub, message, "live"); // no history: at-most-once, nothing to check
      return;
    }
    if (sub._busy) {
      sub._held.push(message);
      return;
    }
    const last = sub.position;
    if (last && position.epoch === last.epoch && position.offset <= last.offset) {
      sub.duplicates += 1;
      return;
    }
    if (last && (position.epoch !== last.epoch || position.offset !== last.offset + 1)) {
      // A gap or a new stream: hold this one and recover from our last position (§5).
      sub.gaps += 1;
      sub._held.push(message);
      if (++sub._streak > MAX_RECOVERY_STREAK) {
        // Recovering in place keeps failing: start over on a new connection, after a back-off.
        sub._streak = 0;
        this.#abandon(1013, `offsets of ${sub.channel} keep skipping`);
        return;
      }
      this.#sendSubscribe(sub);
      return;
    }
    sub._streak = 0;
    sub.position = position;
    this.#deliver(sub, message, "live");
  }

  #release(sub) {
    const held = sub._held;
    sub._held = [];
    sub._busy = false;
    for (let i = 0; i < held.length; i += 1) {
      this.#onLive(sub, held[i]);
      if (sub._busy) {
        // Another recovery started: keep the rest, in order, behind it.
        sub._held.push(...held.slice(i + 1));
        return;
      }
    }
  }

  #deliver(sub, message, source) {
    if (typeof sub.options.onMessage === "function") {
      sub._call("onMessage", message, { source, subscription: sub });
    } else {
      this.#emit("message", { message, source, subscription: sub });
    }
  }

  #onPresenceEvent(message) {
    const sub = this.#subs.get(message.channel);
    const handler = message.type === "join" ? "onJoin" : "onLeave";
    if (sub && typeof sub.options[handler] === "function") {
      sub._call(handler, message);
    } else {
      this.#emit(message.type, message);
    }
  }
}

/** Shorthand for `new HubbubClient(options)`. */
export function connect(options = {}) {
  return new HubbubClient(options);
}

/**
 * Listen-only fallback over Server-Sent Events (PROTOCOL.md §1.2): `<prefix>/sse?channel=…`.
 * The browser reconnects by itself and sends `Last-Event-ID`, so the server resends what
 * was missed; duplicates are dropped here and a gap or a new epoch reopens the stream
 * from the last event seen (`?last_event_id=`).
 */
export function listen(channels, options = {}) {
  const list = Array.isArray(channels) ? channels : [channels];
  const positions = new Map(); // channel -> {offset, epoch}
  const EventSourceClass = options.EventSource ?? globalThis.EventSource;
  let lastId = options.lastEventId ?? null;
  let source = null;
  let closed = false;
  let reopens = 0;
  const call = (name, ...args) => {
    const handler = options[name];
    if (typeof handler !== "function") return;
    try {
      handler(...args);
    } catch (error) {
      console.warn("hubbub:", error);
    }
  };

  const open = () => {
    const url = new URL(options.url ?? defaultUrl("sse"), globalThis.location?.href ?? import.meta.url);
    for (const channel of list) url.searchParams.append("channel", channel);
    // EventSource cannot send headers: a token goes in the query (it may reach access
    // logs; prefer the cookie where you can).
    if (options.token) url.searchParams.set("token", options.token);
    if (lastId) url.searchParams.set("last_event_id", lastId);
    source = new EventSourceClass(url.href, { withCredentials: Boolean(options.withCredentials) });
    const current = source;
    current.addEventListener("open", () => call("onOpen"));
    current.addEventListener("message", (event) => {
      if (current !== source) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        call("onError", new HubbubError(400, `unreadable event: ${error.message}`));
        return;
      }
      const position = positionOf(message);
      const last = position ? positions.get(message.channel) : undefined;
      if (position && last) {
        if (position.epoch === last.epoch && position.offset <= last.offset) return; // seen
        if (position.epoch === last.epoch && position.offset !== last.offset + 1 && reopens < MAX_SSE_REOPENS) {
          // A gap: reopen from the last event handled; the server resends what follows it.
          reopens += 1;
          current.close();
          if (!closed) open();
          return;
        }
        if (position.epoch !== last.epoch || position.offset !== last.offset + 1) {
          // A new stream (or a gap the server cannot fill): the application reloads.
          call("onUnrecovered", { channel: message.channel, previous: last, message });
        }
      }
      reopens = 0;
      if (position) positions.set(message.channel, position);
      if (event.lastEventId) lastId = event.lastEventId;
      call("onMessage", message);
    });
    current.addEventListener("subscribed", (event) => {
      if (current !== source) return;
      let reply;
      try {
        reply = JSON.parse(event.data);
      } catch {
        return;
      }
      // Its publications follow as `message` events, so its position is not taken here.
      if (reply.recovered === false) {
        positions.delete(reply.channel);
        call("onUnrecovered", { channel: reply.channel, previous: null, subscribed: reply });
      }
    });
    current.addEventListener("disconnect", (event) => {
      if (current !== source) return;
      let goodbye = {};
      try {
        goodbye = JSON.parse(event.data);
      } catch {
        // a goodbye we cannot read is still a goodbye
      }
      call("onDisconnect", goodbye);
      if (goodbye.reconnect === false) {
        // The browser would reconnect by itself: the server said not to.
        closed = true;
        current.close();
      }
    });
    current.addEventListener("error", () => {
      if (current !== source) return;
      // CLOSED: the server refused (an HTTP error status); the browser will not retry.
      const final = current.readyState === 2;
      call("onError", new HubbubConnectionError(0, final ? "the stream was refused" : "the stream dropped; the browser reconnects"));
    });
  };
  open();
  return {
    get source() {
      return source;
    },
    get lastEventId() {
      return lastId;
    },
    close() {
      closed = true;
      source?.close();
    },
  };
}
