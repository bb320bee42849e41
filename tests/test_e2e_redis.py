"""Several hub nodes on one Redis, end to end: delivery, presence, notify, leaks, faults.

Each node is ``python -m hubbub serve redis_app:app`` in its own uvicorn
process; the Redis is a real ``redis-server`` this module starts and stops by
PID. Fault tests run their own Redis and nodes, break the Redis (restart,
``CLIENT KILL TYPE pubsub``, ``SIGSTOP``, down at start) while a numbered
publisher runs, and then check that every subscriber on both nodes holds
every offset exactly once, resuming with ``recover`` after a reconnect code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from .apps.wsclient import Client, open_client
from .redis_server import RedisServer, redis_server
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

ARGV = ["-m", "hubbub", "serve", "redis_app:app", "--port", "{port}"]
RECONNECT_CODES = frozenset({1001, 1011, 1012, 1013})
_names = count(1)


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the Redis broker are asyncio-only."""
    return "asyncio"


@contextlib.contextmanager
def nodes(redis: RedisServer, tmp_path: Path, n: int = 2) -> Iterator[list[Server]]:
    """``n`` hub nodes on ``redis``, each ended by its PID when the block ends."""
    env = {"HUBBUB_TEST_REDIS_URL": redis.url}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_server(ARGV, tmp_path, env=env)) for _ in range(n)]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The Redis of this module's healthy-path tests."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two nodes on the module's Redis, shared by the healthy-path tests."""
    with nodes(redis, tmp_path_factory.mktemp("nodes")) as running:
        yield running


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}{next(_names)}"


def client(node: Server, user: str | None = None) -> Any:
    """A client of ``node`` (as ``user``, or anonymous)."""
    return open_client(node.ws_url, path="/ws" + (f"?user={user}" if user else ""))


def http(node: Server, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON to) ``path`` on ``node``; the status and decoded body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        node.url + path, data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def until(predicate: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms until it holds (at most ``within`` s); the time it took."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within} s")


async def node_ready(node: Server) -> bool:
    """Whether ``GET /ready`` answers 200."""
    status, _ = await asyncio.to_thread(http, node, "/ready")
    return status == 200


def positions(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(m["epoch"], m["offset"]) for m in messages]


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


async def wait_for_type(c: Client, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next message of ``kind`` (others are skipped)."""
    async with asyncio.timeout(within):
        while True:
            message = await c.recv(within)
            if message["type"] == kind:
                return message


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


async def test_demo_hub_takes_the_broker_flag(redis: RedisServer, tmp_path: Path) -> None:
    """``hubbub serve --broker redis://…`` runs the demo hub on Redis: two nodes share a chat."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--broker", redis.url + "?prefix=demo:"]
    with run_server(argv, tmp_path) as one, run_server(argv, tmp_path) as two:
        channel = unique("chat:demo")
        async with client(one) as a, client(two) as b:
            await a.subscribe(channel)
            await b.subscribe(channel)
            await b.publish(channel, {"text": "hello"})
            for c in (a, b):
                (message,) = await c.messages(1)
                assert message["data"]["text"] == "hello" and message["offset"] == 1


# -- faults ------------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """A client that stays subscribed through faults, resuming with ``recover``."""

    node: Server
    channel: str
    seen: list[tuple[str, int]] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    unrecovered: list[int] = field(default_factory=list)  # index into ``seen`` of each resume
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    position: tuple[str, int] = ("", 0)

    async def run(self, stop: asyncio.Event) -> None:
        """Stay subscribed until ``stop``; reconnect after closes (at most 100 times)."""
        position: dict[str, Any] | None = None
        for _ in range(100):
            if stop.is_set():
                return
            try:
                async with client(self.node) as c:
                    command: dict[str, Any] = {"type": "subscribe", "channel": self.channel}
                    if position is not None:
                        command["recover"] = position
                    reply = await c.request(command)
                    if reply["type"] == "error":
                        assert reply["code"] == 503, reply
                        await asyncio.sleep(0.2)
                        continue
                    if position is not None and not reply["recovered"]:
                        self.unrecovered.append(len(self.seen))
                    for message in reply["publications"]:
                        self.seen.append((message["epoch"], message["offset"]))
                    if self.seen and self.seen[-1][0] == reply["epoch"]:
                        self.position = max(self.seen[-1], (reply["epoch"], reply["offset"]))
                    else:
                        self.position = (reply["epoch"], reply["offset"])
                    position = {"offset": self.position[1], "epoch": self.position[0]}
                    self.subscribed.set()
                    while not stop.is_set():
                        try:
                            message = await c.recv(0.2)
                        except TimeoutError:
                            continue
                        if message["type"] == "message":
                            self.seen.append((message["epoch"], message["offset"]))
                            self.position = self.seen[-1]
                            position = {"offset": message["offset"], "epoch": message["epoch"]}
                    return
            except ConnectionClosed as exc:
                self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
                await asyncio.sleep(0.1)
            except OSError:
                await asyncio.sleep(0.2)

    def check(self, top: tuple[str, int], *, may_lose: bool) -> None:
        """Every offset once, in order, up to ``top`` (resumes without recovery excepted)."""
        assert self.seen, "nothing delivered"
        assert self.position == top, (self.seen[-5:], self.position, top)
        assert all(code in RECONNECT_CODES for code in self.closes), self.closes
        if not may_lose:
            assert self.unrecovered == []
        previous: tuple[str, int] = (self.seen[0][0], 0)
        for i, current in enumerate(self.seen):
            if i in self.unrecovered:
                assert current not in self.seen[:i], "duplicate after a resume"
            elif current[0] == previous[0]:
                assert current[1] == previous[1] + 1, (previous, current)
            else:
                assert current[1] == 1, (previous, current)
            previous = current


async def run_fault(
    tmp_path: Path,
    fault: Callable[[RedisServer], Awaitable[None]],
    *,
    may_lose: bool = False,
    count_: int = 120,
) -> tuple[list[Subscriber], float]:
    """A numbered publisher on node 0, subscribers on both nodes, ``fault`` in the middle.

    Returns the subscribers (already checked) and how long the hub took to answer
    publishes again after the fault ended.
    """
    with redis_server(tmp_path) as redis, nodes(redis, tmp_path) as cluster:
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
                fault_ended: list[float] = []
                answered_after: list[float] = []
                failures = 0

                async def publish_all() -> None:
                    nonlocal failures
                    acks_after = 0
                    for n in range(600):  # bounded: ~30 acks after the fault end it
                        reply = await publisher.request(
                            {"type": "publish", "channel": channel, "data": {"n": n}}, within=10
                        )
                        ok = reply["type"] == "ack"
                        if not ok:
                            assert reply["type"] == "error" and reply["code"] == 503, reply
                            failures += 1
                        if fault_ended and ok:
                            if not answered_after:
                                answered_after.append(time.monotonic() - fault_ended[0])
                            acks_after += 1
                            if acks_after >= 30 and time.monotonic() - fault_ended[0] > 3:
                                return
                        await asyncio.sleep(0.01 if ok else 0.1)

                async with asyncio.TaskGroup() as inner:
                    inner.create_task(publish_all())
                    await asyncio.sleep(0.8)
                    await fault(redis)
                    fault_ended.append(time.monotonic())
                assert answered_after, "no publish succeeded after the fault"
                recovered_in = answered_after[0]
                history = await publisher.request(
                    {"type": "history", "channel": channel, "limit": 1}
                )
            top = (history["epoch"], history["offset"])

            async def caught_up() -> bool:
                return all(s.position == top for s in subscribers)

            try:
                await until(caught_up, 15, "subscribers caught up")
            except AssertionError:
                for s in subscribers:
                    print(s.node.port, s.closes, s.unrecovered, s.seen[-3:], s.position, top)
                print("\n".join(node.log()[-3000:] for node in cluster))
                raise
            finally:
                stop.set()
        for s in subscribers:
            print(
                f"{s.node.port}: {len(s.seen)} delivered, closes {s.closes}, "
                f"resumed without recovery at {s.unrecovered}; top {top}"
            )
            s.check(top, may_lose=may_lose)
        for node in cluster:
            assert await node_ready(node)
        logs = "\n".join(node.log() for node in cluster)
        assert "link down" in logs and "link restored" in logs
        print(
            f"publishes answered again {recovered_in:.2f} s after the fault ended; "
            f"{failures} publishes got 503"
        )
        print(
            "\n".join(line for line in logs.splitlines() if "hubbub" in line and "INFO" not in line)
        )
        return subscribers, recovered_in


async def test_fault_pubsub_connection_killed(tmp_path: Path) -> None:
    """CLIENT KILL TYPE pubsub mid-stream: nodes resubscribe and repair; nothing lost or doubled."""

    async def fault(redis: RedisServer) -> None:
        assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") == 2

    _, recovered_in = await run_fault(tmp_path, fault)
    assert recovered_in < 5


async def test_fault_redis_frozen(tmp_path: Path) -> None:
    """Redis SIGSTOPped for 3 s mid-stream: calls time out with 503, then everything catches up."""

    async def fault(redis: RedisServer) -> None:
        redis.freeze()
        try:
            await asyncio.sleep(3)
        finally:
            redis.thaw()

    _, recovered_in = await run_fault(tmp_path, fault)
    assert recovered_in < 10


async def test_fault_redis_restarted(tmp_path: Path) -> None:
    """Redis killed and restarted empty: a new epoch; old subscribers resume without duplicates."""

    async def fault(redis: RedisServer) -> None:
        redis.kill()
        await asyncio.sleep(1)
        redis.start()

    subscribers, recovered_in = await run_fault(tmp_path, fault, may_lose=True)
    assert recovered_in < 10
    assert all(s.position[0] != s.seen[0][0] for s in subscribers)  # a new epoch


async def test_fault_redis_down_at_start(tmp_path: Path) -> None:
    """Nodes start while Redis is down: /ready is 503 and commands get 503; then they recover."""
    with redis_server(tmp_path) as redis:
        redis.stop()
        with nodes(redis, tmp_path) as cluster:
            for node in cluster:
                assert not await node_ready(node)
            channel = unique("feed:late")
            async with client(cluster[0]) as c:
                reply = await c.request({"type": "subscribe", "channel": channel})
                assert reply["type"] == "error" and reply["code"] == 503, reply
                reply = await c.request({"type": "publish", "channel": channel, "data": 1})
                assert reply["type"] == "error" and reply["code"] == 503, reply
            redis.start()
            for node in cluster:
                assert await until(functools.partial(node_ready, node), 10, "node ready") < 10
            async with client(cluster[0]) as a, client(cluster[1]) as b:
                await a.subscribe(channel)
                await b.subscribe(channel)
                await a.publish(channel, {"n": 1})
                for c in (a, b):
                    assert positions(await c.messages(1))[0][1] == 1
            logs = "\n".join(node.log() for node in cluster)
            assert "link down" in logs and "link restored" in logs


async def test_clients_of_a_stopped_node_recover_on_another(
    redis: RedisServer, tmp_path: Path
) -> None:
    """A node shut down closes its clients with a reconnect code; they recover on another node."""
    with nodes(redis, tmp_path) as (one, two):
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
