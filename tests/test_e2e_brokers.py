"""The multi-node end-to-end suite, written once and run for every broker that ships.

Every test runs once per broker in :data:`~tests.e2e_cluster.BROKERS` (Redis,
PostgreSQL) through the parametrised ``backend`` fixture: a real server of that
kind, and hub nodes that are ``python -m hubbub serve <kind>_app:app`` in their
own uvicorn processes (the same hub and routes for every broker:
``tests/apps/cluster_app.py``). Delivery, presence, notify, disconnect, the
demo hub's ``--broker`` flag, nodes started while the backend is down and
clients moving to another node are the same promise whatever carries the
publications. Faults only one backend has (``CLIENT KILL``, ``SIGSTOP``, a
database restart, ``pg_terminate_backend``) stay in ``test_e2e_redis.py`` and
``test_e2e_postgres.py``, on the shared harness :func:`~tests.e2e_cluster.run_fault`.
A new broker joins by adding its kind to ``BROKERS`` and an app beside
``redis_app.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import e2e_cluster as e2e
from .apps.wsclient import Client
from .e2e_cluster import (
    RECONNECT_CODES,
    Backend,
    client,
    http,
    node_ready,
    positions,
    unique,
    until,
    wait_for_type,
)
from .servers import Server, run_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the networked brokers are asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module", params=e2e.BROKERS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """The backend of this broker's healthy-path tests (one per broker, for the module)."""
    kind: str = request.param
    with e2e.backend(kind, tmp_path_factory.mktemp(kind)) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two nodes on the module's backend, shared by the healthy-path tests."""
    with backend.nodes(tmp_path_factory.mktemp("nodes")) as running:
        yield running


# -- healthy path ------------------------------------------------------------------------------


async def test_every_publication_reaches_every_subscriber_once_in_order(
    cluster: list[Server],
) -> None:
    """Publishers on both nodes; every subscriber on both nodes gets offsets 1..n once, in order."""
    channel, plain = unique("feed:multi"), unique("plain")
    async with contextlib.AsyncExitStack() as stack:
        subscribers: list[Client] = []
        for i in range(6):
            c = await stack.enter_async_context(client(cluster[i % 2]))
            await c.subscribe(channel)
            await c.subscribe(plain)
            subscribers.append(c)
        publishers = [await stack.enter_async_context(client(node)) for node in cluster]
        items = [[{"p": p, "n": n} for n in range(40)] for p in range(2)]
        acks = await asyncio.gather(
            *(
                pub.publish_pipelined(channel, batch)
                for pub, batch in zip(publishers, items, strict=True)
            )
        )
        await asyncio.gather(
            *(pub.publish_pipelined(plain, [{"x": n} for n in range(30)]) for pub in publishers)
        )
        assert sorted(a["offset"] for batch in acks for a in batch) == list(range(1, 81))
        for c in subscribers:
            got = await c.messages(80 + 60, within=15)
            on_channel = [m for m in got if m["channel"] == channel]
            assert [m["offset"] for m in on_channel] == list(range(1, 81))
            for p in range(2):  # each publisher's own order is kept too
                assert [m["data"]["n"] for m in on_channel if m["data"]["p"] == p] == list(
                    range(40)
                )
            unpositioned = [m for m in got if m["channel"] == plain]
            assert len(unpositioned) == 60
            with pytest.raises(TimeoutError):
                await c.messages(1, within=0.3)  # nothing twice


async def test_presence_and_join_leave_across_nodes(cluster: list[Server]) -> None:
    """A client on one node sees joins, leaves and presence of clients on the other."""
    channel = unique("room:x")
    async with client(cluster[0], "ann") as ann:
        await ann.subscribe(channel)
        async with client(cluster[1], "bob") as bob:
            await bob.subscribe(channel)
            join = await wait_for_type(ann, "join")
            assert (join["user"], join["client"]) == ("bob", bob.welcome["client"])
            reply = await ann.request({"type": "presence", "channel": channel})
            assert set(reply["clients"]) == {ann.welcome["client"], bob.welcome["client"]}
            other = await bob.request({"type": "presence", "channel": channel})
            assert other["clients"] == reply["clients"]
            bob_id = bob.welcome["client"]
        leave = await wait_for_type(ann, "leave")
        assert leave["client"] == bob_id
        reply = await ann.request({"type": "presence", "channel": channel})
        assert set(reply["clients"]) == {ann.welcome["client"]}


async def test_notify_reaches_the_users_connections_on_every_node(cluster: list[Server]) -> None:
    """``hub.notify`` on one node reaches the user's connections on both nodes, once each."""
    user = unique("u-notify")
    async with client(cluster[0], user) as here, client(cluster[1], user) as there:
        status, sent = await asyncio.to_thread(
            http, cluster[1], "/notify", {"user": user, "title": "hi"}
        )
        assert status == 200 and sent["offset"] == 1
        for c in (here, there):
            (message,) = await c.messages(1)
            assert message["channel"] == f"#{user}" and message["offset"] == 1
            assert message["data"]["title"] == "hi"
            with pytest.raises(TimeoutError):
                await c.messages(1, within=0.3)


async def test_disconnect_closes_the_users_connections_on_every_node(
    cluster: list[Server],
) -> None:
    """``hub.disconnect(user)`` on one node closes the user's connections on both, 4403."""
    user = unique("u-kick")
    async with client(cluster[0], user) as here, client(cluster[1], user) as there:
        status, answer = await asyncio.to_thread(
            http, cluster[0], "/disconnect", {"user": user, "title": "banned"}
        )
        assert status == 200 and answer["closed_here"] == 1
        for c in (here, there):
            ending = await c.until_closed(5)
            assert ending.disconnect is not None
            assert ending.disconnect["code"] == 4403
            assert ending.disconnect["reason"] == "banned"
            assert ending.disconnect["reconnect"] is False
            assert ending.code == 4403


async def test_demo_hub_takes_the_broker_flag(backend: Backend, tmp_path: Path) -> None:
    """``hubbub serve --broker <url>`` runs the demo hub on the broker: two nodes share a chat."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--broker", backend.demo_broker_url()]
    with run_server(argv, tmp_path) as one, run_server(argv, tmp_path) as two:
        channel = unique("chat:demo")
        async with client(one) as a, client(two) as b:
            await a.subscribe(channel)
            await b.subscribe(channel)
            await b.publish(channel, {"text": "hello"})
            for c in (a, b):
                (message,) = await c.messages(1)
                assert message["data"]["text"] == "hello" and message["offset"] == 1


# -- the backend and the nodes come and go ----------------------------------------------------


async def test_nodes_started_while_the_broker_is_down(backend: Backend, tmp_path: Path) -> None:
    """Nodes start while the broker's server is down: /ready is 503 and commands get 503;
    then they recover."""
    with e2e.backend(backend.kind, tmp_path) as down:
        down.server.stop()
        with down.nodes(tmp_path) as cluster:
            for node in cluster:
                assert not await node_ready(node)
            channel = unique("feed:late")
            async with client(cluster[0]) as c:
                reply = await c.request({"type": "subscribe", "channel": channel})
                assert reply["type"] == "error" and reply["code"] == 503, reply
                reply = await c.request({"type": "publish", "channel": channel, "data": 1})
                assert reply["type"] == "error" and reply["code"] == 503, reply
            await asyncio.to_thread(down.server.start)
            within = 10 if backend.kind == "redis" else 15  # each broker's old bound
            for node in cluster:
                assert await until(functools.partial(node_ready, node), within, "node ready")
            async with client(cluster[0]) as a, client(cluster[1]) as b:
                await a.subscribe(channel)
                await b.subscribe(channel)
                await a.publish(channel, {"n": 1})
                for c in (a, b):
                    assert positions(await c.messages(1))[0][1] == 1
            logs = "\n".join(node.log() for node in cluster)
            assert "link down" in logs and "link restored" in logs


async def test_clients_of_a_stopped_node_recover_on_another(
    backend: Backend, tmp_path: Path
) -> None:
    """A node shut down closes its clients with a reconnect code; they recover on another node."""
    with backend.nodes(tmp_path) as (one, two):
        channel = unique("feed:move")
        async with client(two) as publisher:
            async with client(one) as leaving:
                await leaving.subscribe(channel)
                await publisher.publish_pipelined(channel, [{"n": n} for n in range(5)])
                last = (await leaving.messages(5))[-1]
                await asyncio.to_thread(one.terminate)
                ending = await leaving.until_closed(10)
                assert ending.code in RECONNECT_CODES, ending
            await publisher.publish_pipelined(channel, [{"n": n} for n in range(5, 10)])
            async with client(two) as back:
                reply = await back.subscribe(
                    channel, recover={"offset": last["offset"], "epoch": last["epoch"]}
                )
                assert reply["recovered"] is True
                assert [p["offset"] for p in reply["publications"]] == [6, 7, 8, 9, 10]
                await publisher.publish(channel, {"n": 10})
                assert [m["offset"] for m in await back.messages(1)] == [11]
