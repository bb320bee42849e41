"""The Python client under faults: every offset exactly once, in order, or an explicit notice.

Real components only: uvicorn subprocesses (``client_app``) killed with
SIGKILL by their PID and restarted on the same port, a real ``redis-server``,
and a small TCP proxy (written here, loopback only) between the client and the
server that the test cuts, freezes or stops reading through. Publishers are
the server HTTP API or a second client. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream, TaskStatus

from hubbub.client import (
    Backoff,
    Client,
    Disconnected,
    Item,
    Publication,
    RequestTimeout,
    Subscription,
    Unrecovered,
)

from .apps.client_app import API_KEY
from .redis_server import RedisServer, redis_server
from .servers import ROOT, Server, free_port, wait_ready

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.05, maximum=0.3)
AUTH = {"Authorization": f"apikey {API_KEY}"}


# -- real servers on a port of our choosing -----------------------------------------------------


def start_server(
    tmp_path: Path, port: int, target: str = "client_app:app", env: dict[str, str] | None = None
) -> Server:
    """``hubbub serve <target>`` on ``port``, ready; the caller ends it by its PID."""
    log_path = tmp_path / f"server-{port}-{uuid.uuid4().hex[:6]}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests" / "apps"), str(ROOT), full_env.get("PYTHONPATH", "")]
    )
    argv = [sys.executable, "-m", "hubbub", "serve", target, "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env
        )
    server = Server(process, port, log_path)
    try:
        wait_ready(server)
    except BaseException:
        kill(server)
        raise
    return server


def kill(server: Server) -> None:
    """SIGKILL a server this test started, by its PID: a crash, nothing said to anyone."""
    if server.process.poll() is None:
        os.kill(server.pid, signal.SIGKILL)
    server.process.wait(10)


@contextmanager
def servers() -> Iterator[list[Server]]:
    """Collects the servers a test starts and ends each one (by PID) when the test ends."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.terminate()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``client_app:app`` on the memory broker, shared by the tests that do not kill it."""
    with servers() as started:
        started.append(start_server(tmp_path_factory.mktemp("memory"), free_port()))
        yield started[0]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the module."""
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="module")
def node(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``client_app:app`` on that Redis, shared by the tests that do not kill it."""
    env = {"HUBBUB_TEST_REDIS_URL": redis.url}
    with servers() as started:
        started.append(start_server(tmp_path_factory.mktemp("node"), free_port(), env=env))
        yield started[0]


# -- a TCP proxy the test controls ------------------------------------------------------------


class Proxy:
    """A loopback TCP proxy to ``127.0.0.1:<target>`` that can cut, freeze or stall its links.

    ``cut()`` closes every current link (the client sees the TCP connection end);
    ``freeze()`` stops forwarding on every current link in both directions
    without closing anything (a half-open path); ``stall()`` stops reading from
    the server on current and new links (a client too slow to read), until
    ``resume()``. New links after a cut or a freeze flow normally.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.links = 0
        self._scopes: set[anyio.CancelScope] = set()
        self._frozen: set[anyio.CancelScope] = set()
        self._flowing = anyio.Event()
        self._flowing.set()
        self._scope = anyio.CancelScope()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        with self._scope:
            async with listener:
                self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
                task_status.started()
                await listener.serve(self._link)

    def close(self) -> None:
        """Stop listening and cut every link: the server is gone, as far as clients can tell."""
        self._scope.cancel()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cut(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()

    def freeze(self) -> None:
        self._frozen |= self._scopes

    def stall(self) -> None:
        self._flowing = anyio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def _link(self, downstream: SocketStream) -> None:
        self.links += 1
        try:
            upstream = await anyio.connect_tcp("127.0.0.1", self.target)
        except OSError:
            await downstream.aclose()
            return
        # A small receive buffer, so a stalled link fills up after little data.
        raw = upstream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with downstream, upstream, anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, downstream, upstream, scope, False)
                    tg.start_soon(self._pump, upstream, downstream, scope, True)
            finally:
                self._scopes.discard(scope)
                self._frozen.discard(scope)

    async def _pump(
        self, source: SocketStream, sink: SocketStream, scope: anyio.CancelScope, from_server: bool
    ) -> None:
        try:
            while True:
                if from_server:
                    await self._flowing.wait()
                data = await source.receive(65536)
                if scope in self._frozen:
                    await anyio.sleep_forever()  # until the link is cut or the proxy stops
                await sink.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            scope.cancel()


@asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[Proxy]:
    """A running :class:`Proxy` to ``port`` for the block."""
    proxy = Proxy(port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        try:
            yield proxy
        finally:
            proxy.resume()
            tg.cancel_scope.cancel()


# -- helpers ----------------------------------------------------------------------------------


def channel_name(prefix: str = "feed:") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def api_publish(http: httpx.AsyncClient, base: str, channel: str, value: Any) -> Any:
    """Publish through the HTTP API of the server at ``base``; its ``{offset, epoch}``."""
    response = await http.post(
        f"{base}/api/publish", json={"channel": channel, "data": value}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    return response.json()


async def collect(sub: Subscription, until: int, within: float) -> list[Item]:
    """Items of ``sub`` until ``until`` publications (or an Unrecovered past them) came."""
    items: list[Item] = []
    with anyio.fail_after(within):
        async for item in sub:
            items.append(item)
            if sum(isinstance(i, Publication) for i in items) >= until:
                break
    return items


def offsets(items: list[Item]) -> list[int | None]:
    return [item.offset for item in items if isinstance(item, Publication)]


async def publish_slowly(client: Client, channel: str, n: int, pause: float = 0.01) -> None:
    """Publish 0..n-1 into ``channel`` with a short pause between publications."""
    for value in range(n):
        await client.publish(channel, value)
        await anyio.sleep(pause)


# -- cut, freeze, stall -----------------------------------------------------------------------


async def test_dropped_tcp_connection_is_recovered(server: Server) -> None:
    """The proxy cuts the TCP link mid-stream: the client reconnects and misses nothing."""
    n = 60
    channel = channel_name()
    async with (
        proxy_to(server.port) as proxy,
        Client(proxy.url, backoff=FAST) as client,
        Client(f"{server.ws_url}/ws") as publisher,
        client.subscribe(channel) as sub,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(publish_slowly, publisher, channel, n)
        items = await collect(sub, 15, 20)
        proxy.cut()
        items += await collect(sub, n - 15, 30)
    assert offsets(items) == list(range(1, n + 1))
    assert [i.data for i in items if isinstance(i, Publication)] == list(range(n))
    assert client.connections >= 2


async def test_every_channel_is_resubscribed_after_a_drop(server: Server) -> None:
    """Twenty subscriptions, one cut: each recovers its channel from its own position."""
    channels = [channel_name() for _ in range(20)]
    async with (
        proxy_to(server.port) as proxy,
        Client(proxy.url, backoff=FAST, codec="msgpack") as client,
        Client(f"{server.ws_url}/ws") as publisher,
    ):
        subs = [client.subscribe(channel) for channel in channels]
        for sub in subs:
            await sub.__aenter__()
        try:
            for channel in channels:
                await publisher.publish(channel, "before")
            before = [await collect(sub, 1, 10) for sub in subs]
            proxy.cut()
            for channel in channels:
                await publisher.publish(channel, "during")
            after = [await collect(sub, 1, 20) for sub in subs]
        finally:
            for sub in subs:
                await sub.__aexit__(None, None, None)
    assert [offsets(items) for items in before] == [[1]] * len(channels)
    assert [offsets(items) for items in after] == [[2]] * len(channels)
    assert client.connections == 2


async def test_client_gives_up_after_max_attempts(server: Server) -> None:
    """With ``max_attempts``, a server that stays away ends the client with Disconnected."""
    async with proxy_to(server.port) as proxy:
        async with (
            Client(proxy.url, backoff=Backoff(initial=0.05, maximum=0.1, max_attempts=2)) as client,
            client.subscribe(channel_name()) as sub,
        ):
            proxy.close()
            with anyio.fail_after(10), pytest.raises(Disconnected) as stopped:
                async for _ in sub:
                    pass
    assert "gave up after 2 attempts" in stopped.value.reason
    assert client.failure is stopped.value


async def test_half_open_connection_is_noticed_and_recovered(server: Server) -> None:
    """A link that silently stops forwarding is noticed (no ping for ping + pong_timeout)."""
    n = 30
    channel = channel_name()
    async with (
        proxy_to(server.port) as proxy,
        Client(proxy.url, backoff=FAST) as client,
        Client(f"{server.ws_url}/ws") as publisher,
        client.subscribe(channel) as sub,
    ):
        await publish_slowly(publisher, channel, 10, 0)
        items = await collect(sub, 10, 10)
        proxy.freeze()
        await publish_slowly(publisher, channel, n - 10, 0)
        items += await collect(sub, n - 10, 20)
    assert offsets(items) == list(range(1, n + 1))
    assert client.connections == 2
    assert proxy.links == 2


async def test_missing_more_than_the_history_reports_unrecovered(server: Server) -> None:
    """Away for more publications than the channel keeps (5): ``Unrecovered``, same epoch."""
    channel = channel_name("short:")
    async with (
        proxy_to(server.port) as proxy,
        Client(proxy.url, backoff=FAST) as client,
        Client(f"{server.ws_url}/ws") as publisher,
        client.subscribe(channel) as sub,
    ):
        await publisher.publish(channel, 0)
        items = await collect(sub, 1, 10)
        proxy.freeze()  # the client notices only after ping + pong_timeout
        for value in range(1, 11):
            await publisher.publish(channel, value)
        with anyio.fail_after(20):
            notice = await sub.__anext__()
        await publisher.publish(channel, 11)
        after = await collect(sub, 1, 10)
    assert offsets(items) == [1]
    assert isinstance(notice, Unrecovered), notice
    assert not notice.epoch_changed
    assert notice.previous is not None and notice.previous.offset == 1
    assert notice.position is not None and notice.position.offset == 11
    assert offsets(after) == [12]
    assert client.connections == 2


async def test_request_times_out_on_a_frozen_link(server: Server) -> None:
    """A command whose reply cannot come raises RequestTimeout within the request timeout."""
    async with (
        proxy_to(server.port) as proxy,
        Client(proxy.url, backoff=FAST, request_timeout=0.5) as client,
    ):
        proxy.freeze()
        with anyio.fail_after(10), pytest.raises(RequestTimeout):
            await client.publish(channel_name(), "lost in the proxy")


async def test_slow_reader_is_closed_1013_and_recovers(tmp_path: Path) -> None:
    """A client that stops reading is closed by the slow-consumer policy; it recovers it all."""
    n = 150
    payload = "x" * 30_000
    channel = channel_name()
    with servers() as started:
        started.append(server := start_server(tmp_path, free_port(), "client_app:slow_app"))
        async with (
            proxy_to(server.port) as proxy,
            Client(proxy.url, backoff=FAST) as client,
            Client(f"{server.ws_url}/ws") as publisher,
            client.subscribe(channel) as sub,
            httpx.AsyncClient() as http,
        ):
            proxy.stall()
            for value in range(n):
                await publisher.publish(channel, [value, payload])
            metrics = (await http.get(f"{server.url}/metrics")).text
            proxy.resume()
            items = await collect(sub, n, 30)
    assert "hubbub_slow_consumer_closes_total" in metrics
    closes = [line for line in metrics.splitlines() if line.startswith("hubbub_slow_consumer")]
    assert closes and float(closes[0].rsplit(" ", 1)[1]) >= 1, closes
    assert offsets(items) == list(range(1, n + 1))
    assert [i.data[0] for i in items if isinstance(i, Publication)] == list(range(n))
    assert client.connections >= 2


async def test_slow_application_loses_nothing_and_keeps_the_connection(server: Server) -> None:
    """A loop slower than the publisher overflows the small buffer; history fills it in."""
    n = 60
    channel = channel_name()
    async with (
        Client(f"{server.ws_url}/ws", buffer_size=5) as client,
        Client(f"{server.ws_url}/ws") as publisher,
        client.subscribe(channel) as sub,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(publish_slowly, publisher, channel, n, 0)
        items: list[Item] = []
        with anyio.fail_after(30):
            async for item in sub:
                items.append(item)
                await anyio.sleep(0.01)
                if len(items) == n:
                    break
    assert offsets(items) == list(range(1, n + 1))
    assert client.connections == 1
    assert client.gaps >= 1


# -- servers killed ---------------------------------------------------------------------------


async def test_killed_server_on_redis_recovers_every_offset(
    redis: RedisServer, node: Server, tmp_path: Path
) -> None:
    """SIGKILL the client's node mid-stream and restart it: Redis history fills the hole.

    The publisher keeps publishing through another node the whole time: before,
    while the client's node is down, and after it is back.
    """
    n = 80
    channel = channel_name()
    env = {"HUBBUB_TEST_REDIS_URL": redis.url}
    port = free_port()

    async def publish_all(http: httpx.AsyncClient) -> None:
        for value in range(n):
            await api_publish(http, node.url, channel, value)
            await anyio.sleep(0.02)

    with servers() as started:
        started.append(doomed := start_server(tmp_path, port, env=env))
        async with (
            Client(f"{doomed.ws_url}/ws", backoff=FAST, codec="msgpack") as client,
            client.subscribe(channel) as sub,
            httpx.AsyncClient() as http,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(publish_all, http)
            items = await collect(sub, 15, 20)
            kill(doomed)
            restarted = await anyio.to_thread.run_sync(
                start_server, tmp_path, port, "client_app:app", env
            )
            started.append(restarted)
            items += await collect(sub, n - 15, 30)
    assert offsets(items) == list(range(1, n + 1))
    assert [i.data for i in items if isinstance(i, Publication)] == list(range(n))
    assert client.connections == 2


async def test_killed_memory_server_reports_unrecovered(tmp_path: Path) -> None:
    """With the memory broker a restart makes a new epoch: the client says ``Unrecovered``."""
    channel = channel_name()
    with servers() as started:
        port = free_port()
        started.append(node := start_server(tmp_path, port))
        async with (
            Client(f"{node.ws_url}/ws", backoff=FAST) as client,
            client.subscribe(channel) as sub,
            httpx.AsyncClient() as http,
        ):
            first = [await api_publish(http, node.url, channel, v) for v in range(5)]
            items = await collect(sub, 5, 10)
            kill(node)
            started.append(await anyio.to_thread.run_sync(start_server, tmp_path, port))
            with anyio.fail_after(20):
                notice = await sub.__anext__()
            for value in range(5, 8):
                await api_publish(http, node.url, channel, value)
            after = await collect(sub, 3, 10)
    assert offsets(items) == [1, 2, 3, 4, 5]
    assert isinstance(notice, Unrecovered), notice
    assert notice.epoch_changed
    assert notice.previous is not None and notice.previous.offset == 5
    assert notice.previous.epoch == first[-1]["epoch"]
    assert [i.data for i in after if isinstance(i, Publication)] == [5, 6, 7]
    assert offsets(after) == [1, 2, 3]
    assert client.connections == 2


# -- gaps and epoch changes seen while connected ------------------------------------------------


async def test_live_epoch_change_is_noticed_while_connected(
    redis: RedisServer, node: Server
) -> None:
    """Redis loses the stream (keys deleted): the next publication has a new epoch; reported."""
    channel = channel_name()
    async with (
        Client(f"{node.ws_url}/ws", backoff=FAST) as client,
        Client(f"{node.ws_url}/ws") as publisher,
        client.subscribe(channel) as sub,
    ):
        await publish_slowly(publisher, channel, 3, 0)
        items = await collect(sub, 3, 10)
        tag = f"hubbub:{{{len(channel)}:{channel}}}"
        assert redis.command("DEL", f"{tag}:meta", f"{tag}:stream") == 2
        await publisher.publish(channel, "new stream")
        with anyio.fail_after(10):
            notice = await sub.__anext__()
        await publisher.publish(channel, "after")
        after = await collect(sub, 1, 10)
    assert offsets(items) == [1, 2, 3]
    assert isinstance(notice, Unrecovered) and notice.epoch_changed
    assert notice.position is not None and notice.position.offset >= 1
    assert isinstance(after[0], Publication) and after[0].data == "after"
    assert after[0].offset == notice.position.offset + 1
    assert client.connections == 1
    assert client.gaps == 1


async def test_offsets_lost_in_the_broker_end_in_unrecovered(
    redis: RedisServer, node: Server
) -> None:
    """Offsets skipped in Redis (a hole no history covers): reported, never papered over."""
    channel = channel_name()
    async with (
        Client(f"{node.ws_url}/ws", backoff=FAST) as client,
        Client(f"{node.ws_url}/ws") as publisher,
        client.subscribe(channel) as sub,
    ):
        await publish_slowly(publisher, channel, 3, 0)
        items = await collect(sub, 3, 10)
        tag = f"hubbub:{{{len(channel)}:{channel}}}"
        assert redis.command("HINCRBY", f"{tag}:meta", "offset", 2) == 5
        await publisher.publish(channel, "after the hole")
        with anyio.fail_after(15):
            notice = await sub.__anext__()
        await publisher.publish(channel, "next")
        after = await collect(sub, 1, 10)
    assert offsets(items) == [1, 2, 3]
    assert isinstance(notice, Unrecovered) and not notice.epoch_changed
    assert notice.previous is not None and notice.previous.offset == 3
    assert notice.position is not None and notice.position.offset == 6
    assert isinstance(after[0], Publication) and after[0].data == "next"
    assert after[0].offset == 7
