// A typed application of the client, compiled with `tsc --strict` (tsconfig.json) and
// never run: it holds hubbub.d.ts to the API that docs/browser-client.md teaches and
// hubbub.js implements. Each `@ts-expect-error` is a misuse the declarations must refuse
// (tsc fails if the line compiles without an error).
import {
  backoffDelay,
  connect,
  HubbubClient,
  HubbubConnectionError,
  HubbubError,
  HubbubTimeoutError,
  listen,
  PROTOCOL_VERSION,
  SUBPROTOCOL,
  type Ack,
  type ClientState,
  type History,
  type JsonValue,
  type Listener,
  type Message,
  type Position,
  type Presence,
  type ServerMessage,
  type Subscribed,
  type Subscription,
  type Welcome,
} from "@hubbub/client";

interface ChatLine {
  [key: string]: JsonValue;
  text: string;
  author: string;
}

declare function show(line: ChatLine, offset: number | null | undefined): void;
declare function reloadRoom(channel: string): Promise<History>;

const version: 1 = PROTOCOL_VERSION;
const subprotocol: "hubbub.v1.json" = SUBPROTOCOL;

// -- connecting ------------------------------------------------------------------------

const client = new HubbubClient({
  url: "wss://hub.example/rt/ws",
  token: () => fetch("/token").then((response) => response.text()),
  params: { room: "lobby", v: 2 },
  batch: true,
  timeout: 5_000,
  backoffBase: 250,
  backoffCap: 10_000,
  maxAttempts: 20,
  refreshBefore: 60,
  quiet: true,
  WebSocket,
});
const offline = connect({ connect: false, token: null, url: new URL("ws://127.0.0.1:8000/ws") });
offline.connect();
// @ts-expect-error a token is a string, null or a function returning one
connect({ token: 42 });
// @ts-expect-error `params` values are strings or numbers
connect({ params: { debug: true } });

const state: ClientState = client.state;
const welcomed: Welcome | null = client.welcome;
const personal: string = client.personalChannel;
const held: Map<string, Subscription> = client.subscriptions;

async function start(): Promise<void> {
  const welcome = await client.connected({ timeout: 2_000 });
  const node: string = welcome.node;
  const expires: number | null = welcome.expires;
  const serverMade: Subscribed[] = welcome.subscribed;
  console.log(node, expires, serverMade.length, welcome.ping, welcome.pong_timeout);
}

// -- subscribing -----------------------------------------------------------------------

const room = client.subscribe<ChatLine>("chat:lobby", {
  history: 50,
  token: async (channel) => (await fetch(`/channel-token?c=${channel}`)).text(),
  onMessage: (message, { source, subscription }) => {
    const line: ChatLine = message.data;
    show(line, message.offset);
    if (source === "recovered" || source === "history") console.log(subscription.channel);
    // @ts-expect-error a Source is "live" | "history" | "recovered"
    if (source === "replayed") console.log("never");
    console.log(message.sender?.user, message.ts);
  },
  onSubscribed: ({ recovered, delivered, resubscribed, subscribed }) => {
    const maybe: boolean | undefined = recovered;
    console.log(maybe, delivered, resubscribed, subscribed.publications.length);
  },
  onUnrecovered: async ({ channel }) => reloadRoom(channel),
  onJoin: (event) => console.log(event.user, event.client, event.name),
  onLeave: (event) => console.log(event.user),
  onUnsubscribed: ({ channel }) => console.log(channel),
  onError: (error) => console.log(error.code, error.reason, error.command),
});
// An onUnrecovered may also answer at once, or with the position its reload reflects.
client.subscribe("feed:news", { onUnrecovered: () => undefined });
client.subscribe("feed:prices", {
  onUnrecovered: async (): Promise<Position> => ({ offset: 10, epoch: "e1" }),
});
// @ts-expect-error a channel token function takes the channel and returns a string
client.subscribe("chat:vip", { token: () => 7 });
// @ts-expect-error history is a count
client.subscribe("chat:vip", { history: "all" });

const position: Position | null = room.position;
const roomState: "pending" | "subscribed" | "unsubscribed" | "failed" = room.state;
console.log(position, roomState, room.serverSide, room.duplicates, room.gaps, room.channel);
room.ready.then((subscribed: Subscribed) => console.log(subscribed.recovered, subscribed.offset));
const again: Subscription | undefined = client.subscription("chat:lobby");
// @ts-expect-error the counters are read-only
room.duplicates = 0;

// -- commands and their replies --------------------------------------------------------

async function talk(): Promise<void> {
  const ack: Ack = await client.publish("chat:lobby", { text: "hi", author: "ada" });
  console.log(ack.offset, ack.epoch);
  await client.publish("chat:lobby", [1, "two", null, { three: true }], { echo: false, timeout: 1_000 });
  const page: History = await client.history("chat:lobby", {
    limit: 20,
    since: { offset: 3, epoch: "e1" },
    reverse: true,
  });
  for (const message of page.publications) console.log(message.offset, message.data);
  const who: Presence = await client.presence("chat:lobby");
  console.log(who.users, Object.values(who.clients).map((info) => info.user));
  const refreshed: Ack = await client.refresh();
  console.log(refreshed.expires);
  const reply: ServerMessage = await client.request({ type: "presence", channel: "chat:lobby" });
  if (reply.type === "presence") console.log(reply.users);
  await client.request({ type: "whatever-a-newer-server-knows", answer: 42 });
  await room.unsubscribe();
  // @ts-expect-error publications carry JSON: a function is not
  await client.publish("chat:lobby", () => "hi");
  // @ts-expect-error `undefined` is not JSON either
  await client.publish("chat:lobby", undefined);
}

async function failures(): Promise<void> {
  try {
    await client.publish("chat:lobby", "hi");
  } catch (error) {
    if (error instanceof HubbubTimeoutError) {
      const code: number = error.code; // 408
      console.log(code, error.command);
    } else if (error instanceof HubbubConnectionError) {
      console.log(error.code === 0 ? "offline" : `closed ${error.code}`);
    } else if (error instanceof HubbubError) {
      console.log(error.reason, error.message, error.name);
    }
  }
  const made = new HubbubError(403, "forbidden", { type: "publish", channel: "x" });
  const timedOut: HubbubError = new HubbubTimeoutError(1_000);
  const lost: HubbubError = new HubbubConnectionError(1006, "connection closed");
  console.log(made, timedOut, lost, backoffDelay(3), backoffDelay(3, 100, 1_000));
}

// -- events ----------------------------------------------------------------------------

const stop = client.on("state", ({ state, code, reason, delay, attempt }, event) => {
  console.log(state, code, reason, delay, attempt, event.type);
});
stop();
client.on("state", ({ client: id, user }) => console.log(id, user));
client.on("welcome", (welcome) => console.log(welcome.client, welcome.user));
client.on("disconnect", ({ code, reason, reconnect }) => console.log(code, reason, reconnect));
client.on("close", ({ delay }) => console.log(delay === null ? "final" : `retry in ${delay}`));
client.on("error", ({ error }) => console.error(error));
client.on("message", ({ message, source, subscription }) => {
  const data: JsonValue = message.data;
  console.log(data, source, subscription?.channel);
});
client.on("unrecovered", ({ channel, subscription }) => console.log(channel, subscription.state));
client.on("unsubscribed", ({ channel }) => console.log(channel));
client.on("join", (join) => console.log(join.channel, join.user));
client.on("leave", (leave) => console.log(leave.channel, leave.user));
client.addEventListener("welcome", (event) => console.log(event.type));
// @ts-expect-error there is no such event
client.on("connected", () => undefined);

client.close();
client.close(4000, "bye");

// -- Server-Sent Events ----------------------------------------------------------------

const feed: Listener = listen<ChatLine>(["news", "chat:lobby"], {
  url: "/rt/sse",
  token: "eyJ...",
  withCredentials: true,
  lastEventId: "e1:41",
  onMessage: (message: Message<ChatLine>) => show(message.data, message.offset),
  onOpen: () => console.log("open"),
  onError: (error) => console.log(error.code),
  onUnrecovered: ({ channel, previous, message, subscribed }) =>
    console.log(channel, previous?.offset, message?.offset, subscribed?.recovered),
  onDisconnect: (goodbye) => console.log(goodbye.code, goodbye.reconnect),
  EventSource,
});
const single = listen("news");
console.log(feed.source?.readyState, feed.lastEventId, single.lastEventId);
feed.close();
// @ts-expect-error `listen` takes channel names
listen(42);

export {
  again,
  failures,
  held,
  offline,
  personal,
  start,
  state,
  subprotocol,
  talk,
  version,
  welcomed,
};
