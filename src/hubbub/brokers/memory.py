"""The in-memory broker: one process, no backend, the embedded default."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice

import msgspec
from anyio.abc import TaskGroup

from .._errors import RateLimited, StreamGone
from ..messages import ClientInfo, Position
from ._base import (
    IDEMPOTENCY_KEYS,
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    LossHandler,
    Publication,
    PublicationHandler,
    publisher,
)

__all__ = ["MemoryBroker"]

# A stream first created by a read (a subscribe before any publish) keeps its
# epoch this long without publications, so early subscribers can still recover.
_EMPTY_STREAM_TTL = 300.0


class _Stream:
    __slots__ = ("epoch", "expires", "items", "offset")

    def __init__(self, size: int, expires: float) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.items: deque[Publication] = deque(maxlen=max(size, 1))
        self.expires = expires


class MemoryBroker(Broker):
    """Delivers publications within one process and keeps streams and presence in memory.

    Publishing calls the hub's handler directly, so a publication reaches local
    subscribers before :meth:`publish` returns and order per channel is the
    order of the calls. Streams live as long as the process (a restart starts
    new epochs) and expire ``ttl`` seconds after their last publication.

    An idempotency key keeps only the position (offset and epoch) a retry is
    answered with, and one publisher (a user, an anonymous connection, or the
    server) holds at most ``idempotency_keys`` of them per channel within the
    window: a publish with a new key beyond that raises
    :class:`hubbub.RateLimited` and publishes nothing.

    Args:
        clock: seconds on a monotonic clock; injectable for tests.
        idempotency_keys: the cap on keys per publisher and channel.
    """

    capabilities = frozenset(Capability)

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        idempotency_keys: int = IDEMPOTENCY_KEYS,
    ) -> None:
        if idempotency_keys < 1:
            raise ValueError("idempotency_keys must be at least 1")
        self._clock = clock
        self._handler: PublicationHandler | None = None
        self._channels: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._idempotency_keys = idempotency_keys
        # (channel, key) → (expiry, offset, epoch): what a retry is answered with.
        self._idempotency: dict[tuple[str, str], tuple[float, int | None, str | None]] = {}
        # (channel, publisher) → (expiry, key) of the keys it holds, oldest first.
        self._held_keys: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        self._presence: dict[str, dict[str, tuple[float, ClientInfo]]] = {}
        self._next_sweep = 0.0

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        if self._handler is not None:
            raise RuntimeError("MemoryBroker is already started (one hub per broker)")
        self._handler = handler

    async def stop(self) -> None:
        self._handler = None
        self._channels.clear()

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        return self.publish_now(publication, history, idempotency)

    def publish_now(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        """:meth:`publish`, which never awaits, as a plain call.

        The hub calls this instead of awaiting :meth:`publish` (when a subclass
        does not override it): no coroutine, no timeout scope per publication,
        since there is nothing to wait for.
        """
        handler = self._handler
        if handler is None:
            raise RuntimeError("MemoryBroker is not started")
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        channel = publication.channel
        if idempotency is not None:
            seen = self._idempotency.get((channel, idempotency.key))
            if seen is not None and seen[0] > now:
                return msgspec.structs.replace(publication, offset=seen[1], epoch=seen[2])
            held = self._held_keys.setdefault((channel, publisher(publication)), deque())
            self._expire_keys(channel, held, now)
            if len(held) >= self._idempotency_keys:
                raise RateLimited(
                    f"at most {self._idempotency_keys} idempotency keys per publisher in a "
                    "channel within the idempotency window; nothing was published"
                )
        if history is not None:
            stream = self._stream(channel, now)
            if stream is None or stream.items.maxlen != history.size:
                stream = self._resize(channel, stream, history.size, now)
            stream.offset += 1
            publication = msgspec.structs.replace(
                publication, offset=stream.offset, epoch=stream.epoch
            )
            stream.items.append(publication)
            stream.expires = now + history.ttl
        if idempotency is not None:
            expires = now + idempotency.window
            self._idempotency[(channel, idempotency.key)] = (
                expires,
                publication.offset,
                publication.epoch,
            )
            held.append((expires, idempotency.key))
        if channel in self._channels:
            handler(publication)
        return publication

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        now = self._clock()
        self._sweep(now)
        stream = self._stream(channel, now)
        if stream is None:
            # An empty stream under a new epoch: a later publish continues it.
            stream = self._streams[channel] = _Stream(1, now + _EMPTY_STREAM_TTL)
        if since is not None and since.epoch != stream.epoch:
            raise StreamGone(f"epoch {since.epoch!r} is not the stream's current epoch")
        items = stream.items
        if since is not None:
            first = stream.offset - len(items) + 1  # offset of items[0]
            start = max(since.offset + 1 - first, 0)
            selected = list(islice(items, start, None if limit is None else start + limit))
        elif limit is None:
            selected = list(items)
        else:
            selected = list(islice(items, max(len(items) - limit, 0), None))
        if reverse:
            selected.reverse()
        return HistoryPage(selected, Position(offset=stream.offset, epoch=stream.epoch))

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        self._presence.setdefault(channel, {})[client] = (self._clock() + ttl, info)

    async def presence_remove(self, channel: str, client: str) -> None:
        entries = self._presence.get(channel)
        if entries is not None:
            entries.pop(client, None)
            if not entries:
                del self._presence[channel]

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        now = self._clock()
        entries = self._presence.get(channel, {})
        return {client: info for client, (expires, info) in entries.items() if expires > now}

    # -- internals -------------------------------------------------------------------------

    def _stream(self, channel: str, now: float) -> _Stream | None:
        stream = self._streams.get(channel)
        if stream is not None and stream.expires <= now:
            del self._streams[channel]
            return None
        return stream

    def _resize(self, channel: str, stream: _Stream | None, size: int, now: float) -> _Stream:
        """A stream kept at ``size`` publications; an existing one keeps epoch and offset."""
        fresh = _Stream(size, now)
        if stream is not None:
            fresh.epoch, fresh.offset = stream.epoch, stream.offset
            fresh.items.extend(stream.items)
        self._streams[channel] = fresh
        return fresh

    def _expire_keys(self, channel: str, held: deque[tuple[float, str]], now: float) -> None:
        """Forget a publisher's keys whose window ended (a channel's window is its
        namespace's, so they end in the order they were taken)."""
        while held and held[0][0] <= now:
            _, key = held.popleft()
            seen = self._idempotency.get((channel, key))
            if seen is not None and seen[0] <= now:
                del self._idempotency[(channel, key)]

    def _sweep(self, now: float) -> None:
        """Drop expired streams, idempotency keys and leases; at most once a second."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for channel in [c for c, s in self._streams.items() if s.expires <= now]:
            del self._streams[channel]
        for key in [k for k, (expires, _, _) in self._idempotency.items() if expires <= now]:
            del self._idempotency[key]
        for owner, held in list(self._held_keys.items()):
            self._expire_keys(owner[0], held, now)
            if not held:
                del self._held_keys[owner]
        for channel, entries in list(self._presence.items()):
            for client in [c for c, (expires, _) in entries.items() if expires <= now]:
                del entries[client]
            if not entries:
                del self._presence[channel]
