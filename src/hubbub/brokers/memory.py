"""The in-memory broker: one process, no backend, the embedded default."""

from __future__ import annotations

from ._base import Broker, HistoryOptions, Publication, PublicationHandler

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """Delivers publications within one process.

    Publishing calls the hub's handler directly, so a publication reaches local
    subscribers before :meth:`publish` returns and order per channel is the
    order of the calls.
    """

    def __init__(self) -> None:
        self._handler: PublicationHandler | None = None
        self._channels: set[str] = set()

    async def start(self, handler: PublicationHandler) -> None:
        if self._handler is not None:
            raise RuntimeError("MemoryBroker is already started (one hub per broker)")
        self._handler = handler

    async def stop(self) -> None:
        self._handler = None
        self._channels.clear()

    async def publish(
        self, publication: Publication, history: HistoryOptions | None
    ) -> Publication:
        handler = self._handler
        if handler is None:
            raise RuntimeError("MemoryBroker is not started")
        if publication.channel in self._channels:
            handler(publication)
        return publication

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
