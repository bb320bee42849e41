"""The Redis broker's pub/sub link: one connection per node, kept up for the broker's life.

The link subscribes every channel of the node once, delivers what arrives (its
own publications included), is checked with ``PING`` every
``health_check_interval``, and when it drops reconnects with exponential
back-off and jitter, resubscribes everything and then tells the hub which
channels may have lost publications. It talks RESP2 on a connection of its
own, outside the command pool.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import anyio
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from .._errors import BrokerUnavailable
from ._base import LossHandler, PublicationHandler
from ._link import LinkTask
from ._redis_format import channel_of, decode_envelope, key

__all__ = ["Link", "LinkDown", "PubSubLink", "Waiter"]

logger = logging.getLogger("hubbub.redis")

SUBSCRIBE_BATCH: Final = 500
"""Channels per ``SUBSCRIBE`` when a link resubscribes a node's channels."""


class LinkDown(Exception):
    """The pub/sub link failed; the reader reconnects."""


class Waiter:
    """A pub/sub command waiting for Redis to confirm it."""

    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.failed = False


class Link:
    """One connected pub/sub connection and what it is waiting for."""

    __slots__ = ("conn", "lock", "pending", "pong", "received", "up")

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.lock = anyio.Lock()
        # Redis confirms (un)subscriptions in the order they were sent.
        self.pending: deque[tuple[bytes, Waiter | None]] = deque()
        self.pong = anyio.Event()
        self.received = 0  # replies read: a link busy delivering is alive
        self.up = False

    def fail(self) -> None:
        self.up = False
        for _, waiter in self.pending:
            if waiter is not None:
                waiter.failed = True
                waiter.done.set()
        self.pending.clear()
        self.pong.set()


class PubSubLink:
    """The pub/sub half of :class:`~hubbub.brokers.redis.RedisBroker`.

    A mixin: it shares the broker's state (declared below, set by the broker's
    ``__init__``), so the broker's subscribe and the link's resubscribe see one
    set of channels and one link.
    """

    _client: Redis
    _prefix: str
    _prefix_bytes: bytes
    _timeout: float
    _health: float
    _delay: float
    _max_delay: float
    _handler: PublicationHandler | None
    _lost: LossHandler | None
    _link_task: LinkTask
    _channels: set[str]
    _link: Link | None
    outages: int
    reconnects: int

    async def _send(
        self, link: Link, command: str, channels: Sequence[str], waiter: Waiter | None
    ) -> None:
        """Send a (UN)SUBSCRIBE on the link; the caller holds ``link.lock``."""
        if not link.conn.is_connected:
            raise BrokerUnavailable("the Redis pub/sub link is down")
        names = [key(self._prefix, c, "pub") for c in channels]
        kind = b"subscribe" if command == "SUBSCRIBE" else b"unsubscribe"
        for i in range(len(names)):
            link.pending.append((kind, waiter if i == len(names) - 1 else None))
        try:
            with anyio.fail_after(self._timeout):
                await link.conn.send_command(command, *names, check_health=False)
        except (TimeoutError, RedisError, OSError) as exc:
            link.fail()
            logger.debug("the Redis pub/sub link failed: %s", exc)
            raise BrokerUnavailable("the Redis pub/sub link failed") from None

    async def _run_link(self) -> None:
        """Keep the pub/sub link up for the broker's life: connect, resubscribe, read, repeat."""
        attempt = 0
        outage: float | None = None
        while True:
            conn = self._pubsub_connection()
            link = Link(conn)
            try:
                channels = await self._connect(link)
                self._link = link
                self._link_task.attempted()
                if outage is not None:
                    self.reconnects += 1
                    down = anyio.current_time() - outage
                    logger.warning(
                        "Redis pub/sub link restored after %.1f s; resubscribed %d channel(s)",
                        down,
                        len(channels),
                        extra={"event": "broker_up", "outage": round(down, 3)},
                    )
                    outage = None
                    if channels and self._lost is not None:
                        self._lost(channels)
                else:
                    logger.info("Redis pub/sub link up")
                attempt = 0
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pinger, link)
                    await self._reader(link)
            except* _LINK_ERRORS as group:
                if outage is None:
                    outage = anyio.current_time()
                    self.outages += 1
                    exc = _first(group)
                    logger.warning(
                        "Redis pub/sub link down (%s); publications may be lost until it is back",
                        str(exc) or type(exc).__name__,
                        extra={"event": "broker_down", "error": type(exc).__name__},
                    )
            except* Exception:
                # A bug must not leave the node deaf: log it and rebuild the link.
                if outage is None:
                    outage = anyio.current_time()
                    self.outages += 1
                logger.exception("Redis pub/sub link failed unexpectedly; reconnecting")
            finally:
                link.fail()
                if self._link is link:
                    self._link = None
                with anyio.CancelScope(shield=True):
                    await conn.disconnect(nowait=True)
            self._link_task.attempted()
            delay = min(self._max_delay, self._delay * 2**attempt)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay * random.uniform(0.5, 1.0))

    def _pubsub_connection(self) -> AbstractConnection:
        """A new, unconnected connection like the client's, speaking RESP2.

        RESP2 delivers pub/sub messages as plain replies; under RESP3 redis-py
        would hand them to its push handler instead of to our reader.
        """
        pool = self._client.connection_pool
        kwargs = {
            k: v for k, v in pool.connection_kwargs.items() if not k.startswith("maint_notif")
        }
        kwargs["protocol"] = 2
        conn: AbstractConnection = pool.connection_class(**kwargs)
        return conn

    async def _connect(self, link: Link) -> list[str]:
        """Connect and subscribe every channel of this node; return them once confirmed."""
        with anyio.fail_after(self._timeout):
            await link.conn.connect()  # type: ignore[no-untyped-call]
        channels = sorted(self._channels)
        for i in range(0, len(channels), SUBSCRIBE_BATCH):
            waiter = Waiter()
            async with link.lock:
                await self._send(link, "SUBSCRIBE", channels[i : i + SUBSCRIBE_BATCH], waiter)
            # Each batch is confirmed within ``timeout``: resubscribing takes longer the
            # more channels a node serves, so one deadline for all would, past some
            # count, never be met and the link would never come back.
            with anyio.fail_after(self._timeout):
                while not waiter.done.is_set():
                    await self._read_one(link)
            if waiter.failed:
                raise LinkDown("resubscribing failed")
        async with link.lock:
            # Channels unsubscribed while the link was coming up.
            stale = [c for c in channels if c not in self._channels]
            if stale:
                await self._send(link, "UNSUBSCRIBE", stale, None)
            link.up = True
        return [c for c in channels if c in self._channels]

    async def _pinger(self, link: Link) -> None:
        """PING the link every ``health_check_interval``; nothing back within ``timeout``: down.

        Any reply counts, not only the PONG: on a link busy with publications the
        PONG may queue behind them for longer than ``timeout``.
        """
        while True:
            await anyio.sleep(self._health)
            link.pong = anyio.Event()
            received = link.received
            async with link.lock:
                try:
                    with anyio.fail_after(self._timeout):
                        await link.conn.send_command("PING", check_health=False)
                except (TimeoutError, RedisError, OSError) as exc:
                    raise LinkDown(f"PING failed: {exc}") from None
            with anyio.move_on_after(self._timeout):
                await link.pong.wait()
            if link.up and (link.pong.is_set() or link.received != received):
                continue
            raise LinkDown(f"no PONG within {self._timeout} s")

    async def _reader(self, link: Link) -> None:
        while True:
            await self._read_one(link)

    async def _read_one(self, link: Link) -> None:
        try:
            reply = await link.conn.read_response(timeout=math.inf, disconnect_on_error=False)
        except (RedisError, OSError) as exc:
            raise LinkDown(str(exc) or type(exc).__name__) from None
        link.received += 1
        if reply == b"PONG":  # a PING answered before the first subscription
            link.pong.set()
            return
        if not isinstance(reply, list) or not reply:
            logger.warning("dropped an unexpected reply on the pub/sub link: %.80r", reply)
            return
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            self._deliver(reply[1], reply[2])
        elif kind in (b"subscribe", b"unsubscribe"):
            if link.pending and link.pending[0][0] == kind:
                _, waiter = link.pending.popleft()
                if waiter is not None:
                    waiter.done.set()
        elif kind == b"pong":
            link.pong.set()

    def _deliver(self, raw_channel: Any, envelope: Any) -> None:
        handler = self._handler
        if handler is None or not isinstance(raw_channel, bytes):
            return
        channel = channel_of(self._prefix_bytes, raw_channel)
        if channel is None or channel not in self._channels:
            return  # unsubscribed while it was in flight
        publication = decode_envelope(envelope, channel)
        if publication is None:
            return
        try:
            handler(publication)
        except Exception:
            logger.exception("the hub's handler failed on a publication of %r", channel)


_LINK_ERRORS: Final = (LinkDown, TimeoutError, RedisError, OSError, BrokerUnavailable)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
