"""The admin page in real headless Chromium against a real ``hubbub serve --admin-key`` process."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from .servers import Server, run_server
from .test_admin import ODD, clients, command
from .test_demo_browser import XSS, chromium, open_page

pytestmark = pytest.mark.browser

KEY = "browser-admin-key"
SCREENSHOT = Path("/tmp/admin.png")


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[Server]:
    """The demo hub with the admin page on (the key from ``HUBBUB_ADMIN_KEY``)."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}"]
    with run_server(argv, tmp_path, env={"HUBBUB_ADMIN_KEY": KEY}) as server:
        yield server


def sign_in(page: Page, key: str) -> None:
    """Submit the sign-in form with ``key``."""
    page.get_by_label("Admin key").fill(key)
    page.get_by_role("button", name="Open").click()


def channel_rows(page: Page) -> list[list[str]]:
    """The cells of the channel table, row by row."""
    rows = page.locator("#channel-rows tr")
    return [row.locator("td").all_inner_texts() for row in rows.all()]


def test_live_figures_and_chart_follow_websocket_traffic(
    admin_server: Server, tmp_path: Path
) -> None:
    """Sign in (a wrong key first), watch traffic from real clients move figures and chart."""
    with chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.set_viewport_size({"width": 1200, "height": 1000})
        page.goto(admin_server.url + "/admin")
        expect(page).to_have_title("hubbub admin")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.locator("#dashboard")).to_be_hidden()

        sign_in(page, "not-the-key")
        expect(page.locator("#login-error")).to_have_text("That key was refused.")
        sign_in(page, KEY)
        expect(page.locator("#dashboard")).to_be_visible()
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#state")).to_have_text("hub running")
        expect(page.locator("#broker")).to_have_text("MemoryBroker ready")
        expect(page.locator("#connections")).to_have_text("0")
        expect(page.locator("#channel-rows")).to_have_text("No channel has subscribers.")

        rates = page.locator("#rates-chart")
        deliveries = rates.locator("polyline[data-series='deliveries']")
        with clients(admin_server, 3) as (a, b, c):
            for n, ws in enumerate((a, b, c)):
                command(ws, {"type": "subscribe", "channel": "news", "id": n + 1})
            command(c, {"type": "subscribe", "channel": ODD, "id": 9})
            for n in range(12):
                command(a, {"type": "publish", "channel": "news", "data": {"n": n}, "id": 10 + n})

            expect(page.locator("#connections")).to_have_text("3")
            # The demo hub also subscribes each named visitor to its personal channel.
            expect(page.locator("#subscriptions")).to_have_text("7")
            expect(page.locator("#channels")).to_have_text("5")
            expect(page.locator("#channel-rows tr")).to_have_count(5)
            rows = channel_rows(page)
            assert rows[0] == ["news", "3"] and rows[-1] == [ODD, "1"]
            assert [n for name, n in rows[1:4] if name.startswith("#client")] == ["1", "1", "1"]
            expect(page.locator("#channels-note")).to_have_text("5 in all")
            counters = page.locator("#counter-rows")
            expect(counters.locator("tr", has_text="Publications")).to_contain_text("12")
            expect(counters.locator("tr", has_text="Deliveries")).to_contain_text("36")
            # Rates: a non-zero publications/s and a deliveries line above the floor.
            nonzero = re.compile(r"^(?!0$)\d[\d.,]*$")
            expect(page.locator("#pubrate")).to_have_text(nonzero)
            expect(page.locator("#delrate")).to_have_text(nonzero)
            expect(rates).not_to_have_attribute("data-max", "1")
            expect(page.locator("#conn-chart")).to_have_attribute("aria-label", re.compile("3$"))
            drawn = deliveries.get_attribute("points")
            assert drawn
            page.screenshot(path=SCREENSHOT, full_page=True)
            page.screenshot(path=tmp_path / "admin.png", full_page=True)
            # The live point moves with time: the next refresh redraws the line.
            expect(deliveries).not_to_have_attribute("points", drawn)

        expect(page.locator("#connections")).to_have_text("0")
        expect(page.locator("#channel-rows")).to_have_text("No channel has subscribers.")

        page.reload()  # the key stays in this tab's sessionStorage
        expect(page.locator("#dashboard")).to_be_visible()
        expect(page.locator("#counter-rows tr", has_text="Publications")).to_contain_text("12")
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        # Chromium logs the refused wrong key; nothing else went wrong (no CSP violation).
        refused = "the server responded with a status of 401"
        assert [p for p in problems if refused not in p] == []
        assert len(problems) == 1


def test_markup_in_figures_renders_as_text(admin_server: Server) -> None:
    """A channel and node named with markup are shown as text: no element, no script runs.

    The hub refuses such channel names (``[A-Za-z0-9_-:.@#=/]`` only), so the
    names are added to the real server's stats answer on its way to the page.
    """
    evil_node = '"><script>alert(2)</script>'

    def tamper(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["node"] = evil_node
        body["channels"]["top"] = [{"channel": XSS, "subscribers": 7}]
        body["channels"]["total"] = 1
        route.fulfill(response=response, body=json.dumps(body))

    with chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.route(re.compile(r"/admin/stats$"), tamper)
        page.goto(admin_server.url + "/admin")
        sign_in(page, KEY)
        expect(page.locator("#channel-rows td.name")).to_have_text(XSS)
        expect(page.locator("#node")).to_have_text(f"node {evil_node}")
        expect(page.locator("img")).to_have_count(0)
        expect(page.locator("body script")).to_have_count(1)  # the page's own
        assert problems == []
