"""The commands both Redis brokers send (one Redis, or a Redis Cluster): publish,
history and presence through the Lua scripts of :mod:`._redis_format`, each call
bounded by the broker's timeout and by its number of connections.

Every script touches the keys of one channel only, which share the channel's
hash tag, so on a cluster each call runs on the channel's shard.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import anyio
import msgspec
from redis.exceptions import (
    ClusterError,
    MaxConnectionsError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from .._errors import BrokerUnavailable, InternalError, RateLimited, StreamGone
from ..messages import ClientInfo, Position
from ._base import (
    HistoryOptions,
    HistoryPage,
    Idempotency,
    Publication,
    publisher,
)
from ._redis_format import (
    CLIENT_INFO,
    EMPTY_STREAM_TTL_MS,
    ENCODER,
    HISTORY,
    PRESENCE_GET,
    PRESENCE_REMOVE,
    PRESENCE_SET,
    decode_entry,
    key,
    ms,
    position_of,
    text,
)

__all__ = ["RedisCommands"]

logger = logging.getLogger("hubbub.redis")

_T = TypeVar("_T")
_BUSY_LOG_EVERY: Final = 10.0
_TRY_AGAIN_DELAY: Final = 0.05
_TTL: Final = "TTL exhausted."  # redis-py's RedisCluster, after 16 redirections or TRYAGAINs


class RedisCommands:
    """Publish, history and presence of a Redis broker (a mixin of the broker class).

    The broker calls :meth:`_init_commands` from its ``__init__`` and says
    whether it is started (:meth:`_started`).
    """

    _client: Any  # redis.asyncio.Redis or redis.asyncio.RedisCluster

    def _init_commands(
        self,
        client: Any,
        publish_script: str,
        *,
        prefix: str,
        timeout: float,
        health_check_interval: float,
        reconnect_delay: float,
        max_reconnect_delay: float,
        max_connections: int | None,
        pool_size: int,
        idempotency_keys: int,
    ) -> None:
        """The options both Redis brokers share, checked in one place."""
        if timeout <= 0 or health_check_interval <= 0:
            raise ValueError("timeout and health_check_interval must be positive")
        if reconnect_delay <= 0 or max_reconnect_delay < reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= max_reconnect_delay")
        if max_connections is None:
            max_connections = pool_size
        if max_connections < 1 or idempotency_keys < 1:
            raise ValueError("max_connections and idempotency_keys must be at least 1")
        self._health = health_check_interval
        self._delay = reconnect_delay
        self._max_delay = max_reconnect_delay
        self._client = client
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._timeout = timeout
        self._max_connections = max_connections
        # Never more calls in flight than the pool holds: a full pool that refuses
        # (redis-py's default) would otherwise turn load into "unreachable".
        self._slots = anyio.Semaphore(min(max_connections, pool_size))
        self._idempotency_keys = idempotency_keys
        self._busy_logged = -math.inf
        self._publish_script = client.register_script(publish_script)
        self._history_script = client.register_script(HISTORY)
        self._presence_set_script = client.register_script(PRESENCE_SET)
        self._presence_remove_script = client.register_script(PRESENCE_REMOVE)
        self._presence_get_script = client.register_script(PRESENCE_GET)

    def _started(self) -> bool:
        raise NotImplementedError

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        if not self._started():
            raise RuntimeError(f"{type(self).__name__} is not started")
        channel = publication.channel
        body = ENCODER.encode(publication)
        keys = [self._key(channel, "meta"), self._key(channel, "stream")]
        if idempotency is None:
            keys += keys
        else:
            keys.append(self._key(channel, "idem:" + idempotency.key))
            keys.append(self._key(channel, "idem-by:" + publisher(publication)))
        args: list[str | bytes | int] = [
            self._key(channel, "pub"),
            body,
            0 if history is None else 1,
            0 if history is None else max(history.size, 1),
            0 if history is None else max(ms(history.ttl), 1),
            secrets.token_hex(4),
            0 if idempotency is None else max(ms(idempotency.window), 1),
            "" if idempotency is None else idempotency.key,
            self._idempotency_keys,
        ]
        status, position = await self._call(lambda: self._publish_script(keys=keys, args=args))
        if int(status) == 2:
            raise RateLimited(
                f"at most {self._idempotency_keys} idempotency keys per publisher in a "
                "channel within the idempotency window; nothing was published"
            )
        try:
            offset, epoch = position_of(position)
        except (ValueError, TypeError):
            raise InternalError("unreadable position under the idempotency key") from None
        if offset is None:
            return publication
        return msgspec.structs.replace(publication, offset=offset, epoch=epoch)

    # -- history -----------------------------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        if limit is not None and limit <= 0:
            command, start, end = "", "", ""
        elif since is not None:
            first = min(max(since.offset, 0) + 1, 2**63 - 1)
            command, start, end = "XRANGE", f"{first}-0", "+"
        elif limit is not None:
            command, start, end = "XREVRANGE", "+", "-"
        else:
            command, start, end = "XRANGE", "-", "+"
        args: list[str | int] = [
            secrets.token_hex(4),
            EMPTY_STREAM_TTL_MS,
            "" if since is None else since.epoch or "\x00",
            command,
            start,
            end,
            "" if limit is None else limit,
        ]
        keys = [self._key(channel, "meta"), self._key(channel, "stream")]
        raw_epoch, raw_offset, entries = await self._call(
            lambda: self._history_script(keys=keys, args=args)
        )
        epoch = text(raw_epoch)
        if entries is None:  # Lua false
            raise StreamGone(f"epoch {since.epoch if since else ''!r} is not the stream's epoch")
        publications = []
        for entry in entries:
            publication = decode_entry(entry, channel, epoch)
            if publication is not None:
                publications.append(publication)
        if command == "XREVRANGE" and not reverse:
            publications.reverse()
        elif command == "XRANGE" and reverse:
            publications.reverse()
        return HistoryPage(publications, Position(offset=int(raw_offset), epoch=epoch))

    # -- presence ----------------------------------------------------------------------------

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        keys = self._presence_keys(channel)
        args: list[str | bytes | int] = [client, ENCODER.encode(info), max(ms(ttl), 1)]
        await self._call(lambda: self._presence_set_script(keys=keys, args=args))

    async def presence_remove(self, channel: str, client: str) -> None:
        keys = self._presence_keys(channel)
        await self._call(lambda: self._presence_remove_script(keys=keys, args=[client]))

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        keys = self._presence_keys(channel)
        flat = await self._call(lambda: self._presence_get_script(keys=keys))
        clients: dict[str, ClientInfo] = {}
        for i in range(0, len(flat) - 1, 2):
            client = text(flat[i])
            try:
                clients[client] = CLIENT_INFO.decode(flat[i + 1])
            except (msgspec.DecodeError, RecursionError):
                logger.warning("dropped an unreadable presence entry in %r", channel)
        return clients

    # -- internals: commands -----------------------------------------------------------------

    def _key(self, channel: str, kind: str) -> str:
        """``<prefix>{<n>:<channel>}:<kind>``: see the module's docstring."""
        return key(self._prefix, channel, kind)

    def _presence_keys(self, channel: str) -> list[str]:
        return [self._key(channel, "presence"), self._key(channel, "presence-info")]

    async def _call(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call (``make()``) within ``timeout``, waiting for a free
        connection first (and for a migrating cluster slot to settle, retrying);
        Redis trouble becomes BrokerUnavailable."""
        waiting = True
        migrating = False
        try:
            with anyio.fail_after(self._timeout):
                async with self._slots:
                    waiting = False
                    while True:
                        try:
                            return await make()
                        except (TryAgainError, ClusterError) as exc:
                            # A cluster slot is migrating and the channel's keys are split
                            # between two nodes for now (-TRYAGAIN): nothing ran. redis-py
                            # gives up after 16 quick tries ("TTL exhausted"); wait for
                            # the end of the migration, within ``timeout``.
                            if not isinstance(exc, TryAgainError) and str(exc) != _TTL:
                                raise
                            migrating = True
                            await anyio.sleep(_TRY_AGAIN_DELAY)
        except TimeoutError:
            if waiting:
                raise self._busy() from None
            if migrating:
                raise BrokerUnavailable(
                    f"the channel's Redis Cluster slot was still migrating after {self._timeout} s"
                ) from None
            raise BrokerUnavailable(f"Redis did not answer within {self._timeout} s") from None
        except ResponseError as exc:
            logger.warning("Redis refused a command: %s", exc)
            raise InternalError("Redis refused a command") from None
        except (RedisError, OSError) as exc:
            if isinstance(exc, MaxConnectionsError) or str(exc) == "No connection available.":
                # The client's pool is full (shared with other code, or smaller than
                # max_connections): load, not an outage.
                raise self._busy() from None
            # The detail (host, port, errno) stays in the (debug) log, out of 503 replies;
            # the link task logs the outage itself once, at WARNING.
            logger.debug("Redis is unreachable: %s", exc)
            raise BrokerUnavailable("Redis is unreachable") from None

    def _busy(self) -> BrokerUnavailable:
        now = anyio.current_time()
        if now >= self._busy_logged + _BUSY_LOG_EVERY:  # one warning per burst, not per call
            self._busy_logged = now
            logger.warning(
                "Redis broker busy: no free connection within %s s (max_connections=%d)",
                self._timeout,
                self._max_connections,
                extra={"event": "broker_busy"},
            )
        return BrokerUnavailable(
            f"the Redis broker is busy: no free connection within {self._timeout} s"
        )
