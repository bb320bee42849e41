"""Joining a stream: the one routine every subscription goes through.

A connection joins channels in four ways — the server-side subscriptions of
its ``welcome``, a client's ``subscribe``, a server-side subscribe
(``Hub.subscribe_user``, here or commanded by another node) and an SSE
stream's channels — and all four call :meth:`Joins.join`, which keeps the
subtlest invariant of the hub: while the channel's history and position are
read (and the presence lease is taken), live publications are buffered for
the joining connection; once the reads return, the buffer is merged with
what was read by offset (:func:`hubbub._recovery.join_stream`), and the
connection is attached, its floor set and its reply queued with nothing
awaited in between — so no publication falls between the read and the
attach, and none arrives twice. The callers differ only in what they read
and in the reply they queue.

Replies sized by history (``subscribed`` with a replay, ``history``) are
queued with :meth:`Connection.enqueue_reply`, exempt from the send queue's
limits but bounded by ``REPLY_BACKLOG`` and split at ``REPLY_FRAME_BYTES``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, cast

from msgspec import Raw

from ._brokercall import BrokerCalls
from ._errors import HubbubError, StreamGone
from ._fanout import CODECS, Fanout, encode_bytes, message, set_floor
from ._presence import Presence
from ._recovery import Joined, join_stream
from ._registry import Channel, Registry
from ._stats import HubStats
from .brokers import HistoryPage, Publication
from .limits import Limits
from .messages import Codec, History, Message, Position, Subscribed, Welcome
from .namespaces import Namespace, NamespaceRegistry, personal_channel, validate_channel
from .protocol import TRY_AGAIN_LATER, Close

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "REPLY_BACKLOG",
    "REPLY_FRAME_BYTES",
    "Joins",
    "Stream",
    "at_channel_limit",
    "send_reply",
]

logger = logging.getLogger("hubbub")

REPLY_FRAME_BYTES: Final = 512 * 1024
"""The most replayed publications, in encoded bytes, that one ``subscribed`` carries.

Those beyond follow it at once as ``message`` frames, in offset order and
before anything live, and ``subscribed.offset`` is then the last one it
carries itself; so however full a channel's history, no frame of a join
outgrows the 1 MiB frame limit of common clients (the ``websockets``
library's default, hubbub's own client).
"""

REPLY_BACKLOG: Final = 8
"""Unsent replies a connection may hold, in multiples of ``Limits.queue_bytes`` (8 MiB)."""


@dataclass(slots=True, eq=False)
class Stream:
    """One channel a connection joins: what to read, and what the join read.

    ``recover``: the position a client recovers from; ``last``: a client's
    ``history: n`` (``None``: read only the stream's position).
    """

    channel: str
    namespace: Namespace
    recover: Position | None = None
    last: int | None = None
    page: HistoryPage | None = None
    top: Position | None = None
    leased: bool = False
    buffered: list[Publication] = field(default_factory=list)
    joined: Joined | None = None


Keep = Callable[[Stream], bool]
"""Whether the connection still wants a stream (checked after every await)."""

Reply = Callable[[list[Stream]], bool]
"""Queues the reply for the joined streams; returns whether to announce arrivals."""


def _always(stream: Stream) -> bool:
    return True


class Joins:
    """Subscribes connections to streams: welcome, client and server-side subscribes."""

    __slots__ = ("_calls", "_fanout", "_limits", "_namespaces", "_presence", "_registry", "stats")

    def __init__(
        self,
        registry: Registry,
        presence: Presence,
        fanout: Fanout,
        calls: BrokerCalls,
        namespaces: NamespaceRegistry,
        limits: Limits,
        stats: HubStats,
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._fanout = fanout
        self._calls = calls
        self._namespaces = namespaces
        self._limits = limits
        self.stats = stats

    def set_limits(self, limits: Limits) -> None:
        """The limits told to (and applied for) connections joining from now on."""
        self._limits = limits

    async def join(
        self,
        connection: Connection,
        streams: list[Stream],
        *,
        strict: bool,
        server_side: bool,
        reply: Reply,
        keep: Keep = _always,
    ) -> None:
        """Join ``streams``: read them, merge, attach and ``reply`` at once, then announce.

        ``keep`` is asked again after every await (the connection may have
        closed, or been subscribed meanwhile); a stream it drops is released.
        ``strict``: a failed presence lease fails the join (a client's
        ``subscribe``); otherwise it is logged and renewed later. If anything
        fails or is cancelled, the channels and leases taken are released.
        """
        registry, presence = self._registry, self._presence
        taken: list[tuple[Stream, Channel]] = []
        try:
            for stream in streams:
                entry = await registry.ensure(stream.channel, stream.namespace)
                taken.append((stream, entry))
            for stream, entry in list(taken):
                if not keep(stream):
                    taken.remove((stream, entry))
                    registry.release_if_unused(stream.channel, entry)
            # Live publications are buffered from here to the merge, so the reads and the
            # leases may await: nothing that arrives meanwhile is missed.
            for _, entry in taken:
                entry.recovering[connection] = []
            try:
                for stream, _ in taken:
                    await self._read(stream)
                # Leased before the reply lists them (presence is read-after-subscribe).
                for stream, _ in taken:
                    # Counted as leased before the call: cancelled mid-call (the client
                    # left), the lease may exist at the broker and must be dropped.
                    stream.leased = stream.namespace.presence
                    stream.leased = await presence.lease(
                        connection, stream.channel, stream.namespace, strict=strict
                    )
            finally:
                for stream, entry in taken:
                    stream.buffered = entry.recovering.pop(connection, [])
        except BaseException:
            for stream, entry in taken:
                registry.release_if_unused(stream.channel, entry)
                if stream.leased:
                    presence.drop_lease(connection, stream.channel)
            raise
        wanted: list[tuple[Stream, Channel]] = []
        for stream, entry in taken:
            if keep(stream):
                wanted.append((stream, entry))
                continue
            registry.release_if_unused(stream.channel, entry)
            if stream.leased and stream.channel not in connection.protocol.channels:
                presence.drop_lease(connection, stream.channel)  # not a lease it holds
        # From the merge to the end of the reply nothing awaits: no publication can
        # fall between the read and the attach, and none is delivered twice.
        for stream, entry in wanted:
            registry.attach(
                connection, stream.channel, stream.namespace, entry, server_side=server_side
            )
            if stream.top is not None:
                stream.joined = join_stream(
                    stream.page,
                    stream.top,
                    stream.buffered,
                    recover=stream.recover,
                    last=stream.last,
                )
                set_floor(entry, connection, stream.joined)
                if entry.last_epoch is None:
                    # Nothing dispatched on this channel since the node subscribed:
                    # the position just read is where the node's stream starts, so
                    # a loss reported before the first delivery is repaired from it.
                    entry.last_offset, entry.last_epoch = stream.top.offset, stream.top.epoch
        joined = [stream for stream, _ in wanted]
        if not reply(joined):
            return
        for stream in joined:
            if stream.namespace.presence:
                await presence.announce_arrival(connection, stream.channel, stream.namespace)

    async def _read(self, stream: Stream) -> None:
        namespace = stream.namespace
        if not namespace.history_size:
            return
        if stream.recover is not None:
            stream.page, stream.top = await self._read_for_recovery(stream.channel, stream.recover)
        elif stream.last is not None:
            limit = min(stream.last, namespace.history_size)
            stream.page = await self._calls.history(stream.channel, limit=limit)
            stream.top = stream.page.position
        else:
            stream.top = await self._calls.top(stream.channel)

    async def _read_for_recovery(
        self, channel: str, recover: Position
    ) -> tuple[HistoryPage | None, Position]:
        try:
            page = await self._calls.history(channel, since=recover)
        except StreamGone:
            return None, await self._calls.top(channel)
        return page, page.position

    # -- the four callers --------------------------------------------------------------------

    async def welcome(self, connection: Connection, node: str) -> None:
        """Make the server-side subscriptions, then queue ``welcome`` as the first message."""
        identity = connection.identity
        wanted: list[Stream] = []
        if identity.user:
            wanted.append(Stream(personal_channel(identity.user), self._namespaces.personal))
        for channel in identity.channels:
            try:
                validate_channel(channel)
                wanted.append(Stream(channel, self._namespaces.resolve(channel)))
            except HubbubError as exc:
                logger.warning(
                    "skipping server-side subscription %r: %s",
                    channel,
                    exc.reason,
                    extra={"client": connection.id},
                )
        limits = self._limits

        def reply(streams: list[Stream]) -> bool:
            subscribed = []
            for stream in streams:
                top = stream.top
                if top is None:
                    subscribed.append(Subscribed(channel=stream.channel, publications=[]))
                else:
                    subscribed.append(
                        Subscribed(
                            channel=stream.channel,
                            publications=[],
                            offset=top.offset,
                            epoch=top.epoch,
                        )
                    )
            connection.send_message(
                Welcome(
                    client=connection.id,
                    user=identity.user,
                    node=node,
                    ping=limits.ping_interval,
                    pong_timeout=limits.pong_timeout,
                    expires=identity.expires,
                    subscribed=subscribed,
                )
            )
            for stream in streams:
                if stream.joined is not None:
                    self._fanout.deliver_to(connection, stream.joined.live, stream.namespace)
            return True

        await self.join(connection, wanted, strict=False, server_side=True, reply=reply)

    async def subscribe(
        self,
        connection: Connection,
        channel: str,
        namespace: Namespace,
        *,
        recover: Position | None = None,
        history: int | None = None,
        id: int | None = None,
    ) -> None:
        """A client's ``subscribe`` (WebSocket) or one channel of an SSE stream."""
        if channel in connection.protocol.channels:
            # A server-side subscription asked for recovery: answer while live delivery
            # goes on; the client drops any message whose offset it already has.
            assert recover is not None
            found, now = await self._read_for_recovery(channel, recover)
            joined = join_stream(found, now, [], recover=recover, last=None)
            # One frame, not split: live messages are flowing, and the client merges the
            # recovered ones by offset only from inside ``subscribed``.
            joined, _ = self._fit_join(connection, joined, frame=True)
            codec = connection.codec
            send_reply(
                connection,
                Subscribed(
                    channel=channel,
                    publications=[message(p, codec) for p in joined.publications],
                    id=id,
                    offset=joined.position.offset,
                    epoch=joined.position.epoch,
                    recovered=joined.recovered,
                ),
                self.stats,
            )
            return
        stream = Stream(
            channel,
            namespace,
            recover=recover,
            last=history if history is not None else namespace.replay,
        )

        def reply(streams: list[Stream]) -> bool:
            if not streams:
                return False
            joined = stream.joined
            if joined is None:
                connection.send_message(
                    Subscribed(
                        channel=channel,
                        publications=[],
                        id=id,
                        recovered=False if recover is not None else None,
                    )
                )
                return True
            joined, encoded = self._fit_join(connection, joined)
            if joined.recovered is not None:
                if joined.recovered:
                    self.stats.recovered += 1
                else:
                    self.stats.not_recovered += 1
            self._send_joined(connection, channel, id, joined, encoded)
            self._fanout.deliver_to(connection, joined.live, namespace)
            if joined.gap:
                connection.close(Close(TRY_AGAIN_LATER, "publications were lost; recover"))
                return False
            return True

        def keep(stream: Stream) -> bool:
            return not connection.protocol.closed

        await self.join(
            connection, [stream], strict=True, server_side=False, reply=reply, keep=keep
        )

    async def subscribe_user(
        self, connections: Iterable[Connection], channel: str, namespace: Namespace
    ) -> None:
        """A server-side subscribe of a user's connections on this node (``subscribe_user``)."""
        for connection in list(connections):
            if connection.protocol.closed or channel in connection.protocol.channels:
                continue
            if at_channel_limit(connection, channel):
                logger.warning(
                    "server-side subscription to %r skipped: the connection holds the most "
                    "channels allowed",
                    channel,
                    extra={"client": connection.id},
                )
                continue
            await self.join(
                connection,
                [Stream(channel, namespace)],
                strict=False,
                server_side=True,
                reply=self._subscribed_server_side(connection),
                keep=self._still_wanted(connection),
            )

    @staticmethod
    def _still_wanted(connection: Connection) -> Keep:
        def keep(stream: Stream) -> bool:
            protocol = connection.protocol
            return not (
                protocol.closed
                or stream.channel in protocol.channels
                or at_channel_limit(connection, stream.channel)
            )

        return keep

    def _subscribed_server_side(self, connection: Connection) -> Reply:
        def reply(streams: list[Stream]) -> bool:
            for stream in streams:
                top, joined = stream.top, stream.joined
                if top is None or joined is None:
                    connection.send_message(Subscribed(channel=stream.channel, publications=[]))
                    continue
                connection.send_message(
                    Subscribed(
                        channel=stream.channel, publications=[], offset=top.offset, epoch=top.epoch
                    )
                )
                self._fanout.deliver_to(connection, joined.live, stream.namespace)
            return bool(streams)

        return reply

    # -- replies sized by history ------------------------------------------------------------

    def _fit_join(
        self, connection: Connection, joined: Joined, *, frame: bool = False
    ) -> tuple[Joined, list[bytes]]:
        """Encode what a join replays, within what the connection's unsent replies may hold.

        Replies are exempt from the queue's limits, but not unbounded: a
        connection's unsent replies may hold ``REPLY_BACKLOG`` times
        ``Limits.queue_bytes``. A WebSocket never comes near (its next command
        waits for the queue to drain); an SSE stream joins all its channels
        before its first write. Past it, a replay keeps its newest publications
        that fit, and a recovery that does not fit is answered
        ``recovered: false`` (the client reloads) rather than in part. With
        ``frame``, the reply must also fit one frame of ``REPLY_FRAME_BYTES``.
        """
        codec = connection.codec
        encoded = [encode_bytes(p, CODECS[p.codec], codec) for p in joined.publications]
        room = REPLY_BACKLOG * self._limits.queue_bytes - connection.reply_backlog()
        if frame:
            room = min(room, REPLY_FRAME_BYTES)
        if sum(map(len, encoded)) <= room:
            return joined, encoded
        if joined.recovered:
            logger.info(
                "recovery larger than the connection's reply allowance: not recovered",
                extra={**connection.log_fields(), "publications": len(encoded)},
            )
            return replace(joined, publications=[], recovered=False), []
        kept = used = 0
        for raw in reversed(encoded):
            if used + len(raw) > room:
                break
            used += len(raw)
            kept += 1
        cut = len(encoded) - kept
        return replace(joined, publications=joined.publications[cut:]), encoded[cut:]

    def _send_joined(
        self,
        connection: Connection,
        channel: str,
        id: int | None,
        joined: Joined,
        encoded: list[bytes],
    ) -> None:
        """Queue ``subscribed`` and the publications it replays, exempt from the queue's limits.

        Publications that would take ``subscribed`` over ``REPLY_FRAME_BYTES``
        follow it as ``message`` frames (its ``offset`` then says where it stops).
        ``encoded``: the publications of ``joined`` in the connection's codec.
        """
        codec = connection.codec
        publications = joined.publications
        inline = used = 0
        while inline < len(encoded) and used + len(encoded[inline]) <= REPLY_FRAME_BYTES:
            used += len(encoded[inline])
            inline += 1
        offset = joined.position.offset
        if inline < len(encoded):
            first = publications[inline].offset
            assert first is not None  # replayed publications come from a stream
            offset = first - 1
        reply = Subscribed(
            channel=channel,
            # Already-encoded messages are passed through as they are (msgspec Raw).
            publications=cast("list[Message]", [Raw(raw) for raw in encoded[:inline]]),
            id=id,
            offset=offset,
            epoch=joined.position.epoch,
            recovered=joined.recovered,
        )
        head = codec.encode(reply)
        frames: list[tuple[str | bytes, int]] = [(head, len(head))]
        frames.extend((raw if codec.binary else raw.decode(), len(raw)) for raw in encoded[inline:])
        count_sent(self.stats, "subscribed", 1, len(head))
        if len(frames) > 1:
            count_sent(self.stats, "message", len(frames) - 1, sum(size for _, size in frames[1:]))
        connection.enqueue_reply(frames)


def at_channel_limit(connection: Connection, channel: str) -> bool:
    """Whether ``channel`` would take ``connection`` over ``max_channels`` (§6)."""
    protocol = connection.protocol
    if channel in protocol.channels or channel == personal_channel(connection.identity.user):
        return False
    return protocol.counted_channels() >= protocol.limits.max_channels


def send_reply(connection: Connection, reply: Subscribed | History, stats: HubStats) -> None:
    """Queue a reply sized by history, exempt from the send queue's limits."""
    frame = connection.codec.encode(reply)
    count_sent(stats, reply.__struct_config__.tag, 1, len(frame))  # type: ignore[arg-type]
    connection.enqueue_reply([(frame, len(frame))])


def count_sent(stats: HubStats, kind: str, count: int, size: int) -> None:
    stats.sent[kind] = stats.sent.get(kind, 0) + count
    stats.bytes_out += size


def encode_all(publications: list[Publication], codec: Codec) -> list[bytes]:
    """Publications encoded as ``message`` (or ``join``/``leave``) in ``codec``."""
    return [encode_bytes(p, CODECS[p.codec], codec) for p in publications]
