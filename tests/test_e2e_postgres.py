"""Several hub nodes on one PostgreSQL, end to end: what only PostgreSQL has.

The suite every broker runs (delivery, presence, notify, disconnect, the demo
hub, nodes started while the database is down, clients moving to another node)
is ``test_e2e_brokers.py``. Here: publishing from the application's own
transaction, and the PostgreSQL faults on the shared harness
:func:`~tests.e2e_cluster.run_fault` (a database restart, the ``LISTEN``
connections killed) and a notification that never came. The broker only
reports what it may have missed; these tests hold the hub to repairing it:
every subscriber on both nodes ends with every offset exactly once, in order.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import e2e_cluster as e2e
from .e2e_cluster import Backend, client, run_fault, unique
from .pg_server import PgServer
from .servers import Server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the PostgreSQL broker are asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    """The database of this module's healthy-path tests."""
    with e2e.backend("postgres", Path()) as running:
        yield running


@pytest.fixture(scope="module")
def pg(backend: Backend) -> PgServer:
    """The module's PostgreSQL cluster."""
    assert isinstance(backend.server, PgServer)
    return backend.server


@pytest.fixture(scope="module")
def cluster(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two nodes on the module's database."""
    with backend.nodes(tmp_path_factory.mktemp("nodes")) as running:
        yield running


def post(node: Server, path: str, body: dict[str, Any]) -> Any:
    """POST ``body`` as JSON to ``path`` on ``node``; the decoded answer."""
    request = urllib.request.Request(
        node.url + path, data=json.dumps(body).encode(), headers={"content-type": "x/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def test_the_applications_transaction_decides_what_is_delivered(
    cluster: list[Server],
) -> None:
    """``publish_in`` from an HTTP handler: committed orders reach both nodes, rolled back never."""
    channel = unique("feed:orders")
    async with client(cluster[0]) as a, client(cluster[1]) as b:
        await a.subscribe(channel)
        await b.subscribe(channel)
        answers = [
            await asyncio.to_thread(post, cluster[n % 2], "/order", order)
            for n, order in enumerate(
                [
                    {"channel": channel, "n": 1},
                    {"channel": channel, "n": 2, "commit": False},
                    {"channel": channel, "n": 3},
                ]
            )
        ]
        assert [answer["offset"] for answer in answers] == [1, 2, 2]  # 2 was rolled back
        for c in (a, b):
            got = await c.messages(2)
            assert [(m["offset"], m["data"]) for m in got] == [(1, {"n": 1}), (2, {"n": 3})]
            with pytest.raises(TimeoutError):
                await c.messages(1, within=0.5)


async def test_a_notification_that_never_came_is_repaired_from_history(
    pg: PgServer, cluster: list[Server]
) -> None:
    """A row written without its notification: the nodes' polls report it, and the hub
    delivers it from history to the subscribers of both nodes, in order, once."""
    channel = unique("feed:quiet")
    async with client(cluster[0]) as a, client(cluster[1]) as b:
        await a.subscribe(channel)
        await b.subscribe(channel)
        await a.publish(channel, {"n": 1})
        for c in (a, b):
            assert [m["offset"] for m in await c.messages(1)] == [1]
        # The same as _publish does, minus pg_notify: no node hears of offset 2.
        await asyncio.to_thread(
            pg.sql,
            "WITH s AS (UPDATE hubbub.streams SET top = 2 WHERE channel = %s"
            " RETURNING channel, epoch)"
            ' INSERT INTO hubbub.publications (channel, epoch, "offset", data, codec, ts, kind)'
            " SELECT channel, epoch, 2, convert_to('{\"n\": 2}', 'UTF8'), 'json', 0,"
            " 'message' FROM s",
            [channel],
        )
        for c in (a, b):
            got = await c.messages(1, within=10)
            assert [(m["offset"], m["data"]) for m in got] == [(2, {"n": 2})]
        await a.publish(channel, {"n": 3})
        for c in (a, b):
            assert [m["offset"] for m in await c.messages(1)] == [3]
            with pytest.raises(TimeoutError):
                await c.messages(1, within=1.2)  # two polls: nothing twice


async def test_database_restart_mid_stream(tmp_path: Path) -> None:
    """PostgreSQL stopped and started mid-stream: every subscriber ends whole, nothing doubled,
    the stream survives (one epoch) and nobody has to resume without recovery."""
    with e2e.backend("postgres", tmp_path) as db, db.nodes(tmp_path) as cluster:

        async def fault() -> None:
            assert isinstance(db.server, PgServer)
            await asyncio.to_thread(db.server.restart)

        subscribers, _ = await run_fault(cluster, fault)
        for s in subscribers:
            assert len({epoch for epoch, _ in s.seen}) == 1  # the stream survived the restart
        logs = "\n".join(node.log() for node in cluster)
        assert "LISTEN link down" in logs and "LISTEN link restored" in logs


async def test_fault_listen_connections_killed(tmp_path: Path) -> None:
    """``pg_terminate_backend`` of every node's LISTEN connection mid-stream: the nodes
    reconnect, report the loss, and the hub repairs it; nothing lost or doubled."""
    with e2e.backend("postgres", tmp_path) as db, db.nodes(tmp_path) as cluster:
        assert isinstance(db.server, PgServer)
        pg = db.server

        async def fault() -> None:
            killed = await asyncio.to_thread(
                pg.sql,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'hubbub-listen:hubbub'",
            )
            assert killed == [(True,), (True,)]  # both nodes' LISTEN connections

        subscribers, recovered_in = await run_fault(cluster, fault)
        assert recovered_in < 5
        for s in subscribers:
            assert len({epoch for epoch, _ in s.seen}) == 1
