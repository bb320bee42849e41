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
        # Redis confirms (un)subscriptions in the order they were sent:
        # (reply kind, pub/sub channel name, who waits for it).
        self.pending: deque[tuple[bytes, bytes, Waiter | None]] = deque()
        self.pong = anyio.Event()
        self.received = 0  # replies read: a link busy delivering is alive
        self.up = False

    def fail(self) -> None:
        self.up = False
        for _, _, waiter in self.pending:
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

    # The commands and replies of classic pub/sub; a Redis Cluster shard link uses
    # the sharded ones (SSUBSCRIBE, smessage).
    _SUBSCRIBE: str = "SUBSCRIBE"
    _UNSUBSCRIBE: str = "UNSUBSCRIBE"
    _MESSAGE: bytes = b"message"
    _LINK: str = "Redis pub/sub link"

    async def _subscribe_on_link(self, channel: str) -> None:
        """Subscribe ``channel`` on the link and wait (bounded) for Redis to confirm it."""
        link = self._link
        if link is None or not link.up:
            raise BrokerUnavailable(f"the {self._LINK} is down")
        waiter = Waiter()
        async with link.lock:
            self._channels.add(channel)
            try:
                await self._send(link, self._SUBSCRIBE, [channel], waiter)
            except BrokerUnavailable:
                self._channels.discard(channel)
                raise
        try:
            with anyio.fail_after(self._timeout):
                await waiter.done.wait()
        except TimeoutError:
            waiter.failed = True
        if waiter.failed:
            self._channels.discard(channel)
            raise BrokerUnavailable("Redis did not confirm the subscription")

    async def _unsubscribe_on_link(self, channel: str) -> None:
        """Stop delivering ``channel`` and unsubscribe it on the link if it is up."""
        # Publications still in flight for the channel are dropped by the reader,
        # which delivers only channels in ``_channels``.
        link = self._link
        if link is None:
            self._channels.discard(channel)
            return
        async with link.lock:
            self._channels.discard(channel)
            if link.up:
                try:
                    await self._send(link, self._UNSUBSCRIBE, [channel], None)
                except BrokerUnavailable:
                    pass  # the link is reconnecting; it will not resubscribe the channel

    def _batches(self, channels: list[str]) -> list[list[str]]:
        """The channels to resubscribe, in groups of one command each."""
        return [channels[i : i + SUBSCRIBE_BATCH] for i in range(0, len(channels), SUBSCRIBE_BATCH)]

    async def _before_connect(self, reconnecting: bool) -> bool:
        """Called before each connection attempt; ``False`` ends the link for good."""
        return True

    def _to_report(self, channels: list[str], after_outage: bool) -> list[str]:
        """The channels that may have lost publications once the link is (back) up."""
        return channels if after_outage else []

    def _unsolicited(self, name: bytes) -> None:
        """Redis unsubscribed ``name`` on its own (a cluster moved its slot); one Redis never."""

    async def _send(
        self, link: Link, command: str, channels: Sequence[str], waiter: Waiter | None
    ) -> None:
        """Send a (UN)SUBSCRIBE on the link; the caller holds ``link.lock``."""
        if not link.conn.is_connected:
            raise BrokerUnavailable(f"the {self._LINK} is down")
        names = [key(self._prefix, c, "pub") for c in channels]
        kind = command.lower().encode()
        for i, name in enumerate(names):
            link.pending.append((kind, name.encode(), waiter if i == len(names) - 1 else None))
        try:
            with anyio.fail_after(self._timeout):
                await link.conn.send_command(command, *names, check_health=False)
        except (TimeoutError, RedisError, OSError) as exc:
            link.fail()
            logger.debug("the %s failed: %s", self._LINK, exc)
            raise BrokerUnavailable(f"the {self._LINK} failed") from None

    async def _run_link(self) -> None:
        """Keep the pub/sub link up for the broker's life: connect, resubscribe, read, repeat."""
        attempt = 0
        outage: float | None = None
        reconnecting = False
        while await self._before_connect(reconnecting):
            reconnecting = True
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
                        "%s restored after %.1f s; resubscribed %d channel(s)",
                        self._LINK,
                        down,
                        len(channels),
                        extra={"event": "broker_up", "outage": round(down, 3)},
                    )
                else:
                    logger.info("%s up", self._LINK)
                lost = self._to_report(channels, outage is not None)
                outage = None
                if lost and self._lost is not None:
                    self._lost(lost)
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
                        "%s down (%s); publications may be lost until it is back",
                        self._LINK,
                        str(exc) or type(exc).__name__,
                        extra={"event": "broker_down", "error": type(exc).__name__},
                    )
            except* Exception:
                # A bug must not leave the node deaf: log it and rebuild the link.
                if outage is None:
                    outage = anyio.current_time()
                    self.outages += 1
                logger.exception("%s failed unexpectedly; reconnecting", self._LINK)
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
        for batch in self._batches(channels):
            waiter = Waiter()
            async with link.lock:
                await self._send(link, self._SUBSCRIBE, batch, waiter)
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
                await self._send(link, self._UNSUBSCRIBE, stale, None)
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
        if kind == self._MESSAGE and len(reply) == 3:
            self._deliver(reply[1], reply[2])
        elif kind in (b"subscribe", b"unsubscribe", b"ssubscribe", b"sunsubscribe"):
            name = reply[1] if len(reply) > 1 else b""
            if link.pending and link.pending[0][0] == kind and link.pending[0][1] == name:
                _, _, waiter = link.pending.popleft()
                if waiter is not None:
                    waiter.done.set()
            elif kind in (b"unsubscribe", b"sunsubscribe") and isinstance(name, bytes):
                self._unsolicited(name)
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
