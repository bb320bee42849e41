"""Several hub nodes on one Redis, end to end: what only Redis has.

The suite every broker runs (delivery, presence, notify, disconnect, the demo
hub, nodes started while the backend is down, clients moving to another node)
is ``test_e2e_brokers.py``. Here: Redis pub/sub subscriptions and keys back at
baseline after churn, and the Redis faults (``CLIENT KILL TYPE pubsub``,
``SIGSTOP``, a restart that loses the data) on the shared harness
:func:`~tests.e2e_cluster.run_fault`: a numbered publisher runs through the
fault and every subscriber on both nodes must hold every offset exactly once,
resuming with ``recover`` after a reconnect code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import e2e_cluster as e2e
from .e2e_cluster import Backend, client, run_fault, until
from .redis_server import RedisServer
from .servers import Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the Redis broker are asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The Redis of this module's healthy-path test."""
    with e2e.backend("redis", tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="module")
def redis(backend: Backend) -> RedisServer:
    """The module's ``redis-server``."""
    assert isinstance(backend.server, RedisServer)
    return backend.server


@pytest.fixture(scope="module")
def cluster(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two nodes on the module's Redis."""
    with backend.nodes(tmp_path_factory.mktemp("nodes")) as running:
        yield running


async def test_subscriptions_and_keys_return_to_baseline(
    redis: RedisServer, cluster: list[Server]
) -> None:
    """After many subscribe/unsubscribe cycles, Redis subscriptions and keys are at baseline."""
    await until(lambda: _no_channels(redis), 5, "baseline")
    keys_before = set(redis.command("KEYS", "hubbub:*"))
    async with client(cluster[0]) as a, client(cluster[1]) as b:
        for n in range(40):
            channel = f"room:churn{n % 7}"
            for c in (a, b):
                await c.subscribe(channel)
            await a.publish(channel, {"n": n})
            for c in (a, b):
                reply = await c.request({"type": "unsubscribe", "channel": channel})
                assert reply["type"] == "unsubscribed"
    await until(lambda: _no_channels(redis), 5, "pub/sub channels back to baseline")

    async def keys_back() -> bool:
        return set(redis.command("KEYS", "hubbub:*")) == keys_before

    await until(keys_back, 5, "keys back to baseline")


async def _no_channels(redis: RedisServer) -> bool:
    # Only the nodes' control channel stays subscribed.
    return bool(redis.command("PUBSUB", "CHANNELS", "hubbub:*") == [b"hubbub:{8:$control}:pub"])


# -- faults ------------------------------------------------------------------------------------


async def test_fault_pubsub_connection_killed(tmp_path: Path) -> None:
    """CLIENT KILL TYPE pubsub mid-stream: nodes resubscribe and repair; nothing lost or doubled."""

    with e2e.backend("redis", tmp_path) as redis, redis.nodes(tmp_path) as cluster:

        async def fault() -> None:
            assert redis.server.command("CLIENT", "KILL", "TYPE", "pubsub") == 2

        _, recovered_in = await run_fault(cluster, fault)
    assert recovered_in < 5


async def test_fault_redis_frozen(tmp_path: Path) -> None:
    """Redis SIGSTOPped for 3 s mid-stream: calls time out with 503, then everything catches up."""

    with e2e.backend("redis", tmp_path) as redis, redis.nodes(tmp_path) as cluster:

        async def fault() -> None:
            redis.server.freeze()
            try:
                await asyncio.sleep(3)
            finally:
                redis.server.thaw()

        _, recovered_in = await run_fault(cluster, fault)
    assert recovered_in < 10


async def test_fault_redis_restarted(tmp_path: Path) -> None:
    """Redis killed and restarted empty: a new epoch; old subscribers resume without duplicates."""

    with e2e.backend("redis", tmp_path) as redis, redis.nodes(tmp_path) as cluster:

        async def fault() -> None:
            redis.server.kill()
            await asyncio.sleep(1)
            redis.server.start()

        subscribers, recovered_in = await run_fault(cluster, fault, may_lose=True)
    assert recovered_in < 10
    assert all(s.position[0] != s.seen[0][0] for s in subscribers)  # a new epoch
