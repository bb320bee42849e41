"""The channel registry: who is connected, and who listens to which channel on this node.

It owns three maps — open connections, a user's connections, and per channel
its :class:`Channel` entry (local subscribers plus the stream state that
:mod:`hubbub._fanout` keeps in it) — and the node's broker subscriptions.
A node subscribes to a channel at the broker once however many local clients
listen (:meth:`Registry.ensure`), and unsubscribes in the background once
nobody listens, joins or waits for it any more (:meth:`Registry.release_if_unused`);
an entry's lock serialises those two calls per channel, and fan-out never
takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import anyio

from ._brokercall import BrokerCalls, Spawn
from ._errors import HubbubError
from .brokers import Publication
from .limits import Limits
from .messages import ClientInfo, Position
from .namespaces import Namespace

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Channel", "Registry"]

logger = logging.getLogger("hubbub")

Depart = Callable[[str, Namespace, ClientInfo], None]
"""Starts a leaving subscriber's presence departure (``Presence.depart_soon``)."""


class Channel:
    """Local subscribers of one channel and the node's broker subscription to it."""

    __slots__ = (
        "floors",
        "held",
        "last_epoch",
        "last_offset",
        "lock",
        "namespace",
        "on_node",
        "pending",
        "recovering",
        "subscribers",
    )

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.subscribers: dict[Connection, None] = {}
        # Connections joining the stream: live publications are buffered for them
        # while their history is read, then merged (``_join``).
        self.recovering: dict[Connection, list[Publication]] = {}
        # A joined connection's newest position already sent: a broker that delivers
        # after ``publish`` returns (pub/sub) may still hand over older publications,
        # which must not reach it twice. Cleared at the first newer one.
        self.floors: dict[Connection, Position] = {}
        # The newest position this node delivered, to notice gaps (a publication
        # that skips offsets) and duplicates; while a gap is being repaired from
        # history, live publications are held here in arrival order.
        self.last_offset = 0
        self.last_epoch: str | None = None
        self.held: list[Publication] | None = None
        self.on_node = False
        self.pending = 0
        # Serialises this channel's node-level subscribe/unsubscribe calls to the
        # broker. Only the control path takes it; fan-out never does.
        self.lock = anyio.Lock()


class Registry:
    """Connections, users and channel entries of one hub, and its node subscriptions."""

    __slots__ = ("_calls", "_depart", "_spawn", "channels", "connections", "users")

    def __init__(self, calls: BrokerCalls, spawn: Spawn, depart: Depart) -> None:
        self._calls = calls
        self._spawn = spawn
        self._depart = depart
        self.channels: dict[str, Channel] = {}
        self.connections: dict[Connection, None] = {}
        self.users: dict[str, dict[Connection, None]] = {}

    async def heartbeats(self, limits: Limits) -> None:
        """Drive pings and idle deadlines for every connection from one task.

        One task for all connections instead of one per connection: idle clients
        are the common case, and a task per client costs memory. The tick is a
        quarter of the shorter of ``ping_interval`` and ``pong_timeout``
        (between 50 ms and 1 s), so deadlines are kept to within that.
        """
        tick = min(max(min(limits.ping_interval, limits.pong_timeout) / 4, 0.05), 1.0)
        idle = limits.idle_timeout
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for connection in tuple(self.connections):
                # Nothing due (what ClientProtocol.heartbeat would find), read here rather
                # than in two calls per connection: with tens of thousands of clients this
                # loop visits every one of them every second. An SSE stream sends nothing,
                # so past the idle timeout it takes its own heartbeat, which has no idle
                # deadline.
                protocol = connection.protocol
                if (
                    now < protocol.next_ping
                    and now - protocol.last_activity < idle
                    and protocol.expiry is None
                    and protocol.first_deadline is None
                ):
                    continue
                connection.heartbeat(now)

    def add(self, connection: Connection) -> None:
        """Count an opened connection (and its user's)."""
        self.connections[connection] = None
        user = connection.identity.user
        if user:
            self.users.setdefault(user, {})[connection] = None

    def remove(self, connection: Connection) -> None:
        """Forget a finished connection: its user's count and every channel it held."""
        self.connections.pop(connection, None)
        user = connection.identity.user
        if user:
            mine = self.users.get(user)
            if mine is not None:
                mine.pop(connection, None)
                if not mine:
                    del self.users[user]
        self.detach_all(connection)

    async def ensure(self, channel: str, namespace: Namespace) -> Channel:
        """The channel's entry, with this node subscribed to it at the broker."""
        while True:
            entry = self.channels.get(channel)
            if entry is None:
                entry = self.channels[channel] = Channel(namespace)
            entry.pending += 1
            try:
                async with entry.lock:
                    if not entry.on_node:
                        await self._calls.subscribe(channel)
                        entry.on_node = True
            finally:
                entry.pending -= 1
                self.release_if_unused(channel, entry)
            if self.channels.get(channel) is entry:
                return entry

    def _settle(self) -> None:
        """Deliver what fan-out batched (``calls.batching``) before subscribers change.

        So a batched publication reaches exactly the subscribers its channel had
        when it was dispatched (docs/design.md, "One pass per batch").
        """
        batching = self._calls.batching
        if batching is not None:
            batching.flush()

    def attach(
        self,
        connection: Connection,
        channel: str,
        namespace: Namespace,
        entry: Channel,
        *,
        server_side: bool = False,
    ) -> None:
        self._settle()
        entry.subscribers[connection] = None
        connection.protocol.add_channel(channel, namespace, server_side=server_side)

    def detach_all(self, connection: Connection) -> None:
        for channel in list(connection.protocol.channels):
            self.detach(connection, channel)

    def detach(self, connection: Connection, channel: str) -> None:
        self._settle()
        namespace = connection.protocol.channels.get(channel)
        connection.protocol.remove_channel(channel)
        if namespace is not None and namespace.presence:
            self._depart(channel, namespace, connection.info)
        entry = self.channels.get(channel)
        if entry is None:
            return
        entry.subscribers.pop(connection, None)
        entry.floors.pop(connection, None)
        self.release_if_unused(channel, entry)

    def release_if_unused(self, channel: str, entry: Channel) -> None:
        if entry.subscribers or entry.pending or entry.recovering:
            return
        if not entry.on_node:
            if self.channels.get(channel) is entry and not entry.lock.locked():
                del self.channels[channel]
            return
        if self._spawn(partial(self._node_unsubscribe, channel, entry)):
            entry.pending += 1

    async def _node_unsubscribe(self, channel: str, entry: Channel) -> None:
        try:
            # The limiter before the lock, as everywhere: the lock is never held waiting.
            async with self._calls.limiter(), entry.lock:
                entry.pending -= 1
                if entry.subscribers or entry.pending or entry.recovering or not entry.on_node:
                    return
                entry.on_node = False
                try:
                    await self._calls.unsubscribe(channel)
                except HubbubError as exc:
                    logger.warning("broker unsubscribe of %r failed: %s", channel, exc.reason)
        finally:
            if not (entry.subscribers or entry.pending or entry.recovering or entry.on_node):
                if self.channels.get(channel) is entry:
                    del self.channels[channel]
