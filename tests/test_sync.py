"""``hub.sync``: the hub's API from synchronous code in other threads, bounded and ordered."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from hubbub import (
    BrokerUnavailable,
    Hub,
    HubNotRunning,
    MemoryBroker,
    Namespace,
    Notification,
    SyncHub,
    Unavailable,
)
from hubbub.brokers import HistoryOptions, Idempotency, Publication

from .redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

THREADS = 200
PER_THREAD = 5


class CountingBroker(MemoryBroker):
    """A real MemoryBroker whose publish takes a moment and records how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.peak = 0

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None = None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await anyio.sleep(0.001)
            return await super().publish(publication, history, idempotency)
        finally:
            self.inside -= 1


def in_threads(
    count: int, work: Callable[[int], None], within: float = 60.0
) -> list[BaseException]:
    """Run ``work(i)`` in ``count`` threads started together; the exceptions they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(10)
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + within
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    assert not any(thread.is_alive() for thread in threads), "threads still running"
    return errors


async def test_hundreds_of_threads_publish_at_once_bounded_and_in_order() -> None:
    """200 threads x 5 publishes: all arrive, at most max_in_flight at once, in each one's order."""
    broker = CountingBroker()
    hub = Hub(broker=broker, namespaces=[Namespace(name="t", history_size=THREADS * PER_THREAD)])
    sync = hub.sync.with_limits(max_in_flight=8, timeout=30)
    async with hub:

        def work(index: int) -> None:
            for seq in range(PER_THREAD):
                position = sync.publish("t:all", {"thread": index, "seq": seq})
                assert position is not None

        errors = await anyio.to_thread.run_sync(in_threads, THREADS, work)
        assert errors == []
        page = await hub.history("t:all", limit=None)
    assert len(page.publications) == THREADS * PER_THREAD
    assert 1 <= broker.peak <= 8
    seen: dict[int, list[int]] = {}
    for publication in page.publications:
        data = msgspec.json.decode(publication.data)
        seen.setdefault(data["thread"], []).append(data["seq"])
    assert seen == {i: list(range(PER_THREAD)) for i in range(THREADS)}


async def test_notify_and_history_from_a_thread() -> None:
    """``notify`` reaches the personal channel; ``history`` reads it back, from a thread."""
    hub = Hub()
    async with hub:

        def work() -> list[Any]:
            hub.sync.notify("ada", Notification(type="mention", title="hello"))
            page = hub.sync.history("#ada")
            return [msgspec.json.decode(p.data) for p in page.publications]

        got = await anyio.to_thread.run_sync(work)
    assert [item["title"] for item in got] == ["hello"]


async def test_called_from_the_event_loop_thread_is_an_error_not_a_deadlock() -> None:
    """On the hub's own loop thread a blocking call raises at once instead of hanging."""
    hub = Hub()
    async with hub:
        # (A deadlock would hang here until pytest's timeout.)
        with pytest.raises(RuntimeError, match="event loop"):
            hub.sync.publish("room", {"text": "hi"})
        with pytest.raises(RuntimeError, match="event loop"):
            hub.sync.notify("ada", Notification(type="x"))
        # The hub still works for awaiting callers.
        await hub.publish("room", {"text": "hi"})


def test_a_hub_that_is_not_running_answers_hub_not_running() -> None:
    """Before start and after stop, a synchronous call raises HubNotRunning (503)."""
    hub = Hub()
    with pytest.raises(HubNotRunning):
        hub.sync.publish("room", 1)

    async def run_once() -> None:
        async with hub:
            await anyio.to_thread.run_sync(lambda: hub.sync.publish("room", 1))

    anyio.run(run_once)
    with pytest.raises(HubNotRunning):
        hub.sync.publish("room", 2)
    assert isinstance(HubNotRunning(), Unavailable)


async def test_hub_errors_reach_the_thread_unchanged() -> None:
    """A refusal of the hub (unknown namespace, bad channel) is raised in the calling thread."""
    from hubbub import InvalidMessage, UnknownNamespace

    hub = Hub()
    async with hub:
        with pytest.raises(UnknownNamespace):
            await anyio.to_thread.run_sync(lambda: hub.sync.publish("nope:x", 1))
        with pytest.raises(InvalidMessage):
            await anyio.to_thread.run_sync(lambda: hub.sync.publish("bad channel!", 1))


def test_bad_limits_are_refused_at_construction() -> None:
    """``max_in_flight`` below 1 or a non-positive timeout raise when built."""
    hub = Hub()
    with pytest.raises(ValueError, match="max_in_flight"):
        hub.sync.with_limits(max_in_flight=0)
    with pytest.raises(TypeError, match="max_in_flight"):
        hub.sync.with_limits(max_in_flight=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        hub.sync.with_limits(timeout=0)
    assert isinstance(hub.sync, SyncHub)
    assert "max_in_flight=64" in repr(hub.sync)


# -- a stalled dependency: a real redis-server frozen with SIGSTOP -------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it freezes."""
    with redis_server(tmp_path) as server:
        yield server


def redis_hub(url: str, *, broker_timeout: float) -> Hub:
    from hubbub.brokers.redis import RedisBroker

    broker = RedisBroker.from_url(
        url,
        prefix=f"t{secrets.token_hex(3)}:",
        timeout=30.0,
        health_check_interval=0.25,
        reconnect_delay=0.05,
        max_reconnect_delay=0.5,
    )
    return Hub(broker=broker, broker_timeout=broker_timeout)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_frozen_redis_gives_a_timeout_and_a_full_cap_not_a_hang(
    own_redis: RedisServer, anyio_backend: str
) -> None:
    """SIGSTOP'd Redis: the call times out (Unavailable), waiting callers are refused at the cap."""
    hub = redis_hub(own_redis.url, broker_timeout=30.0)
    sync = hub.sync.with_limits(timeout=3.0, max_in_flight=2)
    async with hub:
        await anyio.to_thread.run_sync(lambda: sync.publish("room", "before"))
        own_redis.freeze()
        try:
            outcomes: list[str] = []

            def work(index: int) -> None:
                started = time.monotonic()
                try:
                    sync.publish("room", index)
                except Unavailable as exc:
                    assert time.monotonic() - started < 5
                    outcomes.append("cap" if "in flight" in exc.reason else "timeout")

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    # Two calls take both places and stall for their 3 s...
                    tg.start_soon(anyio.to_thread.run_sync, in_threads, 2, work)
                    await anyio.sleep(0.5)
                    # ...so three more, with 0.5 s to find a place, find none.
                    sync.timeout = 0.5
                    errors = await anyio.to_thread.run_sync(in_threads, 3, work)
                    assert errors == []
                    assert sorted(outcomes) == ["cap", "cap", "cap"]
            assert sorted(outcomes) == ["cap", "cap", "cap", "timeout", "timeout"]
        finally:
            own_redis.thaw()
        # Thawed: the hub answers again.
        with anyio.fail_after(20):
            while True:
                try:
                    await anyio.to_thread.run_sync(lambda: sync.publish("room", "after"))
                    break
                except Unavailable:
                    await anyio.sleep(0.1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_frozen_redis_answers_broker_unavailable_within_broker_timeout(
    own_redis: RedisServer, anyio_backend: str
) -> None:
    """A broker_timeout shorter than the sync deadline: the hub's own 503 reaches the thread."""
    hub = redis_hub(own_redis.url, broker_timeout=0.5)
    async with hub:
        own_redis.freeze()
        try:
            with anyio.fail_after(10):
                with pytest.raises(BrokerUnavailable):
                    await anyio.to_thread.run_sync(lambda: hub.sync.publish("room", 1))
        finally:
            own_redis.thaw()


async def test_calls_in_flight_when_the_hub_stops_finish_or_are_refused() -> None:
    """Threads publishing while the hub stops: each call succeeds or gets HubNotRunning, none
    reaches the stopped broker (no other error), none hangs."""
    broker = CountingBroker()
    hub = Hub(broker=broker, drain_timeout=0.5)
    results: list[str] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(200):
                hub.sync.publish("room", index)
            results.append("done")
        except HubNotRunning:
            results.append("stopped")

    async def publishers() -> None:
        errors.extend(await anyio.to_thread.run_sync(in_threads, 10, work))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async with hub:
                tg.start_soon(publishers)
                await anyio.sleep(0.05)
            # stopped while the threads publish
    assert errors == []
    assert sorted(results) == ["stopped"] * 10
