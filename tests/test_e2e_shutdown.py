"""Graceful shutdown end to end: SIGTERM a real ``hubbub serve`` while clients are connected.

``hubbub serve`` drains every running hub before uvicorn closes the sockets, so
each client hears ``disconnect`` 1012 (reconnect) before its close frame, and
the process exits 0 within a bounded time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from .apps.wsclient import JSON, MSGPACK, Client, Ending, open_client
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

EXIT_TIMEOUT = 15.0


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


async def _wait_exit(
    server: Server, within: float = EXIT_TIMEOUT, *, fail: bool = True
) -> int | None:
    """The server process's exit code, waiting at most ``within`` seconds.

    Fails the test when it overstays, or returns ``None`` with ``fail=False``.
    """
    try:
        return await asyncio.to_thread(server.process.wait, within)
    except subprocess.TimeoutExpired:
        if not fail:
            return None
        pytest.fail(f"server still running {within} s after SIGTERM:\n{server.log()}")


def _check_restart_goodbye(ending: Ending) -> None:
    """``disconnect`` 1012 with ``reconnect: true`` came last, then the close frame 1012."""
    assert ending.messages, "no disconnect before the close"
    last = ending.messages[-1]
    assert last["type"] == "disconnect", ending.messages
    assert last["code"] == 1012
    assert last["reconnect"] is True
    assert isinstance(last["reason"], str)
    assert ending.code == 1012


# uvicorn re-raises the signal after a graceful shutdown, so the process ends "killed by
# SIGTERM" (143 in a shell) as Unix convention and process managers expect.
GRACEFUL = -signal.SIGTERM


async def test_sigterm_says_goodbye_with_1012_then_exits(tmp_path: Path) -> None:
    """On SIGTERM every client gets ``disconnect`` 1012 before a 1012 close; the process ends."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}"]
    with run_server(argv, tmp_path) as server:
        async with AsyncExitStack() as stack:
            clients: list[Client] = [
                await stack.enter_async_context(open_client(server.ws_url, subprotocols=[codec]))
                for codec in (JSON, JSON, MSGPACK, MSGPACK)
            ]
            for i, client in enumerate(clients):
                await client.subscribe("everyone")
                if i % 2:
                    await client.subscribe("chat:room")
            await clients[0].publish("everyone", "before shutdown", echo=False)
            for client in clients[1:]:
                assert [m["data"] for m in await client.messages(1)] == ["before shutdown"]

            server.process.send_signal(signal.SIGTERM)
            endings = await asyncio.gather(*(c.until_closed(15) for c in clients))
            for ending in endings:
                _check_restart_goodbye(ending)
        assert await _wait_exit(server) == GRACEFUL


async def test_sigterm_with_no_clients_exits(tmp_path: Path) -> None:
    """SIGTERM with nobody connected ends the process gracefully at once."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}"]
    with run_server(argv, tmp_path) as server:
        server.process.send_signal(signal.SIGTERM)
        assert await _wait_exit(server) == GRACEFUL


async def test_new_connection_while_draining_is_refused(tmp_path: Path) -> None:
    """While the hub drains, a new WebSocket is refused 503 (or cannot connect at all)."""
    # A subscriber that stopped reading, with megabytes queued, holds the drain for
    # about two close timeouts (draining_hub: 2 s): the window to try a new connection.
    argv = ["-m", "hubbub", "serve", "draining_hub:hub", "--port", "{port}"]
    payload = base64.b64encode(os.urandom(36 * 1024)).decode()  # 48 KiB of text
    with run_server(argv, tmp_path) as server:
        url = server.ws_url
        async with (
            open_client(url) as frozen,
            open_client(url) as listener,
            open_client(url) as publisher,
        ):
            await frozen.subscribe("big")
            await listener.subscribe("other")
            frozen.ws.transport.pause_reading()
            for _ in range(10):
                await publisher.publish_pipelined("big", [payload] * 20)

            server.process.send_signal(signal.SIGTERM)
            _check_restart_goodbye(await listener.until_closed(10))
            # The hub is draining now (it said goodbye) and `frozen` holds the drain open.
            with pytest.raises((InvalidHandshake, OSError)) as refused:
                async with connect(url + "/ws", proxy=None, open_timeout=5):
                    pass
            if isinstance(refused.value, InvalidStatus):
                assert refused.value.response.status_code == 503
            # `frozen` never reads again: the server must drop it after its close
            # timeout (§9) instead of waiting for it forever.
            try:
                exited = await _wait_exit(server, EXIT_TIMEOUT, fail=False)
            finally:
                frozen.ws.transport.resume_reading()
            assert exited is not None, f"still running {EXIT_TIMEOUT} s after SIGTERM"
            assert exited == GRACEFUL
