"""The broker contract: one pytest suite that every :class:`hubbub.brokers.Broker` must pass.

This module needs pytest (and anyio's pytest plugin, which anyio installs);
hubbub itself does not. A broker's test module runs the suite by subclassing
:class:`BrokerContract` and providing one fixture, ``make_broker``: an async
factory that builds a new, not yet started broker together with a way to move
that broker's clock forward (``advance(seconds)``)::

    class TestMyBroker(BrokerContract):
        @pytest.fixture
        def make_broker(self) -> BrokerFactory:
            async def make() -> BrokerUnderTest:
                clock = ManualClock()
                return BrokerUnderTest(MyBroker(clock=clock), clock.advance)

            return make

A broker whose time cannot be faked (a server keeping TTLs itself) makes
``advance`` sleep and may shorten :attr:`BrokerContract.TTL`; a broker that runs
on one event loop only overrides the ``anyio_backend`` fixture (e.g. to return
``"asyncio"``). Every test uses channel names under a fresh random prefix, so
brokers sharing a backend between tests do not see each other's streams.

Delivery may be asynchronous (a broker may hand publications to the handler
from its own reader task after ``publish`` returned): tests wait for what they
expect with a bound, and check that something did *not* arrive by publishing a
marker into another subscribed channel afterwards and waiting for that marker
(which assumes one node receives its channels' publications in publish order
across channels, as over one pub/sub connection).

Capabilities: tests of history, presence and idempotency are skipped for a
broker whose :attr:`~hubbub.brokers.Broker.capabilities` lack them (see
:func:`requires`), and pub/sub tests publish without history options to such a
broker; a broker claiming a capability must pass every test of it. The guide
is ``docs/brokers.md``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, ClassVar, TypeVar

import anyio
import pytest
from anyio.lowlevel import checkpoint

from hubbub import StreamGone
from hubbub.brokers import (
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    Publication,
    PublicationKind,
)
from hubbub.messages import ClientInfo, Position

__all__ = [
    "KEEP",
    "WAIT",
    "BrokerContract",
    "BrokerFactory",
    "BrokerUnderTest",
    "ManualClock",
    "Recorder",
    "RunningBroker",
    "data_of",
    "default_history",
    "offsets",
    "publication",
    "requires",
]

WAIT = 5.0
"""Seconds a test waits for a publication it expects before failing."""

KEEP = HistoryOptions(size=100, ttl=3600.0)
"""History options for tests that do not test expiry: nothing expires during a test."""


_Test = TypeVar("_Test", bound=Callable[..., Any])


def requires(*capabilities: Capability) -> Callable[[_Test], _Test]:
    """Mark a contract test as needing ``capabilities``: skipped for brokers without them."""

    def mark(test: _Test) -> _Test:
        test.hubbub_requires = frozenset(capabilities)  # type: ignore[attr-defined]
        return test

    return mark


def default_history(broker: Broker) -> HistoryOptions | None:
    """:data:`KEEP` for a broker that keeps history, else ``None`` (pub/sub only)."""
    return KEEP if Capability.HISTORY in broker.capabilities else None


class ManualClock:
    """A monotonic clock that moves only when told to: pass it as a broker's ``clock``."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds


@dataclass
class BrokerUnderTest:
    """A new broker, not started yet, and how to move its clock forward."""

    broker: Broker
    advance: Callable[[float], Awaitable[None]]


BrokerFactory = Callable[[], Awaitable[BrokerUnderTest]]
"""What the ``make_broker`` fixture returns: builds one broker per call."""


class Recorder:
    """The hub's side of a broker: records every delivered publication and reported loss."""

    def __init__(self) -> None:
        self.delivered: list[Publication] = []
        self.lost: list[Collection[str] | None] = []
        self._changed = anyio.Event()

    def handler(self, publication: Publication) -> None:
        """The ``PublicationHandler`` given to ``Broker.start``."""
        self.delivered.append(publication)
        self._changed.set()

    def on_lost(self, channels: Collection[str] | None) -> None:
        """The ``LossHandler`` given to ``Broker.start``."""
        self.lost.append(channels)
        self._changed.set()

    def on(self, channel: str) -> list[Publication]:
        """The publications delivered so far for ``channel``, in delivery order."""
        return [p for p in self.delivered if p.channel == channel]

    async def wait_for(self, channel: str, count: int) -> list[Publication]:
        """Wait until ``count`` publications of ``channel`` were delivered; return them all."""
        with anyio.fail_after(WAIT):
            while len(self.on(channel)) < count:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.on(channel)


@dataclass
class RunningBroker:
    """A started broker, what it delivered, and helpers for one contract test."""

    broker: Broker
    recorder: Recorder
    advance: Callable[[float], Awaitable[None]]
    prefix: str = field(default_factory=lambda: f"contract-{secrets.token_hex(4)}-")
    _marks: int = 0

    @property
    def keeps_history(self) -> bool:
        """Whether the broker declares :attr:`Capability.HISTORY`."""
        return Capability.HISTORY in self.broker.capabilities

    def channel(self, name: str) -> str:
        """A channel name unique to this test."""
        return self.prefix + name

    async def publish(
        self,
        channel: str,
        data: bytes = b'"x"',
        history: HistoryOptions | EllipsisType | None = ...,
        idempotency: Idempotency | None = None,
        **fields: Any,
    ) -> Publication:
        """Publish one publication built from ``fields`` (see :func:`publication`).

        ``history`` defaults to :data:`KEEP` where the broker keeps history, else ``None``.
        """
        options = default_history(self.broker) if history is ... else history
        return await self.broker.publish(publication(channel, data, **fields), options, idempotency)

    async def publish_many(
        self, channel: str, count: int, history: HistoryOptions | EllipsisType | None = ...
    ) -> list[Publication]:
        """Publish ``count`` publications one after the other (data ``0``, ``1``, ...)."""
        return [await self.publish(channel, str(n).encode(), history=history) for n in range(count)]

    async def settle(self) -> None:
        """Wait until everything published so far has been delivered (see the module doc)."""
        marker = self.channel("marker")
        if self._marks == 0:
            await self.broker.subscribe(marker)
        self._marks += 1
        await self.publish(marker, history=None)
        await self.recorder.wait_for(marker, self._marks)


def publication(
    channel: str,
    data: bytes = b'"x"',
    *,
    kind: PublicationKind = "message",
    sender: ClientInfo | None = None,
    exclude: str | None = None,
    codec: str = "json",
) -> Publication:
    """A publication as the hub hands it to a broker (no offset or epoch yet)."""
    return Publication(
        channel=channel,
        data=data,
        codec=codec,
        ts=time.time_ns() // 1_000_000,
        sender=sender,
        exclude=exclude,
        kind=kind,
    )


def data_of(publications: list[Publication]) -> list[bytes]:
    """The payloads of publications, in order."""
    return [p.data for p in publications]


def offsets(publications: list[Publication] | HistoryPage) -> list[int | None]:
    """The offsets of publications (or of a history page's publications), in order."""
    if isinstance(publications, HistoryPage):
        publications = publications.publications
    return [p.offset for p in publications]


class BrokerContract:
    """The contract of :class:`hubbub.brokers.Broker`, run against the broker of ``make_broker``.

    Subclass it as ``Test<YourBroker>`` and override the ``make_broker`` fixture.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    TTL: ClassVar[float] = 1.0
    """Seconds used as history TTL, idempotency window and presence lease in expiry tests."""

    LIFECYCLE_ERROR: ClassVar[type[BaseException]] = RuntimeError
    """What the broker raises when started twice or used before :meth:`Broker.start`."""

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Override: an async factory of new, not yet started brokers of the kind under test."""
        raise NotImplementedError("a BrokerContract subclass must provide make_broker")

    @pytest.fixture
    async def broker(
        self, make_broker: BrokerFactory, request: pytest.FixtureRequest
    ) -> AsyncIterator[RunningBroker]:
        """A broker started in a task group, as the hub starts it, with a recorder as its
        handler; stopped (within :data:`WAIT`) after the test.

        Skips the test when the broker lacks a capability it :func:`requires`.
        """
        built = await make_broker()
        needed: frozenset[Capability] = getattr(request.function, "hubbub_requires", frozenset())
        missing = needed - built.broker.capabilities
        if missing:
            pytest.skip(f"the broker does not declare {', '.join(sorted(missing))}")
        recorder = Recorder()
        # Started as the hub starts it: in a task group that owns its background tasks.
        async with anyio.create_task_group() as tg:
            await built.broker.start(recorder.handler, recorder.on_lost, tg)
            try:
                yield RunningBroker(built.broker, recorder, built.advance)
            finally:
                with anyio.fail_after(WAIT):
                    await built.broker.stop()
                tg.cancel_scope.cancel()

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

    # -- history -----------------------------------------------------------------------------

    @requires(Capability.HISTORY)
    async def test_history_without_since_gives_the_newest(self, broker: RunningBroker) -> None:
        """Without ``since``: the newest ``limit`` publications, oldest first."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 10)
        page = await broker.broker.history(channel, limit=3)
        assert offsets(page) == [8, 9, 10]
        assert [p.data for p in page.publications] == [b"7", b"8", b"9"]
        assert page.position.offset == 10

    @requires(Capability.HISTORY)
    async def test_history_without_limit_gives_everything_kept(self, broker: RunningBroker) -> None:
        """Without ``limit``: every kept publication, oldest first."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 7)
        page = await broker.broker.history(channel)
        assert page.publications == published

    @requires(Capability.HISTORY)
    async def test_history_limit_larger_than_the_stream(self, broker: RunningBroker) -> None:
        """A ``limit`` beyond what is kept returns what is kept."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 4)
        assert offsets(await broker.broker.history(channel, limit=50)) == [1, 2, 3, 4]

    @requires(Capability.HISTORY)
    async def test_history_since_gives_the_first_after_it(self, broker: RunningBroker) -> None:
        """With ``since``: the first ``limit`` publications after that offset."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 10)
        since = Position(offset=4, epoch=published[0].epoch or "")
        page = await broker.broker.history(channel, since=since, limit=3)
        assert offsets(page) == [5, 6, 7]
        assert page.position == Position(offset=10, epoch=since.epoch)
        assert offsets(await broker.broker.history(channel, since=since)) == [5, 6, 7, 8, 9, 10]

    @requires(Capability.HISTORY)
    async def test_history_since_zero_gives_from_the_start(self, broker: RunningBroker) -> None:
        """``since`` offset 0 of the stream's epoch reads from its first publication."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 3)
        since = Position(offset=0, epoch=published[0].epoch or "")
        assert offsets(await broker.broker.history(channel, since=since)) == [1, 2, 3]

    @requires(Capability.HISTORY)
    async def test_history_reverse(self, broker: RunningBroker) -> None:
        """``reverse`` returns the same selection newest first, with and without ``since``."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 10)
        epoch = published[0].epoch or ""
        assert offsets(await broker.broker.history(channel, limit=3, reverse=True)) == [10, 9, 8]
        since = Position(offset=4, epoch=epoch)
        page = await broker.broker.history(channel, since=since, limit=3, reverse=True)
        assert offsets(page) == [7, 6, 5]
        assert offsets(await broker.broker.history(channel, reverse=True)) == list(range(10, 0, -1))

    @requires(Capability.HISTORY)
    async def test_history_limit_zero_reads_only_the_position(self, broker: RunningBroker) -> None:
        """``limit=0`` returns no publications but the stream's current position."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 5)
        page = await broker.broker.history(channel, limit=0)
        assert page.publications == []
        assert page.position == Position(offset=5, epoch=published[0].epoch or "")
        since = Position(offset=1, epoch=page.position.epoch)
        assert (await broker.broker.history(channel, since=since, limit=0)).publications == []

    @requires(Capability.HISTORY)
    async def test_history_is_bounded_to_size(self, broker: RunningBroker) -> None:
        """A stream keeps its newest ``size`` publications; the oldest are dropped."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 10, history=HistoryOptions(size=3, ttl=3600.0))
        page = await broker.broker.history(channel)
        assert offsets(page) == [8, 9, 10]
        assert page.position.offset == 10

    @requires(Capability.HISTORY)
    async def test_history_since_before_what_is_kept(self, broker: RunningBroker) -> None:
        """``since`` older than the kept publications returns what is kept (a visible hole)."""
        channel = broker.channel("a")
        published = await broker.publish_many(
            channel, 10, history=HistoryOptions(size=3, ttl=3600.0)
        )
        since = Position(offset=2, epoch=published[0].epoch or "")
        assert offsets(await broker.broker.history(channel, since=since)) == [8, 9, 10]

    @requires(Capability.HISTORY)
    async def test_history_of_a_new_channel_is_an_empty_stream(self, broker: RunningBroker) -> None:
        """A channel never published to reads as an empty page at offset 0 under an epoch."""
        page = await broker.broker.history(broker.channel("new"))
        assert page.publications == []
        assert page.position.offset == 0 and page.position.epoch

    @requires(Capability.HISTORY)
    async def test_epoch_read_before_the_first_publish_continues(
        self, broker: RunningBroker
    ) -> None:
        """The epoch of an empty stream's read is kept: the first publish is offset 1 of it."""
        channel = broker.channel("new")
        first = await broker.broker.history(channel, limit=0)
        again = await broker.broker.history(channel, limit=0)
        assert again.position == first.position == Position(offset=0, epoch=first.position.epoch)
        published = await broker.publish(channel)
        assert published.offset == 1 and published.epoch == first.position.epoch
        page = await broker.broker.history(channel, since=first.position)
        assert page.publications == [published]

    @requires(Capability.HISTORY)
    async def test_history_since_a_foreign_epoch_raises_stream_gone(
        self, broker: RunningBroker
    ) -> None:
        """``since`` naming another epoch than the stream's raises ``StreamGone``."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 3)
        with pytest.raises(StreamGone):
            await broker.broker.history(channel, since=Position(offset=1, epoch="not-an-epoch"))
        with pytest.raises(StreamGone):
            await broker.broker.history(broker.channel("new"), since=Position(offset=0, epoch="x"))

    @requires(Capability.HISTORY)
    async def test_history_since_the_top_or_beyond_is_empty(self, broker: RunningBroker) -> None:
        """``since`` at or after the newest offset returns an empty page at the top."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 3)
        epoch = published[0].epoch or ""
        for offset in (3, 4, 1_000):
            page = await broker.broker.history(channel, since=Position(offset=offset, epoch=epoch))
            assert page.publications == []
            assert page.position == Position(offset=3, epoch=epoch)

    @requires(Capability.HISTORY)
    async def test_history_does_not_change_the_stream(self, broker: RunningBroker) -> None:
        """Reading history twice gives the same page; reads assign no offsets."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 5)
        first = await broker.broker.history(channel, limit=2)
        second = await broker.broker.history(channel, limit=2)
        assert first == second
        assert (await broker.publish(channel)).offset == 6

    # -- expiry and size changes -------------------------------------------------------------

    @requires(Capability.HISTORY)
    async def test_expired_stream_comes_back_under_a_new_epoch(self, broker: RunningBroker) -> None:
        """After ``ttl`` without publications the stream is gone: new epoch, offsets from 1."""
        channel = broker.channel("a")
        options = HistoryOptions(size=10, ttl=self.TTL)
        old = await broker.publish_many(channel, 3, history=options)
        await broker.advance(self.TTL * 1.5)
        fresh = await broker.publish(channel, history=options)
        assert fresh.offset == 1
        assert fresh.epoch and fresh.epoch != old[0].epoch
        page = await broker.broker.history(channel)
        assert page.publications == [fresh]

    @requires(Capability.HISTORY)
    async def test_expired_stream_reads_empty_and_refuses_its_old_epoch(
        self, broker: RunningBroker
    ) -> None:
        """An expired stream reads as empty under a new epoch; its old epoch is gone."""
        channel = broker.channel("a")
        old = await broker.publish_many(channel, 3, history=HistoryOptions(size=10, ttl=self.TTL))
        old_epoch = old[0].epoch or ""
        await broker.advance(self.TTL * 1.5)
        with pytest.raises(StreamGone):
            await broker.broker.history(channel, since=Position(offset=3, epoch=old_epoch))
        page = await broker.broker.history(channel)
        assert page.publications == [] and page.position.offset == 0
        assert page.position.epoch and page.position.epoch != old_epoch
        fresh = await broker.publish(channel, history=HistoryOptions(size=10, ttl=self.TTL))
        assert fresh.offset == 1 and fresh.epoch == page.position.epoch

    @requires(Capability.HISTORY)
    async def test_each_publish_extends_the_stream_ttl(self, broker: RunningBroker) -> None:
        """The TTL runs from the last publication, not the first."""
        channel = broker.channel("a")
        options = HistoryOptions(size=10, ttl=self.TTL)
        first = await broker.publish(channel, history=options)
        for _ in range(3):
            await broker.advance(self.TTL * 0.6)
            published = await broker.publish(channel, history=options)
            assert published.epoch == first.epoch
        assert published.offset == 4
        await broker.advance(self.TTL * 0.6)
        page = await broker.broker.history(channel)
        assert page.position == Position(offset=4, epoch=first.epoch or "")

    @requires(Capability.HISTORY)
    async def test_size_change_keeps_epoch_and_offset(self, broker: RunningBroker) -> None:
        """Publishing with another ``size`` keeps the stream: same epoch, offsets go on."""
        channel = broker.channel("a")
        before = await broker.publish_many(channel, 5, history=HistoryOptions(size=10, ttl=3600.0))
        shrunk = await broker.publish(channel, history=HistoryOptions(size=3, ttl=3600.0))
        assert shrunk.offset == 6 and shrunk.epoch == before[0].epoch
        assert offsets(await broker.broker.history(channel)) == [4, 5, 6]
        grown = await broker.publish(channel, history=HistoryOptions(size=10, ttl=3600.0))
        assert grown.offset == 7 and grown.epoch == before[0].epoch
        kept = offsets(await broker.broker.history(channel))
        assert kept[-4:] == [4, 5, 6, 7]
        assert kept == list(range(7 - len(kept) + 1, 8))

    # -- idempotency -------------------------------------------------------------------------

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotent_retry_is_not_delivered_again(self, broker: RunningBroker) -> None:
        """The same key within the window publishes nothing and answers the first position."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        key = Idempotency(key="k1", window=self.TTL)
        first = await broker.publish(channel, b'"first"', idempotency=key)
        await broker.advance(self.TTL * 0.5)
        retry = await broker.publish(channel, b'"retry"', idempotency=key)
        assert (retry.offset, retry.epoch) == (first.offset, first.epoch) == (1, first.epoch)
        other = await broker.publish(channel, b'"other"')
        assert other.offset == 2
        await broker.settle()
        assert [p.data for p in broker.recorder.on(channel)] == [b'"first"', b'"other"']
        assert offsets(await broker.broker.history(channel)) == [1, 2]

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotency_key_expires_after_its_window(self, broker: RunningBroker) -> None:
        """After the window, the same key publishes anew with a new offset."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        key = Idempotency(key="k1", window=self.TTL)
        first = await broker.publish(channel, b'"first"', idempotency=key)
        await broker.advance(self.TTL * 1.5)
        again = await broker.publish(channel, b'"again"', idempotency=key)
        assert again.offset == 2 and again.epoch == first.epoch and again.data == b'"again"'
        await broker.settle()
        assert [p.data for p in broker.recorder.on(channel)] == [b'"first"', b'"again"']

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotency_keys_are_per_channel(self, broker: RunningBroker) -> None:
        """The same key in two channels publishes in both."""
        a, b = broker.channel("a"), broker.channel("b")
        await broker.broker.subscribe(a)
        await broker.broker.subscribe(b)
        key = Idempotency(key="same", window=self.TTL)
        in_a = await broker.publish(a, b'"a"', idempotency=key)
        in_b = await broker.publish(b, b'"b"', idempotency=key)
        assert in_a.channel == a and in_b.channel == b
        assert in_a.offset == in_b.offset == 1 and in_b.data == b'"b"'
        await broker.settle()
        assert len(broker.recorder.on(a)) == len(broker.recorder.on(b)) == 1

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotency_keys_do_not_collide_across_channels(
        self, broker: RunningBroker
    ) -> None:
        """Channel ``a`` with key ``b:c`` and channel ``a:b`` with key ``c`` are two keys."""
        a, ab = broker.channel("a"), broker.channel("a:b")
        await broker.broker.subscribe(ab)
        one = await broker.publish(a, b'"1"', idempotency=Idempotency(key="b:c", window=60.0))
        two = await broker.publish(ab, b'"2"', idempotency=Idempotency(key="c", window=60.0))
        assert (one.channel, one.offset) == (a, 1) and (two.channel, two.offset) == (ab, 1)
        await broker.settle()
        assert data_of(broker.recorder.on(ab)) == [b'"2"']

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_different_keys_publish_separately(self, broker: RunningBroker) -> None:
        """Distinct keys in one channel are distinct publications."""
        channel = broker.channel("a")
        one = await broker.publish(channel, idempotency=Idempotency(key="1", window=self.TTL))
        two = await broker.publish(channel, idempotency=Idempotency(key="2", window=self.TTL))
        assert (one.offset, two.offset) == (1, 2)

    @requires(Capability.IDEMPOTENCY)
    async def test_idempotency_without_history(self, broker: RunningBroker) -> None:
        """Idempotency works for channels without history too: one delivery per key."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        key = Idempotency(key="k", window=self.TTL)
        first = await broker.publish(channel, b'"first"', history=None, idempotency=key)
        retry = await broker.publish(channel, b'"retry"', history=None, idempotency=key)
        assert first.offset is None and retry.offset is None and retry.epoch is None
        await broker.settle()
        assert [p.data for p in broker.recorder.on(channel)] == [b'"first"']

    # -- presence ----------------------------------------------------------------------------

    @requires(Capability.PRESENCE)
    async def test_presence_set_and_remove(self, broker: RunningBroker) -> None:
        """A lease appears once set, with its info, and disappears once removed."""
        channel = broker.channel("room")
        ann = ClientInfo(user="u1", client="n.1", name="Ann")
        bob = ClientInfo(user="u2", client="n.2", info={"role": "admin"})
        assert dict(await broker.broker.presence(channel)) == {}
        await broker.broker.presence_set(channel, "n.1", ann, 60.0)
        await broker.broker.presence_set(channel, "n.2", bob, 60.0)
        assert dict(await broker.broker.presence(channel)) == {"n.1": ann, "n.2": bob}
        await broker.broker.presence_remove(channel, "n.1")
        assert dict(await broker.broker.presence(channel)) == {"n.2": bob}
        await broker.broker.presence_remove(channel, "n.2")
        assert dict(await broker.broker.presence(channel)) == {}

    @requires(Capability.PRESENCE)
    async def test_presence_set_again_replaces_the_info(self, broker: RunningBroker) -> None:
        """Setting a client's lease again updates its info; the client is listed once."""
        channel = broker.channel("room")
        await broker.broker.presence_set(channel, "n.1", ClientInfo(user="u1", client="n.1"), 60.0)
        renamed = ClientInfo(user="u1", client="n.1", name="Ann")
        await broker.broker.presence_set(channel, "n.1", renamed, 60.0)
        assert dict(await broker.broker.presence(channel)) == {"n.1": renamed}

    @requires(Capability.PRESENCE)
    async def test_presence_lease_expires_without_refresh(self, broker: RunningBroker) -> None:
        """A lease not refreshed within its TTL vanishes on its own."""
        channel = broker.channel("room")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(channel, "n.1", ann, self.TTL)
        await broker.broker.presence_set(
            channel, "n.2", ClientInfo(user="u2", client="n.2"), 3600.0
        )
        await broker.advance(self.TTL * 1.5)
        assert set(await broker.broker.presence(channel)) == {"n.2"}

    @requires(Capability.PRESENCE)
    async def test_presence_refresh_extends_the_lease(self, broker: RunningBroker) -> None:
        """Refreshing before the TTL keeps the client present past the first TTL."""
        channel = broker.channel("room")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(channel, "n.1", ann, self.TTL)
        for _ in range(3):
            await broker.advance(self.TTL * 0.6)
            assert dict(await broker.broker.presence(channel)) == {"n.1": ann}
            await broker.broker.presence_set(channel, "n.1", ann, self.TTL)
        await broker.advance(self.TTL * 1.5)
        assert dict(await broker.broker.presence(channel)) == {}

    @requires(Capability.PRESENCE)
    async def test_presence_is_per_channel(self, broker: RunningBroker) -> None:
        """Leases in one channel do not show, expire or get removed with another's."""
        a, b = broker.channel("a"), broker.channel("b")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(a, "n.1", ann, 3600.0)
        await broker.broker.presence_set(b, "n.1", ann, self.TTL)
        assert dict(await broker.broker.presence(a)) == {"n.1": ann}
        await broker.advance(self.TTL * 1.5)
        assert dict(await broker.broker.presence(a)) == {"n.1": ann}
        assert dict(await broker.broker.presence(b)) == {}
        await broker.broker.presence_set(b, "n.1", ann, 3600.0)
        await broker.broker.presence_remove(b, "n.1")
        assert dict(await broker.broker.presence(a)) == {"n.1": ann}

    @requires(Capability.PRESENCE)
    async def test_presence_of_names_that_extend_each_other(self, broker: RunningBroker) -> None:
        """``x``, ``x:info`` and ``x:info:info`` keep separate presence, whatever the order."""
        x = broker.channel("x")
        ann = ClientInfo(user="u1", client="n.1")
        bob = ClientInfo(user="u2", client="n.2")
        cat = ClientInfo(user="u3", client="n.3")
        await broker.broker.presence_set(x + ":info", "n.1", ann, 60.0)
        await broker.broker.presence_set(x, "n.2", bob, 60.0)
        await broker.broker.presence_set(x + ":info:info", "n.3", cat, 60.0)
        assert dict(await broker.broker.presence(x)) == {"n.2": bob}
        assert dict(await broker.broker.presence(x + ":info")) == {"n.1": ann}
        assert dict(await broker.broker.presence(x + ":info:info")) == {"n.3": cat}

    @requires(Capability.HISTORY)
    async def test_streams_of_names_that_look_like_keys(self, broker: RunningBroker) -> None:
        """Names shaped like another channel's internal keys keep their own streams."""
        a = broker.channel("a")
        names = [a, a + ":meta", "stream:" + a, a + "}:stream", "{" + a]
        for n, name in enumerate(names):
            await broker.publish(name, str(n).encode())
        for n, name in enumerate(names):
            assert data_of((await broker.broker.history(name)).publications) == [str(n).encode()]

    @requires(Capability.PRESENCE)
    async def test_removing_an_absent_client_is_harmless(self, broker: RunningBroker) -> None:
        """Removing a lease that does not exist (or expired) raises nothing and changes nothing."""
        channel = broker.channel("room")
        await broker.broker.presence_remove(broker.channel("empty"), "n.1")
        ann = ClientInfo(user="u1", client="n.1")
        await broker.broker.presence_set(channel, "n.1", ann, 3600.0)
        await broker.broker.presence_remove(channel, "n.9")
        await broker.broker.presence_remove(channel, "n.1")
        await broker.broker.presence_remove(channel, "n.1")
        assert dict(await broker.broker.presence(channel)) == {}

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
