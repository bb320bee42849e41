"""The sharded Redis broker on three real redis-servers: the shared broker contract, the
placement (rendezvous hashing), a frozen shard, a channel moved by adding a shard, and two
hub nodes over every shard."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup

from hubbub import BrokerUnavailable, StreamGone
from hubbub.brokers import broker_from_url
from hubbub.brokers.redis import RedisBroker
from hubbub.brokers.redis_shards import ShardedRedisBroker, rendezvous
from hubbub.messages import ClientInfo, Position

from .broker_contract import (
    KEEP,
    BrokerContract,
    BrokerFactory,
    BrokerUnderTest,
    offsets,
    publication,
    task_group_fixture,  # noqa: F401 (the task_group fixture)
)
from .broker_fixtures import (
    asyncio_backend_fixture,  # noqa: F401 (anyio_backend: asyncio only)
    redis_options,
)
from .broker_fixtures import running as started
from .e2e_cluster import client, unique
from .redis_server import RedisServer, redis_server
from .servers import run_server

WHO = ClientInfo(client="c1", user="ann")


@contextlib.contextmanager
def three_redis(directory: Path) -> Iterator[list[RedisServer]]:
    """Three started redis-servers, each stopped by its PID when the block ends."""
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(3):
            (directory / str(i)).mkdir(parents=True, exist_ok=True)
            servers.append(stack.enter_context(redis_server(directory / str(i))))
        yield servers


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three redis-servers for this module's tests that do not break them."""
    with three_redis(tmp_path_factory.mktemp("shards")) as servers:
        yield servers


def new_broker(servers: list[RedisServer], **options: object) -> ShardedRedisBroker:
    """A sharded broker over ``servers`` under a fresh key prefix, with short timeouts."""
    return ShardedRedisBroker.from_urls([s.url for s in servers], **redis_options(**options))


class TestShardedRedisBroker(BrokerContract):
    """The broker contract, run against ``ShardedRedisBroker`` over three redis-servers."""

    TTL = 0.5

    @pytest.fixture
    def make_broker(self, shards: list[RedisServer]) -> BrokerFactory:
        """Sharded brokers on the module's servers; time passes for real."""

        async def make() -> BrokerUnderTest:
            return BrokerUnderTest(new_broker(shards), anyio.sleep)

        return make


def test_adding_a_shard_moves_only_its_share_of_channels_onto_it() -> None:
    """Rendezvous hashing: adding a 4th shard to 3 moves about a quarter of the channels,
    every one of them onto the new shard; removing a shard moves only its own channels; the
    order of the list does not matter; channels spread evenly."""
    channels = [f"room:{i}" for i in range(8000)]
    three = ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"]
    four = [*three, "10.0.0.4:6379"]
    before = {c: rendezvous(c, three) for c in channels}
    after = {c: rendezvous(c, four) for c in channels}
    moved = [c for c in channels if before[c] != after[c]]
    assert all(after[c] == "10.0.0.4:6379" for c in moved)
    assert 0.22 < len(moved) / len(channels) < 0.28, len(moved)
    assert {c: rendezvous(c, list(reversed(four))) for c in channels} == after
    spread = Counter(before.values())
    assert all(0.30 < n / len(channels) < 0.37 for n in spread.values()), spread
    # Removing shard 2: only its channels move.
    without = [three[0], three[2]]
    for c in channels:
        if before[c] != three[1]:
            assert rendezvous(c, without) == before[c]


def test_shards_from_a_url() -> None:
    """``redis+shards://a:1,b:2/3?options`` gives one RedisBroker per host, named
    ``host:port``, with the database and options of the URL; ``broker_from_url`` takes it."""
    broker = broker_from_url(
        "redis+shards://ann:pw@10.0.0.1:6380,[::1]:6381/3?prefix=app:&timeout=0.5"
    )
    assert isinstance(broker, ShardedRedisBroker)
    assert sorted(broker.shards) == ["10.0.0.1:6380", "[::1]:6381"]
    for shard in broker.shards.values():
        assert isinstance(shard, RedisBroker)
        assert (shard._prefix, shard._timeout) == ("app:", 0.5)
        kwargs = shard._client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "ann", "pw")
    # The same servers by redis:// URLs get the same names, so the same placement.
    same = ShardedRedisBroker.from_urls(["redis://10.0.0.1:6380/3", "redis://[::1]:6381/3"])
    assert sorted(same.shards) == ["10.0.0.1:6380/3", "[::1]:6381/3"]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+shards://", "at least one host"),
        ("redis+shards://a:1,,b:2", "has no name"),
        ("redis+shards://a:0", "1-65535"),
        ("redis+shards://a:1,a:1", "twice"),
        ("redis+shards://a:1/x", "database number"),
        ("redis+shards://a:1/0/1", "database number"),
        ("redis+shards://a:1?timeout=-", "timeout .* must be a number"),
        ("redis+shards://a:1?idempotency_keys=1.5", "must be an integer"),
        ("redis+shards://a:1?no_such=1", "unknown option 'no_such'"),
        ("redis+shards://a:1?socket_timeout=soon", "socket_timeout"),
    ],
    ids=lambda value: value if "://" in value else "",
)
def test_malformed_shard_urls_are_refused(url: str, match: str) -> None:
    """A malformed ``redis+shards://`` URL raises a ValueError that says what is wrong,
    before anything connects."""
    with pytest.raises(ValueError, match=match):
        broker_from_url(url)


def channel_per_shard(broker: ShardedRedisBroker, stem: str = "room") -> dict[str, str]:
    """One channel name per shard: shard name -> channel."""
    found: dict[str, str] = {}
    i = 0
    while len(found) < len(broker.shards):
        name = f"{stem}{i}"
        found.setdefault(broker.shard_of(name), name)
        i += 1
    return found


@pytest.mark.anyio
async def test_each_channel_lives_on_its_shard_only(
    shards: list[RedisServer], task_group: TaskGroup
) -> None:
    """A channel's stream, pub/sub subscription and presence are on its shard and nowhere
    else."""
    broker = new_broker(shards)
    prefix = broker.shards[next(iter(broker.shards))]._prefix  # type: ignore[attr-defined]
    by_port = {f"127.0.0.1:{s.port}/0": s for s in shards}
    async with started(broker, task_group) as (_, recorder):
        for shard, channel in channel_per_shard(broker).items():
            await broker.subscribe(channel)
            await broker.publish(publication(channel), KEEP)
            await broker.presence_set(channel, "c1", WHO, 5.0)
            await recorder.wait_for(channel, 1)
            tag = f"{prefix}{{{len(channel)}:{channel}}}"
            for name, server in by_port.items():
                mine = name == shard
                assert server.command("EXISTS", f"{tag}:stream") == int(mine)
                assert server.command("EXISTS", f"{tag}:presence") == int(mine)
                assert server.command("PUBSUB", "NUMSUB", f"{tag}:pub")[1] == int(mine)


@pytest.mark.anyio
async def test_a_frozen_shard_affects_only_its_channels(
    tmp_path: Path, task_group: TaskGroup
) -> None:
    """One redis-server frozen with SIGSTOP: calls for its channels fail with 503 within the
    timeout, the other shards' channels keep flowing (publish, delivery, presence, new
    subscriptions); after SIGCONT its channels work again, are reported lost (only they),
    and their history is whole."""
    with three_redis(tmp_path) as servers:
        broker = new_broker(servers)
        names = channel_per_shard(broker)
        frozen = servers[0]
        frozen_name = names[f"127.0.0.1:{frozen.port}/0"]
        others = [c for c in names.values() if c != frozen_name]
        async with started(broker, task_group) as (_, recorder):
            for channel in names.values():
                await broker.subscribe(channel)
                await broker.publish(publication(channel), KEEP)
            frozen.freeze()
            try:
                for call in (
                    lambda: broker.publish(publication(frozen_name), KEEP),
                    lambda: broker.history(frozen_name),
                    lambda: broker.presence(frozen_name),
                ):
                    start = time.monotonic()
                    with pytest.raises(BrokerUnavailable):
                        await call()
                    assert time.monotonic() - start < 1.5
                for channel in others:
                    published = await broker.publish(publication(channel), KEEP)
                    assert published.offset == 2
                    assert offsets(await recorder.wait_for(channel, 2)) == [1, 2]
                    await broker.presence_set(channel, "c1", WHO, 5.0)
                    assert set(await broker.presence(channel)) == {"c1"}
                new = next(
                    f"new{i}"
                    for i in range(1000)
                    if broker.shard_of(f"new{i}") != broker.shard_of(frozen_name)
                )
                await broker.subscribe(new)  # another shard: not held up
                assert not await broker.ready()
                await anyio.sleep(1.0)  # the frozen shard's link misses its PONG
            finally:
                frozen.thaw()
            with anyio.fail_after(10):
                while not await broker.ready():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            published = await broker.publish(publication(frozen_name), KEEP)
            # The publish that timed out ran once the server woke up (a 503 says "not
            # confirmed"): the stream holds 2 or 3 — never a silent hole, history whole.
            assert published.offset in (3, 4)
            page = await broker.history(frozen_name)
            assert offsets(page) == list(range(1, published.offset + 1))
            lost = {c for report in recorder.lost for c in (report or ())}
            assert frozen_name in lost and not lost & set(others)


@pytest.mark.anyio
async def test_a_channel_moved_by_a_new_shard_starts_over_under_a_new_epoch(
    shards: list[RedisServer], task_group: TaskGroup
) -> None:
    """Adding a shard moves a channel there: its stream starts over under a new epoch on
    the new shard (a recovery from the old position is refused, so the hub answers
    ``recovered: false``), while channels that did not move keep their streams."""
    prefix = f"t{secrets.token_hex(3)}:"
    two = new_broker(shards[:2], prefix=prefix)
    three = new_broker(shards, prefix=prefix)
    new_shard = f"127.0.0.1:{shards[2].port}/0"
    moving = next(f"c{i}" for i in range(1000) if three.shard_of(f"c{i}") == new_shard)
    staying = next(f"c{i}" for i in range(1000) if three.shard_of(f"c{i}") != new_shard)
    assert two.shard_of(staying) == three.shard_of(staying)
    async with started(two, task_group):
        old = {
            c: [await two.publish(publication(c), KEEP) for _ in range(3)][-1]
            for c in (moving, staying)
        }
    async with started(three, task_group):
        page = await three.history(moving)
        assert page.publications == [] and page.position.epoch != old[moving].epoch
        with pytest.raises(StreamGone):
            await three.history(moving, since=Position(offset=3, epoch=old[moving].epoch or ""))
        assert (await three.publish(publication(moving), KEEP)).offset == 1
        kept = await three.history(
            staying, since=Position(offset=1, epoch=old[staying].epoch or "")
        )
        assert offsets(kept) == [2, 3]
    # The old stream stays on the old shard until it expires.
    old_shard = shards[[f"127.0.0.1:{s.port}/0" for s in shards].index(two.shard_of(moving))]
    assert old_shard.command("EXISTS", f"{prefix}{{{len(moving)}:{moving}}}:stream") == 1


@pytest.mark.anyio
async def test_two_hub_nodes_every_offset_once_in_order(
    shards: list[RedisServer], tmp_path: Path
) -> None:
    """Two hub nodes on ``redis+shards://…``; numbered publishers on both over history
    channels on every shard: subscribers on both nodes get every offset once, in order."""
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in shards)
    url = f"redis+shards://{hosts}/0?prefix=shards{secrets.token_hex(2)}:"
    placement = ShardedRedisBroker.from_url(url)
    names = list(channel_per_shard(placement, unique("feed:shards") + "-").values())
    argv = ["-m", "hubbub", "serve", "redis_shards_app:app", "--port", "{port}"]
    env = {"HUBBUB_TEST_REDIS_SHARDS_URL": url}
    count = 45
    with run_server(argv, tmp_path, env=env) as one, run_server(argv, tmp_path, env=env) as two:
        async with contextlib.AsyncExitStack() as stack:
            subscribers = []
            for node in (one, two):
                c = await stack.enter_async_context(client(node))
                for name in names:
                    await c.subscribe(name)
                subscribers.append(c)
            publishers = [await stack.enter_async_context(client(node)) for node in (one, two)]

            async def publish(p: int) -> None:
                for n in range(count):
                    await publishers[p].publish(names[n % len(names)], {"text": f"{p} {n}"})

            await asyncio.gather(publish(0), publish(1))
            per_channel = 2 * count // len(names)
            for c in subscribers:
                got = await c.messages(2 * count, within=20)
                for name in names:
                    mine = [m for m in got if m["channel"] == name]
                    assert [m["offset"] for m in mine] == list(range(1, per_channel + 1))
                with pytest.raises(TimeoutError):
                    await c.messages(1, within=0.3)  # nothing twice


@pytest.mark.anyio
async def test_hub_nodes_with_a_frozen_shard(tmp_path: Path) -> None:
    """Two hub nodes on three shards, one redis-server frozen with SIGSTOP: clients'
    publishes into its channels get error 503 within the broker timeout, channels on the
    other shards keep flowing between the nodes; after SIGCONT its channels work again."""
    with three_redis(tmp_path / "redis") as servers:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
        url = f"redis+shards://{hosts}/0"
        names = channel_per_shard(ShardedRedisBroker.from_url(url), unique("feed:frozen") + "-")
        frozen = servers[1]
        frozen_name = names[f"127.0.0.1:{frozen.port}"]
        others = [c for c in names.values() if c != frozen_name]
        argv = ["-m", "hubbub", "serve", "redis_shards_app:app", "--port", "{port}"]
        env = {"HUBBUB_TEST_REDIS_SHARDS_URL": url}
        with (
            run_server(argv, tmp_path, env=env) as one,
            run_server(argv, tmp_path, env=env) as two,
        ):
            async with client(one) as publisher, client(two) as subscriber:
                for channel in names.values():
                    assert (await subscriber.subscribe(channel))["type"] == "subscribed"
                frozen.freeze()
                try:
                    start = time.monotonic()
                    reply = await publisher.request(
                        {"type": "publish", "channel": frozen_name, "data": {"n": 0}}
                    )
                    took = time.monotonic() - start
                    assert reply["type"] == "error" and reply["code"] == 503, reply
                    assert took < 2.5, took  # the broker timeout (1 s) plus the hub's margin
                    for n in range(5):
                        for channel in others:
                            await publisher.publish(channel, {"n": n})  # asserts the ack
                    got = await subscriber.messages(5 * len(others), within=10)
                    for channel in others:
                        mine = [m["offset"] for m in got if m["channel"] == channel]
                        assert mine == [1, 2, 3, 4, 5]
                finally:
                    frozen.thaw()
                with anyio.fail_after(15):
                    while True:
                        again = {"type": "publish", "channel": frozen_name, "data": {"n": 1}}
                        if (await publisher.request(again))["type"] == "ack":
                            break
                        await anyio.sleep(0.1)
