"""Several hub nodes on one PostgreSQL, end to end: delivery, transactional publish, and a
database restart mid-stream.

Each node is ``python -m hubbub serve postgres_app:app`` (or the demo hub with
``--broker postgresql://…``) in its own uvicorn process; the database is a real
PostgreSQL cluster this module creates and stops by PID. The fault test
restarts the database while a numbered publisher runs and then checks that
every subscriber on both nodes holds every offset exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .pg_server import PgServer, pg_server
from .servers import Server, run_server
from .test_e2e_redis import Subscriber, client, node_ready, unique, until, wait_for_type

pytestmark = pytest.mark.anyio

ARGV = ["-m", "hubbub", "serve", "postgres_app:app", "--port", "{port}"]


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the PostgreSQL broker are asyncio-only."""
    return "asyncio"


@contextlib.contextmanager
def nodes(pg: PgServer, tmp_path: Path, n: int = 2) -> Iterator[list[Server]]:
    """``n`` hub nodes on ``pg``, each ended by its PID when the block ends."""
    env = {"HUBBUB_TEST_PG_URL": pg.url}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_server(ARGV, tmp_path, env=env)) for _ in range(n)]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    """The database of this module's healthy-path tests."""
    with pg_server() as server:
        yield server


@pytest.fixture(scope="module")
def cluster(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two nodes on the module's database, shared by the healthy-path tests."""
    with nodes(pg, tmp_path_factory.mktemp("nodes")) as running:
        yield running


def post(node: Server, path: str, body: dict[str, Any]) -> Any:
    """POST ``body`` as JSON to ``path`` on ``node``; the decoded answer."""
    request = urllib.request.Request(
        node.url + path, data=json.dumps(body).encode(), headers={"content-type": "x/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def test_every_publication_reaches_every_subscriber_once_in_order(
    cluster: list[Server],
) -> None:
    """Publishers on both nodes; every subscriber on both nodes gets offsets 1..n once, in order."""
    channel, plain = unique("feed:multi"), unique("plain")
    async with contextlib.AsyncExitStack() as stack:
        subscribers = []
        for i in range(4):
            c = await stack.enter_async_context(client(cluster[i % 2]))
            await c.subscribe(channel)
            await c.subscribe(plain)
            subscribers.append(c)
        publishers = [await stack.enter_async_context(client(node)) for node in cluster]
        acks = await asyncio.gather(
            *(
                pub.publish_pipelined(channel, [{"p": p, "n": n} for n in range(30)])
                for p, pub in enumerate(publishers)
            )
        )
        await asyncio.gather(
            *(pub.publish_pipelined(plain, [{"x": n} for n in range(10)]) for pub in publishers)
        )
        assert sorted(a["offset"] for batch in acks for a in batch) == list(range(1, 61))
        for c in subscribers:
            got = await c.messages(60 + 20, within=15)
            on_channel = [m for m in got if m["channel"] == channel]
            assert [m["offset"] for m in on_channel] == list(range(1, 61))
            for p in range(2):
                assert [m["data"]["n"] for m in on_channel if m["data"]["p"] == p] == list(
                    range(30)
                )
            assert len([m for m in got if m["channel"] == plain]) == 20
            with pytest.raises(TimeoutError):
                await c.messages(1, within=0.3)  # nothing twice


async def test_presence_across_nodes(cluster: list[Server]) -> None:
    """A client on one node sees who is present on the other (leases in the database)."""
    room = unique("room:r")
    async with client(cluster[0], "ann") as a, client(cluster[1], "bob") as b:
        await a.subscribe(room)
        await b.subscribe(room)
        join = await wait_for_type(a, "join")  # bob's lease is set before his join goes out
        assert join["user"] == "bob"
        reply = await a.request({"type": "presence", "channel": room})
        assert set(reply["clients"]) == {a.welcome["client"], b.welcome["client"]}
        other = await b.request({"type": "presence", "channel": room})
        assert other["clients"] == reply["clients"]


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


async def test_demo_hub_takes_the_broker_flag(pg: PgServer, tmp_path: Path) -> None:
    """``hubbub serve --broker postgresql://…`` runs the demo hub on PostgreSQL: a shared chat."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--broker", pg.url + "?schema=demo"]
    with run_server(argv, tmp_path) as one, run_server(argv, tmp_path) as two:
        channel = unique("chat:demo")
        async with client(one) as a, client(two) as b:
            await a.subscribe(channel)
            await b.subscribe(channel)
            await b.publish(channel, {"text": "hello"})
            for c in (a, b):
                (message,) = await c.messages(1)
                assert message["data"]["text"] == "hello" and message["offset"] == 1


async def test_database_restart_mid_stream(tmp_path: Path) -> None:
    """PostgreSQL stopped and started mid-stream: every subscriber ends whole, nothing doubled."""
    with pg_server() as pg, nodes(pg, tmp_path) as cluster:
        channel = unique("feed:fault")
        stop = asyncio.Event()
        subscribers = [Subscriber(cluster[i % 2], channel) for i in range(4)]
        async with asyncio.TaskGroup() as tg:
            for s in subscribers:
                tg.create_task(s.run(stop))
            async with asyncio.timeout(10):
                for s in subscribers:
                    await s.subscribed.wait()
            async with client(cluster[0]) as publisher:
                restarted: list[float] = []
                failures = 0
                acks_after = 0

                async def publish_all() -> None:
                    nonlocal failures, acks_after
                    for n in range(600):  # bounded: ~30 acks after the restart end it
                        reply = await publisher.request(
                            {"type": "publish", "channel": channel, "data": {"n": n}}, within=10
                        )
                        ok = reply["type"] == "ack"
                        if not ok:
                            assert reply["type"] == "error" and reply["code"] == 503, reply
                            failures += 1
                        elif restarted:
                            acks_after += 1
                            if acks_after >= 30 and time.monotonic() - restarted[0] > 2:
                                return
                        await asyncio.sleep(0.01 if ok else 0.1)

                async with asyncio.TaskGroup() as inner:
                    inner.create_task(publish_all())
                    await asyncio.sleep(0.8)
                    await asyncio.to_thread(pg.restart)
                    restarted.append(time.monotonic())
                assert acks_after >= 30, "publishing did not resume after the restart"
                history = await publisher.request(
                    {"type": "history", "channel": channel, "limit": 1}
                )
            top = (history["epoch"], history["offset"])

            async def caught_up() -> bool:
                return all(s.position == top for s in subscribers)

            try:
                await until(caught_up, 15, "subscribers caught up")
            finally:
                stop.set()
        for s in subscribers:
            print(f"{s.node.port}: {len(s.seen)} delivered, closes {s.closes}; top {top}")
            s.check(top, may_lose=False)
            assert len({epoch for epoch, _ in s.seen}) == 1  # the stream survived the restart
        for node in cluster:
            assert await node_ready(node)
        logs = "\n".join(node.log() for node in cluster)
        assert "LISTEN link down" in logs and "LISTEN link restored" in logs
        print(f"{failures} publishes got 503 during the restart")


async def test_database_down_when_the_nodes_start(tmp_path: Path) -> None:
    """Nodes start while PostgreSQL is down: /ready 503 and commands 503; then they recover."""
    with pg_server() as pg:
        pg.stop()
        with nodes(pg, tmp_path) as cluster:
            for node in cluster:
                assert not await node_ready(node)
            channel = unique("feed:late")
            async with client(cluster[0]) as c:
                reply = await c.request({"type": "subscribe", "channel": channel})
                assert reply["type"] == "error" and reply["code"] == 503, reply
                reply = await c.request({"type": "publish", "channel": channel, "data": 1})
                assert reply["type"] == "error" and reply["code"] == 503, reply
            await asyncio.to_thread(pg.start)
            for node in cluster:
                await until(functools.partial(node_ready, node), 15, "node ready")
            async with client(cluster[0]) as a, client(cluster[1]) as b:
                await a.subscribe(channel)
                await b.subscribe(channel)
                await a.publish(channel, {"n": 1})
                for c in (a, b):
                    assert [m["offset"] for m in await c.messages(1)] == [1]
            logs = "\n".join(node.log() for node in cluster)
            assert "LISTEN link down" in logs and "LISTEN link restored" in logs
