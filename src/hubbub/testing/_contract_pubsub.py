"""The broker contract, part one: capabilities, offsets and epochs, delivery, lifecycle."""

from __future__ import annotations

import secrets
from typing import ClassVar

import anyio
import pytest
from anyio.lowlevel import checkpoint

from hubbub.brokers import Broker, Capability, Publication
from hubbub.messages import ClientInfo, Position

from ._contract_support import (
    BrokerFactory,
    Recorder,
    RunningBroker,
    data_of,
    default_history,
    offsets,
    publication,
    requires,
)

__all__ = ["PubSubContract"]


class PubSubContract:
    """Contract tests every broker passes, whatever its capabilities (part of
    :class:`~hubbub.testing.contract.BrokerContract`)."""

    TTL: ClassVar[float]
    LIFECYCLE_ERROR: ClassVar[type[BaseException]]

    # -- capabilities ------------------------------------------------------------------------

    async def test_capabilities_are_declared_and_implemented(self, broker: RunningBroker) -> None:
        """``capabilities`` is a frozenset of ``Capability``; each one declared is implemented."""
        declared = broker.broker.capabilities
        assert isinstance(declared, frozenset)
        assert all(isinstance(capability, Capability) for capability in declared)
        kind = type(broker.broker)
        if Capability.HISTORY in declared:
            assert kind.history is not Broker.history, "declares history, inherits no history()"
        if Capability.PRESENCE in declared:
            for method in ("presence_set", "presence_remove", "presence"):
                assert getattr(kind, method) is not getattr(Broker, method), method

    # -- offsets and epochs ------------------------------------------------------------------

    @requires(Capability.HISTORY)
    async def test_offsets_start_at_one_and_grow_by_one(self, broker: RunningBroker) -> None:
        """A channel's publications get offsets 1, 2, 3, ... in publish order."""
        published = await broker.publish_many(broker.channel("a"), 5)
        assert offsets(published) == [1, 2, 3, 4, 5]

    @requires(Capability.HISTORY)
    async def test_offsets_are_independent_per_channel(self, broker: RunningBroker) -> None:
        """Each channel counts its own offsets from 1, whatever other channels do."""
        a, b = broker.channel("a"), broker.channel("b")
        got = [(await broker.publish(ch)).offset for ch in (a, a, b, a, b, b, b)]
        assert got == [1, 2, 1, 3, 2, 3, 4]

    @requires(Capability.HISTORY)
    async def test_epoch_is_stable_while_the_stream_lives(self, broker: RunningBroker) -> None:
        """Every publication of a living stream carries the same, non-empty epoch."""
        published = await broker.publish_many(broker.channel("a"), 10)
        epochs = {p.epoch for p in published}
        assert len(epochs) == 1 and all(epochs)
        page = await broker.broker.history(broker.channel("a"), limit=0)
        assert page.position == Position(offset=10, epoch=published[0].epoch or "")

    @requires(Capability.HISTORY)
    async def test_streams_of_different_channels_have_their_own_epochs(
        self, broker: RunningBroker
    ) -> None:
        """Two channels' streams never share an epoch (epochs name one stream)."""
        a = await broker.publish(broker.channel("a"))
        b = await broker.publish(broker.channel("b"))
        assert a.epoch and b.epoch and a.epoch != b.epoch

    async def test_channel_without_history_gets_no_position(self, broker: RunningBroker) -> None:
        """Publishing without history options assigns neither offset nor epoch."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        published = await broker.publish(channel, history=None)
        assert published.offset is None and published.epoch is None
        [delivered] = await broker.recorder.wait_for(channel, 1)
        assert delivered.offset is None and delivered.epoch is None

    @requires(Capability.HISTORY)
    async def test_publish_without_history_stores_nothing(self, broker: RunningBroker) -> None:
        """Publications without history options never appear in the channel's history."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 3, history=None)
        page = await broker.broker.history(channel)
        assert page.publications == [] and page.position.offset == 0

    @requires(Capability.HISTORY)
    async def test_concurrent_publishers_get_consecutive_offsets(
        self, broker: RunningBroker
    ) -> None:
        """Publishes racing from several tasks get offsets 1..n, delivered in offset order."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        returned: list[Publication] = []

        async def publisher(n: int) -> None:
            for i in range(25):
                returned.append(await broker.publish(channel, f"[{n},{i}]".encode()))
                await checkpoint()

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(publisher, n)
        assert sorted(offsets(returned)) == list(range(1, 101))  # type: ignore[type-var]
        assert len({p.epoch for p in returned}) == 1
        delivered = await broker.recorder.wait_for(channel, 100)
        assert offsets(delivered) == list(range(1, 101))
        by_offset = {p.offset: p.data for p in returned}
        assert all(by_offset[p.offset] == p.data for p in delivered)

    # -- delivery ----------------------------------------------------------------------------

    async def test_publication_reaches_the_handler_as_returned(self, broker: RunningBroker) -> None:
        """The handler gets the publication with its fields intact and its position set."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        sender = ClientInfo(user="u1", client="n.1", name="Ann", info={"k": [1, 2]})
        published = await broker.publish(
            channel, b'{"a":1}', sender=sender, exclude="n.1", codec="json"
        )
        [delivered] = await broker.recorder.wait_for(channel, 1)
        assert delivered == published
        assert delivered.data == b'{"a":1}' and delivered.codec == "json"
        assert delivered.sender == sender and delivered.exclude == "n.1"
        assert delivered.kind == "message"
        if broker.keeps_history:
            assert delivered.offset == 1 and delivered.epoch

    async def test_msgpack_payload_passes_through_untouched(self, broker: RunningBroker) -> None:
        """A payload in another codec is carried as opaque bytes, never decoded."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        payload = bytes(range(256))
        await broker.publish(channel, payload, codec="msgpack")
        [delivered] = await broker.recorder.wait_for(channel, 1)
        assert delivered.data == payload and delivered.codec == "msgpack"
        if broker.keeps_history:
            [kept] = (await broker.broker.history(channel)).publications
            assert kept.data == payload and kept.codec == "msgpack"

    async def test_only_subscribed_channels_are_delivered(self, broker: RunningBroker) -> None:
        """Publications of channels the node did not subscribe to never reach the handler."""
        wanted, other = broker.channel("wanted"), broker.channel("other")
        await broker.broker.subscribe(wanted)
        await broker.publish(other)
        await broker.publish(wanted, b'"wanted"')
        await broker.publish(other, history=None)
        await broker.settle()
        assert broker.recorder.on(other) == []
        assert data_of(broker.recorder.on(wanted)) == [b'"wanted"']

    async def test_delivered_in_order_exactly_once(self, broker: RunningBroker) -> None:
        """Every publication of a subscribed channel is delivered once, in offset order."""
        a, b = broker.channel("a"), broker.channel("b")
        await broker.broker.subscribe(a)
        await broker.broker.subscribe(b)
        for n in range(50):
            await broker.publish(a, str(n).encode())
            await broker.publish(b, str(n).encode())
        await broker.settle()
        expected = [str(n).encode() for n in range(50)]
        assert data_of(broker.recorder.on(a)) == data_of(broker.recorder.on(b)) == expected
        if broker.keeps_history:
            assert offsets(broker.recorder.on(a)) == list(range(1, 51))
            assert offsets(broker.recorder.on(b)) == list(range(1, 51))

    async def test_unsubscribe_stops_delivery(self, broker: RunningBroker) -> None:
        """After unsubscribe, the channel's publications no longer reach the handler."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        await broker.publish(channel, b'"first"')
        await broker.recorder.wait_for(channel, 1)
        await broker.broker.unsubscribe(channel)
        await broker.publish_many(channel, 3)
        await broker.settle()
        assert data_of(broker.recorder.on(channel)) == [b'"first"']

    async def test_subscribe_again_resumes_delivery(self, broker: RunningBroker) -> None:
        """A channel subscribed again is delivered again, offsets continuing the stream."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        await broker.broker.unsubscribe(channel)
        await broker.publish(channel, b'"missed"')
        await broker.broker.subscribe(channel)
        await broker.publish(channel, b'"seen"')
        await broker.settle()
        assert data_of(broker.recorder.on(channel)) == [b'"seen"']
        if broker.keeps_history:
            assert offsets(broker.recorder.on(channel)) == [2]

    async def test_unsubscribe_of_a_channel_not_subscribed_is_harmless(
        self, broker: RunningBroker
    ) -> None:
        """Unsubscribing a channel the node never subscribed to raises nothing."""
        channel = broker.channel("never")
        await broker.broker.unsubscribe(channel)
        await broker.publish(channel)
        await broker.settle()
        assert broker.recorder.on(channel) == []

    async def test_join_and_leave_pass_through_and_are_never_stored(
        self, broker: RunningBroker
    ) -> None:
        """Presence events are delivered in order among messages, without position or storage."""
        channel = broker.channel("room")
        await broker.broker.subscribe(channel)
        who = ClientInfo(user="u1", client="n.7", name="Ann")
        await broker.publish(channel, b'"m1"')
        joined = await broker.publish(channel, b"", history=None, kind="join", sender=who)
        await broker.publish(channel, b'"m2"')
        left = await broker.publish(channel, b"", history=None, kind="leave", sender=who)
        assert joined.offset is None and joined.epoch is None and joined.kind == "join"
        assert left.offset is None and left.epoch is None and left.kind == "leave"
        delivered = await broker.recorder.wait_for(channel, 4)
        assert [(p.kind, p.data) for p in delivered] == [
            ("message", b'"m1"'),
            ("join", b""),
            ("message", b'"m2"'),
            ("leave", b""),
        ]
        assert delivered[1].sender == who and delivered[3].sender == who
        if not broker.keeps_history:
            return
        assert offsets(delivered) == [1, None, 2, None]
        page = await broker.broker.history(channel)
        assert [(p.kind, p.data) for p in page.publications] == [
            ("message", b'"m1"'),
            ("message", b'"m2"'),
        ]
        assert page.position.offset == 2

    async def test_a_healthy_broker_reports_no_loss(self, broker: RunningBroker) -> None:
        """Nothing is reported lost while the backend works."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        await broker.publish_many(channel, 20)
        await broker.settle()
        assert broker.recorder.lost == []
        assert await broker.broker.ready() is True

    # -- lifecycle ---------------------------------------------------------------------------

    async def test_publish_before_start_raises(self, make_broker: BrokerFactory) -> None:
        """A broker that was not started refuses to publish."""
        built = await make_broker()
        with pytest.raises(self.LIFECYCLE_ERROR):
            await built.broker.publish(
                publication("contract-unstarted"), default_history(built.broker)
            )

    async def test_start_twice_raises(self, make_broker: BrokerFactory) -> None:
        """Starting a started broker raises; the broker keeps working."""
        built = await make_broker()
        recorder = Recorder()
        async with built.broker.run(recorder.handler, recorder.on_lost):
            with pytest.raises(self.LIFECYCLE_ERROR):
                async with built.broker.run(recorder.handler, recorder.on_lost):
                    pass  # pragma: no cover - never entered
            channel = f"contract-{secrets.token_hex(4)}-a"
            await built.broker.subscribe(channel)
            await built.broker.publish(publication(channel), default_history(built.broker))
            await recorder.wait_for(channel, 1)

    async def test_restart_after_stop(self, make_broker: BrokerFactory) -> None:
        """A stopped broker can be started again and delivers to its new handler
        (used on its own, through :meth:`Broker.run`)."""
        built = await make_broker()
        first, second = Recorder(), Recorder()
        channel = f"contract-{secrets.token_hex(4)}-a"
        async with built.broker.run(first.handler, first.on_lost):
            await built.broker.subscribe(channel)
            await built.broker.publish(publication(channel), default_history(built.broker))
            await first.wait_for(channel, 1)
        async with built.broker.run(second.handler, second.on_lost):
            await built.broker.subscribe(channel)
            await built.broker.publish(publication(channel), default_history(built.broker))
            await second.wait_for(channel, 1)
            assert len(first.on(channel)) == 1
