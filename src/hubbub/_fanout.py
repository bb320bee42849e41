"""Fan-out and stream order: the one owner of offsets, floors and gap repair.

The broker hands every publication to :meth:`Fanout.dispatch`. Publications of
a stream must reach subscribers in offset order without holes: a duplicate
is dropped; a hole (the broker's link lost some) holds everything newer while
the missing ones are read from history (:meth:`Fanout.lost` and the repair),
and subscribers this node cannot keep whole are closed with 1013 so they
recover by themselves. Brokers only report that they *may* have lost
publications; they never repair.

Fan-out is the product, so its path is short: one encode per codec in use,
then per local subscriber either one write of a frame built once for all
(:meth:`Connection.enqueue_shared`, when the server offers ``hubbub.frames``
and the subscriber's socket can take it now) or a non-blocking put into its
bounded queue (:meth:`Connection.enqueue`, which applies the slow-consumer
policy instead of waiting). Nothing on that path awaits, takes a lock, encodes
or frames per subscriber.
A subscriber that just joined has a *floor* (its newest position already
sent), so a publication the broker hands over late does not reach it twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from msgspec import Raw

from ._brokercall import BrokerCalls, Spawn
from ._errors import HubbubError
from ._frames import SharedFrame, SharedRun
from ._recovery import Joined
from ._registry import Channel
from ._stats import HubStats
from ._tracing import Tracing
from .brokers import Publication
from .messages import CODECS_BY_NAME, Codec, Join, Leave, Message, Position
from .namespaces import Namespace
from .protocol import TRY_AGAIN_LATER, Close

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["CODECS", "Fanout", "encode", "encode_bytes", "message", "set_floor"]

logger = logging.getLogger("hubbub")

CODECS: Final = CODECS_BY_NAME
"""Codecs by name (``Publication.codec``): ``hubbub.messages.CODECS_BY_NAME``."""


class Fanout:
    """Takes publications from the broker and hands them to local subscribers, in order."""

    __slots__ = (
        "_batch",
        "_calls",
        "_control",
        "_flushing",
        "_node",
        "_scheduled",
        "_spawn",
        "channels",
        "flush_follows",
        "stats",
        "tracing",
    )

    def __init__(
        self,
        channels: dict[str, Channel],
        stats: HubStats,
        calls: BrokerCalls,
        spawn: Spawn,
        control: Callable[[Publication], None],
        tracing: Tracing | None,
        node: str,
    ) -> None:
        self.channels = channels
        self.stats = stats
        self.tracing = tracing
        self._calls = calls
        self._spawn = spawn
        self._control = control
        self._node = node
        # Publications dispatched and not yet delivered (_defer), oldest first: the
        # channel, its consecutive publications, and whether more may join them.
        self._batch: deque[tuple[Channel, list[Publication], bool]] = deque()
        self._flushing = False
        # Set by a memory-broker publish whose caller flushes when it is done
        # (BrokerCalls.publish_now): nothing to schedule meanwhile.
        self.flush_follows = False
        # The loop whose next turn will flush (``_end_turn`` is scheduled there).
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def dispatch(self, publication: Publication) -> None:
        """Take one publication from the broker: check its offset, then fan it out.

        Publications of a stream must arrive in offset order without holes. A
        duplicate is dropped; a hole (the broker's link lost some) is repaired
        from history before anything newer is delivered (``_repair``).

        Fan-out itself waits for the end of the batch (:meth:`_defer`).
        """
        entry = self.channels.get(publication.channel)
        if entry is None:
            if publication.kind == "control":
                self._control(publication)
            return
        offset = publication.offset
        if offset is not None and publication.kind == "message":
            if entry.held is not None:
                entry.held.append(publication)
                return
            if publication.epoch == entry.last_epoch and offset != entry.last_offset + 1:
                if offset <= entry.last_offset:
                    return
                self._start_repair(publication.channel, entry, [publication])
                return
            entry.last_offset, entry.last_epoch = offset, publication.epoch
        if self.tracing is None:
            self._defer(entry, publication)
            return
        self.flush()
        self._traced(entry, publication)

    def _traced(self, entry: Channel, publication: Publication) -> None:
        tracing = self.tracing
        assert tracing is not None
        attributes: dict[str, Any] = {"hubbub.kind": publication.kind}
        if publication.offset is not None:
            attributes["hubbub.offset"] = publication.offset
        with tracing.fan_out(publication.channel, entry.namespace.name, attributes) as span:
            before = self.stats.deliveries
            self.fan_out(entry, publication)
            span.set_attribute("hubbub.subscribers", self.stats.deliveries - before)

    def _defer(self, entry: Channel, publication: Publication) -> None:
        """Batch ``publication`` for :meth:`flush`: the end of a read, or of the loop's turn.

        Consecutive publications of one channel become one :class:`SharedRun`:
        each subscriber is visited once and written to once for all of them,
        rather than once per publication (at 20,000 subscribers each visit is
        cache misses, and each write a system call). A publication that some
        subscribers must not get (``exclude``, a joiner's floor) starts its own
        run and is delivered at once, after what was batched before it. Order
        holds: runs are delivered in dispatch order, and every change to a
        channel's subscribers (:meth:`hubbub._registry.Registry.attach`,
        ``detach``) flushes first, so a run reaches exactly the subscribers the
        channel had when it was dispatched.
        """
        _buffer_for_joiners(entry, publication)
        if not entry.subscribers:
            return
        batch = self._batch
        if publication.exclude is not None or entry.floors:
            batch.append((entry, [publication], False))
            self.flush()
            return
        if batch:
            last = batch[-1]
            if last[0] is entry and last[2]:
                last[1].append(publication)
                return
        batch.append((entry, [publication], True))
        if self.flush_follows:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): no turn to wait for
            self.flush()
            return
        # The loop, not a flag: a hub run again on a new loop must not wait for a
        # callback the old one never ran.
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        """Deliver what :meth:`_defer` batched, in order.

        Called at the end of a client's read (the server's direct reader), at
        the end of the loop's turn, before a channel's subscribers change, and
        before any publication delivered at once. Not re-entered: a delivery
        that closes a slow consumer (which leaves its channels, so flushes)
        leaves what is batched to this loop, which delivers it next, in order.
        """
        self.flush_follows = False
        batch = self._batch
        if self._flushing or not batch:
            return
        self._flushing = True
        try:
            while batch:
                entry, publications, _ = batch.popleft()
                try:
                    if len(publications) == 1:
                        self._deliver(entry, publications[0])
                    else:
                        self._deliver_run(entry, publications)
                except Exception:  # a bug; the rest of the batch must still go out
                    logger.exception("fan-out failed", extra={"event": "fanout_failed"})
        finally:
            self._flushing = False

    def fan_out(self, entry: Channel, publication: Publication) -> None:
        """Hand one publication to every local subscriber of its channel, now."""
        self.flush()
        _buffer_for_joiners(entry, publication)
        if entry.subscribers:
            self._deliver(entry, publication)

    def _deliver(self, entry: Channel, publication: Publication) -> None:
        source = CODECS[publication.codec]
        droppable = entry.namespace.droppable
        exclude = publication.exclude
        frames: dict[Codec, SharedFrame] = {}
        delivered = 0
        skip = _below_floor(entry.floors, publication) if entry.floors else None
        # A copy: a full queue closes its connection, which detaches it from this dict.
        targets = tuple(entry.subscribers)
        for connection in targets:
            if exclude is not None and connection.id == exclude:
                continue
            if skip and connection in skip:
                continue
            codec = connection.codec
            shared = frames.get(codec)
            if shared is None:
                shared = frames[codec] = SharedFrame(
                    encode_bytes(publication, source, codec), codec.binary
                )
            connection.enqueue_shared(shared, droppable)
            delivered += 1
        # Counted once per publication, not per delivery: the sizes are known per codec.
        stats = self.stats
        stats.deliveries += delivered
        sent = stats.sent
        sent[publication.kind] = sent.get(publication.kind, 0) + delivered
        if len(frames) == 1:
            stats.bytes_out += next(iter(frames.values())).size * delivered
        elif frames:  # clients of both codecs on one channel: the rare case
            stats.bytes_out += sum(
                frames[c.codec].size
                for c in targets
                if c.id != exclude and not (skip and c in skip)
            )

    def _deliver_run(self, entry: Channel, publications: list[Publication]) -> None:
        """Several publications that every subscriber gets (no ``exclude``, no floor)."""
        droppable = entry.namespace.droppable
        runs: dict[Codec, SharedRun] = {}
        targets = tuple(entry.subscribers)
        for connection in targets:
            codec = connection.codec
            run = runs.get(codec)
            if run is None:
                run = runs[codec] = SharedRun(
                    [
                        SharedFrame(
                            encode_bytes(publication, CODECS[publication.codec], codec),
                            codec.binary,
                        )
                        for publication in publications
                    ]
                )
            connection.enqueue_run(run, droppable)
        delivered = len(targets)
        stats = self.stats
        stats.deliveries += delivered * len(publications)
        sent = stats.sent
        for publication in publications:
            sent[publication.kind] = sent.get(publication.kind, 0) + delivered
        if len(runs) == 1:
            stats.bytes_out += next(iter(runs.values())).size * delivered
        else:
            stats.bytes_out += sum(runs[c.codec].size for c in targets)

    def deliver_to(
        self, connection: Connection, publications: list[Publication], namespace: Namespace
    ) -> None:
        """Hand publications to one subscriber (what arrived while it joined)."""
        codec = connection.codec
        stats = self.stats
        for publication in publications:
            if publication.exclude != connection.id:
                frame, size = encode(publication, CODECS[publication.codec], codec)
                connection.enqueue(frame, size, namespace.droppable)
                stats.sent[publication.kind] = stats.sent.get(publication.kind, 0) + 1
                stats.bytes_out += size

    def lost(self, channels: Collection[str] | None) -> None:
        """The broker may have lost publications (its link dropped): repair from history.

        For every channel with history this node compares the stream with the
        last offset it delivered and delivers what it missed itself, in order;
        clients it cannot keep whole are closed with 1013 so they recover.
        Channels without history are at-most-once: nothing to do.
        """
        self.stats.broker_losses += 1
        logger.warning(
            "the broker may have lost publications (its link dropped)",
            extra={
                "event": "broker_lost",
                "node": self._node,
                "channels": None if channels is None else len(channels),
            },
        )
        names = self.channels.keys() if channels is None else channels
        for name in list(names):
            entry = self.channels.get(name)
            if entry is None or not entry.namespace.history_size or entry.held is not None:
                continue
            if entry.last_epoch is None:
                continue  # nothing delivered yet: joiners read their own positions
            self._start_repair(name, entry, [])

    def _start_repair(self, channel: str, entry: Channel, held: list[Publication]) -> None:
        entry.held = held
        self._spawn(partial(self._repair, channel, entry))

    async def _repair(self, channel: str, entry: Channel) -> None:
        """Fill this node's hole in a stream from history, then release what was held.

        A dropped link starts one repair per channel with history; they take
        turns (``BACKGROUND_BROKER_CALLS``), holding live publications meanwhile.
        """
        async with self._calls.limiter():
            await self._repair_now(channel, entry)

    async def _repair_now(self, channel: str, entry: Channel) -> None:
        for _ in range(3):
            since = Position(offset=entry.last_offset, epoch=entry.last_epoch or "")
            try:
                page = await self._calls.history(channel, since=since)
            except HubbubError as exc:
                self._give_up(channel, entry, f"stream unreadable ({exc.reason})")
                return
            expected = since.offset + 1
            for publication in page.publications:
                if publication.offset != expected:
                    self._give_up(channel, entry, "history no longer covers the gap")
                    return
                entry.last_offset = expected
                self.fan_out(entry, publication)
                expected += 1
            held, entry.held = entry.held or [], []
            for publication in sorted(held, key=lambda p: p.offset or 0):
                if publication.epoch != entry.last_epoch:
                    entry.last_offset, entry.last_epoch = publication.offset or 0, publication.epoch
                    self.fan_out(entry, publication)
                elif (publication.offset or 0) == entry.last_offset + 1:
                    entry.last_offset += 1
                    self.fan_out(entry, publication)
                elif (publication.offset or 0) > entry.last_offset:
                    entry.held.append(publication)  # still a hole before it: read again
            if not entry.held:
                entry.held = None
                self.stats.gaps_repaired += 1
                logger.info("repaired a gap in %r from history", channel)
                return
        self._give_up(channel, entry, "the gap did not close")

    def _give_up(self, channel: str, entry: Channel, why: str) -> None:
        """Close the channel's local subscribers with 1013 so they recover by themselves."""
        logger.warning("closing subscribers of %r: %s", channel, why)
        for connection in tuple(entry.subscribers):
            connection.close(Close(TRY_AGAIN_LATER, "publications were lost; recover"))
        held = entry.held or []
        entry.held = None
        if held:
            newest = max(held, key=lambda p: p.offset or 0)
            entry.last_offset, entry.last_epoch = newest.offset or 0, newest.epoch


def _buffer_for_joiners(entry: Channel, publication: Publication) -> None:
    """Keep a message for the connections still joining the channel (merged by ``_join``)."""
    if entry.recovering and publication.kind == "message":
        for buffered in entry.recovering.values():
            buffered.append(publication)


def set_floor(entry: Channel, connection: Connection, joined: Joined) -> None:
    """Note the newest position a joining subscriber has, so nothing older reaches it again."""
    epoch = joined.position.epoch
    offsets = [p.offset for p in joined.live if p.epoch == epoch and p.offset is not None]
    entry.floors[connection] = Position(offset=max([joined.position.offset, *offsets]), epoch=epoch)


def _below_floor(floors: dict[Connection, Position], publication: Publication) -> set[Connection]:
    """Connections that already have ``publication``; floors it passes are cleared."""
    if publication.kind != "message":
        return set()
    skip = set()
    for connection, floor in list(floors.items()):
        if publication.epoch == floor.epoch and (publication.offset or 0) <= floor.offset:
            skip.add(connection)
        else:
            del floors[connection]
    return skip


def message(publication: Publication, codec: Codec) -> Message:
    """The ``message`` a publication is in ``codec``."""
    source = CODECS[publication.codec]
    data = publication.data if codec is source else source.convert(publication.data, codec)
    return Message(
        channel=publication.channel,
        data=Raw(data),
        ts=publication.ts,
        offset=publication.offset,
        epoch=publication.epoch,
        sender=publication.sender,
    )


def encode(publication: Publication, source: Codec, codec: Codec) -> tuple[str | bytes, int]:
    """A publication's frame in ``codec`` (text for a text codec) and its size in bytes."""
    raw = encode_bytes(publication, source, codec)
    return (raw if codec.binary else raw.decode(), len(raw))


def encode_bytes(publication: Publication, source: Codec, codec: Codec) -> bytes:
    kind = publication.kind
    if kind == "message":
        data = publication.data if codec is source else source.convert(publication.data, codec)
        event: Message | Join | Leave = Message(
            channel=publication.channel,
            data=Raw(data),
            ts=publication.ts,
            offset=publication.offset,
            epoch=publication.epoch,
            sender=publication.sender,
        )
    else:
        who = publication.sender
        assert who is not None
        kind_of = Join if kind == "join" else Leave
        event = kind_of(
            channel=publication.channel,
            user=who.user,
            client=who.client,
            name=who.name,
            info=who.info,
        )
    return codec.encode_bytes(event)
