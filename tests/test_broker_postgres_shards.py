"""Sharded PostgreSQL notifications: with ``notify_shards`` N, a publication is notified
on ``<schema>:<k>`` (k from the channel's name) and a node LISTENs only to the shards of
the channels it serves, so it no longer hears every publication of the schema. The
broker contract runs sharded too; the SQL publish path and a change of N while
subscribed keep every publication."""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from hubbub.brokers import HistoryOptions
from hubbub.brokers._postgres_sql import notify_channel
from hubbub.brokers.postgres import PostgresBroker

from .broker_contract import (
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
    pg_fixture,  # noqa: F401 (pg: one PostgreSQL for the module)
    postgres_options,
)
from .pg_server import PgServer

psycopg = pytest.importorskip("psycopg")

KEEP = HistoryOptions(size=1000, ttl=300.0)


def new_broker(url: str, **options: Any) -> PostgresBroker:
    """A PostgreSQL broker with short timeouts and intervals."""
    return PostgresBroker(url, **postgres_options(**options))


class TestShardedPostgresBroker(BrokerContract):
    """The broker contract with the schema's notifications spread over 8 channels."""

    TTL = 0.5

    @pytest.fixture
    def make_broker(self, pg: PgServer) -> BrokerFactory:
        async def make() -> BrokerUnderTest:
            return BrokerUnderTest(
                new_broker(pg.url, schema="sharded8", notify_shards=8), anyio.sleep
            )

        return make


pytestmark = pytest.mark.anyio


def test_bad_notify_shards_are_refused() -> None:
    """0, more than 1024, or a schema name too long for ``<schema>:<k>``: a ValueError."""
    for bad in (0, -1, 1025):
        with pytest.raises(ValueError, match="notify_shards"):
            PostgresBroker("postgresql://x@127.0.0.1/x", notify_shards=bad)
    with pytest.raises(ValueError, match="too long"):
        PostgresBroker("postgresql://x@127.0.0.1/x", schema="s" * 61, notify_shards=100)


async def test_sql_and_python_pick_the_same_shard(pg: PgServer, task_group: TaskGroup) -> None:
    """``<schema>.notify_channel`` in SQL and the broker's Python agree, Unicode included."""
    broker = new_broker(pg.url, schema="shardhash", notify_shards=64)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        names = [f"room:{i}" for i in range(300)] + ["é", "日本語", "", "a" * 500, "x:y{z}"]
        for shards in (1, 2, 7, 64, 1024):
            rows = pg.sql(
                "SELECT c, shardhash.notify_channel(c, %s) FROM unnest(%s::text[]) c",
                (shards, names),
            )
            assert dict(rows) == {c: notify_channel("shardhash", shards, c) for c in names}
    finally:
        await broker.stop()


async def four_nodes(
    pg: PgServer, task_group: TaskGroup, schema: str, shards: int | None, channels: list[list[str]]
) -> tuple[list[PostgresBroker], list[Recorder]]:
    brokers, recorders = [], []
    for mine in channels:
        broker = new_broker(pg.url, schema=schema, notify_shards=shards)
        recorder = Recorder()
        await broker.start(recorder.handler, recorder.on_lost, task_group)
        for channel in mine:
            await broker.subscribe(channel)
        brokers.append(broker)
        recorders.append(recorder)
    return brokers, recorders


@pytest.mark.parametrize("shards", [1, 16, 64])
async def test_four_nodes_hear_only_their_shards(
    pg: PgServer, task_group: TaskGroup, shards: int
) -> None:
    """4 nodes serving 5 channels each of 100: every subscribed channel gets all its
    publications, in order; each node receives exactly the notifications of the shards
    of its channels (every notification of the schema with one shard)."""
    schema = f"four{shards}_{secrets.token_hex(2)}"
    all_channels = [f"room:{i}" for i in range(100)]
    served = [all_channels[i * 5 : i * 5 + 5] for i in range(4)]
    brokers, recorders = await four_nodes(pg, task_group, schema, shards, served)
    try:
        before = [b.notifications for b in brokers]
        rounds = 10
        publisher = brokers[0]
        for n in range(rounds):
            for channel in all_channels:
                await publisher.publish(publication(channel, str(n).encode()), KEEP)
        for recorder, mine in zip(recorders, served, strict=True):
            for channel in mine:
                got = await recorder.wait_for(channel, rounds)
                assert offsets(got) == list(range(1, rounds + 1))
        await anyio.sleep(0.5)  # the last notifications of channels served elsewhere
        received = [b.notifications - a for a, b in zip(before, brokers, strict=True)]
        expected = []
        for mine in served:
            shards_heard = {notify_channel(schema, shards, c) for c in mine}
            expected.append(
                rounds
                * sum(notify_channel(schema, shards, c) in shards_heard for c in all_channels)
            )
        print(
            f"notify_shards={shards}: {rounds * len(all_channels)} publications; "
            f"notifications received per node {received} (expected {expected})"
        )
        assert received == expected
        if shards == 1:
            assert received == [rounds * len(all_channels)] * 4
        for recorder in recorders:
            assert recorder.lost == []
    finally:
        for broker in brokers:
            await broker.stop()


async def test_sql_publish_reaches_the_shard_listener(pg: PgServer, task_group: TaskGroup) -> None:
    """``<schema>.publish(channel, data)`` from plain SQL notifies the channel's shard: a
    node subscribed to it receives the publication."""
    schema = f"sqlpub_{secrets.token_hex(2)}"
    (broker,), (recorder,) = await four_nodes(pg, task_group, schema, 32, [["orders:7"]])
    try:
        pg.sql(f"SELECT {schema}.publish('orders:7', '{{\"total\": 3}}'::jsonb)")
        got = await recorder.wait_for("orders:7", 1)
        assert got[0].data == b'{"total": 3}' and got[0].offset == 1
    finally:
        await broker.stop()


async def test_changing_the_shard_count_while_subscribed(
    pg: PgServer, task_group: TaskGroup
) -> None:
    """An existing schema (one channel) moved to 16 shards with SQL while nodes are
    subscribed and publishing: every node follows within a health check, and every
    publication is delivered or its channel reported lost (repaired from history by
    the hub), before and after the change."""
    schema = f"migrate_{secrets.token_hex(2)}"
    channels = [f"feed:{i}" for i in range(20)]
    brokers, recorders = await four_nodes(pg, task_group, schema, None, [channels] * 2)
    try:
        assert all(b._shards == 1 for b in brokers)
        publisher = brokers[0]
        for channel in channels:
            await publisher.publish(publication(channel, b"1"), KEEP)
        pg.sql(f"UPDATE {schema}.notify_shards SET shards = 16")
        shard_names = {notify_channel(schema, 16, c) for c in channels}
        for n in range(2, 6):
            for channel in channels:
                await publisher.publish(publication(channel, str(n).encode()), KEEP)
        with anyio.fail_after(5):
            while not all(b._listening == shard_names for b in brokers):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        for channel in channels:
            await publisher.publish(publication(channel, b"6"), KEEP)
        for recorder in recorders:
            lost = {c for report in recorder.lost for c in (report or channels)}
            for channel in channels:
                with anyio.fail_after(5):
                    while 6 not in offsets(recorder.on(channel)):  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                got = offsets(recorder.on(channel))
                assert got == sorted(set(got))
                if channel not in lost:
                    assert got == [1, 2, 3, 4, 5, 6], (channel, got)
    finally:
        for broker in brokers:
            await broker.stop()
