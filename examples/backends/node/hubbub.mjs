// A backend in Node.js talking to hubbub with the standard library only (Node >= 18):
// it mints connection tokens (HS256, node:crypto) and publishes over hubbub's HTTP API (fetch).
//
//   HUBBUB_JWT_SECRET=... node hubbub.mjs token alice [--ttl 3600] [--channel news] \
//       [--claim 'rooms=["chat:lobby"]']
//   HUBBUB_URL=https://hub.example.com HUBBUB_API_KEY=... node hubbub.mjs publish news '{"text":"hi"}'
//
// `token` prints a token for the browser (new WebSocket(url, ["hubbub.v1.json", "bearer." + token]));
// `publish` prints hubbub's answer ({"offset", "epoch"} for a channel with history, {} otherwise).

import { createHmac } from "node:crypto";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const base64url = (data) => Buffer.from(data).toString("base64url");

// A connection token: `sub` names the user; `exp` is required by hubbub and must be a number.
// `extra` adds claims of your own, e.g. {rooms: ["chat:lobby"]} for a namespace whose access
// is `{ claim = "rooms" }` in hubbub.toml.
export function mintToken(secret, user, { ttl = 3600, channels = [], name, extra = {} } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const claims = { ...extra, sub: user, iat: now, exp: now + ttl };
  if (channels.length) claims.channels = channels; // subscribed by the server on connect
  if (name) claims.name = name;
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify(claims));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

// POST <url>/api/publish: every subscriber of `channel`, on every node, gets `data`.
export async function publish(url, apiKey, channel, data, { idempotencyKey } = {}) {
  const body = { channel, data };
  if (idempotencyKey) body.idempotency_key = idempotencyKey; // a retry is not delivered twice
  const response = await fetch(new URL("api/publish", url.endsWith("/") ? url : url + "/"), {
    method: "POST",
    headers: { Authorization: `apikey ${apiKey}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  let answer;
  try {
    answer = JSON.parse(text);
  } catch {
    answer = { reason: text.slice(0, 200) }; // not hubbub speaking: a proxy's error page
  }
  if (!response.ok) {
    // Errors are {code, reason} with the HTTP status (401 wrong key, 422 schema, 503 broker...).
    throw new Error(`hubbub answered ${response.status}: ${answer.reason}`);
  }
  return answer;
}

function need(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`error: set ${name}`);
    process.exit(2);
  }
  return value;
}

async function main() {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: {
      ttl: { type: "string", default: "3600" },
      channel: { type: "string", multiple: true, default: [] },
      name: { type: "string" },
      claim: { type: "string", multiple: true, default: [] },
    },
  });
  const [command, ...args] = positionals;
  if (command === "token" && args.length === 1) {
    const ttl = Number(values.ttl);
    if (!Number.isInteger(ttl) || ttl <= 0) {
      console.error("error: --ttl must be a positive number of seconds");
      process.exit(2);
    }
    const extra = {};
    for (const claim of values.claim) {
      const at = claim.indexOf("=");
      try {
        if (at < 1) throw new Error("expected KEY=JSON");
        extra[claim.slice(0, at)] = JSON.parse(claim.slice(at + 1));
      } catch (error) {
        console.error(`error: --claim ${claim}: ${error.message}`);
        process.exit(2);
      }
    }
    const secret = need("HUBBUB_JWT_SECRET");
    const options = { ttl, channels: values.channel, name: values.name, extra };
    console.log(mintToken(secret, args[0], options));
  } else if (command === "publish" && args.length === 2) {
    let data;
    try {
      data = JSON.parse(args[1]);
    } catch (error) {
      console.error(`error: the data is not JSON: ${error.message}`);
      process.exit(2);
    }
    const url = process.env.HUBBUB_URL || "http://127.0.0.1:8000";
    console.log(JSON.stringify(await publish(url, need("HUBBUB_API_KEY"), args[0], data)));
  } else {
    console.error(
      "usage: hubbub.mjs token USER [--ttl S] [--channel C] [--claim KEY=JSON] | publish CHANNEL JSON",
    );
    process.exit(2);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error) => {
    console.error(`error: ${error.message}`);
    process.exit(1);
  });
}
