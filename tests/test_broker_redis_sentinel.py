"""RedisBroker through Redis Sentinel, on a real primary, replica and 3 sentinels: the shared
broker contract, the URL, and failovers (a lost acknowledgement; two hub nodes following
the new primary while a numbered publisher runs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup

from hubbub.brokers import broker_from_url
from hubbub.brokers.redis import RedisBroker

from .broker_contract import (
    KEEP,
    BrokerContract,
    BrokerFactory,
    BrokerUnderTest,
    Recorder,
    publication,
    task_group_fixture,  # noqa: F401 (the task_group fixture)
)
from .broker_fixtures import (
    asyncio_backend_fixture,  # noqa: F401 (anyio_backend: asyncio only)
    redis_options,
)
from .e2e_cluster import run_fault, unique
from .lost_writes import (
    lost_in_the_failover,
    publish_after_the_failover,
    publish_as_the_replica_falls_behind,
)
from .redis_sentinel import RedisSentinel, redis_sentinel
from .servers import run_server


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """One primary, replica and 3 sentinels for this module's tests that do not break them."""
    with redis_sentinel(tmp_path_factory.mktemp("sentinel")) as running:
        yield running


def new_broker(url: str, **options: object) -> RedisBroker:
    """A Sentinel broker under a fresh key prefix, with short timeouts."""
    return RedisBroker.from_url(url, **redis_options(**options))


class TestRedisSentinelBroker(BrokerContract):
    """The broker contract, run against ``RedisBroker`` on a primary found through Sentinel."""

    TTL = 0.5

    @pytest.fixture
    def make_broker(self, sentinel: RedisSentinel) -> BrokerFactory:
        """Sentinel brokers on the module's setup; time passes for real."""

        async def make() -> BrokerUnderTest:
            return BrokerUnderTest(new_broker(sentinel.url), anyio.sleep)

        return make


@pytest.mark.anyio
async def test_broker_from_url_builds_a_sentinel_broker(
    sentinel: RedisSentinel, task_group: TaskGroup
) -> None:
    """``redis+sentinel://…/service`` gives a RedisBroker on the primary the sentinels name,
    with the ``redis://`` options; a database number may follow the service."""
    broker = broker_from_url(sentinel.url + "/0?prefix=app1:&timeout=0.5&health_check_interval=2")
    assert isinstance(broker, RedisBroker)
    assert (broker._prefix, broker._timeout, broker._health) == ("app1:", 0.5, 2.0)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        assert await broker.ready()
        published = await broker.publish(publication("room"), KEEP)
        assert published.offset == 1
        assert sentinel.primary.command("EXISTS", "app1:{4:room}:stream") == 1
    finally:
        await broker.stop()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+sentinel://127.0.0.1:26379", "service"),
        ("redis+sentinel://127.0.0.1:26379/", "service"),
        ("redis+sentinel:///svc", "at least one host"),
        ("redis+sentinel://127.0.0.1:26379,/svc", "has no name"),
        ("redis+sentinel://127.0.0.1:99999/svc", "1-65535"),
        ("redis+sentinel://127.0.0.1:port/svc", "1-65535"),
        ("redis+sentinel://127.0.0.1/svc/db1", "database .* must be a number"),
        ("redis+sentinel://127.0.0.1/svc/0/extra", "nothing more"),
        ("redis+sentinel://127.0.0.1/svc?timeout=soon", "timeout .* must be a number"),
        ("redis+sentinel://127.0.0.1/svc?max_connections=0", "at least 1"),
        ("redis+sentinel://127.0.0.1/svc?timout=1", "unknown option 'timout'"),
        ("redis+sentinel://127.0.0.1/svc?prefix=a&prefix=b", "twice"),
    ],
    ids=lambda value: value if "://" in value else "",
)
def test_malformed_sentinel_urls_are_refused(url: str, match: str) -> None:
    """A malformed ``redis+sentinel://`` URL raises a ValueError that says what is wrong,
    before anything connects."""
    with pytest.raises(ValueError, match=match):
        broker_from_url(url)


def test_sentinel_url_defaults() -> None:
    """Sentinel's port is 26379 by default; user and password go to the Redis servers,
    ``sentinel_password`` to the sentinels; ``rediss+sentinel`` means TLS."""
    broker = broker_from_url(
        "rediss+sentinel://ann:s3cret@a,b:26380/svc/2?sentinel_password=x&client_name=hub"
    )
    assert isinstance(broker, RedisBroker) and broker._sentinel is not None
    ports = [s.connection_pool.connection_kwargs["port"] for s in broker._sentinel.sentinels]
    assert ports == [26379, 26380]
    assert broker._sentinel.sentinels[0].connection_pool.connection_kwargs["password"] == "x"
    kwargs = broker._client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("ann", "s3cret", 2)
    assert kwargs["client_name"] == "hub"
    assert "SSL" in broker._client.connection_pool.connection_class.__name__
    assert broker._client.connection_pool.service_name == "svc"


@pytest.mark.anyio
async def test_acknowledged_publications_lost_in_a_failover_start_a_new_epoch(
    tmp_path: Path, task_group: TaskGroup
) -> None:
    """Through Sentinel: the replica misses the last acknowledged publications, the primary
    is SIGKILLed and the replica promoted; the broker follows it, the lost offsets are never
    reused under the same epoch (the stream goes on under a new one) and the channel is
    reported lost, so the hub tells its subscribers."""
    with redis_sentinel(tmp_path / "sentinel") as own:
        channel = "feed"
        async with contextlib.AsyncExitStack() as stack:
            broker = new_broker(own.url)
            recorder = Recorder()
            await broker.start(recorder.handler, recorder.on_lost, task_group)
            stack.push_async_callback(broker.stop)
            await broker.subscribe(channel)
            acked = await publish_as_the_replica_falls_behind(
                broker, recorder, channel, own.primary, own.replica
            )
            took = await asyncio.to_thread(own.wait_primary, own.replica)
            print(f"the sentinels promoted the replica in {took:.2f} s")
            # The pub/sub link follows the new primary (what was published before it
            # resubscribed is reported lost, and the hub would repair it from history).
            with anyio.fail_after(10):
                while not await broker.ready():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            after, page = await publish_after_the_failover(broker, recorder, channel)
            assert any(channel in (report or ()) for report in recorder.lost)
        lost_in_the_failover(acked, after, recorder.on(channel), page)


@pytest.mark.anyio
async def test_hub_nodes_follow_the_new_primary(tmp_path: Path) -> None:
    """Two hub nodes on Sentinel; the primary is SIGKILLed while a numbered publisher
    publishes into a history channel: the nodes follow the promoted replica, and every
    subscriber ends whole or was told plainly (1013, then ``recovered: false``) — never a
    silent gap or a duplicate."""
    with redis_sentinel(tmp_path / "sentinel") as own:
        argv = ["-m", "hubbub", "serve", "redis_app:app", "--port", "{port}"]
        env = {"HUBBUB_TEST_REDIS_URL": own.url}

        async def fault() -> None:
            await asyncio.to_thread(own.primary.kill)
            took = await asyncio.to_thread(own.wait_primary, own.replica)
            print(f"sigkill: the sentinels promoted the replica in {took:.2f} s")

        with contextlib.ExitStack() as stack:
            nodes = [stack.enter_context(run_server(argv, tmp_path, env=env)) for _ in range(2)]
            subscribers, _ = await run_fault(
                nodes, fault, may_lose=True, channel=unique("feed:sentinel")
            )
        told = sum(1 for s in subscribers if s.unrecovered)
        print(f"{told} of {len(subscribers)} subscribers resumed without recovery (told)")
