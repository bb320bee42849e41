"""Chromium decodes pre-framed fan-out: plain and shared compressed frames on a deflate socket.

Browsers always offer permessage-deflate; ``hubbub serve`` accepts it with
``server_no_context_takeover`` and then sends small publications uncompressed
(RSV1 clear) and larger ones as one compressed frame shared by every such
client, between replies the socket compressed itself. A real browser must
decode that mix, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .apps.wsclient import open_client
from .servers import Server, run_server
from .test_demo_browser import chromium, open_page

pytestmark = pytest.mark.browser

OPEN = """async (url) => {
  window.got = [];
  const ws = new WebSocket(url);
  window.ws = ws;
  ws.onmessage = (event) => window.got.push(JSON.parse(event.data));
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(JSON.stringify({type: "subscribe", channel: "browser-frames", id: 1}));
  return ws.extensions;
}"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``hubbub serve`` (the demo hub)."""
    with run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path) as running:
        yield running


def test_chromium_decodes_plain_and_shared_compressed_frames(server: Server) -> None:
    """Small (plain) and large (compressed once) publications all reach the page, in order."""
    sizes = [10, 300, 20, 5000, 30, 40_000, 40, 256, 255]
    items = [{"seq": i, "pad": ("word " * size)[:size]} for i, size in enumerate(sizes)]
    with chromium() as browser:
        problems: list[str] = []
        page = open_page(browser, problems)
        page.goto(server.url + "/")
        extensions = page.evaluate(OPEN, server.ws_url + "/ws")
        assert "permessage-deflate" in extensions
        assert "server_no_context_takeover" in extensions
        page.wait_for_function(
            "() => window.got.some((m) => m.type === 'subscribed')", timeout=10_000
        )

        async def publish() -> None:
            async with open_client(server.ws_url) as publisher:
                await publisher.publish_pipelined("browser-frames", items)

        # Playwright's sync API runs a loop in this thread: publish from another one.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, publish()).result(timeout=30)
        page.wait_for_function(
            f"() => window.got.filter((m) => m.type === 'message').length === {len(items)}",
            timeout=20_000,
        )
        got = page.evaluate("() => window.got.filter((m) => m.type === 'message')")
        assert [m["data"] for m in got] == items
        assert problems == []
