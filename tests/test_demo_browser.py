"""The demo chat page in real headless Chromium against a real ``hubbub serve`` process."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)
from websockets.sync.client import connect as ws_connect

from .servers import Server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = "<img src=x onerror=alert(1)>"
BACKOFF_CAP_MS = 30_000  # the page's longest reconnect delay

expect.set_options(timeout=10_000)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless; a skip where it is missing, a failure in CI."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium package to run browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true, so browser tests must not be skipped)")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Browser, problems: list[str]) -> Page:
    """A page in its own context (its own storage, like another person).

    Dialogs (``alert`` from injected markup) are dismissed; they, console errors
    (CSP violations included) and uncaught exceptions are recorded in ``problems``.
    """
    page = browser.new_context(viewport={"width": 1000, "height": 640}).new_page()

    def on_dialog(dialog: Dialog) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return page


def join(page: Page, name: str, room: str) -> None:
    """Fill the join form and wait until the server confirmed the room."""
    page.get_by_label("Display name", exact=True).fill(name)
    page.get_by_label("Room", exact=True).fill(room)
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("log").get_by_text(f"You joined #{room}.")).to_have_count(1)
    expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")


def say(page: Page, text: str) -> None:
    """Send a message and wait for its echo."""
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()
    expect(entry(page, text)).to_have_count(1)


def entry(page: Page, text: str) -> Locator:
    """The message list entry whose text is exactly ``text``."""
    return (
        page.get_by_role("log")
        .locator("li")
        .filter(has=page.locator(".text").filter(has_text=re.compile(f"^{re.escape(text)}$")))
    )


def test_two_people_chat_switch_rooms_and_see_each_other(
    demo_server: Server, tmp_path: Path
) -> None:
    """Two pages chat in one room, markup stays text, presence lists both, leaving a room works."""
    ada, bob = "Ada Łovelace ✨", "<b>Bob</b> 🐝"
    with chromium() as browser:
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        frames_to_a: list[str | bytes] = []
        a.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames_to_a.append(f)))
        a.goto(demo_server.url + "/")
        b.goto(demo_server.url + "/")
        expect(a).to_have_title("hubbub demo chat")

        join(a, ada, "lobby")
        join(b, bob, "lobby")

        say(a, "hello from Ada — ça va? 你好")
        got = entry(b, "hello from Ada — ça va? 你好")
        expect(got).to_have_count(1)
        expect(got.locator(".who")).to_have_text(ada)
        expect(got.locator("time")).to_have_text(re.compile(r"\d"))

        say(b, "hi Ada")
        expect(entry(a, "hi Ada").locator(".who")).to_have_text(bob)
        expect(a.locator("#messages b")).to_have_count(0)

        say(b, XSS)
        expect(entry(a, XSS).locator(".who")).to_have_text(bob)
        expect(a.locator("img")).to_have_count(0)
        expect(b.locator("img")).to_have_count(0)

        a.get_by_role("button", name="Refresh").click()
        people = a.get_by_role("list", name="People in this room").get_by_role("listitem")
        expect(people).to_have_count(2)
        expect(people.filter(has_text=f"{ada} (you)")).to_have_count(1)
        expect(people.filter(has_text=bob)).to_have_count(1)

        a.screenshot(path=tmp_path / "demo.png")

        join(a, ada, "garden")
        expect(a.get_by_role("log").locator("li")).to_have_count(1)  # the old room is cleared
        say(b, "still in the lobby?")
        say(a, "anyone in the garden?")
        expect(entry(b, "anyone in the garden?")).to_have_count(0)
        expect(entry(a, "still in the lobby?")).to_have_count(0)

        received = [json.loads(line) for frame in frames_to_a for line in str(frame).splitlines()]
        texts = [m["data"].get("text") for m in received if m["type"] == "message"]
        assert "hi Ada" in texts
        assert "still in the lobby?" not in texts, "the server still sends A the old room"
        unsubscribed = [m for m in received if m["type"] == "unsubscribed"]
        assert [m["channel"] for m in unsubscribed] == ["chat:lobby"]
        assert problems == []


def route_sockets(page: Page) -> list[WebSocketRoute]:
    """Proxy the page's WebSockets to the real server; the list holds one route per connection."""
    routes: list[WebSocketRoute] = []

    def handler(route: WebSocketRoute) -> None:
        route.connect_to_server()
        routes.append(route)

    page.route_web_socket(re.compile(r"/ws\?"), handler)
    return routes


def test_reconnects_and_rejoins_after_a_server_restart_close(demo_server: Server) -> None:
    """A close with 1012 (server restarting) makes the page reconnect and rejoin its room."""
    with chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        routes = route_sockets(page)
        page.goto(demo_server.url + "/")
        join(page, "Grace", "lobby")

        routes[0].close(code=1012, reason="server restarting")
        expect(
            page.get_by_role("log").get_by_text("Back in #lobby: nothing was missed.")
        ).to_have_count(1)
        expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")
        expect(page.get_by_role("log").get_by_text("You joined #lobby.")).to_have_count(1)
        assert len(routes) == 2
        say(page, "back again")
        assert problems == []


def test_stays_offline_when_the_server_says_not_to_reconnect(demo_server: Server) -> None:
    """A ``disconnect`` with ``reconnect: false`` is shown and the page does not reconnect."""
    with chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        routes = route_sockets(page)
        page.goto(demo_server.url + "/")
        join(page, "Grace", "lobby")

        # 1013 alone would be retried: only the message's `reconnect: false` keeps the page away.
        goodbye = {"type": "disconnect", "code": 1013, "reason": "go away", "reconnect": False}
        routes[0].send(json.dumps(goodbye))
        routes[0].close(code=1013, reason="go away")
        expect(page.get_by_role("alert")).to_contain_text("go away (1013)")
        expect(page.get_by_role("status")).to_have_attribute("data-state", "disconnected")
        expect(page.get_by_role("button", name="Send")).to_be_disabled()
        assert len(routes) == 1
        assert problems == []


def texts(page: Page) -> list[str]:
    """The texts of the chat messages shown, in order."""
    return page.get_by_role("log").locator("li .text").all_text_contents()


def people(page: Page) -> Locator:
    """The entries of the who's-online panel."""
    return page.get_by_role("list", name="People in this room").get_by_role("listitem")


def notes(page: Page) -> Locator:
    """The notifications received, newest first."""
    return page.get_by_role("list", name="Notifications received").get_by_role("listitem")


def notify(page: Page, to: str, title: str, text: str) -> None:
    """Send a notification with the page's form and wait until the server accepted it."""
    page.get_by_label("To", exact=True).fill(to)
    page.get_by_label("Title", exact=True).fill(title)
    page.get_by_label("Text", exact=True).fill(text)
    page.get_by_role("button", name="Notify").click()
    expect(page.locator("#notify-result")).to_have_text(f"Sent to {to}.")


def test_history_is_replayed_for_a_second_visitor(demo_server: Server, tmp_path: Path) -> None:
    """A visitor joining later sees the room's earlier messages under a divider, then live ones."""
    with chromium() as browser:
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        a.goto(demo_server.url + "/")
        b.goto(demo_server.url + "/")
        join(a, "Ada", "lobby")
        for text in ("first!", "second", XSS):
            say(a, text)

        join(b, "Bob", "lobby")
        log = b.get_by_role("log").locator("li")
        expect(log).to_have_count(5)  # divider, three messages, "You joined"
        expect(log.nth(0)).to_have_text(re.compile("earlier messages", re.IGNORECASE))
        expect(log.nth(0)).to_have_class(re.compile(r"\bdivider\b"))
        expect(log.nth(4)).to_have_text("You joined #lobby.")
        assert texts(b) == ["first!", "second", XSS]
        expect(entry(b, "first!").locator(".who")).to_have_text("Ada")
        expect(entry(b, "first!")).to_have_class(re.compile(r"\bhistory\b"))
        expect(b.locator("img")).to_have_count(0)

        say(a, "live one")
        expect(entry(b, "live one")).to_have_count(1)
        assert texts(b) == ["first!", "second", XSS, "live one"]
        b.screenshot(path=tmp_path / "history.png")
        assert problems == []


def test_whos_online_follows_joins_and_leaves(demo_server: Server) -> None:
    """The who's-online panel updates on join and leave events, one entry per person."""
    with chromium() as browser:
        problems: list[str] = []
        a, b, b2 = (open_page(browser, problems) for _ in range(3))
        for page in (a, b, b2):
            page.goto(demo_server.url + "/")
        join(a, "Ada", "lobby")
        expect(people(a)).to_have_text(["Ada (you)"])

        join(b, "Bob", "lobby")
        expect(people(a)).to_have_text(["Ada (you)", "Bob"])
        expect(people(b)).to_have_text(["Ada", "Bob (you)"])

        join(b2, "Bob", "lobby")  # a second tab of the same person
        expect(people(a)).to_have_text(["Ada (you)", "Bob · 2 tabs"])

        join(b2, "Bob", "garden")
        expect(people(a)).to_have_text(["Ada (you)", "Bob"])
        b.close()
        expect(people(a)).to_have_text(["Ada (you)"])
        assert problems == []


def test_notification_from_the_form_reaches_the_named_visitor(demo_server: Server) -> None:
    """A's "notify someone" form reaches B's page by B's name; A gets nothing."""
    with chromium() as browser:
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        a.goto(demo_server.url + "/")
        b.goto(demo_server.url + "/")
        join(a, "Ada", "lobby")
        join(b, "Bob Ø", "garden")

        notify(a, "Bob Ø", "Tea?", XSS)
        expect(notes(b)).to_have_count(1)
        expect(notes(b).locator(".title")).to_have_text("Tea?")
        expect(notes(b).locator(".body")).to_have_text(XSS)
        expect(b.locator("#toast")).to_be_visible()
        expect(b.locator("#toast")).to_contain_text("Tea?")
        expect(b.locator("img")).to_have_count(0)

        notify(a, "Bob Ø", "Second", "newest first")
        expect(notes(b).locator(".title")).to_have_text(["Second", "Tea?"])
        expect(notes(a)).to_have_count(0)
        assert problems == []


def test_reconnect_recovers_missed_messages_and_notifications_once(demo_server: Server) -> None:
    """After the server side closes B's socket, B recovers what it missed, each shown once."""
    with chromium() as browser:
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        routes = route_sockets(b)
        b.clock.install()
        a.goto(demo_server.url + "/")
        b.goto(demo_server.url + "/")
        join(a, "Ada", "lobby")
        join(b, "Bob", "lobby")
        say(a, "before")
        expect(entry(b, "before")).to_have_count(1)

        # Hold B's reconnect timer until A has sent messages B cannot receive.
        b.clock.pause_at(datetime.now() + timedelta(seconds=1))
        routes[0].close(code=1012, reason="server restarting")
        expect(b.get_by_role("status")).to_have_attribute("data-state", "reconnecting")
        say(a, "missed one")
        say(a, "missed two")
        notify(a, "Bob", "While away", "you missed this")
        b.clock.fast_forward(BACKOFF_CAP_MS)
        b.clock.resume()

        expect(b.get_by_role("status")).to_have_attribute("data-state", "connected")
        log = b.get_by_role("log")
        expect(log.get_by_text("Back in #lobby: 2 missed messages recovered.")).to_have_count(1)
        expect(log.get_by_text("1 notification arrived while you were away.")).to_have_count(1)
        expect(notes(b).locator(".title")).to_have_text(["While away"])
        expect(notes(b)).to_have_class([re.compile(r"\brecovered\b")])
        say(a, "after")
        expect(entry(b, "after")).to_have_count(1)
        assert texts(b) == ["before", "missed one", "missed two", "after"]
        expect(log.get_by_text("You joined #lobby.")).to_have_count(1)
        assert len(routes) == 2
        assert problems == []


def test_reconnect_past_the_kept_history_reloads_the_room(demo_server: Server) -> None:
    """When missed messages fell out of history, B reloads the room and says so."""
    with chromium() as browser:
        problems: list[str] = []
        b = open_page(browser, problems)
        routes = route_sockets(b)
        b.clock.install()
        b.goto(demo_server.url + "/")
        join(b, "Bob", "flood")
        say(b, "mine")

        b.clock.pause_at(datetime.now() + timedelta(seconds=1))
        routes[0].close(code=1012, reason="server restarting")
        expect(b.get_by_role("status")).to_have_attribute("data-state", "reconnecting")
        publish_many(demo_server, "chat:flood", 105)  # the chat room keeps 100
        b.clock.fast_forward(BACKOFF_CAP_MS)
        b.clock.resume()

        log = b.get_by_role("log")
        expect(
            log.get_by_text(re.compile("could not be recovered, so the room was reloaded"))
        ).to_have_count(1)
        expect(b.get_by_role("status")).to_have_attribute("data-state", "connected")
        expect(log.locator("li .text")).to_have_count(100)
        assert texts(b) == [f"flood {n}" for n in range(6, 106)]
        say(b, "after the reload")
        assert texts(b)[-1] == "after the reload"
        assert len(texts(b)) == 101
        assert problems == []


def test_a_gap_in_live_offsets_triggers_recovery(demo_server: Server) -> None:
    """A message lost on the way (a gap in offsets) is recovered; nothing is shown twice."""
    with chromium() as browser:
        problems: list[str] = []
        a, b = open_page(browser, problems), open_page(browser, problems)
        sent_by_b: list[str] = []

        def lossy(route: WebSocketRoute) -> None:
            server = route.connect_to_server()

            def forward(frame: str | bytes) -> None:
                live = isinstance(frame, str) and frame.startswith('{"type":"message"')
                if live and '"text":"lost on the way"' in frame:
                    return  # dropped: B sees a gap in offsets
                route.send(frame)

            server.on_message(forward)
            route.on_message(lambda frame: (sent_by_b.append(str(frame)), server.send(frame)))

        b.route_web_socket(re.compile(r"/ws\?"), lossy)
        a.goto(demo_server.url + "/")
        b.goto(demo_server.url + "/")
        join(a, "Ada", "lobby")
        join(b, "Bob", "lobby")
        say(a, "one")
        say(a, "lost on the way")
        say(a, "three")
        expect(entry(b, "three")).to_have_count(1)
        expect(entry(b, "lost on the way")).to_have_count(1)
        assert texts(b) == ["one", "lost on the way", "three"]
        recovers = [json.loads(f) for f in sent_by_b if '"recover"' in f]
        assert [(m["type"], m["channel"]) for m in recovers] == [("subscribe", "chat:lobby")]
        assert recovers[0]["recover"]["offset"] == 1
        say(a, "four")
        expect(entry(b, "four")).to_have_count(1)
        assert texts(b) == ["one", "lost on the way", "three", "four"]
        assert problems == []


def publish_many(server: Server, channel: str, n: int) -> None:
    """Publish ``{"text": "flood 1"}`` … ``"flood n"`` in order from plain WebSocket clients.

    Batches of 50 from fresh connections stay within each connection's command burst.
    """
    for first in range(1, n + 1, 50):
        numbers = range(first, min(first + 50, n + 1))
        with ws_connect(server.ws_url + "/ws?name=Flooder", open_timeout=10, proxy=None) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            for i in numbers:
                data = {"text": f"flood {i}"}
                command = {"type": "publish", "channel": channel, "id": i, "data": data}
                ws.send(json.dumps(command))
            acked: list[int] = []
            while len(acked) < len(numbers):
                reply = json.loads(ws.recv(timeout=10))
                if reply["type"] != "ping":
                    assert reply["type"] == "ack", reply
                    acked.append(reply["id"])
            assert acked == list(numbers)
