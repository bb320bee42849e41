"""Issue #13, the brokers: concurrency, key collisions, idempotency memory and big presence.

Every test here reproduces one hole against real servers: ``hubbub serve
--broker redis://…`` (or ``postgresql://…``) in a uvicorn subprocess, or the
broker itself on a real ``redis-server``/PostgreSQL, started and stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import secrets
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from redis.asyncio import ConnectionPool, Redis

from hubbub import BrokerUnavailable, RateLimited
from hubbub.brokers import HistoryOptions, Idempotency, MemoryBroker
from hubbub.brokers.postgres import PostgresBroker
from hubbub.brokers.redis import RedisBroker
from hubbub.messages import ClientInfo

from .apps.wsclient import Client, open_client, open_clients
from .broker_contract import (
    KEEP,
    Recorder,
    publication,
    task_group_fixture,  # noqa: F401 (the task_group fixture)
)
from .pg_server import PgServer, pg_server
from .redis_server import RedisServer, redis_server
from .servers import Server, run_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the Redis and PostgreSQL brokers are asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for this module."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@contextlib.contextmanager
def serve(broker_url: str, tmp_path: Path) -> Iterator[Server]:
    """``hubbub serve --broker <broker_url>`` (the demo hub) in a uvicorn subprocess."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--broker", broker_url]
    with run_server(argv, tmp_path) as server:
        yield server


def client(server: Server, name: str | None = None) -> Any:
    """A client of the demo hub, as the visitor ``name`` (or anonymous)."""
    return open_client(server.ws_url, path="/ws" + (f"?name={name}" if name else ""))


@contextlib.asynccontextmanager
async def started_redis_broker(
    redis: RedisServer, **options: Any
) -> AsyncIterator[tuple[RedisBroker, Recorder]]:
    """A started Redis broker under a fresh prefix on the module's server."""
    options.setdefault("prefix", f"h{secrets.token_hex(3)}:")
    broker = RedisBroker.from_url(redis.url, **options)
    recorder = Recorder()
    async with broker.run(recorder.handler, recorder.on_lost):
        yield broker, recorder


def no_tracebacks(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log and "Too many connections" not in log, log[-3000:]


async def publish_all_at_once(clients: list[Client], channel: str) -> Counter[str]:
    """Every client publishes once, all at the same moment; the replies, counted."""

    async def one(n: int, c: Client) -> str:
        reply = await c.request(
            {"type": "publish", "channel": channel, "data": {"text": f"m{n}"}}, within=60
        )
        if reply["type"] == "ack":
            return "ack"
        return f"{reply['code']} {reply['reason']}"

    return Counter(await asyncio.gather(*(one(n, c) for n, c in enumerate(clients))))


# -- 1. concurrency: the connection pool --------------------------------------------------------


async def test_300_concurrent_publishers_on_redis_all_get_ack(
    redis: RedisServer, tmp_path: Path
) -> None:
    """300 clients publishing at the same moment through one node on Redis all get ``ack``."""
    with serve(redis.url + "?prefix=load:", tmp_path) as server:
        clients, stack = await open_clients(server.ws_url, 300)
        async with stack:
            replies = await publish_all_at_once(clients, "chat:load")
        assert replies == Counter({"ack": 300})
        no_tracebacks(server)


async def test_a_full_redis_pool_waits_instead_of_failing(redis: RedisServer) -> None:
    """With 2 pooled connections, 200 racing publishes wait their turn and all succeed."""
    async with started_redis_broker(redis, max_connections=2) as (broker, recorder):
        await broker.subscribe("pooled")
        offsets: list[int | None] = []

        async def one() -> None:
            offsets.append((await broker.publish(publication("pooled"), KEEP)).offset)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
        assert sorted(offsets) == list(range(1, 201))  # type: ignore[type-var]
        assert len(await recorder.wait_for("pooled", 200)) == 200


async def test_a_full_shared_pool_says_busy_not_unreachable(
    redis: RedisServer, task_group: TaskGroup
) -> None:
    """A client whose refusing pool is full (other code holds it) gives 503 "busy", not
    "unreachable"; the next call after it is freed works."""
    pool = ConnectionPool.from_url(redis.url, max_connections=1)
    broker = RedisBroker(Redis(connection_pool=pool), prefix=f"h{secrets.token_hex(3)}:")
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        held = await pool.get_connection()
        try:
            with anyio.fail_after(5), pytest.raises(BrokerUnavailable) as refused:
                await broker.publish(publication("busy"), KEEP)
        finally:
            await pool.release(held)
        assert "busy" in refused.value.reason and "unreachable" not in refused.value.reason
        assert (await broker.publish(publication("busy"), KEEP)).offset == 1
    finally:
        await broker.stop()
        await pool.aclose()


# -- 6. key collisions between channel names ----------------------------------------------------


async def test_presence_of_a_channel_and_its_info_twin_do_not_collide(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Subscribers of ``chat:lobby:info`` and ``chat:lobby`` both get presence, no 500."""
    room = f"chat:lobby{secrets.token_hex(2)}"
    with serve(redis.url + "?prefix=keys:", tmp_path) as server:
        async with client(server, "ann") as ann, client(server, "bob") as bob:
            await ann.subscribe(room + ":info")
            reply = await bob.request({"type": "subscribe", "channel": room})
            assert reply["type"] == "subscribed", reply
            for c, channel, who in ((ann, room + ":info", "ann"), (bob, room, "bob")):
                presence = await c.request({"type": "presence", "channel": channel})
                assert presence["type"] == "presence", presence
                assert [p["name"] for p in presence["clients"].values()] == [who]
        no_tracebacks(server)


async def test_idempotency_keys_of_different_channels_do_not_collide(
    redis: RedisServer, tmp_path: Path
) -> None:
    """(``chat:a:b``, key ``c``) after (``chat:a``, key ``b:c``) is published, not swallowed."""
    base = f"chat:x{secrets.token_hex(2)}"
    with serve(redis.url + "?prefix=keys:", tmp_path) as server:
        async with client(server, "ann") as ann, client(server, "bob") as bob:
            await bob.subscribe(base + ":b")
            first = await ann.publish(base, {"text": "one"}, idempotency_key="b:c")
            second = await ann.publish(base + ":b", {"text": "two"}, idempotency_key="c")
            assert (first["offset"], second["offset"]) == (1, 1)
            assert first["epoch"] != second["epoch"]
            (message,) = await bob.messages(1)
            assert message["channel"] == base + ":b" and message["data"] == {"text": "two"}
        no_tracebacks(server)


async def test_redis_keys_of_colliding_names_stay_apart(redis: RedisServer) -> None:
    """Streams, presence and idempotency keys of names that ``:`` would join stay apart."""
    async with started_redis_broker(redis) as (broker, recorder):
        ann = ClientInfo(user="ann", client="c1")
        bob = ClientInfo(user="bob", client="c2")
        await broker.presence_set("x:info", "c1", ann, 60)
        await broker.presence_set("x", "c2", bob, 60)
        assert dict(await broker.presence("x")) == {"c2": bob}
        assert dict(await broker.presence("x:info")) == {"c1": ann}
        for channel in ("a:b", "a"):
            await broker.subscribe(channel)
        one = await broker.publish(publication("a", b'"1"'), KEEP, Idempotency("b:c", 60))
        two = await broker.publish(publication("a:b", b'"2"'), KEEP, Idempotency("c", 60))
        assert (one.offset, two.offset) == (1, 1)
        assert [p.data for p in await recorder.wait_for("a:b", 1)] == [b'"2"']
        assert [p.data for p in (await broker.history("a:b")).publications] == [b'"2"']
        # A name shaped like another channel's stream or meta key reads its own stream.
        await broker.publish(publication("stream:a", b'"3"'), KEEP)
        assert [p.data for p in (await broker.history("a")).publications] == [b'"1"']


# -- 10. presence of very large channels ---------------------------------------------------------


async def test_redis_presence_of_10000_clients(redis: RedisServer) -> None:
    """10,000 leases in one channel are listed, and 10,000 expired ones are swept, no error."""
    async with started_redis_broker(redis) as (broker, _):
        limit = anyio.CapacityLimiter(50)

        async def lease(n: int, ttl: float) -> None:
            async with limit:
                info = ClientInfo(user=f"u{n}", client=f"c{n}")
                await broker.presence_set("crowd", f"c{n}", info, ttl)

        async with anyio.create_task_group() as tg:
            for n in range(10_000):
                tg.start_soon(lease, n, 60.0)
        present = await broker.presence("crowd")
        assert len(present) == 10_000 and present["c9999"].user == "u9999"

        async with anyio.create_task_group() as tg:
            for n in range(10_000):
                tg.start_soon(lease, n, 1.0)
        await anyio.sleep(1.5)  # every lease has expired: the next call sweeps 10,000
        await broker.presence_set("crowd", "last", ClientInfo(user="z", client="last"), 60)
        assert list(await broker.presence("crowd")) == ["last"]


# -- 5. idempotency keys: what they hold, and how many ------------------------------------------


async def test_memory_broker_idempotency_keeps_positions_not_publications() -> None:
    """1,000 publications of 60 KB under unique keys leave well under 1 MiB behind."""
    broker = MemoryBroker()
    await broker.start(lambda _: None, lambda _: None)
    sender = ClientInfo(user="ann", client="c1")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1_000):
            payload = b'"%d%s"' % (n, b"x" * 60_000)  # each its own bytes, as off the wire
            published = await broker.publish(
                publication("big", payload, sender=sender), None, Idempotency(f"k{n}", 120)
            )
            del published
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1024 * 1024, f"{held} bytes held for 1,000 idempotency keys"


async def test_memory_broker_retry_gets_the_original_position_and_the_cap_refuses() -> None:
    """A retry answers the first offset and epoch; a key past the cap is refused 429."""
    broker = MemoryBroker(idempotency_keys=3)
    await broker.start(lambda _: None, lambda _: None)
    ann = ClientInfo(user="ann", client="c1")
    bob = ClientInfo(user="bob", client="c2")
    history = HistoryOptions(size=10, ttl=60)
    firsts = [
        await broker.publish(publication("ch", sender=ann), history, Idempotency(f"k{n}", 60))
        for n in range(3)
    ]
    with pytest.raises(RateLimited, match="idempotency"):
        await broker.publish(publication("ch", sender=ann), history, Idempotency("k3", 60))
    again = publication("ch", b'"again"', sender=ann)
    retry = await broker.publish(again, history, Idempotency("k1", 60))
    assert retry.offset == firsts[1].offset == 2 and retry.epoch == firsts[1].epoch
    # Another user's budget, and the same user's in another channel, are their own.
    other = await broker.publish(publication("ch", sender=bob), history, Idempotency("k3", 60))
    assert other.offset == 4
    await broker.publish(publication("ch2", sender=ann), history, Idempotency("k3", 60))


async def test_redis_idempotency_keeps_positions_not_publications(
    redis: RedisServer, tmp_path: Path
) -> None:
    """Through ``hubbub serve`` on Redis: a retry gets the first offset and epoch, the keys
    hold a few bytes each (not the 60 KB publications), and a key past the cap gets 429."""
    prefix = f"idem{secrets.token_hex(2)}:"
    with serve(redis.url + f"?prefix={prefix}&idempotency_keys=20", tmp_path) as server:
        async with client(server, "ann") as ann, client(server, "bob") as bob:
            first = await ann.publish("chat:idem", {"text": "first"}, idempotency_key="k")
            retry = await ann.publish("chat:idem", {"text": "retry"}, idempotency_key="k")
            assert (retry["offset"], retry["epoch"]) == (first["offset"], first["epoch"])
            big = "x" * 60_000
            for n in range(20):
                await ann.publish("big", big, idempotency_key=f"b{n}")
            keys = redis.command("KEYS", f"{prefix}*idem*")
            stored = sum(int(redis.command("MEMORY", "USAGE", key)) for key in keys)
            assert stored < 1024 * len(keys), f"{stored} bytes in {len(keys)} keys"
            refused = await ann.request(
                {"type": "publish", "channel": "big", "data": 1, "idempotency_key": "b20"}
            )
            assert refused["type"] == "error" and refused["code"] == 429, refused
            assert "idempotency" in refused["reason"]
            # Another user still publishes with keys in the same channel.
            await bob.publish("big", 1, idempotency_key="b20")
            # A retry of a key already held is still answered.
            await ann.publish("big", 1, idempotency_key="b3")
        no_tracebacks(server)


# -- the same holes on PostgreSQL ----------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """One PostgreSQL cluster for this module."""
    with pg_server() as server:
        yield server


@contextlib.asynccontextmanager
async def started_pg_broker(
    pg: PgServer, recorder: Recorder | None = None, **options: Any
) -> AsyncIterator[PostgresBroker]:
    """A started PostgreSQL broker under a schema of its own."""
    broker = PostgresBroker(pg.url, schema=f"h_{secrets.token_hex(4)}", **options)
    recorder = recorder or Recorder()
    async with broker.run(recorder.handler, recorder.on_lost):
        yield broker


@contextlib.asynccontextmanager
async def pool_held_by_a_sweep(pg: PgServer, broker: PostgresBroker) -> AsyncIterator[None]:
    """Every pooled connection of a ``pool_size=1`` broker busy until the block ends: the
    sweep (bounded by 30 s, not by ``timeout``) waits for a row the application holds."""
    import psycopg

    await broker.publish(publication("old"), HistoryOptions(size=5, ttl=0.05))
    await anyio.sleep(0.2)  # the stream has expired: the sweep will delete its rows
    async with await psycopg.AsyncConnection.connect(pg.url) as app:
        await app.execute(
            f"SELECT 1 FROM {broker._schema}.publications WHERE channel = 'old' FOR UPDATE"
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(broker.sweep)
            await anyio.sleep(0.2)
            try:
                yield
            finally:
                await app.rollback()


async def test_300_concurrent_publishers_on_postgres_all_get_ack(
    pg: PgServer, tmp_path: Path
) -> None:
    """300 clients publishing at the same moment through one node on PostgreSQL all get ``ack``."""
    with serve(pg.url + "?schema=load", tmp_path) as server:
        clients, stack = await open_clients(server.ws_url, 300)
        async with stack:
            replies = await publish_all_at_once(clients, "chat:load")
        assert replies == Counter({"ack": 300})
        no_tracebacks(server)


async def test_a_full_postgres_pool_says_busy_not_unreachable(pg: PgServer) -> None:
    """Every pooled connection busy past ``timeout``: 503 "busy", never "unreachable"."""
    async with started_pg_broker(pg, pool_size=1, timeout=0.5) as broker:
        async with pool_held_by_a_sweep(pg, broker):
            with anyio.fail_after(5), pytest.raises(BrokerUnavailable) as refused:
                await broker.publish(publication("free"), KEEP)
        assert "busy" in refused.value.reason and "did not answer" not in refused.value.reason
        assert (await broker.publish(publication("free"), KEEP)).offset == 1


async def test_postgres_idempotency_keeps_positions_and_caps_keys(pg: PgServer) -> None:
    """A retry gets the first position, a key row holds no payload, a key past the cap: 429."""
    async with started_pg_broker(pg, idempotency_keys=3) as broker:
        ann = ClientInfo(user="ann", client="c1")
        big = b'"%s"' % secrets.token_hex(30_000).encode()  # 60 KB PostgreSQL cannot compress
        firsts = [
            await broker.publish(publication("ch", big, sender=ann), KEEP, Idempotency(f"k{n}", 60))
            for n in range(3)
        ]
        retry = await broker.publish(publication("ch", sender=ann), KEEP, Idempotency("k1", 60))
        assert (retry.offset, retry.epoch) == (firsts[1].offset, firsts[1].epoch)
        with pytest.raises(RateLimited, match="idempotency"):
            await broker.publish(publication("ch", sender=ann), KEEP, Idempotency("k3", 60))
        bob = ClientInfo(user="bob", client="c2")
        other = await broker.publish(publication("ch", sender=bob), KEEP, Idempotency("k3", 60))
        assert other.offset == 4
        sizes = pg.sql(f"SELECT pg_column_size(i.*) FROM {broker._schema}.idempotency i")
        assert len(sizes) == 4 and all(size < 1024 for (size,) in sizes), sizes


async def test_a_busy_postgres_pool_does_not_take_the_listen_link_down(
    pg: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With every pooled connection busy, a relayed (large) publication is still fetched and
    delivered at once, and the LISTEN link does not report an outage."""
    import psycopg

    recorder = Recorder()
    async with started_pg_broker(pg, recorder, pool_size=1, timeout=0.5) as broker:
        await broker.subscribe("big")
        async with pool_held_by_a_sweep(pg, broker):
            async with await psycopg.AsyncConnection.connect(pg.url, autocommit=True) as app:
                big = b'"%s"' % secrets.token_hex(10_000).encode()  # over NOTIFY's 8000 bytes
                await broker.publish_in(app, "big", big, history=KEEP)
            [delivered] = await recorder.wait_for("big", 1)
            assert delivered.data == big
        assert "link down" not in caplog.text and recorder.lost == []


async def test_redis_resubscribes_50000_channels_after_the_link_drops(
    redis: RedisServer,
) -> None:
    """A node subscribed to 50,000 channels gets its pub/sub link back after a kill: the
    resubscription is confirmed batch by batch, not all within one ``timeout``."""
    # 0.3 s is far more than one batch of 500 takes, far less than all 50,000.
    async with started_redis_broker(
        redis, timeout=0.3, health_check_interval=0.25, reconnect_delay=0.05
    ) as (broker, recorder):
        limit = anyio.CapacityLimiter(500)

        async def subscribe(n: int) -> None:
            async with limit:
                await broker.subscribe(f"many{n}")

        async with anyio.create_task_group() as tg:
            for n in range(50_000):
                tg.start_soon(subscribe, n)
        redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        with anyio.fail_after(30):
            while not recorder.lost:  # noqa: ASYNC110 - the recorder has no event for it
                await anyio.sleep(0.05)
        assert [len(lost or ()) for lost in recorder.lost] == [50_000]
        await broker.publish(publication("many49999"), KEEP)
        assert len(await recorder.wait_for("many49999", 1)) == 1
        assert (broker.outages, broker.reconnects) == (1, 1)
