"""What the multi-node end-to-end tests share, whatever the broker: clients of a node,
polling, and the numbered-publisher harness that runs a fault mid-stream.

Used by ``test_e2e_brokers.py`` (the suite every broker runs) and by the
broker-specific fault tests (``test_e2e_redis.py``, ``test_e2e_postgres.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any, Final

from websockets.exceptions import ConnectionClosed

from .apps.wsclient import Client, open_client
from .pg_server import PgServer, pg_server
from .redis_server import RedisServer, redis_server
from .servers import Server, run_server

RECONNECT_CODES = frozenset({1001, 1011, 1012, 1013})
_names = count(1)


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


async def wait_for_type(c: Client, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next message of ``kind`` (others are skipped)."""
    async with asyncio.timeout(within):
        while True:
            message = await c.recv(within)
            if message["type"] == kind:
                return message


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
    epoch_changes: int = 0  # new epochs seen live (each followed by a resume)

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
                    epoch_changed = False
                    while not stop.is_set():
                        try:
                            message = await c.recv(0.2)
                        except TimeoutError:
                            continue
                        if message["type"] == "message":
                            if message["epoch"] != self.position[0]:
                                # Told live (PROTOCOL: "an epoch change can be seen live"):
                                # resubscribe with recover, as a client should.
                                self.epoch_changes += 1
                                epoch_changed = True
                                break
                            self.seen.append((message["epoch"], message["offset"]))
                            self.position = self.seen[-1]
                            position = {"offset": message["offset"], "epoch": message["epoch"]}
                    if not epoch_changed:
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
    cluster: list[Server],
    fault: Callable[[], Awaitable[None]],
    *,
    may_lose: bool = False,
    channel: str | None = None,
) -> tuple[list[Subscriber], float]:
    """A numbered publisher on node 0, subscribers on both nodes, ``fault`` in the middle.

    Checks that every subscriber ends with every offset up to the stream's top
    exactly once, in order (``may_lose``: resumes without recovery allowed, e.g.
    after the broker lost its data), that the nodes are ready again and logged
    the link going down and coming back. Returns the subscribers and how long
    the hub took to answer publishes again after the fault ended. ``channel``:
    the history channel to use (default: a new ``feed:`` one).
    """
    channel = channel or unique("feed:fault")
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
                await fault()
                fault_ended.append(time.monotonic())
            assert answered_after, "no publish succeeded after the fault"
            recovered_in = answered_after[0]
            history = await publisher.request({"type": "history", "channel": channel, "limit": 1})
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
            f"epoch changes seen live {s.epoch_changes}, "
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
    print("\n".join(line for line in logs.splitlines() if "hubbub" in line and "INFO" not in line))
    return subscribers, recovered_in


@dataclass
class Backend:
    """One broker's backend under test (a Redis or a PostgreSQL server) and how hub nodes
    reach it: the app they serve and the URL of the demo hub's ``--broker`` flag."""

    kind: str
    server: RedisServer | PgServer

    @property
    def url(self) -> str:
        """The backend's URL."""
        return self.server.url

    def demo_broker_url(self) -> str:
        """A ``--broker`` URL for the demo hub, apart from the test apps' keys or tables."""
        return self.url + ("?prefix=demo:" if self.kind == "redis" else "?schema=demo")

    @contextlib.contextmanager
    def nodes(self, tmp_path: Path, n: int = 2) -> Iterator[list[Server]]:
        """``n`` hub nodes (``<kind>_app:app``), each ended by its PID when the block ends."""
        argv = ["-m", "hubbub", "serve", f"{self.kind}_app:app", "--port", "{port}"]
        variable = "HUBBUB_TEST_REDIS_URL" if self.kind == "redis" else "HUBBUB_TEST_PG_URL"
        with contextlib.ExitStack() as stack:
            yield [
                stack.enter_context(run_server(argv, tmp_path, env={variable: self.url}))
                for _ in range(n)
            ]


BROKERS: Final = ("redis", "postgres")
"""The brokers the multi-node suite runs against (``test_e2e_brokers.py``)."""


@contextlib.contextmanager
def backend(kind: str, directory: Path) -> Iterator[Backend]:
    """A new, started backend of ``kind``, stopped by its PID when the block ends."""
    if kind == "redis":
        with redis_server(directory) as redis:
            yield Backend(kind, redis)
    elif kind == "postgres":
        with pg_server() as pg:
            yield Backend(kind, pg)
    else:  # pragma: no cover - a new broker registers itself here
        raise ValueError(f"no backend for {kind!r}")
