"""The broker extension point: what moves publications between hub nodes.

A hub node talks to exactly one broker. The broker assigns each publication its
place in the channel's stream and hands it to every node that subscribed to the
channel, this one included; the hub then fans it out to its local clients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from msgspec import Struct

from ..messages import ClientInfo

__all__ = ["Broker", "HistoryOptions", "Publication", "PublicationHandler"]


class Publication(Struct, frozen=True, omit_defaults=True):
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
    """

    channel: str
    data: bytes
    codec: str
    ts: int
    sender: ClientInfo | None = None
    exclude: str | None = None
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How a channel's stream is kept: ``size`` publications for ``ttl`` seconds."""

    size: int
    ttl: float


PublicationHandler = Callable[[Publication], None]
"""Receives every publication of a channel the node subscribed to.

Called synchronously by the broker; it never blocks and never raises.
"""


class Broker(ABC):
    """Moves publications between hub nodes.

    Lifecycle: the hub calls :meth:`start` once when it starts and :meth:`stop`
    once when it stops. Between them it calls :meth:`subscribe` once per
    channel however many local clients listen (it reference-counts) and
    :meth:`unsubscribe` when the last one leaves. Calls for one channel may
    overlap (a subscribe issued while an unsubscribe is still awaiting); a
    broker must apply them in the order they were issued.

    Errors: a broker raises :class:`hubbub.BrokerUnavailable` when it cannot
    reach its backend, never hangs without bound, and reports to the hub
    through ``handler`` only publications, in offset order per channel.
    """

    @abstractmethod
    async def start(self, handler: PublicationHandler) -> None:
        """Connect, and deliver publications of subscribed channels to ``handler``."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and release every resource; publications stop arriving."""

    @abstractmethod
    async def publish(
        self, publication: Publication, history: HistoryOptions | None
    ) -> Publication:
        """Publish to every node subscribed to the channel, this one included.

        Returns the publication with its ``offset`` and ``epoch`` set where the
        channel keeps history (``history`` is not ``None``).
        """

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving the channel's publications on this node."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving the channel's publications on this node."""

    async def ready(self) -> bool:
        """Whether the backend is reachable now (``/ready``). Defaults to True."""
        return True
