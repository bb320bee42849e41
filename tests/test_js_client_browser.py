"""``hubbub.js`` in real headless Chromium against real ``hubbub serve`` processes.

Restarts happen on the same port, as a deploy would: with the Redis broker
(a real ``redis-server``) history survives and both chat pages recover every
message exactly once (and an SSE listener resumes with ``Last-Event-ID``); with
the memory broker the stream is new and the page is told it was not recovered.
Page timers are driven with Playwright's clock where a test must hold a
reconnect back; every wait is bounded by an ``expect`` or a ``wait_for_function``
timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from .redis_server import redis_server
from .servers import ROOT, Server, free_port, wait_ready
from .test_demo_browser import (
    BACKOFF_CAP_MS,
    chromium,
    entry,
    join,
    notes,
    notify,
    open_page,
    publish_many,
    say,
    texts,
)

pytestmark = pytest.mark.browser

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
_starts = itertools.count()


@contextlib.contextmanager
def hubbub_serve(
    tmp_path: Path,
    port: int,
    args: Sequence[str] = (),
    *,
    pythonpath: Path | None = None,
    ready_path: str = "/health",
) -> Iterator[Server]:
    """``hubbub serve`` on a given port (so a restart lands where clients reconnect)."""
    log_path = tmp_path / f"serve-{port}-{next(_starts)}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = [str(pythonpath)] if pythonpath is not None else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "hubbub", "serve", "--port", str(port), *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    server = Server(process, port, log_path)
    try:
        wait_ready(server, ready_path)
        yield server
    finally:
        server.terminate()


def offsets(page: Page) -> list[tuple[str, int]]:
    """The (epoch, offset) of every chat message shown, in order."""
    values = page.locator("#messages li[data-offset]").evaluate_all(
        "items => items.map(li => li.dataset.offset)"
    )
    return [(value.rsplit(":", 1)[0], int(value.rsplit(":", 1)[1])) for value in values]


def hold_reconnects(*pages: Page) -> None:
    """Freeze the pages' timers so a reconnect waits for :func:`release_reconnects`."""
    for page in pages:
        page.clock.pause_at(datetime.now() + timedelta(seconds=1))


def release_reconnects(*pages: Page) -> None:
    """Fire the due reconnect timer (at most the back-off cap away) and let time run."""
    for page in pages:
        page.clock.fast_forward(BACKOFF_CAP_MS)
        page.clock.resume()


LISTEN = """async (channels) => {
  const { listen } = await import("/hubbub.js");
  window.got = [];
  window.sse = { opened: 0, errors: [], goodbyes: [], unrecovered: [] };
  window.listener = listen(channels, {
    onOpen: () => { window.sse.opened += 1; },
    onMessage: (message) => window.got.push(message),
    onError: (error) => window.sse.errors.push(error.reason),
    onDisconnect: (goodbye) => window.sse.goodbyes.push(goodbye),
    onUnrecovered: (info) => window.sse.unrecovered.push(info.channel),
  });
}"""


def test_two_pages_recover_every_message_once_across_a_restart_on_redis(tmp_path: Path) -> None:
    """Restart with Redis: both chat pages and an SSE listener see every message once."""
    port = free_port()
    with redis_server(tmp_path) as redis, chromium() as browser:
        args = ["--broker", redis.url]
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        listener_problems: list[str] = []
        c = open_page(browser, listener_problems)
        for page in (a, b):
            page.clock.install()
        with hubbub_serve(tmp_path, port, args) as first:
            for page in (a, b):
                page.goto(first.url + "/")
            join(a, "Ada", "lobby")
            join(b, "Bob", "lobby")
            c.goto(first.url + "/")  # the demo page, for its origin; it stays idle
            c.evaluate(LISTEN, ["chat:lobby"])
            c.wait_for_function("() => window.sse.opened === 1", timeout=10_000)
            say(a, "one")
            expect(entry(b, "one")).to_have_count(1)
            say(b, "two")
            expect(entry(a, "two")).to_have_count(1)
            hold_reconnects(a, b)
        # The first server drained (1012, reconnect: true) and is gone.
        for page in (a, b):
            expect(page.get_by_role("status")).to_have_attribute("data-state", "reconnecting")
        with hubbub_serve(tmp_path, port, args) as second:
            publish_many(second, "chat:lobby", 3)  # "flood 1".."flood 3", missed by both
            release_reconnects(a, b)
            for page in (a, b):
                expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")
                expect(
                    page.get_by_role("log").get_by_text(
                        "Back in #lobby: 3 missed messages recovered."
                    )
                ).to_have_count(1)
            say(a, "after")
            expect(entry(b, "after")).to_have_count(1)
            wanted = ["one", "two", "flood 1", "flood 2", "flood 3", "after"]
            for page in (a, b):
                assert texts(page) == wanted
                shown = offsets(page)
                assert [offset for _, offset in shown] == [1, 2, 3, 4, 5, 6]
                assert len({epoch for epoch, _ in shown}) == 1
                expect(page.get_by_role("log").get_by_text("You joined #lobby.")).to_have_count(1)
            # The listener's browser reconnected by itself with Last-Event-ID.
            c.wait_for_function("() => window.got.length >= 6", timeout=20_000)
            got = c.evaluate("window.got.map(m => [m.offset, m.data.text])")
            assert got == [[n, text] for n, text in enumerate(wanted, start=1)]
            sse = c.evaluate("window.sse")
            assert sse["opened"] >= 2
            assert sse["unrecovered"] == []
            assert [g["code"] for g in sse["goodbyes"]] == [1012]
            a.screenshot(path=tmp_path / "after-restart.png")
            c.evaluate("window.listener.close()")
        assert problems == []
        # While no server listened, the EventSource's own retries were refused.
        assert all("ERR_CONNECTION_REFUSED" in p for p in listener_problems), listener_problems


def test_a_restart_on_the_memory_broker_is_reported_as_not_recovered(tmp_path: Path) -> None:
    """Memory broker: the restarted hub has new epochs; the page reloads and says so."""
    port = free_port()
    with chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.clock.install()
        with hubbub_serve(tmp_path, port) as first:
            page.goto(first.url + "/")
            join(page, "Ada", "lobby")
            say(page, "before the restart")
            notify(page, "Ada", "To myself", "kept only in memory")
            expect(notes(page)).to_have_count(1)
            old_epochs = {epoch for epoch, _ in offsets(page)}
            hold_reconnects(page)
        expect(page.get_by_role("status")).to_have_attribute("data-state", "reconnecting")
        with hubbub_serve(tmp_path, port):
            release_reconnects(page)
            log = page.get_by_role("log")
            expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")
            expect(
                log.get_by_text(re.compile("could not be recovered, so the room was reloaded"))
            ).to_have_count(1)
            expect(
                log.get_by_text(
                    "Some notifications sent while you were away could not be recovered."
                )
            ).to_have_count(1)
            assert texts(page) == []  # the new stream is empty
            say(page, "after the restart")
            assert texts(page) == ["after the restart"]
            ((epoch, offset),) = offsets(page)
            assert offset == 1 and epoch not in old_epochs
            page.screenshot(path=tmp_path / "not-recovered.png")
        assert problems == []


def test_duplicates_are_dropped_and_a_foreign_epoch_is_recovered(tmp_path: Path) -> None:
    """Every live message arrives twice and one under a bogus epoch: each is shown once."""
    with hubbub_serve(tmp_path, free_port()) as server, chromium() as browser:
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        sent_by_b: list[dict[str, Any]] = []

        def meddle(route: WebSocketRoute) -> None:
            upstream = route.connect_to_server()

            def forward(frame: str | bytes) -> None:
                route.send(frame)
                if isinstance(frame, str) and frame.startswith('{"type":"message"'):
                    if '"text":"odd epoch"' in frame:
                        # A copy from a stream that is not this one: B must recover.
                        route.send(re.sub(r'"epoch":"[^"]*"', '"epoch":"bogus"', frame))
                    else:
                        route.send(frame)  # a plain duplicate

            upstream.on_message(forward)
            route.on_message(
                lambda frame: (sent_by_b.append(json.loads(str(frame))), upstream.send(frame))
            )

        b.route_web_socket(re.compile(r"/ws\?"), meddle)
        a.goto(server.url + "/")
        b.goto(server.url + "/")
        join(a, "Ada", "lobby")
        join(b, "Bob", "lobby")
        for text in ("one", "two", "odd epoch", "four"):
            say(a, text)
            expect(entry(b, text)).to_have_count(1)
        say(a, "five")
        expect(entry(b, "five")).to_have_count(1)
        assert texts(b) == ["one", "two", "odd epoch", "four", "five"]
        assert [offset for _, offset in offsets(b)] == [1, 2, 3, 4, 5]
        room = b.evaluate("({duplicates: hubbubDemo.room.duplicates, gaps: hubbubDemo.room.gaps})")
        assert room["duplicates"] >= 4
        assert room["gaps"] == 1
        recovers = [m for m in sent_by_b if "recover" in m]
        assert [(m["type"], m["channel"], m["recover"]["offset"]) for m in recovers] == [
            ("subscribe", "chat:lobby", 3)
        ]
        assert problems == []


API = """async () => {
  const m = await import("/hubbub.js");
  const out = {};
  const settle = (promise) => promise.then(
    (value) => ({ ok: true, type: value?.type, offset: value?.offset ?? null }),
    (error) => ({ ok: false, name: error.name, code: error.code, reason: error.reason,
                  isHubbubError: error instanceof m.HubbubError }));

  const offline = new m.HubbubClient({ connect: false });
  out.offline = await settle(offline.publish("chat:x", { text: "hi" }));
  out.offlineState = offline.state;

  const client = new m.HubbubClient({ params: { name: "Api" }, timeout: 5000, quiet: true });
  const welcome = await client.connected();
  out.user = welcome.user;
  out.personal = client.personalChannel;
  out.ack = await settle(client.publish("chat:api", { text: "hello" }));
  out.notChat = await settle(client.publish("chat:api", { nope: 1 }));
  out.personalPublish = await settle(client.publish(client.personalChannel, { text: "me" }));
  out.unknownNamespace = await settle(client.history("nope:x"));
  out.unknownType = await settle(client.request({ type: "dance" }));
  // `pong` has no reply: the request times out, typed, with code 408.
  out.timeout = await settle(client.request({ type: "pong" }, { timeout: 300 }));

  const history = await client.history("chat:api", { limit: 5 });
  out.history = history.publications.map((p) => p.data.text);

  const got = [];
  const sub = client.subscribe("chat:api", {
    onMessage: (msg, info) => got.push([msg.data.text, info.source]),
  });
  await sub.ready;
  await client.publish("chat:api", { text: "live" });
  for (let i = 0; i < 50 && got.length < 2; i += 1) await new Promise((r) => setTimeout(r, 100));
  out.delivered = got;
  out.presenceUsers = (await client.presence("chat:api")).users;
  await sub.unsubscribe();
  out.subState = sub.state;

  const refused = client.subscribe("#someone-else", {});
  out.refused = await settle(refused.ready);
  out.refusedState = refused.state;

  const pending = settle(client.request({ type: "pong" }, { timeout: 60000 }));
  client.close();
  out.closedWhilePending = await pending;
  out.finalState = client.state;
  return out;
}"""


def test_the_client_api_answers_with_typed_errors_and_timeouts(tmp_path: Path) -> None:
    """The module's API in a page: replies, typed server errors, timeouts, offline, close."""
    with hubbub_serve(tmp_path, free_port()) as server, chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.goto(server.url + "/")  # the demo page, for its origin
        out = page.evaluate(API)

        def error(code: int, name: str = "HubbubError") -> dict[str, Any]:
            return {"ok": False, "name": name, "code": code, "isHubbubError": True}

        def without_reason(result: dict[str, Any]) -> dict[str, Any]:
            assert result.get("reason"), result
            return {k: v for k, v in result.items() if k != "reason"}

        assert without_reason(out["offline"]) == error(0, "HubbubConnectionError")
        assert out["offlineState"] == "idle"
        assert out["user"] and out["personal"] == f"#{out['user']}"
        assert out["ack"] == {"ok": True, "type": "ack", "offset": 1}
        assert without_reason(out["notChat"]) == error(422)
        assert without_reason(out["personalPublish"]) == error(403)
        assert without_reason(out["unknownNamespace"]) == error(404)
        assert without_reason(out["unknownType"]) == error(400)
        assert without_reason(out["timeout"]) == error(408, "HubbubTimeoutError")
        assert out["history"] == ["hello"]
        # The chat namespace replays its history on subscribe: "hello" comes as history.
        assert out["delivered"] == [["hello", "history"], ["live", "live"]]
        assert out["presenceUsers"] == 1
        assert out["subState"] == "unsubscribed"
        assert without_reason(out["refused"]) == error(403)
        assert out["refusedState"] == "failed"
        assert without_reason(out["closedWhilePending"]) == error(1000, "HubbubConnectionError")
        assert out["finalState"] == "closed"
        assert problems == []


TOKENS = """async ({ good, bad, cookie }) => {
  const m = await import("/hubbub.js");
  const out = { calls: 0 };
  let next = 0;
  const client = new m.HubbubClient({
    token: async () => { out.calls += 1; return good[Math.min(next++, good.length - 1)]; },
    refreshBefore: 58,   // the tokens live 60 s: refresh about 2 s after connecting
    quiet: true,
  });
  const welcome = await client.connected();
  out.user = welcome.user;
  out.client = welcome.client;
  out.ping = welcome.ping;
  const refreshed = new Promise((resolve) => {
    const started = Date.now();
    const poll = () => (out.calls >= 2 || Date.now() - started > 15000)
      ? resolve() : setTimeout(poll, 100);
    poll();
  });
  await refreshed;
  // Several server pings later (ping 1 s), still the same connection: pings were answered.
  await new Promise((r) => setTimeout(r, 3500));
  out.stillClient = client.welcome?.client;
  out.state = client.state;
  client.close();

  const states = [];
  const refusedClient = new m.HubbubClient({
    token: bad, maxAttempts: 1, backoffBase: 50, quiet: true, connect: false,
  });
  refusedClient.on("state", ({ state }) => states.push(state));
  refusedClient.connect();
  await new Promise((resolve) => {
    const started = Date.now();
    const poll = () => (refusedClient.state === "disconnected" || Date.now() - started > 15000)
      ? resolve() : setTimeout(poll, 50);
    poll();
  });
  out.refusedStates = states;

  // No token option: the browser sends the cookie with the handshake.
  document.cookie = `hubbub_token=${cookie}; path=/; SameSite=Strict`;
  const byCookie = new m.HubbubClient({ quiet: true });
  out.cookieUser = (await byCookie.connected()).user;
  byCookie.close();
  return out;
}"""


def test_tokens_travel_as_a_subprotocol_and_are_refreshed_pings_answered(tmp_path: Path) -> None:
    """JWT hub: a token function serves the handshake and `refresh`; a cookie works alone."""

    def token(sub: str, lifetime: int = 60) -> str:
        now = int(time.time())
        return jwt.encode({"sub": sub, "exp": now + lifetime, "iat": now}, SECRET, "HS256")

    args = ["--jwt-secret", SECRET, "--ping", "1", "--pong-timeout", "1"]
    with hubbub_serve(tmp_path, free_port(), args) as server, chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.goto(server.url + "/")  # the demo page, for its origin
        frames: list[str] = []
        page.on("websocket", lambda ws: ws.on("framesent", lambda f: frames.append(str(f))))
        # The second token lives long: one refresh, not one every second.
        good = [token("ada"), token("ada", lifetime=600)]
        out = page.evaluate(TOKENS, {"good": good, "bad": "not-a-jwt", "cookie": token("bea")})
        assert out["user"] == "ada"
        assert out["ping"] == 1
        assert out["calls"] == 2  # the handshake, then the refresh
        sent = [json.loads(f) for f in frames if f.startswith("{")]
        assert [m["type"] for m in sent if m["type"] == "refresh"] == ["refresh"]
        assert sum(m["type"] == "pong" for m in sent) >= 2
        assert out["stillClient"] == out["client"]
        assert out["state"] == "connected"
        # A refused handshake (401) is retried maxAttempts times, then the client gives up.
        assert out["cookieUser"] == "bea"
        assert out["refusedStates"] == [
            "connecting",
            "reconnecting",
            "reconnecting",
            "disconnected",
        ]
        # Chromium reports the refused handshakes on the console: expected here.
        assert all("WebSocket connection" in p for p in problems), problems


WATCH = """async () => {
  const m = await import("/hubbub.js");
  window.log = { states: [], closes: [], goodbyes: [] };
  const client = new m.HubbubClient({
    params: { name: "Kim" }, timeout: 3000, backoffCap: 1000, quiet: true, connect: false,
  });
  client.on("state", ({ state }) => window.log.states.push(state));
  client.on("close", ({ code, reason }) => window.log.closes.push([code, reason]));
  client.on("disconnect", (goodbye) => window.log.goodbyes.push(goodbye));
  window.client = client;
  client.connect();
  const welcome = await client.connected();
  return { client: welcome.client, user: welcome.user };
}"""


def test_a_silent_server_is_left_and_a_kick_is_final(tmp_path: Path) -> None:
    """A frozen server (no pings) is detected; a ``disconnect`` with reconnect false is final."""
    args = ["--ping", "1", "--pong-timeout", "1", "--api-key", "the-key-0123456789ab"]
    with hubbub_serve(tmp_path, free_port(), args) as server, chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.goto(server.url + "/")  # the demo page, for its origin
        first = page.evaluate(WATCH)

        # SIGSTOP keeps the TCP connection open but silent: only the client's own
        # deadline (ping + pong_timeout) can tell.
        os.kill(server.pid, signal.SIGSTOP)
        try:
            page.wait_for_function(
                "() => window.log.closes.some(([code]) => code === 4408)", timeout=15_000
            )
        finally:
            os.kill(server.pid, signal.SIGCONT)
        page.wait_for_function(
            f"() => client.state === 'connected' && client.welcome.client !== '{first['client']}'",
            timeout=20_000,
        )

        request = urllib.request.Request(
            server.url + "/api/disconnect",
            data=json.dumps({"user": first["user"], "reason": "kicked"}).encode(),
            headers={
                "authorization": "apikey the-key-0123456789ab",
                "content-type": "application/json",
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == {"disconnected": 1}
        page.wait_for_function("() => client.state === 'disconnected'", timeout=10_000)
        page.wait_for_timeout(1_500)  # longer than the back-off cap: no reconnect follows
        log = page.evaluate("window.log")
        assert log["states"][-1] == "disconnected"
        assert log["goodbyes"][-1] == {"code": 4403, "reason": "kicked", "reconnect": False}
        assert log["closes"][-1][0] == 4403
        # Chromium reports the attempts that met the frozen server on the console.
        assert all("WebSocket connection" in p for p in problems), problems


LOSSY_LISTEN = """async () => {
  const { listen } = await import("/hubbub.js");
  // The real EventSource with a fault on the way in: the first "flood 2" is lost and
  // every "flood 3" arrives twice.
  let lost = false;
  window.opened = 0;
  class Lossy extends EventSource {
    constructor(url, init) {
      super(url, init);
      window.opened += 1;
      window.urls = [...(window.urls ?? []), url];
    }
    addEventListener(type, listener, ...rest) {
      if (type !== "message") return super.addEventListener(type, listener, ...rest);
      return super.addEventListener(type, (event) => {
        const text = JSON.parse(event.data).data.text;
        if (text === "flood 2" && !lost) { lost = true; return; }
        listener(event);
        if (text === "flood 3") listener(event);
      }, ...rest);
    }
  }
  window.got = [];
  window.listener = listen("chat:sse", {
    EventSource: Lossy,
    onOpen: () => { window.ready = true; },
    onMessage: (message) => window.got.push([message.offset, message.data.text]),
  });
}"""


def test_the_sse_fallback_refills_a_gap_and_drops_duplicates(tmp_path: Path) -> None:
    """``listen``: a lost event makes it reopen from the last id; a repeated one is dropped."""
    with hubbub_serve(tmp_path, free_port()) as server, chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.goto(server.url + "/")  # the demo page, for its origin
        page.evaluate(LOSSY_LISTEN)
        page.wait_for_function("() => window.ready === true", timeout=10_000)
        publish_many(server, "chat:sse", 4)
        page.wait_for_function("() => window.got.length >= 4", timeout=15_000)
        page.wait_for_timeout(300)  # room for a wrong extra delivery to show up
        got = page.evaluate("window.got")
        assert got == [[n, f"flood {n}"] for n in range(1, 5)]
        assert page.evaluate("window.opened") == 2
        reopened = page.evaluate("window.urls[1]")
        assert "last_event_id=" in reopened and "channel=chat%3Asse" in reopened
        page.evaluate("window.listener.close()")
        assert problems == []


MOUNTED_APP = """
from starlette.applications import Starlette
from starlette.routing import Mount

from hubbub import Hub, HubApp

hub = Hub(anonymous=True)
app = Starlette(lifespan=hub.lifespan, routes=[Mount("/realtime", HubApp(hub))])
"""


def test_the_module_finds_its_endpoint_under_a_mount_prefix(tmp_path: Path) -> None:
    """Imported from ``<prefix>/hubbub.js``, the client connects to ``<prefix>/ws``."""
    (tmp_path / "mounted_hub.py").write_text(MOUNTED_APP)
    port = free_port()
    with (
        chromium() as browser,
        hubbub_serve(
            tmp_path, port, ["mounted_hub:app"], pythonpath=tmp_path, ready_path="/realtime/health"
        ) as server,
    ):
        problems: list[str] = []
        page = open_page(browser, problems)
        page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        page.goto(server.url + "/realtime/health")
        welcome = page.evaluate(
            """async () => {
              const { HubbubClient } = await import("/realtime/hubbub.js");
              const client = new HubbubClient({ quiet: true });
              const welcome = await client.connected();
              const ack = await client.publish("news", { n: 1 });
              client.close();
              return { user: welcome.user, version: welcome.version, ack: ack.type };
            }"""
        )
        assert welcome == {"user": "", "version": 1, "ack": "ack"}
        assert "/realtime/ws" in server.log()
        assert problems == []


EXPIRING_APP = """
from hubbub import Hub, Limits

hub = Hub(limits=Limits(expiry_grace=0.5))
"""

EXPIRY = """async ({ short, long, fixed }) => {
  const m = await import("/hubbub.js");
  const out = { calls: 0, closes: [], fixedCloses: [] };
  const tokens = [short, long];
  // refreshBefore < 0: no refresh before the server's deadline, so it closes 4401.
  const client = new m.HubbubClient({
    token: () => tokens[Math.min(out.calls++, 1)], refreshBefore: -3600, quiet: true,
  });
  client.on("close", ({ code }) => out.closes.push(code));
  out.first = (await client.connected()).client;
  await new Promise((resolve) => {
    const started = Date.now();
    const poll = () => ((out.closes.length && client.state === "connected")
      || Date.now() - started > 15000) ? resolve() : setTimeout(poll, 50);
    poll();
  });
  out.second = client.welcome?.client;
  client.close();

  // A fixed token has nothing new to offer: 4401 is final for it.
  const fixedClient = new m.HubbubClient({ token: fixed, quiet: true });
  fixedClient.on("close", ({ code, reconnect }) => out.fixedCloses.push([code, reconnect]));
  await fixedClient.connected();
  await new Promise((resolve) => {
    const started = Date.now();
    const poll = () => (fixedClient.state === "disconnected" || Date.now() - started > 15000)
      ? resolve() : setTimeout(poll, 50);
    poll();
  });
  out.fixedState = fixedClient.state;
  return out;
}"""


def test_an_expired_token_is_replaced_from_the_token_function(tmp_path: Path) -> None:
    """Closed 4401: with a token function the client reconnects with a new token, else stops."""
    (tmp_path / "expiring_hub.py").write_text(EXPIRING_APP)

    def token(lifetime: int) -> str:
        now = int(time.time())
        return jwt.encode({"sub": "eve", "exp": now + lifetime, "iat": now}, SECRET, "HS256")

    args = ["expiring_hub:hub", "--jwt-secret", SECRET]
    with (
        chromium() as browser,
        hubbub_serve(tmp_path, free_port(), args, pythonpath=tmp_path) as server,
    ):
        problems: list[str] = []
        page = open_page(browser, problems)
        page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
        page.goto(server.url + "/health")
        out = page.evaluate(EXPIRY, {"short": token(2), "long": token(600), "fixed": token(2)})
        assert out["closes"] == [4401]
        assert out["calls"] == 2  # asked again for the reconnect
        assert out["second"] and out["second"] != out["first"]
        assert out["fixedCloses"] == [[4401, False]]
        assert out["fixedState"] == "disconnected"
        assert problems == []
