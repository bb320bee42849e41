"""The broker extension point: what moves publications between hub nodes.

A hub node talks to exactly one broker. The broker assigns each publication its
place in the channel's stream (offset and epoch, where the channel keeps
history), keeps that bounded history, keeps presence leases, and hands every
publication to every node that subscribed to the channel, this one included;
the hub then fans it out to its local clients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import anyio
from anyio.abc import TaskGroup
from msgspec import Struct

from ..messages import ClientInfo, Position

__all__ = [
    "Broker",
    "Capability",
    "HistoryOptions",
    "HistoryPage",
    "Idempotency",
    "LossHandler",
    "Publication",
    "PublicationHandler",
    "PublicationKind",
    "UnsupportedCapability",
]

PublicationKind = Literal["message", "join", "leave", "control"]


class Publication(Struct, frozen=True, omit_defaults=True, gc=False):
    """One publication as brokers carry it.

    Attributes:
        channel: the channel it was published into.
        data: the payload, encoded in ``codec`` and never decoded by the broker.
        codec: ``"json"`` or ``"msgpack"``: how ``data`` is encoded.
        ts: server time of the publish, unix milliseconds.
        sender: who published it; ``None`` for server-side publishes.
        exclude: a client id that must not receive it (its publisher asked for no echo).
        offset: its offset in the channel's stream, where the channel keeps history.
        epoch: the stream's epoch, where the channel keeps history.
        kind: ``message`` (a publication), a presence event (``join``,
            ``leave``: ``sender`` is the client that came or went), or ``control``
            (a command between hub nodes); only messages are ever stored.
    """

    channel: str
    data: bytes
    codec: str
    ts: int
    sender: ClientInfo | None = None
    exclude: str | None = None
    offset: int | None = None
    epoch: str | None = None
    kind: PublicationKind = "message"


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How a channel's stream is kept: the last ``size`` publications, ``ttl`` seconds
    after the last publish (after that the stream, and its epoch, are gone)."""

    size: int
    ttl: float


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A publish that must happen at most once per ``key`` within ``window`` seconds."""

    key: str
    window: float


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Publications read from a stream, oldest first unless asked in reverse.

    ``position`` is the stream's newest position when it was read (offset 0:
    nothing published yet under this epoch).
    """

    publications: list[Publication]
    position: Position


IDEMPOTENCY_KEYS = 10_000
"""Idempotency keys one publisher may hold per channel within the window, by
default, in the brokers that ship (their ``idempotency_keys`` option)."""


def publisher(publication: Publication) -> str:
    """Whose idempotency key budget a publication uses: its user (an anonymous
    client: its connection), or the server's (no sender)."""
    sender = publication.sender
    if sender is None:
        return "server"
    return f"user:{sender.user}" if sender.user else f"client:{sender.client}"


PublicationHandler = Callable[[Publication], None]
"""Receives every publication of a channel the node subscribed to.

Called synchronously by the broker, in offset order per channel; it never
blocks and never raises.
"""

LossHandler = Callable[[Collection[str] | None], None]
"""Told that publications of these channels (``None``: of any channel) may have
been lost on their way to this node, e.g. after the broker's link dropped.
The hub closes the affected clients with 1013 so they recover from history."""


class Capability(StrEnum):
    """What a broker can do beyond pub/sub, declared in :attr:`Broker.capabilities`.

    The hub checks them against its namespaces when it starts, so a namespace
    asking for something its broker cannot do fails at start-up, not at the
    first publish (see ``docs/brokers.md``).
    """

    HISTORY = "history"
    """Streams: offsets, epochs, bounded history (:meth:`Broker.history`); needed by
    namespaces with ``history_size`` (and so by recovery and ``replay``)."""
    PRESENCE = "presence"
    """Presence leases (:meth:`Broker.presence_set` and friends); needed by
    namespaces with ``presence``."""
    IDEMPOTENCY = "idempotency"
    """``publish(..., idempotency=...)`` publishes at most once per key; without
    it the hub refuses publishes that carry an ``idempotency_key``."""


class UnsupportedCapability(ValueError):
    """A namespace asks for something the hub's broker cannot do (raised when the hub starts).

    Attributes:
        namespace: the namespace's name (``""``: the default namespace).
        capability: what it asks for.
    """

    def __init__(self, broker: Broker, namespace: str, capability: Capability, why: str) -> None:
        self.namespace = namespace
        self.capability = capability
        shown = repr(namespace) if namespace else "the default namespace"
        super().__init__(
            f"namespace {shown} {why}, but {type(broker).__name__} does not support "
            f"{capability.value!r} (its capabilities: "
            f"{', '.join(sorted(broker.capabilities)) or 'pub/sub only'})"
        )


class Broker(ABC):
    """Moves publications between hub nodes and keeps streams and presence.

    Lifecycle: the hub calls :meth:`start` once when it starts, with its task
    group, and :meth:`stop` once when it stops; code that uses a broker on its
    own enters :meth:`run` instead, which owns a task group for the broker's
    life. Between them it calls :meth:`subscribe` once per
    channel however many local clients listen (it reference-counts) and
    :meth:`unsubscribe` when the last one leaves. Calls for one channel may
    overlap (a subscribe issued while an unsubscribe is still awaiting); a
    broker must apply them in the order they were issued.

    Guarantees a broker gives: publications of one channel get consecutive
    offsets from 1 under one epoch, and reach every subscribed node in that
    order; a stream that is lost or expires comes back under a new epoch,
    never reusing one; an ``(epoch, offset)`` never names two different
    publications (a stream whose newest publications may have been lost, e.g.
    in a Redis failover, goes on under a new epoch: its history and offsets
    kept, the next offset after the surviving ones); presence entries are
    leases that vanish when not refreshed within their TTL.

    Errors: a broker raises :class:`hubbub.BrokerUnavailable` when it cannot
    reach its backend and never hangs without bound; it raises
    :class:`hubbub.StreamGone` when asked to read after a position whose epoch
    is not the stream's. The contract suite :class:`hubbub.testing.contract.BrokerContract`
    checks all of this against any broker (``docs/brokers.md``).

    Only pub/sub (:meth:`start`, :meth:`stop`, :meth:`publish`,
    :meth:`subscribe`, :meth:`unsubscribe`) is required. A broker that leaves out
    history or presence says so in :attr:`capabilities`; the hub then never
    calls those methods, and refuses to start with a namespace that needs them.
    """

    capabilities: frozenset[Capability] = frozenset(Capability)
    """What this broker supports beyond pub/sub. Everything by default (every
    broker written before capabilities existed implemented it all); a smaller
    broker declares less, e.g. ``capabilities = frozenset()`` for pub/sub only."""

    @abstractmethod
    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        """Connect; deliver publications of subscribed channels to ``handler``.

        ``task_group`` is the hub's (or :meth:`run`'s): a broker that needs
        background tasks (a pub/sub reader) starts them there, so they live and
        die with their owner. Such a broker raises :class:`RuntimeError` when
        given none, rather than start a task nobody owns; a broker without
        background tasks may ignore it (brokers written for 0.1 default it to
        ``None`` and keep working).
        """

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and release every resource; publications stop arriving."""

    @asynccontextmanager
    async def run(self, handler: PublicationHandler, lost: LossHandler) -> AsyncIterator[None]:
        """Use the broker on its own: started on entry, stopped on exit.

        The context owns a task group for the broker's background tasks, so
        none outlives it (``async with broker.run(handler, lost): ...``). The
        hub does not need it: it passes its own task group to :meth:`start`.
        Works with every broker, those written for 0.1 included, since it only
        calls :meth:`start` and :meth:`stop`.

        Raises:
            RuntimeError: the broker is already started.
        """
        try:
            async with anyio.create_task_group() as tg:
                await self.start(handler, lost, tg)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.stop()
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps what start() or the caller's block raised; the
            # broker's own tasks never fail (they log and retry), so unwrap it.
            if len(group.exceptions) == 1:
                exc = group.exceptions[0]
                raise exc from exc.__cause__
            raise

    @abstractmethod
    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        """Publish to every node subscribed to the channel, this one included.

        Returns the publication with its ``offset`` and ``epoch`` set where the
        channel keeps history (``history`` is not ``None``). With
        ``idempotency``, a key seen within its window publishes nothing and
        returns ``publication`` with the offset and epoch of the one first
        published under that key (keep only that position per key, never the
        publication); a broker may cap the keys one publisher holds and raise
        :class:`hubbub.RateLimited` for a new key beyond the cap. The hub passes
        ``history`` only to brokers with :attr:`Capability.HISTORY` and
        ``idempotency`` only to brokers with :attr:`Capability.IDEMPOTENCY`.
        """

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving the channel's publications on this node."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving the channel's publications on this node."""

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        """Read the channel's stream.

        Without ``since``: the newest ``limit`` publications (all when ``None``).
        With ``since``: the first ``limit`` publications after it (what is still
        kept; the caller checks offsets for gaps). Oldest first unless
        ``reverse``. A channel without a stream gets an empty page at offset 0
        under a new epoch.

        Only brokers with :attr:`Capability.HISTORY` implement it.

        Raises:
            StreamGone: ``since`` names another epoch than the stream's.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no history")

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        """Add or refresh ``client``'s presence lease in ``channel`` for ``ttl`` seconds.

        Only brokers with :attr:`Capability.PRESENCE` implement the presence methods.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no presence")

    async def presence_remove(self, channel: str, client: str) -> None:
        """Remove ``client``'s presence lease in ``channel`` (no error if absent)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no presence")

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        """The clients whose presence lease in ``channel`` has not expired."""
        raise NotImplementedError(f"{type(self).__name__} keeps no presence")

    async def ready(self) -> bool:
        """Whether the backend is reachable now (``/ready``). Defaults to True."""
        return True
