"""Presence: leases taken on arrival, renewed while connected, dropped on departure.

Presence is read-after-subscribe: a subscriber's lease is taken before its
``subscribed`` (or ``welcome``) is sent, so a ``presence`` read on any node
afterwards lists it. Leases expire on their own, so a node that dies takes
its clients out of presence within one TTL; a live node renews its leases
every third of the shortest TTL in use. ``join``/``leave`` events are
published through the broker like any publication. Departures run in the
background, bounded with the hub's other background broker calls, and
stopping the hub waits for those already started (:meth:`Presence.settle`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import anyio

from ._brokercall import BACKGROUND_BROKER_CALLS, BrokerCalls, Spawn, now_ms
from ._errors import BrokerUnavailable, HubbubError
from .brokers import Publication, PublicationKind
from .messages import JSON, ClientInfo
from .namespaces import Namespace, NamespaceRegistry

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Presence"]

logger = logging.getLogger("hubbub")


class Presence:
    """The presence leases of one hub's clients and their join/leave events."""

    __slots__ = ("_calls", "_departed", "_departing", "_namespaces", "_spawn")

    def __init__(self, calls: BrokerCalls, namespaces: NamespaceRegistry, spawn: Spawn) -> None:
        self._calls = calls
        self._namespaces = namespaces
        self._spawn = spawn
        # Departures started and not finished; stopping waits for them (``settle``).
        self._departing = 0
        self._departed: anyio.Event | None = None

    def reset(self) -> None:
        self._departing = 0

    async def lease(
        self, connection: Connection, channel: str, namespace: Namespace, *, strict: bool
    ) -> bool:
        """Take a new subscriber's presence lease, before ``subscribed`` is sent.

        Returns whether a lease was taken (``False`` where the namespace has no presence).

        Raises:
            HubbubError: ``strict`` (a client's ``subscribe``, which is then
                refused 503 and may be retried) and the broker failed. Server-made
                subscriptions are not strict: the failure is logged and the lease
                task retries within a third of the TTL.
        """
        if not namespace.presence:
            return False
        try:
            await self._calls.presence_set(
                channel, connection.id, connection.info, namespace.presence_ttl
            )
        except HubbubError as exc:
            if strict:
                raise
            logger.warning("presence for %r failed: %s", channel, exc.reason)
        return True

    def drop_lease(self, connection: Connection, channel: str) -> None:
        """Drop, in the background, a lease taken for a subscription that did not happen."""
        self._spawn(partial(self._unlease, connection.id, channel))

    async def _unlease(self, client: str, channel: str) -> None:
        try:
            async with self._calls.limiter():
                await self._calls.presence_remove(channel, client)
        except HubbubError as exc:
            logger.warning("presence removal for %r failed: %s", channel, exc.reason)

    async def announce_arrival(
        self, connection: Connection, channel: str, namespace: Namespace
    ) -> None:
        """Announce a new subscriber (leased already) with ``join`` where enabled.

        A failure here is logged, not answered: the subscription itself holds.
        """
        info = connection.info
        try:
            if not namespace.join_leave:
                return
            if namespace.join_leave_per_user and info.user:
                present = await self._calls.presence(channel)
                if any(c != connection.id and i.user == info.user for c, i in present.items()):
                    return
            await self._announce("join", channel, info)
        except HubbubError as exc:
            logger.warning("presence for %r failed: %s", channel, exc.reason)

    def depart_soon(self, channel: str, namespace: Namespace, info: ClientInfo) -> None:
        """Start a leaving subscriber's departure in the background (``_depart``)."""
        if self._spawn(partial(self._depart, channel, namespace, info)):
            self._departing += 1

    async def _depart(self, channel: str, namespace: Namespace, info: ClientInfo) -> None:
        """Drop a leaving subscriber's presence lease and announce it where enabled.

        One runs per presence channel the client held, all started at once when
        it leaves: they take turns (``BACKGROUND_BROKER_CALLS``) so that each
        completes instead of exhausting the broker's connections.
        """
        try:
            async with self._calls.limiter():
                await self._calls.presence_remove(channel, info.client)
                if not namespace.join_leave:
                    return
                if namespace.join_leave_per_user and info.user:
                    present = await self._calls.presence(channel)
                    if any(i.user == info.user for i in present.values()):
                        return
                await self._announce("leave", channel, info)
        except HubbubError as exc:
            logger.warning("presence removal for %r failed: %s", channel, exc.reason)
        finally:
            self._departing -= 1
            if not self._departing and self._departed is not None:
                self._departed.set()

    async def _announce(self, kind: PublicationKind, channel: str, info: ClientInfo) -> None:
        event = Publication(
            channel=channel,
            data=b"",
            codec=JSON.name,
            ts=now_ms(),
            sender=info,
            exclude=info.client,  # a client does not receive its own join
            kind=kind,
        )
        await self._calls.publish(event, None)

    async def settle(self, within: float) -> None:
        """Let the departures already started finish before the broker stops.

        Clients that left just before shutdown would otherwise stay listed in
        presence (and unannounced) until their leases expire. Bounded by ``within`` seconds.
        """
        if not self._departing:
            return
        self._departed = anyio.Event()
        with anyio.move_on_after(within):
            await self._departed.wait()
        self._departed = None
        if self._departing:
            logger.warning("%d presence departure(s) unfinished at shutdown", self._departing)

    async def renew_forever(self, connections: Iterable[Connection]) -> None:
        """Refresh the leases of this node's clients before they expire (a hub task)."""
        namespaces = self._namespaces
        ttls = [ns.presence_ttl for ns in namespaces if ns.presence]
        if namespaces.personal.presence:
            ttls.append(namespaces.personal.presence_ttl)
        if not ttls:
            return
        period = min(ttls) / 3
        while True:
            await anyio.sleep(period)
            await self.renew(connections)

    async def renew(self, connections: Iterable[Connection]) -> None:
        """One round of lease renewals: every lease of this node, a few at a time.

        ``BACKGROUND_BROKER_CALLS`` workers share the round (one after another,
        100,000 leases at 1 ms each would outlast a 60 s TTL). A broker that
        does not answer ends the round at once, instead of every lease waiting
        out ``broker_timeout`` in turn; the next round retries, well within the TTL.
        """
        work = [
            (connection, channel, namespace)
            for connection in tuple(connections)
            for channel, namespace in tuple(connection.protocol.channels.items())
            if namespace.presence
        ]
        if not work:
            return
        pending = iter(work)
        down = False
        calls = self._calls

        async def worker() -> None:
            nonlocal down
            for connection, channel, namespace in pending:
                if down:
                    return
                if connection.protocol.closed or channel not in connection.protocol.channels:
                    continue  # gone meanwhile: renewing would bring back a departed lease
                try:
                    async with calls.limiter():
                        if _gone(connection, channel):
                            continue
                        await calls.presence_set(
                            channel, connection.id, connection.info, namespace.presence_ttl
                        )
                        if _gone(connection, channel):
                            # It left while the renewal was in flight: its departure's
                            # removal may have reached the broker first.
                            await calls.presence_remove(channel, connection.id)
                except BrokerUnavailable as exc:
                    if not down:
                        logger.warning("presence refresh stopped for this round: %s", exc.reason)
                    down = True
                except HubbubError as exc:
                    logger.warning("presence refresh failed: %s", exc.reason)

        async with anyio.create_task_group() as tg:
            for _ in range(min(BACKGROUND_BROKER_CALLS, len(work))):
                tg.start_soon(worker)


def _gone(connection: Connection, channel: str) -> bool:
    """Whether ``connection`` no longer holds ``channel`` (left it, or closed)."""
    return connection.protocol.closed or channel not in connection.protocol.channels
