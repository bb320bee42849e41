"""The Redis broker: the shared broker contract on a real redis-server, then its faults."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from anyio.abc import TaskGroup

from hubbub import BrokerUnavailable, InternalError, StreamGone
from hubbub.brokers import HistoryOptions, HistoryPage, Publication, broker_from_url
from hubbub.brokers._redis_format import key
from hubbub.brokers.redis import RedisBroker
from hubbub.messages import ClientInfo, Position

from .broker_contract import (
    KEEP,
    BrokerContract,
    BrokerFactory,
    BrokerUnderTest,
    Recorder,
    offsets,
    publication,
    task_group_fixture,  # noqa: F401 (the task_group fixture)
)
from .broker_fixtures import (
    asyncio_backend_fixture,  # noqa: F401 (anyio_backend: asyncio only)
    redis_options,
    running,
)
from .redis_server import RedisServer, redis_server


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for this module's tests that do not break it."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may kill, freeze or restart."""
    with redis_server(tmp_path) as server:
        yield server


def new_broker(url: str, **options: object) -> RedisBroker:
    """A Redis broker under a fresh key prefix, with short timeouts for fault tests."""
    return RedisBroker.from_url(url, **redis_options(**options))


class TestRedisBroker(BrokerContract):
    """The broker contract, run against ``RedisBroker`` on a real redis-server."""

    TTL = 0.5

    @pytest.fixture
    def make_broker(self, redis: RedisServer) -> BrokerFactory:
        """Redis brokers on the module's server; time passes for real (Redis keeps the TTLs)."""

        async def make() -> BrokerUnderTest:
            return BrokerUnderTest(new_broker(redis.url), anyio.sleep)

        return make


# -- Redis-specific --------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
async def started(
    own_redis: RedisServer, task_group: TaskGroup
) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    """A started broker on this test's own redis-server."""
    async with running(new_broker(own_redis.url), task_group) as started:
        yield started


async def until(predicate: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


async def wait_until_ready(broker: RedisBroker, within: float = 10.0) -> None:
    """Wait (bounded) until the broker reports ready."""
    await until(broker.ready, within)


async def publish_when_up(broker: RedisBroker, channel: str, within: float = 10.0) -> int:
    """Publish once Redis takes it again (bounded); return the offset."""
    with anyio.fail_after(within):
        while True:
            try:
                published = await broker.publish(publication(channel), KEEP)
            except BrokerUnavailable:
                await anyio.sleep(0.05)
                continue
            assert published.offset is not None
            return published.offset


def test_import_hubbub_does_not_import_redis() -> None:
    """``import hubbub`` (and its brokers package) leaves redis unimported."""
    code = "import sys, hubbub, hubbub.brokers; assert 'redis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


async def test_broker_from_url_builds_a_redis_broker(
    redis: RedisServer, task_group: TaskGroup
) -> None:
    """``redis://`` URLs give a RedisBroker; query options set its prefix and timeouts."""
    broker = broker_from_url(redis.url + "?prefix=app1:&timeout=0.5&health_check_interval=2")
    assert isinstance(broker, RedisBroker)
    assert broker._prefix == "app1:" and broker._timeout == 0.5 and broker._health == 2.0
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        assert await broker.ready()
    finally:
        await broker.stop()


def test_bad_options_are_refused_at_construction() -> None:
    """Non-positive timeouts and a non-Redis client raise when the broker is built."""
    with pytest.raises(ValueError, match="positive"):
        new_broker("redis://127.0.0.1:1/0", timeout=0)
    with pytest.raises(ValueError, match="reconnect_delay"):
        new_broker("redis://127.0.0.1:1/0", reconnect_delay=2.0, max_reconnect_delay=1.0)
    with pytest.raises(TypeError):
        RedisBroker(object())  # type: ignore[arg-type]


async def test_two_brokers_share_streams_and_deliver_once(
    redis: RedisServer, task_group: TaskGroup
) -> None:
    """Two nodes on one Redis: each gets every publication once, in offset order."""
    prefix = f"t{secrets.token_hex(3)}:"
    one, two = new_broker(redis.url, prefix=prefix), new_broker(redis.url, prefix=prefix)
    got_one, got_two = Recorder(), Recorder()
    await one.start(got_one.handler, got_one.on_lost, task_group)
    await two.start(got_two.handler, got_two.on_lost, task_group)
    try:
        await one.subscribe("room")
        await two.subscribe("room")
        async with anyio.create_task_group() as tg:
            for broker in (one, two):
                for _ in range(2):

                    async def burst(b: RedisBroker = broker) -> None:
                        for _ in range(25):
                            await b.publish(publication("room"), KEEP)

                    tg.start_soon(burst)
        assert offsets(await got_one.wait_for("room", 100)) == list(range(1, 101))
        assert offsets(await got_two.wait_for("room", 100)) == list(range(1, 101))
        await anyio.sleep(0.2)
        assert len(got_one.on("room")) == len(got_two.on("room")) == 100
        who = ClientInfo(user="u", client="n.1")
        await one.presence_set("room", "n.1", who, 30.0)
        assert dict(await two.presence("room")) == {"n.1": who}
    finally:
        await one.stop()
        await two.stop()


async def test_redis_down_at_start(own_redis: RedisServer, task_group: TaskGroup) -> None:
    """Started while Redis is down: not ready, commands fail fast, then it connects alone."""
    own_redis.stop()
    broker = new_broker(own_redis.url)
    recorder = Recorder()
    with anyio.fail_after(3):
        await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        assert not await broker.ready()
        with anyio.fail_after(1.5):
            with pytest.raises(BrokerUnavailable) as failed:
                await broker.publish(publication("a"), KEEP)
            with pytest.raises(BrokerUnavailable):
                await broker.subscribe("a")
            with pytest.raises(BrokerUnavailable):
                await broker.history("a")
        # Clients see the reason in their 503: it names no host, port or errno.
        assert str(own_redis.port) not in str(failed.value)
        assert "127.0.0.1" not in str(failed.value)
        own_redis.start()
        await wait_until_ready(broker)
        await broker.subscribe("a")
        await broker.publish(publication("a"), KEEP)
        assert offsets(await recorder.wait_for("a", 1)) == [1]
    finally:
        await broker.stop()


async def test_pubsub_connection_killed(
    own_redis: RedisServer,
    started: tuple[RedisBroker, Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CLIENT KILL TYPE pubsub: the link comes back, resubscribed, and the loss is reported."""
    broker, recorder = started
    caplog.set_level(logging.INFO, "hubbub.redis")
    await broker.subscribe("a")
    await broker.publish(publication("a"), KEEP)
    await recorder.wait_for("a", 1)
    assert own_redis.command("CLIENT", "KILL", "TYPE", "pubsub") == 1
    await until(lambda: bool(recorder.lost), 5)
    assert recorder.lost == [["a"]]
    await broker.publish(publication("a"), KEEP)
    assert offsets(await recorder.wait_for("a", 2)) == [1, 2]
    assert own_redis.command("PUBSUB", "NUMSUB", broker._key("a", "pub"))[1] == 1
    text = caplog.text
    assert "link down" in text and "link restored" in text


async def test_redis_restarted(
    own_redis: RedisServer, started: tuple[RedisBroker, Recorder]
) -> None:
    """Redis restarted empty: the node resubscribes, reports loss, and streams get new epochs."""
    broker, recorder = started
    await broker.subscribe("a")
    first = await broker.publish(publication("a"), KEEP)
    own_redis.kill()
    with anyio.fail_after(3):
        with pytest.raises(BrokerUnavailable):
            await broker.publish(publication("a"), KEEP)
    assert not await broker.ready()
    own_redis.start()
    await wait_until_ready(broker)
    await until(lambda: bool(recorder.lost), 5)
    assert await publish_when_up(broker, "a") == 1
    delivered = await recorder.wait_for("a", 2)
    assert delivered[1].offset == 1 and delivered[1].epoch != first.epoch


async def test_redis_frozen(own_redis: RedisServer, started: tuple[RedisBroker, Recorder]) -> None:
    """SIGSTOP: calls time out (never hang), the link is declared down; SIGCONT: it recovers."""
    broker, recorder = started
    await broker.subscribe("a")
    await broker.publish(publication("a"), KEEP)
    own_redis.freeze()
    try:
        with anyio.fail_after(3):
            with pytest.raises(BrokerUnavailable):
                await broker.publish(publication("a"), KEEP)
        await until(lambda: broker._link is None or not broker._link.up, 5)
        assert not await broker.ready()
    finally:
        own_redis.thaw()
    await wait_until_ready(broker)
    await until(lambda: bool(recorder.lost), 5)
    last = await publish_when_up(broker, "a")
    delivered = await recorder.wait_for("a", 2)
    # The publish that timed out may or may not have reached Redis before the freeze.
    assert delivered[-1].offset == last and last in (2, 3)


async def test_junk_is_dropped_with_a_log_line(
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    task_group: TaskGroup,
) -> None:
    """Junk in hubbub's channel, stream and presence keys is logged and dropped, never fatal."""
    broker = new_broker(redis.url)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        await broker.subscribe("a")
        pub = broker._key("a", "pub")
        for junk in (b"junk", b"h1 1 e \x00\x01", b"h1 x y " + msgspec.msgpack.encode({"a": 1})):
            redis.command("PUBLISH", pub, junk)
        other = msgspec.msgpack.encode(publication("b"))
        redis.command("PUBLISH", pub, b"h1 - - " + other)
        await broker.publish(publication("a"), KEEP)
        assert offsets(await recorder.wait_for("a", 1)) == [1]
        redis.command("XADD", broker._key("a", "stream"), "2-0", "d", "junk")
        redis.command("XADD", broker._key("a", "stream"), "3-0", "x", "y")
        assert offsets(await broker.history("a")) == [1]
        assert (await broker.publish(publication("a"), KEEP)).offset == 2
        redis.command("HSET", broker._key("a", "presence-info"), "n.9", "junk")
        redis.command("ZADD", broker._key("a", "presence"), "99999999999999", "n.9")
        assert dict(await broker.presence("a")) == {}
        redis.command("HSET", broker._key("b", "meta"), "offset", "not-a-number")
        assert (await broker.publish(publication("b"), KEEP)).offset == 1
        assert "unreadable publication" in caplog.text
        assert "unreadable history entry" in caplog.text
        assert "unreadable presence entry" in caplog.text
        assert offsets(await recorder.wait_for("a", 2)) == [1, 2]
    finally:
        await broker.stop()


async def test_subscriptions_and_keys_return_to_baseline(
    redis: RedisServer, task_group: TaskGroup
) -> None:
    """Many subscribe/unsubscribe and presence cycles leave no subscription or key behind."""
    broker = new_broker(redis.url)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    prefix = broker._prefix
    who = ClientInfo(user="u", client="n.1")
    try:
        for n in range(200):
            channel = f"c{n % 20}"
            await broker.subscribe(channel)
            await broker.presence_set(channel, "n.1", who, 30.0)
            await broker.publish(publication(channel), None)
            await broker.presence_remove(channel, "n.1")
            await broker.unsubscribe(channel)
        await until(lambda: redis.command("PUBSUB", "CHANNELS", prefix + "*") == [], 5)
        assert redis.command("KEYS", prefix + "*") == []
        assert broker._channels == set()
    finally:
        await broker.stop()


async def test_history_keys_expire_with_the_stream(
    redis: RedisServer, task_group: TaskGroup
) -> None:
    """The meta hash and the stream expire together; nothing of the channel stays."""
    broker = new_broker(redis.url)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        await broker.publish(publication("a"), HistoryOptions(size=5, ttl=0.3))
        keys = redis.command("KEYS", broker._prefix + "*")
        assert sorted(keys) == sorted([broker._key("a", k).encode() for k in ("meta", "stream")])
        await anyio.sleep(0.5)
        assert redis.command("KEYS", broker._prefix + "*") == []
    finally:
        await broker.stop()


async def test_runs_in_a_given_task_group(redis: RedisServer) -> None:
    """Given a task group, the broker runs its link there, and stops it on ``stop``."""
    broker = new_broker(redis.url)
    assert "RedisBroker" in repr(broker)
    recorder = Recorder()
    async with anyio.create_task_group() as tg:
        await broker.start(recorder.handler, recorder.on_lost, task_group=tg)
        await broker.subscribe("a")
        await broker.publish(publication("a"), KEEP)
        assert offsets(await recorder.wait_for("a", 1)) == [1]
        await broker.stop()
    assert broker._link is None


async def test_start_without_a_task_group_raises_and_run_owns_one(redis: RedisServer) -> None:
    """``start`` without a task group raises (no task nobody owns); ``run()`` owns one."""
    broker = new_broker(redis.url)
    recorder = Recorder()
    with pytest.raises(RuntimeError, match=r"broker\.run\(handler, lost\)"):
        await broker.start(recorder.handler, recorder.on_lost)
    async with broker.run(recorder.handler, recorder.on_lost):
        await broker.subscribe("a")
        await broker.publish(publication("a"), KEEP)
        assert offsets(await recorder.wait_for("a", 1)) == [1]
    assert broker._link is None and not broker._link_task.running


async def test_commands_before_start_raise(redis: RedisServer) -> None:
    """Subscribing before ``start`` is a lifecycle error, not a Redis one."""
    broker = new_broker(redis.url)
    with pytest.raises(RuntimeError, match="not started"):
        await broker.subscribe("a")
    await broker.unsubscribe("a")  # harmless
    await broker.stop()  # harmless too


async def test_a_failing_handler_does_not_stop_delivery(
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    task_group: TaskGroup,
) -> None:
    """An exception in the hub's handler is logged; later publications still arrive."""
    broker = new_broker(redis.url)
    recorder = Recorder()

    def handler(p: Publication) -> None:
        recorder.handler(p)
        if p.offset == 1:
            raise ValueError("boom")

    await broker.start(handler, recorder.on_lost, task_group)
    try:
        await broker.subscribe("a")
        await broker.publish(publication("a"), KEEP)
        await broker.publish(publication("a"), KEEP)
        assert offsets(await recorder.wait_for("a", 2)) == [1, 2]
        assert "handler failed" in caplog.text
    finally:
        await broker.stop()


async def test_a_key_of_the_wrong_type_is_an_internal_error(
    redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    task_group: TaskGroup,
) -> None:
    """A foreign value of the wrong type under a hubbub key fails the call with 500, logged."""
    broker = new_broker(redis.url)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        redis.command("SET", broker._key("a", "meta"), "not a hash")
        with pytest.raises(InternalError):
            await broker.publish(publication("a"), KEEP)
        assert "Redis refused a command" in caplog.text
        assert (await broker.publish(publication("b"), KEEP)).offset == 1
    finally:
        await broker.stop()


def test_missing_redis_server_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server the Redis tests skip, except under CI=true where they fail."""
    from . import redis_server as module

    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(module, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        module.redis_server_binary()
    monkeypatch.setattr(module, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception):
        module.redis_server_binary()


async def test_history_since_extreme_offsets(redis: RedisServer, task_group: TaskGroup) -> None:
    """``since`` below zero reads from the start; far beyond the top reads nothing."""
    broker = new_broker(redis.url)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        published = await broker.publish(publication("a"), KEEP)
        epoch = published.epoch or ""
        assert offsets(await broker.history("a", since=Position(offset=-5, epoch=epoch))) == [1]
        far = Position(offset=2**70, epoch=epoch)
        assert (await broker.history("a", since=far)).publications == []
    finally:
        await broker.stop()


async def test_a_promoted_replica_starts_a_new_epoch(tmp_path: Path, task_group: TaskGroup) -> None:
    """A stream read or written on a server whose replication id changed (a replica promoted
    with ``REPLICAOF NO ONE``) goes on under a new epoch, its history and offsets kept: the
    primary may have acknowledged publications the replica never got."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with redis_server(tmp_path / "a") as primary, redis_server(tmp_path / "b") as replica:
        prefix = f"t{secrets.token_hex(3)}:"
        assert replica.command("REPLICAOF", "127.0.0.1", primary.port) == "OK"
        with anyio.fail_after(30):  # attached: the full sync is over
            while replica.command("ROLE")[3] != b"connected":  # noqa: ASYNC110
                await anyio.sleep(0.05)
        on_primary = new_broker(primary.url, prefix=prefix)
        await on_primary.start(Recorder().handler, Recorder().on_lost, task_group)
        try:
            first = [await on_primary.publish(publication("feed"), KEEP) for _ in range(3)]
            primary.replicated_to(replica)
        finally:
            await on_primary.stop()
        assert replica.command("REPLICAOF", "NO", "ONE") == "OK"
        on_replica = new_broker(replica.url, prefix=prefix)
        await on_replica.start(Recorder().handler, Recorder().on_lost, task_group)
        try:
            page = await on_replica.history("feed")
            assert page.position.epoch != first[0].epoch and page.position.offset == 3
            assert [p.data for p in page.publications] == [p.data for p in first]
            with pytest.raises(StreamGone):
                await on_replica.history("feed", since=Position(offset=3, epoch=first[0].epoch))
            after = await on_replica.publish(publication("feed"), KEEP)
            assert (after.epoch, after.offset) == (page.position.epoch, 4)
        finally:
            await on_replica.stop()


async def test_a_stream_written_before_lineage_keeps_its_epoch(
    redis: RedisServer, task_group: TaskGroup
) -> None:
    """A meta hash without the replication id (written by an older hubbub) adopts the
    server's and keeps its epoch: upgrading does not start streams over."""
    broker = new_broker(redis.url)
    meta = key(broker._prefix, "old", "meta")
    assert redis.command("HSET", meta, "epoch", "e0ld", "offset", 7) == 2
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        page = await broker.history("old")
        assert (page.position.epoch, page.position.offset) == ("e0ld", 7)
        published = await broker.publish(publication("old"), KEEP)
        assert (published.epoch, published.offset) == ("e0ld", 8)
        assert redis.command("HEXISTS", meta, "rid") == 1
    finally:
        await broker.stop()


async def test_a_restart_with_its_data_starts_a_new_epoch(
    own_redis: RedisServer, task_group: TaskGroup
) -> None:
    """Redis restarted from its snapshot gets a new replication id: the stream goes on under
    a new epoch with its history (what was acknowledged after the snapshot may be gone)."""
    broker = new_broker(own_redis.url)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        first = [await broker.publish(publication("feed"), KEEP) for _ in range(3)]
        assert own_redis.command("SAVE") == "OK"
        lost = await broker.publish(publication("feed", b'"after the snapshot"'), KEEP)
        own_redis.stop()
        own_redis.start()
        page = await history_when_up(broker, "feed")
        assert page.position.epoch != first[0].epoch
        assert [p.data for p in page.publications] == [p.data for p in first]
        after = await broker.publish(publication("feed", b'"new"'), KEEP)
        # Offset 4 again, but never under the epoch the lost publication had.
        assert (after.offset, lost.offset) == (4, 4) and after.epoch != lost.epoch
    finally:
        await broker.stop()


async def history_when_up(broker: RedisBroker, channel: str, within: float = 10.0) -> HistoryPage:
    """Read the channel's history once Redis answers again (bounded)."""
    with anyio.fail_after(within):
        while True:
            try:
                return await broker.history(channel)
            except BrokerUnavailable:
                await anyio.sleep(0.05)
