"""A subscription: the application's ordered, bounded view of one channel.

It knows the rest of the client only through :class:`SubscriptionHost`, the
three calls it makes (open, close, resync), which the client's subscription
registry (``_registry.Subscriptions``) implements: the dependency runs one way.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Protocol

import anyio

from ..messages import Message, Position
from ._types import Item, Publication

__all__ = ["Subscription", "SubscriptionHost"]


class SubscriptionHost(Protocol):
    """What a :class:`Subscription` asks of the client that keeps it in sync."""

    async def open(self, sub: Subscription) -> None:
        """Subscribe ``sub`` and wait for its first ``subscribed`` (raises why not)."""
        ...

    async def close(self, sub: Subscription) -> None:
        """End ``sub`` and tell the server; never raises."""
        ...

    def resync(self, sub: Subscription) -> None:
        """Resubscribe ``sub`` with ``recover`` from its position (its buffer overflowed)."""
        ...


class Subscription:
    """One channel, as an async context manager and an async iterator of items.

    ``async for item in sub`` yields :class:`~hubbub.client.Publication` and,
    where the client could not recover what it missed,
    :class:`~hubbub.client.Unrecovered` — in order, each offset once. The
    iterator ends when the subscription is closed (the block exits,
    :meth:`Client.unsubscribe`, or the server removed it with an
    ``unsubscribed`` of its own) and raises the client's error when the session
    ended for good (:class:`~hubbub.client.Disconnected`).

    The buffer is bounded (``buffer_size`` publications). When the application
    falls behind on a channel with history, the client stops buffering, and once
    the application has caught up it resubscribes with ``recover`` from the last
    position buffered, so nothing is lost and the connection is never stalled by
    one slow loop. On a channel without history (at-most-once), what does not
    fit is dropped and counted in :attr:`dropped`.
    """

    def __init__(
        self,
        host: SubscriptionHost,
        channel: str,
        *,
        history: int | None,
        token: str | None,
        buffer_size: int,
    ) -> None:
        self.channel = channel
        self.dropped = 0
        """Publications of a channel without history dropped because the buffer was full."""
        self._host = host
        self._history = history
        self._token = token
        self._limit = buffer_size
        self._items: deque[Item] = deque()
        self._wake: anyio.Event | None = None
        self._finished = False
        self._error: BaseException | None = None
        self._ready = anyio.Event()
        # State driven by the client's connection (see _registry.Subscriptions).
        self.position: Position | None = None
        """The last position handed to the buffer (``None`` before ``subscribed``)."""
        self.first_done = False
        self.held = False
        self.server_side = False
        self.syncing = True
        self.backlog: list[Message] = []
        self.overflowed = False
        self.in_sync = False
        self.attempts = 0
        """Resubscriptions since the last publication delivered (backs off when it grows)."""
        self._opened = False
        self._own: set[int] = set()
        self._own_epoch: str | None = None

    # -- the application's side --------------------------------------------------------------

    async def __aenter__(self) -> Subscription:
        if self._opened:
            raise RuntimeError("a Subscription can be entered only once")
        self._opened = True
        await self._host.open(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._host.close(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        if not self._opened:
            raise RuntimeError("iterate inside `async with client.subscribe(...) as sub:`")
        while True:
            if self._items:
                item = self._items.popleft()
                if self.overflowed and not self._items:
                    self._host.resync(self)
                return item
            if self._finished:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if self.overflowed:
                self._host.resync(self)
            self._wake = anyio.Event()
            await self._wake.wait()

    @property
    def closed(self) -> bool:
        """Whether the subscription has ended (its iterator stops once it is drained)."""
        return self._finished

    @property
    def pending(self) -> int:
        """Items buffered and not yet taken by the application."""
        return len(self._items)

    # -- the client's side --------------------------------------------------------------------

    @property
    def history(self) -> int | None:
        return self._history

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def ready(self) -> anyio.Event:
        return self._ready

    @property
    def error(self) -> BaseException | None:
        return self._error

    def own_publication(self, offset: int, epoch: str) -> None:
        """Remember an offset this client published (its copy may never come: ``echo``)."""
        position = self.position
        if position is None or epoch != position.epoch or offset <= position.offset:
            return
        if epoch != self._own_epoch:
            self._own, self._own_epoch = set(), epoch
        self._own.add(offset)

    def explains(self, message: Message) -> bool:
        """Whether the offsets ``message`` skips are all this client's own publications.

        A publication sent with ``echo: false`` (or in a namespace whose echo is
        off) never comes back to its publisher, so the hole it leaves is no loss.
        """
        position = self.position
        if (
            position is None
            or message.offset is None
            or message.epoch != position.epoch
            or message.epoch != self._own_epoch
        ):
            return False
        missing = range(position.offset + 1, message.offset)
        if len(missing) > len(self._own) or not all(o in self._own for o in missing):
            return False
        self._own.difference_update(missing)
        self._own = {o for o in self._own if o > message.offset}
        return True

    def push(self, item: Item, *, force: bool = False) -> bool:
        """Buffer ``item``; ``False`` when the buffer is full (``force``: never refused)."""
        if self._finished:
            return True
        if not force and isinstance(item, Publication) and len(self._items) >= self._limit:
            return False
        self._items.append(item)
        if self._wake is not None:
            self._wake.set()
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """End the subscription: the iterator drains what is buffered, then stops or raises."""
        if self._finished:
            return
        self._finished = True
        self._error = error
        self._ready.set()
        if self._wake is not None:
            self._wake.set()
