"""The PostgreSQL broker: the shared broker contract on a real PostgreSQL, then what only
it does: transactional publish (``publish_in``, the SQL function), trimming, relayed
large publications, and a killed ``LISTEN`` connection repaired from the tables."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from hubbub import BrokerUnavailable, Namespace
from hubbub.brokers import Capability, HistoryOptions, Idempotency, broker_from_url
from hubbub.brokers.postgres import PostgresBroker
from hubbub.messages import ClientInfo, Position

from .broker_contract import (
    KEEP,
    WAIT,
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
    running,
)
from .pg_server import PgServer

psycopg = pytest.importorskip("psycopg")


def new_broker(url: str, **options: Any) -> PostgresBroker:
    """A PostgreSQL broker with short timeouts and intervals for fault tests."""
    return PostgresBroker(url, **postgres_options(**options))


class TestPostgresBroker(BrokerContract):
    """The broker contract, run against ``PostgresBroker`` on a real PostgreSQL."""

    TTL = 0.5

    @pytest.fixture
    def make_broker(self, pg: PgServer) -> BrokerFactory:
        """Brokers on the module's cluster (one schema); time passes for real."""

        async def make() -> BrokerUnderTest:
            return BrokerUnderTest(new_broker(pg.url), anyio.sleep)

        return make


# -- PostgreSQL-specific ---------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair(
    pg: PgServer, task_group: TaskGroup
) -> AsyncIterator[tuple[PostgresBroker, Recorder, str]]:
    """A started broker under a schema of this test alone, its recorder, and the schema."""
    schema = f"t_{secrets.token_hex(4)}"
    async with running(new_broker(pg.url, schema=schema), task_group, stop_within=WAIT) as (
        broker,
        recorder,
    ):
        yield broker, recorder, schema


async def connect(pg: PgServer) -> Any:
    """An application's own psycopg connection (not autocommit: it opens transactions)."""
    return await psycopg.AsyncConnection.connect(pg.url)


async def nothing_more(broker: PostgresBroker, recorder: Recorder, channel: str) -> None:
    """Publish a marker in another channel and wait for it: ``channel`` got nothing meanwhile."""
    marker = f"marker-{secrets.token_hex(3)}"
    await broker.subscribe(marker)
    await broker.publish(publication(marker), None)
    await recorder.wait_for(marker, 1)


def test_import_hubbub_does_not_import_psycopg() -> None:
    """``import hubbub`` (and its brokers package) leaves psycopg unimported."""
    code = "import sys, hubbub, hubbub.brokers; assert 'psycopg' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


async def test_broker_from_url_builds_a_postgres_broker(
    pg: PgServer, task_group: TaskGroup
) -> None:
    """``postgresql://`` and ``postgres://`` URLs give a PostgresBroker; query options apply."""
    broker = broker_from_url(pg.url + "?schema=from_url&timeout=1.5&pool_size=2")
    assert isinstance(broker, PostgresBroker)
    assert broker._schema == "from_url" and broker._timeout == 1.5
    assert broker.capabilities == frozenset(Capability)
    assert isinstance(broker_from_url(pg.url.replace("postgresql", "postgres")), PostgresBroker)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        assert await broker.ready()
        assert pg.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'from_url'") == [(1,)]
    finally:
        await broker.stop()


async def test_start_without_a_task_group_raises_and_run_owns_one(pg: PgServer) -> None:
    """``start`` without a task group raises (no task nobody owns); ``run()`` owns one."""
    broker = new_broker(pg.url, schema=f"r_{secrets.token_hex(4)}")
    recorder = Recorder()
    with pytest.raises(RuntimeError, match=r"broker\.run\(handler, lost\)"):
        await broker.start(recorder.handler, recorder.on_lost)
    async with broker.run(recorder.handler, recorder.on_lost):
        await broker.subscribe("a")
        await broker.publish(publication("a"), KEEP)
        assert offsets(await recorder.wait_for("a", 1)) == [1]
    assert not broker._link_task.running and not broker._up


def test_bad_options_are_refused_at_construction() -> None:
    """A schema that is not a plain identifier, and non-positive timings, raise at once."""
    for schema in ("Hubbub", "a-b", "x; DROP TABLE y", "", "a" * 64):
        with pytest.raises(ValueError, match="identifier"):
            PostgresBroker("postgresql://127.0.0.1:1/x", schema=schema)
    with pytest.raises(ValueError, match="positive"):
        PostgresBroker("postgresql://127.0.0.1:1/x", timeout=0)
    with pytest.raises(ValueError, match="positive"):
        PostgresBroker("postgresql://127.0.0.1:1/x", relay_ttl=0)
    with pytest.raises(ValueError, match="pool_size"):
        PostgresBroker("postgresql://127.0.0.1:1/x", pool_size=0)
    with pytest.raises(ValueError, match="reconnect_delay"):
        PostgresBroker("postgresql://127.0.0.1:1/x", reconnect_delay=2, max_reconnect_delay=1)


def test_schema_names_postgresql_cannot_create_are_refused(pg: PgServer) -> None:
    """A reserved word or ``pg_`` name passes the identifier pattern but no ``CREATE SCHEMA``:
    refused at construction, not a LISTEN link that retries a syntax error forever.

    The keywords are this server's own (``pg_get_keywords()``, all but the
    unreserved), and unreserved keywords still make a working schema.
    """
    from hubbub.brokers._postgres_sql import check_schema_name

    reserved = [
        str(word) for (word,) in pg.sql("SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'")
    ]
    assert "user" in reserved and "select" in reserved
    for schema in (*reserved, "pg_hubbub"):
        with pytest.raises(ValueError, match="reserved"):
            check_schema_name(schema)
        with pytest.raises(ValueError, match="reserved"):
            PostgresBroker("postgresql://127.0.0.1:1/x", schema=schema)
    # Unreserved keywords are plain names: the whole script runs on them.
    for schema in ("name", "data"):
        pg.sql(PostgresBroker.schema_sql(check_schema_name(schema)))
        pg.sql(f"DROP SCHEMA {schema} CASCADE")


async def test_database_down_gives_broker_unavailable(pg: PgServer, task_group: TaskGroup) -> None:
    """Nothing listening: start returns, ready is False, calls raise BrokerUnavailable in time."""
    from .servers import free_port

    broker = new_broker(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", timeout=1.0)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        assert await broker.ready() is False
        with anyio.fail_after(5):
            with pytest.raises(BrokerUnavailable):
                await broker.publish(publication("down"), KEEP)
            with pytest.raises(BrokerUnavailable):
                await broker.subscribe("down")
            with pytest.raises(BrokerUnavailable):
                await broker.history("down")
    finally:
        await broker.stop()


async def test_schema_sql_for_your_own_migrations(pg: PgServer, task_group: TaskGroup) -> None:
    """The script runs twice by hand; a broker with ``create_schema=False`` then works on it."""
    schema = f"m_{secrets.token_hex(4)}"
    script = PostgresBroker.schema_sql(schema)
    for _ in range(2):
        conn = await connect(pg)
        async with conn:
            async with conn.transaction():
                await conn.execute(script)
    broker = new_broker(pg.url, schema=schema, create_schema=False)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        await broker.subscribe("m")
        await broker.publish(publication("m"), KEEP)
        assert offsets(await recorder.wait_for("m", 1)) == [1]
    finally:
        await broker.stop()


async def test_more_concurrent_calls_than_pooled_connections(
    pg: PgServer, task_group: TaskGroup
) -> None:
    """With one pooled connection, 20 racing publishes queue for it and all succeed in order."""
    broker = new_broker(pg.url, schema=f"p_{secrets.token_hex(4)}", pool_size=1)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        await broker.subscribe("pooled")
        returned: list[int | None] = []

        async def one() -> None:
            returned.append((await broker.publish(publication("pooled"), KEEP)).offset)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert sorted(returned) == list(range(1, 21))  # type: ignore[type-var]
        assert offsets(await recorder.wait_for("pooled", 20)) == list(range(1, 21))
    finally:
        await broker.stop()


async def test_publish_in_refuses_what_it_cannot_use(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """An unknown codec, or a connection that is not psycopg's asyncio one, raise at once."""
    broker, _, _ = pair
    conn = await connect(pg)
    async with conn:
        with pytest.raises(ValueError, match="codec"):
            await broker.publish_in(conn, "c", b"<x/>", history=None, codec="xml")
    with psycopg.connect(pg.url) as sync_conn, pytest.raises(TypeError, match="AsyncConnection"):
        await broker.publish_in(sync_conn, "c", 1, history=None)


# -- transactional publish -------------------------------------------------------------------


async def test_publish_in_is_delivered_only_when_the_transaction_commits(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """Inside the caller's transaction: invisible until COMMIT, then delivered with its offset."""
    broker, recorder, schema = pair
    channel = "orders"
    await broker.subscribe(channel)
    # The stream exists (as once a client subscribed): reads never wait for the transaction.
    assert (await broker.history(channel, limit=0)).position.offset == 0
    conn = await connect(pg)
    async with conn:
        async with conn.transaction():
            await conn.execute(f"CREATE TABLE {schema}.orders (id int)")
            await conn.execute(f"INSERT INTO {schema}.orders VALUES (1)")
            published = await broker.publish_in(conn, channel, {"order": 1}, history=KEEP)
            assert published.offset == 1 and published.data == b'{"order":1}'
            await nothing_more(broker, recorder, channel)
            assert recorder.on(channel) == []
            assert (await broker.history(channel)).publications == []
        [delivered] = await recorder.wait_for(channel, 1)
    assert delivered == published
    assert (await broker.history(channel)).publications == [published]


async def test_publish_in_is_never_delivered_when_the_transaction_rolls_back(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """A rollback leaves no publication, no history and no used offset."""
    broker, recorder, _ = pair
    channel = "orders"
    await broker.subscribe(channel)
    conn = await connect(pg)
    async with conn:
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await broker.publish_in(
                    conn, channel, {"order": 1}, history=Namespace(name="o", history_size=10)
                )
                raise ZeroDivisionError
        await nothing_more(broker, recorder, channel)
        assert recorder.on(channel) == []
        page = await broker.history(channel)
        assert page.publications == [] and page.position.offset == 0
        async with conn.transaction():
            cursor = conn.cursor()
            again = await broker.publish_in(cursor, channel, b'"kept"', history=KEEP)
        assert again.offset == 1 and again.data == b'"kept"'
    assert offsets(await recorder.wait_for(channel, 1)) == [1]


async def test_an_open_transaction_holds_the_channel_until_it_ends(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """A second publisher of the channel waits for the open transaction: offsets follow commits."""
    broker, recorder, _ = pair
    channel = "serial"
    await broker.subscribe(channel)
    results: list[int | None] = []
    conn = await connect(pg)
    async with conn:
        async with anyio.create_task_group() as tg:
            async with conn.transaction():
                first = await broker.publish_in(conn, channel, 1, history=KEEP)

                async def second() -> None:
                    results.append((await broker.publish(publication(channel), KEEP)).offset)

                tg.start_soon(second)
                await anyio.sleep(0.3)
                assert results == []  # blocked on the channel's row lock
        assert first.offset == 1 and results == [2]
    assert offsets(await recorder.wait_for(channel, 2)) == [1, 2]


async def test_a_call_blocked_past_the_timeout_is_broker_unavailable(
    pg: PgServer,
    pair: tuple[PostgresBroker, Recorder, str],
    task_group: TaskGroup,
) -> None:
    """A publish waiting longer than ``timeout`` for a channel's lock gives up with 503;
    the broker's next calls work (the stuck connection was dropped)."""
    _, _, schema = pair
    broker = new_broker(pg.url, schema=schema, timeout=0.5, pool_size=1)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        conn = await connect(pg)
        async with conn:
            async with conn.transaction():
                await broker.publish_in(conn, "locked", 1, history=KEEP)
                with anyio.fail_after(5), pytest.raises(BrokerUnavailable, match=r"0\.5 s"):
                    await broker.publish(publication("locked"), KEEP)
                assert (await broker.publish(publication("free"), KEEP)).offset == 1
        assert (await broker.publish(publication("locked"), KEEP)).offset == 2
    finally:
        await broker.stop()


async def test_the_sql_function_publishes_from_a_plain_sql_session(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """``<schema>.publish`` from psql: committed calls are delivered, rolled-back ones are not."""
    broker, recorder, schema = pair
    channel = "from-sql"
    await broker.subscribe(channel)
    psql = str(pg.bin_dir / "psql")
    script = (
        f"BEGIN; SELECT {schema}.publish('{channel}', '{{\"a\": 1}}', 10, '1 hour'); COMMIT;"
        f"BEGIN; SELECT {schema}.publish('{channel}', '\"no\"'); ROLLBACK;"
        f"SELECT {schema}.publish('{channel}', '[2]', 10, '1 hour', 'key-1');"
        f"SELECT {schema}.publish('{channel}', '[3]', 10, '1 hour', 'key-1');"
    )
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [psql, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", pg.url, "-c", script], check=False
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [
        "BEGIN",
        "1",
        "COMMIT",
        "BEGIN",
        "2",
        "ROLLBACK",
        "2",
        "2",
    ]
    delivered = await recorder.wait_for(channel, 2)
    await nothing_more(broker, recorder, channel)
    assert [(p.offset, p.data, p.codec) for p in recorder.on(channel)] == [
        (1, b'{"a": 1}', "json"),
        (2, b"[2]", "json"),
    ]
    assert delivered[0].epoch == delivered[1].epoch and delivered[0].sender is None
    assert (await broker.history(channel)).publications == delivered


# -- storage ---------------------------------------------------------------------------------


async def test_history_is_trimmed_by_size_in_the_table(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """The table keeps only the newest ``size`` rows of a stream, trimmed as it is published."""
    broker, _, schema = pair
    for _ in range(25):
        await broker.publish(publication("trim"), HistoryOptions(size=4, ttl=3600.0))
    rows = pg.sql(f'SELECT "offset" FROM {schema}.publications WHERE channel = %s', ["trim"])
    assert sorted(r[0] for r in rows) == [22, 23, 24, 25]


async def test_expired_streams_are_swept_from_the_tables(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """After the TTL a sweep deletes the stream, its rows, old idempotency keys and leases."""
    broker, _, schema = pair
    short = HistoryOptions(size=10, ttl=0.3)
    for _ in range(3):
        await broker.publish(publication("aging"), short)
    await broker.publish(publication("young"), KEEP)
    await broker.publish(publication("aging"), short, Idempotency(key="k", window=0.3))
    await broker.presence_set("aging", "c1", ClientInfo(user="u", client="c1"), 0.3)

    def count(table: str) -> int:
        rows = pg.sql(f"SELECT count(*) FROM {schema}.{table} WHERE channel = 'aging'")
        return int(rows[0][0])

    assert (count("publications"), count("streams"), count("idempotency")) == (4, 1, 1)
    await anyio.sleep(0.6)
    await broker.sweep()
    assert [count(t) for t in ("publications", "streams", "idempotency", "presence")] == [0] * 4
    young = pg.sql(f"SELECT count(*) FROM {schema}.publications WHERE channel = 'young'")
    assert young == [(1,)]


async def test_large_publications_travel_through_the_relay_table(
    pair: tuple[PostgresBroker, Recorder, str],
) -> None:
    """Above NOTIFY's 8000 bytes the notification carries an id; delivery stays in order."""
    broker, recorder, _ = pair
    channel = "big"
    await broker.subscribe(channel)
    big = b'"' + b"x" * 20_000 + b'"'
    await broker.publish(publication(channel, b"1"), KEEP)
    await broker.publish(publication(channel, big), KEEP)
    await broker.publish(publication(channel, big, kind="join"), None)
    await broker.publish(publication(channel, b"2"), KEEP)
    delivered = await recorder.wait_for(channel, 4)
    assert [(p.offset, len(p.data)) for p in delivered] == [
        (1, 1),
        (2, len(big)),
        (None, len(big)),
        (3, 1),
    ]
    assert delivered[2].kind == "join"


async def test_relayed_publications_are_swept_after_their_ttl(
    pg: PgServer,
    pair: tuple[PostgresBroker, Recorder, str],
    task_group: TaskGroup,
) -> None:
    """Relay rows older than ``relay_ttl`` go at the next sweep; younger ones stay."""
    _, _, schema = pair
    broker = new_broker(pg.url, schema=schema, relay_ttl=0.3)
    await broker.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        big = b'"' + b"y" * 9_000 + b'"'
        await broker.publish(publication("relay", big), None)
        await anyio.sleep(0.5)
        await broker.publish(publication("relay", big), None)
        await broker.sweep()
        assert pg.sql(f"SELECT count(*) FROM {schema}.relay") == [(1,)]
    finally:
        await broker.stop()


async def test_foreign_notifications_are_dropped(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Anything on the channel that is not hubbub's payload is logged and ignored."""
    broker, recorder, schema = pair
    channel = "plain"
    await broker.subscribe(channel)
    with caplog.at_level(logging.WARNING, logger="hubbub.postgres"):
        pg.sql("SELECT pg_notify(%s, 'not json'), pg_notify(%s, '[1]')", [schema, schema])
        pg.sql("SELECT pg_notify(%s, %s)", [schema, '{"c": "plain", "d": "AA==", "f": "yaml"}'])
        await broker.publish(publication(channel), KEEP)
        assert offsets(await recorder.wait_for(channel, 1)) == [1]
    assert "unreadable" in caplog.text


# -- the LISTEN connection -------------------------------------------------------------------


async def test_subscribe_during_a_publish_storm_has_no_hole(
    pg: PgServer,
    pair: tuple[PostgresBroker, Recorder, str],
    task_group: TaskGroup,
) -> None:
    """Subscribing while another node publishes: from the first delivered offset on, every
    offset once, in order, up to the last (none held back past the subscribe)."""
    broker, recorder, schema = pair
    channel = "storm"
    other = new_broker(pg.url, schema=schema)
    await other.start(Recorder().handler, Recorder().on_lost, task_group)
    try:
        started = anyio.Event()
        subscribed = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def storm() -> None:
                for n in range(1, 1001):  # bounded; ends 100 publications after the subscribe
                    await other.publish(publication(channel), KEEP)
                    if n == 20:
                        started.set()
                    if subscribed.is_set():
                        for _ in range(100):
                            await other.publish(publication(channel), KEEP)
                        return

            tg.start_soon(storm)
            await started.wait()
            await broker.subscribe(channel)
            subscribed.set()
        top = (await broker.history(channel, limit=0)).position.offset
        delivered = await recorder.wait_for(channel, 100)
        with anyio.fail_after(WAIT):
            while delivered[-1].offset != top:
                delivered = await recorder.wait_for(channel, len(delivered) + 1)
    finally:
        await other.stop()
    got = offsets(recorder.on(channel))
    assert got == list(range(got[0], top + 1)), got  # type: ignore[arg-type]
    assert got[0] > 1 and recorder.lost == []


async def until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    """Check ``predicate`` every 50 ms until it holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(0.05)


async def test_killed_listen_connection_reports_what_it_missed(
    pg: PgServer,
    pair: tuple[PostgresBroker, Recorder, str],
    task_group: TaskGroup,
) -> None:
    """LISTEN connections killed (``pg_terminate_backend``) mid-stream: both nodes reconnect,
    deliver nothing twice or out of order, and report the channel lost if they missed any
    of it (the hub repairs it from history: ``test_e2e_postgres``)."""
    broker, recorder, schema = pair
    channel = "feed"
    await broker.subscribe(channel)
    other = new_broker(pg.url, schema=schema)
    await other.start(Recorder().handler, Recorder().on_lost, task_group)
    listeners = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    name = [f"hubbub-listen:{schema}"]
    try:
        for _ in range(5):
            await other.publish(publication(channel), KEEP)
        await recorder.wait_for(channel, 5)
        before = set(pg.sql(listeners, name))
        killed = pg.sql(f"SELECT pg_terminate_backend(pid) FROM ({listeners}) AS l", name)
        assert killed == [(True,), (True,)]  # both nodes' LISTEN connections
        for _ in range(20):
            await other.publish(publication(channel), KEEP)
        # Both links back (new backends), then one more: it must arrive.
        await until(lambda: len(set(pg.sql(listeners, name)) - before) == 2)
        await until(lambda: broker._up)
        await broker.publish(publication(channel), KEEP)
        await until(lambda: offsets(recorder.on(channel))[-1] == 26)
        await anyio.sleep(0.6)  # a poll interval: nothing more may arrive
    finally:
        await other.stop()
    delivered = recorder.on(channel)
    got = offsets(delivered)
    assert got[:5] == [1, 2, 3, 4, 5] and got[-1] == 26
    assert got == sorted(set(got)), got  # type: ignore[type-var]
    assert len({p.epoch for p in delivered}) == 1
    if got != list(range(1, 27)):
        assert [channel] in recorder.lost, recorder.lost
    assert all(lost == [channel] for lost in recorder.lost), recorder.lost
    assert await broker.ready()


async def test_a_lost_notification_is_reported_by_polling(
    pg: PgServer, pair: tuple[PostgresBroker, Recorder, str]
) -> None:
    """A row written without its notification (as by a lost one) is reported lost by the
    poll, once; the hub then reads it from history (``test_e2e_postgres``)."""
    broker, recorder, schema = pair
    channel = "quiet"
    await broker.subscribe(channel)
    await broker.publish(publication(channel), KEEP)
    await recorder.wait_for(channel, 1)
    # The same as _publish does, minus pg_notify: the node never hears of offset 2.
    pg.sql(
        f"WITH s AS (UPDATE {schema}.streams SET top = 2 WHERE channel = %s"
        " RETURNING channel, epoch)"
        f' INSERT INTO {schema}.publications (channel, epoch, "offset", data, codec, ts, kind)'
        " SELECT channel, epoch, 2, '\"silent\"', 'json', 0, 'message' FROM s",
        [channel],
    )
    await until(lambda: bool(recorder.lost))
    assert recorder.lost == [[channel]]
    await anyio.sleep(1.2)  # two more polls: reported once
    assert recorder.lost == [[channel]]
    assert offsets(recorder.on(channel)) == [1]
    page = await broker.history(
        channel, since=Position(offset=1, epoch=recorder.on(channel)[0].epoch or "")
    )
    assert [(p.offset, p.data) for p in page.publications] == [(2, b'"silent"')]
