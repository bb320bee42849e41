"""The memory broker: the shared broker contract, plus what only the memory broker promises."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from hubbub import MemoryBroker
from hubbub.brokers import HistoryOptions, Idempotency, Publication
from hubbub.messages import ClientInfo

from .broker_contract import (
    KEEP,
    BrokerContract,
    BrokerFactory,
    BrokerUnderTest,
    ManualClock,
    Recorder,
    publication,
)


class TestMemoryBroker(BrokerContract):
    """The broker contract, run against ``MemoryBroker`` with a manual clock."""

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Memory brokers whose clock moves only when the test advances it."""

        async def make() -> BrokerUnderTest:
            clock = ManualClock()
            return BrokerUnderTest(MemoryBroker(clock=clock), clock.advance)

        return make


# -- memory-specific -------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


@dataclass
class Started:
    """A started memory broker, its clock and what it delivered."""

    broker: MemoryBroker
    clock: ManualClock
    recorder: Recorder


@pytest.fixture
async def memory() -> AsyncIterator[Started]:
    """A started ``MemoryBroker`` on a manual clock."""
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost)
    try:
        yield Started(broker, clock, recorder)
    finally:
        await broker.stop()


def sizes(broker: MemoryBroker) -> tuple[int, int, int]:
    """How many streams, idempotency keys and presence channels the broker holds."""
    return len(broker._streams), len(broker._idempotency), len(broker._presence)


async def test_sweep_drops_expired_streams_keys_and_leases(memory: Started) -> None:
    """After everything expired, the next publish frees it: memory does not grow."""
    broker = memory.broker
    options = HistoryOptions(size=10, ttl=30.0)
    who = ClientInfo(user="u", client="n.1")
    for n in range(1_000):
        channel = f"ch{n}"
        await broker.publish(publication(channel), options, Idempotency(key="k", window=30.0))
        await broker.presence_set(channel, "n.1", who, 30.0)
    assert sizes(broker) == (1_000, 1_000, 1_000)
    await memory.clock.advance(31.0)
    await broker.publish(publication("one-more"), options)
    assert sizes(broker) == (1, 0, 0)


async def test_sweep_keeps_what_has_not_expired(memory: Started) -> None:
    """The sweep drops only expired entries; living streams, keys and leases stay whole."""
    broker = memory.broker
    who = ClientInfo(user="u", client="n.1")
    short, long = HistoryOptions(size=10, ttl=5.0), HistoryOptions(size=10, ttl=3600.0)
    for n in range(10):
        await broker.publish(publication(f"short{n}"), short, Idempotency("k", 5.0))
        await broker.publish(publication(f"long{n}"), long, Idempotency("k", 3600.0))
        await broker.presence_set(f"long{n}", "n.1", who, 3600.0)
        await broker.presence_set(f"long{n}", "n.2", who, 5.0)
    await memory.clock.advance(10.0)
    await broker.publish(publication("trigger"), None)
    assert sizes(broker) == (10, 10, 10)
    for n in range(10):
        assert set(await broker.presence(f"long{n}")) == {"n.1"}
        page = await broker.history(f"long{n}")
        assert [p.offset for p in page.publications] == [1]


async def test_streams_created_by_reads_are_swept(memory: Started) -> None:
    """Empty streams made by reading unknown channels expire too, freeing their memory."""
    broker = memory.broker
    for n in range(1_000):
        await broker.history(f"unknown{n}", limit=0)
    assert len(broker._streams) == 1_000
    await memory.clock.advance(3_600.0)
    await broker.publish(publication("one-more"), KEEP)
    assert len(broker._streams) == 1


async def test_expired_entries_are_invisible_before_the_sweep(memory: Started) -> None:
    """Between sweeps (at most one a second), expired streams, keys and leases are gone."""
    broker = memory.broker
    short = HistoryOptions(size=10, ttl=0.5)
    first = await broker.publish(publication("a"), short, Idempotency("k", 0.5))
    await broker.presence_set("a", "n.1", ClientInfo(user="u", client="n.1"), 0.5)
    await memory.clock.advance(0.6)  # past every expiry, before the next sweep
    assert sizes(broker) == (1, 1, 1)
    assert dict(await broker.presence("a")) == {}
    again = await broker.publish(publication("a"), short, Idempotency("k", 0.5))
    assert again.offset == 1 and again.epoch != first.epoch


async def test_publication_is_delivered_before_publish_returns(memory: Started) -> None:
    """The memory broker calls the handler inside ``publish``: local order is call order."""
    broker, recorder = memory.broker, memory.recorder
    await broker.subscribe("a")
    seen: list[Publication] = []
    for _ in range(3):
        published = await broker.publish(publication("a"), KEEP)
        seen.append(published)
        assert recorder.on("a") == seen


async def test_publish_after_stop_raises(memory: Started) -> None:
    """A stopped memory broker refuses to publish until started again."""
    await memory.broker.stop()
    with pytest.raises(RuntimeError, match="not started"):
        await memory.broker.publish(publication("a"), KEEP)
    await memory.broker.start(memory.recorder.handler, memory.recorder.on_lost)
    assert (await memory.broker.publish(publication("a"), KEEP)).offset == 1


async def test_stop_forgets_node_subscriptions(memory: Started) -> None:
    """After stop and start, channels must be subscribed again to be delivered."""
    broker, recorder = memory.broker, memory.recorder
    await broker.subscribe("a")
    await broker.stop()
    await broker.start(recorder.handler, recorder.on_lost)
    await broker.publish(publication("a"), KEEP)
    assert recorder.on("a") == []


async def test_streams_outlive_a_restart(memory: Started) -> None:
    """The memory broker keeps its streams across stop/start: epochs and offsets go on."""
    broker = memory.broker
    before = await broker.publish(publication("a"), KEEP)
    await broker.stop()
    await broker.start(memory.recorder.handler, memory.recorder.on_lost)
    after = await broker.publish(publication("a"), KEEP)
    assert (after.offset, after.epoch) == (2, before.epoch)


async def test_default_clock_is_monotonic_time(anyio_backend: str) -> None:
    """Without a clock, the broker runs on real monotonic time and streams live."""
    broker = MemoryBroker()
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost)
    try:
        first = await broker.publish(publication("a"), KEEP)
        second = await broker.publish(publication("a"), KEEP)
        assert (first.offset, second.offset) == (1, 2) and first.epoch == second.epoch
    finally:
        await broker.stop()
