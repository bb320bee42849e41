"""The custom broker of ``docs/brokers.md`` (``examples/custom_broker.py``): contract and hubs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from examples.custom_broker import Bus, BusBroker

from hubbub import Capability, Hub, Namespace, UnsupportedCapability
from hubbub.brokers import HistoryOptions, Idempotency, Publication
from hubbub.testing import HubTester
from hubbub.testing.contract import (
    BrokerContract,
    BrokerFactory,
    BrokerUnderTest,
    ManualClock,
    publication,
)
from hubbub.testing.contract import publication as make_publication


class TestBusBroker(BrokerContract):
    """The broker contract, run against the example ``BusBroker`` (pub/sub and presence)."""

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Bus brokers on their own bus, whose clock moves only when the test advances it."""

        async def make() -> BrokerUnderTest:
            clock = ManualClock()
            return BrokerUnderTest(BusBroker(Bus(clock=clock)), clock.advance)

        return make


pytestmark = pytest.mark.anyio

NO_HISTORY = Namespace(name="personal")
"""Personal channels without history: the bus keeps none."""


def test_declares_presence_only() -> None:
    """The example broker declares presence, and neither history nor idempotency."""
    assert BusBroker().capabilities == {Capability.PRESENCE}


async def test_refuses_history_and_idempotency_from_direct_callers(anyio_backend: str) -> None:
    """Asked for what it does not keep, the bus broker raises instead of ignoring it."""
    broker = BusBroker()
    await broker.start(lambda p: None, lambda c: None)
    try:
        with pytest.raises(ValueError, match="no history"):
            await broker.publish(publication("a"), HistoryOptions(size=1, ttl=1.0))
        with pytest.raises(ValueError, match="no history"):
            await broker.publish(publication("a"), None, Idempotency(key="k", window=1.0))
    finally:
        await broker.stop()


async def test_two_hubs_on_one_bus_reach_each_others_clients(anyio_backend: str) -> None:
    """A publication on one hub reaches the other hub's subscribers, with presence shared."""
    bus = Bus()
    room = Namespace(name="room", presence=True, join_leave=True)
    hub_a = Hub(broker=BusBroker(bus), namespaces=[room], personal=NO_HISTORY, anonymous=True)
    hub_b = Hub(broker=BusBroker(bus), namespaces=[room], personal=NO_HISTORY, anonymous=True)
    async with HubTester(hub_a) as a, HubTester(hub_b) as b:
        ann = await a.connect("ann")
        bob = await b.connect("bob")
        await ann.subscribe("room:1")
        await bob.subscribe("room:1")
        joined = await ann.receive()
        assert joined["type"] == "join" and joined["user"] == "bob"
        present = await ann.presence("room:1")
        assert {entry["user"] for entry in present["clients"].values()} == {"ann", "bob"}
        await bob.publish("room:1", {"text": "hi from b"})
        message = await ann.receive()
        assert message["type"] == "message" and message["data"] == {"text": "hi from b"}
        assert "offset" not in message


async def test_a_hub_with_history_is_refused_at_start(anyio_backend: str) -> None:
    """A namespace with history cannot run on the bus: the hub says so when it starts."""
    hub = Hub(broker=BusBroker(), namespaces=[Namespace(name="news", history_size=10)])
    with pytest.raises(UnsupportedCapability) as refused:
        async with hub:
            pass  # pragma: no cover - the hub does not start
    assert refused.value.capability is Capability.HISTORY
    assert hub.state == "stopped"


async def test_run_starts_and_stops_a_broker_written_for_0_1(anyio_backend: str) -> None:
    """``Broker.run`` (the guide's way to use a broker on its own) starts a broker that
    ignores ``task_group``, and stops it on exit even when the block raises."""
    broker = BusBroker()
    delivered: list[Publication] = []
    handler, lost = delivered.append, lambda channels: None
    publication = make_publication("news")
    history = None
    async with broker.run(handler, lost):
        await broker.subscribe("news")
        await broker.publish(publication, history)
    assert [p.channel for p in delivered] == ["news"]
    assert broker not in broker.bus.nodes
    with pytest.raises(KeyError):
        async with broker.run(handler, lost):
            assert broker in broker.bus.nodes
            raise KeyError("the caller's own error, unwrapped")
    assert broker not in broker.bus.nodes


def test_the_guide_quotes_this_code() -> None:
    """Every Python block of ``docs/brokers.md`` is quoted verbatim from the tested files."""
    root = Path(__file__).parent.parent
    guide = (root / "docs" / "brokers.md").read_text()
    blocks = [part.split("```", 1)[0] for part in guide.split("```python\n")[1:]]
    sources = (root / "examples" / "custom_broker.py").read_text() + Path(__file__).read_text()
    assert len(blocks) == 3
    for block in blocks:
        # A block may be quoted from inside a test function (one level in).
        assert block in sources or textwrap.indent(block, "    ") in sources, block
