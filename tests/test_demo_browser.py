"""The demo chat page in real headless Chromium against a real ``hubbub serve`` process."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
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
        expect(page.get_by_role("log").get_by_text("You joined #lobby.")).to_have_count(2)
        expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")
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
