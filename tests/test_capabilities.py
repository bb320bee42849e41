"""Broker capabilities: declared by brokers, checked against namespaces when the hub starts."""

from __future__ import annotations

import pytest
from anyio.abc import TaskGroup

from hubbub import (
    Broker,
    Capability,
    Hub,
    InvalidMessage,
    MemoryBroker,
    Namespace,
    Publication,
    UnsupportedCapability,
)
from hubbub.brokers import HistoryOptions, Idempotency, LossHandler, PublicationHandler
from hubbub.brokers.redis import RedisBroker
from hubbub.testing import CommandFailed, HubTester
from hubbub.testing.contract import BrokerContract, BrokerFactory, BrokerUnderTest

NO_HISTORY = Namespace(name="personal")
"""Personal channels without history (they keep 100 notifications by default)."""


class PubSubOnly(Broker):
    """A user-written broker in a dozen lines: pub/sub within one process, nothing else."""

    capabilities: frozenset[Capability] = frozenset()

    def __init__(self) -> None:
        self.handler: PublicationHandler | None = None
        self.channels: set[str] = set()
        self.started = 0

    async def start(
        self, handler: PublicationHandler, lost: LossHandler, task_group: TaskGroup | None = None
    ) -> None:
        if self.handler is not None:
            raise RuntimeError("already started")
        self.started += 1
        self.handler = handler

    async def stop(self) -> None:
        self.handler = None
        self.channels.clear()

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        if self.handler is None:
            raise RuntimeError("not started")
        if publication.channel in self.channels:
            self.handler(publication)
        return publication

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)


class TestPubSubOnlyBroker(BrokerContract):
    """The pub/sub part of the contract passes; history, presence, idempotency are skipped."""

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Pub/sub-only brokers (no clock: nothing of theirs expires)."""

        async def make() -> BrokerUnderTest:
            async def advance(seconds: float) -> None:
                return None

            return BrokerUnderTest(PubSubOnly(), advance)

        return make


pytestmark = pytest.mark.anyio


# -- declarations -----------------------------------------------------------------------------


def test_shipped_brokers_declare_everything() -> None:
    """The memory and Redis brokers declare history, presence and idempotency."""
    everything = {Capability.HISTORY, Capability.PRESENCE, Capability.IDEMPOTENCY}
    assert MemoryBroker().capabilities == everything
    assert RedisBroker.capabilities == everything


def test_a_broker_declares_everything_by_default() -> None:
    """A broker written before capabilities existed keeps working: it claims everything."""

    class Legacy(PubSubOnly):
        capabilities = Broker.capabilities

    assert Legacy().capabilities == frozenset(Capability)


def test_capabilities_compare_as_strings() -> None:
    """Capabilities are strings on the wire of configuration: ``"history" in caps`` works."""
    assert "history" in MemoryBroker().capabilities
    assert Capability("presence") is Capability.PRESENCE


async def test_optional_methods_say_what_is_missing(anyio_backend: str) -> None:
    """A broker without history or presence raises NotImplementedError naming itself."""
    broker = PubSubOnly()
    with pytest.raises(NotImplementedError, match="PubSubOnly keeps no history"):
        await broker.history("a")
    with pytest.raises(NotImplementedError, match="PubSubOnly keeps no presence"):
        await broker.presence("a")
    with pytest.raises(NotImplementedError, match="keeps no presence"):
        await broker.presence_remove("a", "c")


# -- the start-time check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "capability", "words"),
    [
        (Namespace(name="news", history_size=10), Capability.HISTORY, "history_size=10"),
        (Namespace(name="room", presence=True), Capability.PRESENCE, "presence=True"),
        (Namespace(history_size=5), Capability.HISTORY, "the default namespace"),
    ],
)
async def test_namespace_asking_too_much_is_refused_at_start(
    anyio_backend: str, namespace: Namespace, capability: Capability, words: str
) -> None:
    """``async with hub`` raises UnsupportedCapability naming namespace and capability."""
    broker = PubSubOnly()
    hub = Hub(broker=broker, namespaces=[Namespace(name="ok"), namespace], personal=NO_HISTORY)
    with pytest.raises(UnsupportedCapability) as refused:
        async with hub:
            pass  # pragma: no cover - the hub does not start
    error = refused.value
    assert isinstance(error, ValueError)
    assert error.namespace == namespace.name and error.capability is capability
    message = str(error)
    assert words in message and repr(capability.value) in message and "PubSubOnly" in message
    assert hub.state == "stopped" and broker.started == 0


async def test_default_personal_channels_need_history(anyio_backend: str) -> None:
    """The default personal namespace keeps history, so a pub/sub broker needs it turned off."""
    hub = Hub(broker=PubSubOnly())
    with pytest.raises(UnsupportedCapability, match="personal channels") as refused:
        async with hub:
            pass  # pragma: no cover - the hub does not start
    assert refused.value.namespace == "personal"
    assert refused.value.capability is Capability.HISTORY


async def test_the_check_runs_at_start_not_construction(anyio_backend: str) -> None:
    """A hub is built with any broker; the one it has when it starts is checked."""
    hub = Hub(broker=PubSubOnly(), namespaces=[Namespace(history_size=3)])
    with pytest.raises(UnsupportedCapability):
        await hub.__aenter__()
    hub.broker = MemoryBroker()
    async with hub:
        assert await hub.publish("a", 1) is not None


# -- a hub on a pub/sub-only broker -----------------------------------------------------------


async def test_pub_sub_only_broker_serves_a_hub(anyio_backend: str) -> None:
    """With namespaces that ask for nothing more, messages flow; they carry no offsets."""
    hub = Hub(broker=PubSubOnly(), personal=NO_HISTORY, anonymous=True)
    async with HubTester(hub) as tester:
        ann, bob = await tester.connect("ann"), await tester.connect("bob")
        reply = await ann.subscribe("lobby")
        assert "offset" not in reply and "epoch" not in reply
        assert await bob.publish("lobby", {"n": 1}) == {"type": "ack", "id": 1}
        message = await ann.receive()
        assert message["data"] == {"n": 1} and "offset" not in message
        assert await hub.publish("lobby", 2) is None
        assert (await ann.receive())["data"] == 2
        with pytest.raises(CommandFailed) as refused:
            await ann.presence("lobby")
        assert refused.value.code == 403  # the broker is never asked
        page = await ann.history("lobby")
        assert page["publications"] == [] and "offset" not in page
        assert not ann.closed


async def test_idempotency_key_is_refused_without_the_capability(anyio_backend: str) -> None:
    """A publish carrying an idempotency key is answered 400, not silently published twice."""
    hub = Hub(broker=PubSubOnly(), personal=NO_HISTORY, anonymous=True)
    async with HubTester(hub) as tester:
        ann = await tester.connect("ann")
        await ann.subscribe("lobby")
        with pytest.raises(CommandFailed) as refused:
            await ann.publish("lobby", "once", idempotency_key="k1")
        assert refused.value.code == 400 and "idempotency_key" in refused.value.reason
        with pytest.raises(InvalidMessage, match="idempotency_key"):
            await hub.publish("lobby", "once", idempotency_key="k1")
        await ann.receive_nothing()
        await ann.publish("lobby", "plain")
        assert (await ann.receive())["data"] == "plain"
