"""Churn: thousands of connect/subscribe/disconnect cycles leave the server where it was.

QUALITY.md: "many thousands of connect/subscribe/disconnect cycles leave memory,
file descriptors, tasks, channels and Redis subscriptions back at their
baseline". One real uvicorn process (``hubbub serve churn_app:app``) on a real
``redis-server``; clients connect as one of 50 users, subscribe to a presence
room and a history channel, sometimes publish, and leave in one of three ways
(a clean close, a close without unsubscribing first, or an abrupt TCP abort
with no close frame). Between a warm-up and the end, the server's asyncio
tasks, open file descriptors, connections, channels and users must return to
the baseline, Redis must hold no pub/sub channel or presence entry beyond it,
and resident memory may grow by no more than a small bound (a leak of a few
hundred bytes per cycle would cross it).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from .redis_server import RedisServer, redis_server
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

WARM_UP = 3000
CYCLES = 3000
WORKERS = 4
USERS = 50
RSS_GROWTH_KIB = 2 * 1024
"""At most 2 MiB more after 3,000 cycles: a leak of ~700 bytes per cycle would cross it.

Measured here: the first 3,000 cycles raise the allocator's high-water mark by
~3 MiB (4 connections at a time), after which six further rounds of 3,000 moved
RSS by -0.6 to +1.0 MiB with no trend, hence the warm-up of the same size.
"""


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the Redis broker are asyncio-only."""
    return "asyncio"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Server, RedisServer]]:
    with redis_server(tmp_path) as redis:
        argv = ["-m", "hubbub", "serve", "churn_app:app", "--port", "{port}"]
        with run_server(argv, tmp_path, env={"HUBBUB_TEST_REDIS_URL": redis.url}) as server:
            yield server, redis


def state(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/test/state", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


async def request(ws: ClientConnection, ids: Iterator[int], command: dict[str, Any]) -> Any:
    """Send one command and wait for its reply (other messages are skipped)."""
    ident = next(ids)
    await ws.send(json.dumps({**command, "id": ident}))
    while True:
        message = json.loads(await ws.recv())
        if message.get("id") == ident:
            assert message["type"] != "error", message
            return message


async def cycle(server: Server, n: int) -> None:
    user = f"u{n % USERS}"
    url = f"{server.ws_url}/ws?user={user}"
    ids = count(1)
    async with connect(
        url, subprotocols=[Subprotocol("hubbub.v1.json")], ping_interval=None, open_timeout=10
    ) as ws:
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        room, feed = f"room:r{n % 5}", f"feed:f{n % 3}"
        await request(ws, ids, {"type": "subscribe", "channel": room})
        await request(ws, ids, {"type": "subscribe", "channel": feed, "history": 2})
        if n % 4 == 0:
            await request(ws, ids, {"type": "publish", "channel": feed, "data": {"n": n}})
        way = n % 3
        if way == 0:
            await request(ws, ids, {"type": "unsubscribe", "channel": room})
            await request(ws, ids, {"type": "unsubscribe", "channel": feed})
        elif way == 2:
            # Gone without a close frame: the server only sees the TCP connection end.
            ws.transport.abort()


async def run_cycles(server: Server, start: int, total: int) -> None:
    numbers = iter(range(start, start + total))

    async def worker() -> None:
        for n in numbers:
            try:
                await cycle(server, n)
            except ConnectionError:
                # Only the aborting cycles may see their own abort surface here.
                assert n % 3 == 2

    async with asyncio.timeout(150):
        await asyncio.gather(*(worker() for _ in range(WORKERS)))


async def settled(
    server: Server, redis: RedisServer, tasks: int | None = None, within: float = 20.0
) -> dict[str, Any]:
    """The server's state once every connection is gone and Redis holds no presence.

    With ``tasks``, also once no more than that many tasks run: a connection the
    hub has forgotten may still be finishing its close (bounded by
    ``Limits.close_timeout``, 5 s), which is not a leak; a task that outlives
    ``within`` is.
    """
    deadline = time.monotonic() + within
    while True:
        now = await asyncio.to_thread(state, server)
        presence = redis.command("KEYS", "hubbub:{*}:presence*")
        channels = redis.command("PUBSUB", "CHANNELS", "hubbub:*")
        if (
            now["connections"] == 0
            and now["channels"] == {}
            and now["users"] == 0
            and presence == []
            and channels == [b"hubbub:{8:$control}:pub"]
            and (tasks is None or now["tasks"] <= tasks)
        ):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"not back to baseline: {now}, {presence}, {channels}")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(300)
async def test_thousands_of_cycles_return_to_the_baseline(
    node: tuple[Server, RedisServer],
) -> None:
    server, redis = node
    initial = await settled(server, redis)
    await run_cycles(server, 0, WARM_UP)
    # The memory baseline comes after a warm-up (caches, pools, first imports).
    baseline = await settled(server, redis, tasks=initial["tasks"])
    assert baseline["tasks"] == initial["tasks"], (initial, baseline)
    await run_cycles(server, WARM_UP, CYCLES)
    after = await settled(server, redis, tasks=baseline["tasks"])
    assert after["tasks"] == baseline["tasks"], (baseline, after)
    # Descriptors other than the Redis pool's (which keeps up to max_connections open for
    # reuse, however many a burst needed) are back where they were.
    assert after["fds"] - after["redis_pool"] <= baseline["fds"] - baseline["redis_pool"] + 2, (
        baseline,
        after,
    )
    growth = after["rss_kib"] - baseline["rss_kib"]
    assert growth <= RSS_GROWTH_KIB, f"RSS grew {growth} KiB over {CYCLES} cycles"
    # The server counted every one of them (nothing refused, nothing lost count).
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
