"""The Redis broker: many hub nodes on one Redis (asyncio only).

Install with ``pip install 'hubbub[redis]'``. Every key and pub/sub channel of a
hub channel starts with the configurable prefix (default ``hubbub:``) and the
channel's *tag* ``{<n>:<channel>}``, where ``<n>`` is the length of the
channel name in UTF-8 bytes. The length makes the scheme unambiguous whatever
the name contains (``a:b`` and ``a`` plus ``b`` can no longer meet), and the
braces are a Redis Cluster hash tag: all keys of one channel hash to one slot.
Under ``<prefix>{<n>:<channel>}``:

- ``:meta`` hash: the stream's ``offset`` and ``epoch``; it expires with the
  stream, so an expired stream comes back under a new epoch;
- ``:stream`` Redis Stream: the kept history, entry id ``<offset>-0``, capped
  at the history size (``MAXLEN``) and expiring ``ttl`` after the last publish;
- ``:pub`` pub/sub channel: live publications;
- ``:presence`` sorted set (client → lease expiry, Redis server time in ms) and
  ``:presence-info`` hash (client → who);
- ``:idem:<key>``: the position (``"<offset> <epoch>"``, ``"- -"`` without
  history) first published under an idempotency key, for its window; and
  ``:idem-by:<publisher>`` sorted set: the keys one publisher holds in the
  channel (key → expiry), which caps them.

One Lua script per publish checks the idempotency key, increments the offset,
appends to the stream and publishes, so pub/sub order is stream order on every
node. Each node holds one pub/sub connection, subscribes to a channel once and
delivers only what arrives there (its own publications included, so nothing is
delivered twice). The link is checked with ``PING`` every
``health_check_interval``; when it drops, the broker logs it, reconnects with
exponential back-off and jitter, resubscribes every channel and then tells the
hub which channels may have lost publications, so the hub repairs them from
history.

Commands go through a pool of at most ``max_connections`` connections; a call
that finds them all busy waits for one within ``timeout`` (redis-py's default
pool would refuse at once, which looked like an outage under load).

Everything stored or published is plain bytes in hubbub's own format (a short
text header and the msgspec MessagePack encoding of :class:`Publication`);
nothing read from Redis is unpickled or evaluated, and anything that does not
parse is dropped with a log line.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import msgspec
from anyio.abc import TaskGroup
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError, ResponseError

from .._errors import BrokerUnavailable, InternalError, RateLimited, StreamGone
from ..messages import CODECS_BY_NAME, ClientInfo, Position
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
from ._link import LinkTask

__all__ = ["MAX_CONNECTIONS", "RedisBroker"]

logger = logging.getLogger("hubbub.redis")

# A stream first created by a read (a subscribe before any publish) keeps its
# epoch this long without publications, as in the memory broker.
_EMPTY_STREAM_TTL_MS: Final = 300_000
_T = TypeVar("_T")
_BUSY_LOG_EVERY: Final = 10.0

MAX_CONNECTIONS: Final = 50
"""Commands in flight at once per node (:meth:`RedisBroker.from_url`'s pool size)."""
_SUBSCRIBE_BATCH: Final = 500
_TAG: Final = b"h1"

_ENCODER: Final = msgspec.msgpack.Encoder()
_PUBLICATION: Final = msgspec.msgpack.Decoder(Publication)
_CLIENT_INFO: Final = msgspec.msgpack.Decoder(ClientInfo)

# KEYS: meta, stream, idem, idem-by.  ARGV: pub/sub channel, body, history (0/1),
# size, ttl ms, new epoch, idempotency window ms (0: none), idempotency key, cap.
# Returns {status, position}: status 0 published, 1 the key was seen (nothing
# published), 2 the publisher holds ``cap`` keys in the channel (nothing
# published); position "<offset> <epoch>" ("- -" without history).
_PUBLISH: Final = """
local window = tonumber(ARGV[7])
local now
if window > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {1, seen} end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[9]) then return {2, ''} end
end
local position
if ARGV[3] == '1' then
  local epoch = redis.call('HGET', KEYS[1], 'epoch')
  local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
  if not epoch or not offset then
    epoch = ARGV[6]
    offset = 0
    redis.call('DEL', KEYS[2])
  end
  offset = offset + 1
  local id = string.format('%d-0', offset)
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', offset)
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[4], id, 'd', ARGV[2])
  if type(ok) == 'table' and ok.err then
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], id, 'd', ARGV[2])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  position = string.format('%d', offset) .. ' ' .. epoch
else
  position = '- -'
end
if window > 0 then
  redis.call('SET', KEYS[3], position, 'PX', window)
  redis.call('ZADD', KEYS[4], now + window, ARGV[8])
  local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[4], last[2])
end
redis.call('PUBLISH', ARGV[1], 'h1 ' .. position .. ' ' .. ARGV[2])
return {0, position}
"""

# KEYS: meta, stream.  ARGV: new epoch, empty-stream ttl ms, since epoch ("" for
# none), range command (XRANGE, XREVRANGE or "" for none), start, end, count
# ("" for all).  Returns {epoch, offset, entries}.
_HISTORY: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
if not epoch or not offset then
  epoch = ARGV[1]
  offset = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = string.format('%d', offset)
if ARGV[3] ~= '' and ARGV[3] ~= epoch then return {epoch, top, false} end
if ARGV[4] == '' then return {epoch, top, {}} end
local entries
if ARGV[7] == '' then
  entries = redis.call(ARGV[4], KEYS[2], ARGV[5], ARGV[6])
else
  entries = redis.call(ARGV[4], KEYS[2], ARGV[5], ARGV[6], 'COUNT', ARGV[7])
end
return {epoch, top, entries}
"""

_TIME: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Lua's unpack() fails above ~8,000 values ("too many results to unpack"): lists
# of clients go to variadic commands in chunks.
_CHUNK: Final = 1000

_SWEEP: Final = f"""
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for i = 1, #expired, {_CHUNK} do
    redis.call('HDEL', KEYS[2], unpack(expired, i, math.min(i + {_CHUNK - 1}, #expired)))
  end
end
"""

# KEYS: zset, hash.  ARGV: client, info, ttl ms.
_PRESENCE_SET: Final = (
    _TIME
    + _SWEEP
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
"""
)

# KEYS: zset, hash.  ARGV: client.
_PRESENCE_REMOVE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1], KEYS[2]) end
return 1
"""

# KEYS: zset, hash.  Returns {client, info, client, info, ...}.
_PRESENCE_GET: Final = (
    _TIME
    + _SWEEP
    + f"""
local clients = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {{}}
for i = 1, #clients, {_CHUNK} do
  local last = math.min(i + {_CHUNK - 1}, #clients)
  local infos = redis.call('HMGET', KEYS[2], unpack(clients, i, last))
  for j = 1, last - i + 1 do
    if infos[j] then
      out[#out + 1] = clients[i + j - 1]
      out[#out + 1] = infos[j]
    end
  end
end
return out
"""
)


class _LinkDown(Exception):
    """The pub/sub link failed; the reader reconnects."""


class _Waiter:
    """A pub/sub command waiting for Redis to confirm it."""

    __slots__ = ("done", "failed")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.failed = False


class _Link:
    """One connected pub/sub connection and what it is waiting for."""

    __slots__ = ("conn", "lock", "pending", "pong", "received", "up")

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.lock = anyio.Lock()
        # Redis confirms (un)subscriptions in the order they were sent.
        self.pending: deque[tuple[bytes, _Waiter | None]] = deque()
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


class RedisBroker(Broker):
    """Carries publications between hub nodes through one Redis (asyncio only).

    hubbub's core runs on asyncio and trio; this broker uses ``redis.asyncio``
    and therefore runs on asyncio only.

    Every Redis call is bounded by ``timeout`` and raises
    :class:`hubbub.BrokerUnavailable` when Redis cannot be reached in time;
    publishing while Redis is down fails at once instead of queueing. The hub
    starts even while Redis is down: :meth:`ready` reports it, and the broker
    keeps reconnecting in the background.

    At most ``max_connections`` commands are in flight at once (the pub/sub
    link is not counted); more wait for a free connection, within the same
    ``timeout``. A call still waiting when it runs out fails with
    :class:`hubbub.BrokerUnavailable` saying the broker is *busy*, never that
    Redis is unreachable.

    Args:
        client: a ``redis.asyncio.Redis`` client; the broker closes it on
            :meth:`stop` when it built it itself (:meth:`from_url`).
        prefix: prefix of every key and pub/sub channel.
        timeout: seconds any Redis call may take.
        health_check_interval: seconds between ``PING``s on the pub/sub link;
            a link that does not answer within ``timeout`` is dropped and
            reconnected.
        reconnect_delay: first back-off delay in seconds after the link drops.
        max_reconnect_delay: the longest back-off delay.
        max_connections: commands in flight at once. ``None``: the client's pool
            size (:meth:`from_url` builds a waiting pool of 50). A client you
            pass keeps its own pool: give it at least this many connections
            (redis-py's default pool refuses instead of waiting when full).
        idempotency_keys: idempotency keys one publisher (a user, an
            anonymous connection, or the server) may hold per channel within
            the window; a publish with a new key beyond it is refused with
            :class:`hubbub.RateLimited` (429) and publishes nothing.
    """

    capabilities = frozenset(Capability)

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "hubbub:",
        timeout: float = 2.0,
        health_check_interval: float = 1.0,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        max_connections: int | None = None,
        idempotency_keys: int = IDEMPOTENCY_KEYS,
        close_client: bool = False,
    ) -> None:
        if not isinstance(client, Redis):
            raise TypeError("client must be a redis.asyncio.Redis")
        if timeout <= 0 or health_check_interval <= 0:
            raise ValueError("timeout and health_check_interval must be positive")
        if reconnect_delay <= 0 or max_reconnect_delay < reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= max_reconnect_delay")
        pool_size = client.connection_pool.max_connections
        if max_connections is None:
            max_connections = pool_size
        if max_connections < 1 or idempotency_keys < 1:
            raise ValueError("max_connections and idempotency_keys must be at least 1")
        self._client = client
        self._prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._max_connections = max_connections
        # Never more calls in flight than the pool holds: a full pool that refuses
        # (redis-py's default) would otherwise turn load into "unreachable".
        self._slots = anyio.Semaphore(min(max_connections, pool_size))
        self._idempotency_keys = idempotency_keys
        self._busy_logged = -math.inf
        self._timeout = timeout
        self._health = health_check_interval
        self._delay = reconnect_delay
        self._max_delay = max_reconnect_delay
        self._close_client = close_client
        self._publish_script = client.register_script(_PUBLISH)
        self._history_script = client.register_script(_HISTORY)
        self._presence_set_script = client.register_script(_PRESENCE_SET)
        self._presence_remove_script = client.register_script(_PRESENCE_REMOVE)
        self._presence_get_script = client.register_script(_PRESENCE_GET)
        self._handler: PublicationHandler | None = None
        self._lost: LossHandler | None = None
        self.outages = 0
        """Times the pub/sub link went down (read by ``/metrics``)."""
        self.reconnects = 0
        """Times the pub/sub link came back after an outage (read by ``/metrics``)."""
        self._link_task = LinkTask(self._run_link, "Redis pub/sub link", logger)
        self._channels: set[str] = set()
        self._link: _Link | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBroker:
        """A broker for ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``).

        Query parameters ``prefix``, ``timeout``, ``health_check_interval``,
        ``max_connections`` (default 50) and ``idempotency_keys`` set the
        options of the same name; the others go to redis-py. The client's pool
        waits (up to ``timeout``) for a free connection instead of refusing.
        """
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        for name, convert in (
            ("prefix", str),
            ("timeout", float),
            ("health_check_interval", float),
            ("max_connections", int),
            ("idempotency_keys", int),
        ):
            if name in query:
                options.setdefault(name, convert(query.pop(name)))
        rest = urlunsplit(parts._replace(query=urlencode(query)))
        timeout = float(options.get("timeout", 2.0))
        options.setdefault("max_connections", MAX_CONNECTIONS)
        if options["max_connections"] < 1:
            raise ValueError("max_connections must be at least 1")
        pool = BlockingConnectionPool.from_url(
            rest,
            max_connections=options["max_connections"],
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry when a pooled connection turns out to be dead
            # (Redis restarted); never on a timeout, which fails the call.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        return cls(Redis.from_pool(pool), close_client=True, **options)

    def __repr__(self) -> str:
        return f"<RedisBroker prefix={self._prefix!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        """Connect the pub/sub link and keep it up until :meth:`stop`.

        Returns once the first connection attempt succeeded or failed: a hub
        starts while Redis is down, reports it through :meth:`ready`, and the
        link keeps reconnecting in the background.

        Args:
            task_group: where the link's task runs (the hub's). Used on its
                own, enter ``async with broker.run(handler, lost):`` instead.

        Raises:
            RuntimeError: already started, or no ``task_group``.
        """
        if self._link_task.running:
            raise RuntimeError("RedisBroker is already started (one hub per broker)")
        self._handler, self._lost = handler, lost
        try:
            await self._link_task.start(task_group, "RedisBroker")
        except RuntimeError:
            self._handler = self._lost = None
            raise

    async def stop(self) -> None:
        self._handler = self._lost = None
        self._channels.clear()
        if not await self._link_task.stop(self._timeout + 1.0):
            return
        if self._close_client:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                await self._client.aclose()

    async def ready(self) -> bool:
        """Whether the pub/sub link is up and Redis answers a ``PING`` in time."""
        link = self._link
        if link is None or not link.up:
            return False
        try:
            await self._call(self._client.ping)
        except BrokerUnavailable:
            return False
        return True

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        if not self._link_task.running:
            raise RuntimeError("RedisBroker is not started")
        channel = publication.channel
        body = _ENCODER.encode(publication)
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
            0 if history is None else max(_ms(history.ttl), 1),
            secrets.token_hex(4),
            0 if idempotency is None else max(_ms(idempotency.window), 1),
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
            offset, epoch = _position(position)
        except (ValueError, TypeError):
            raise InternalError("unreadable position under the idempotency key") from None
        if offset is None:
            return publication
        return msgspec.structs.replace(publication, offset=offset, epoch=epoch)

    # -- node subscriptions ------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if not self._link_task.running:
            raise RuntimeError("RedisBroker is not started")
        link = self._link
        if link is None or not link.up:
            raise BrokerUnavailable("the Redis pub/sub link is down")
        waiter = _Waiter()
        async with link.lock:
            self._channels.add(channel)
            try:
                await self._send(link, "SUBSCRIBE", [channel], waiter)
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

    async def unsubscribe(self, channel: str) -> None:
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
                    await self._send(link, "UNSUBSCRIBE", [channel], None)
                except BrokerUnavailable:
                    pass  # the link is reconnecting; it will not resubscribe the channel

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
            _EMPTY_STREAM_TTL_MS,
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
        epoch = _text(raw_epoch)
        if entries is None:  # Lua false
            raise StreamGone(f"epoch {since.epoch if since else ''!r} is not the stream's epoch")
        publications = []
        for entry in entries:
            publication = _decode_entry(entry, channel, epoch)
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
        args: list[str | bytes | int] = [client, _ENCODER.encode(info), max(_ms(ttl), 1)]
        await self._call(lambda: self._presence_set_script(keys=keys, args=args))

    async def presence_remove(self, channel: str, client: str) -> None:
        keys = self._presence_keys(channel)
        await self._call(lambda: self._presence_remove_script(keys=keys, args=[client]))

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        keys = self._presence_keys(channel)
        flat = await self._call(lambda: self._presence_get_script(keys=keys))
        clients: dict[str, ClientInfo] = {}
        for i in range(0, len(flat) - 1, 2):
            client = _text(flat[i])
            try:
                clients[client] = _CLIENT_INFO.decode(flat[i + 1])
            except (msgspec.DecodeError, RecursionError):
                logger.warning("dropped an unreadable presence entry in %r", channel)
        return clients

    # -- internals: commands -----------------------------------------------------------------

    def _key(self, channel: str, kind: str) -> str:
        """``<prefix>{<n>:<channel>}:<kind>``: see the module's docstring."""
        return f"{self._prefix}{{{len(channel.encode())}:{channel}}}:{kind}"

    def _presence_keys(self, channel: str) -> list[str]:
        return [self._key(channel, "presence"), self._key(channel, "presence-info")]

    def _channel_of(self, name: bytes) -> str | None:
        """The channel of a pub/sub channel name ``<prefix>{<n>:<channel>}:pub``, or None."""
        start = len(self._prefix_bytes)
        if not name.startswith(self._prefix_bytes) or name[start : start + 1] != b"{":
            return None
        length, colon, rest = name[start + 1 :].partition(b":")
        if not colon or not length.isdigit() or rest[int(length) :] != b"}:pub":
            return None
        return rest[: int(length)].decode(errors="replace")

    async def _call(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call (``make()``) within ``timeout``, waiting for a free
        connection first; Redis trouble becomes BrokerUnavailable."""
        waiting = True
        try:
            with anyio.fail_after(self._timeout):
                async with self._slots:
                    waiting = False
                    return await make()
        except TimeoutError:
            if waiting:
                raise self._busy() from None
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

    # -- internals: the pub/sub link ---------------------------------------------------------

    async def _send(
        self, link: _Link, command: str, channels: Sequence[str], waiter: _Waiter | None
    ) -> None:
        """Send a (UN)SUBSCRIBE on the link; the caller holds ``link.lock``."""
        if not link.conn.is_connected:
            raise BrokerUnavailable("the Redis pub/sub link is down")
        names = [self._key(c, "pub") for c in channels]
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
            link = _Link(conn)
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

    async def _connect(self, link: _Link) -> list[str]:
        """Connect and subscribe every channel of this node; return them once confirmed."""
        with anyio.fail_after(self._timeout):
            await link.conn.connect()  # type: ignore[no-untyped-call]
        channels = sorted(self._channels)
        for i in range(0, len(channels), _SUBSCRIBE_BATCH):
            waiter = _Waiter()
            async with link.lock:
                await self._send(link, "SUBSCRIBE", channels[i : i + _SUBSCRIBE_BATCH], waiter)
            # Each batch is confirmed within ``timeout``: resubscribing takes longer the
            # more channels a node serves, so one deadline for all would, past some
            # count, never be met and the link would never come back.
            with anyio.fail_after(self._timeout):
                while not waiter.done.is_set():
                    await self._read_one(link)
            if waiter.failed:
                raise _LinkDown("resubscribing failed")
        async with link.lock:
            # Channels unsubscribed while the link was coming up.
            stale = [c for c in channels if c not in self._channels]
            if stale:
                await self._send(link, "UNSUBSCRIBE", stale, None)
            link.up = True
        return [c for c in channels if c in self._channels]

    async def _pinger(self, link: _Link) -> None:
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
                    raise _LinkDown(f"PING failed: {exc}") from None
            with anyio.move_on_after(self._timeout):
                await link.pong.wait()
            if link.up and (link.pong.is_set() or link.received != received):
                continue
            raise _LinkDown(f"no PONG within {self._timeout} s")

    async def _reader(self, link: _Link) -> None:
        while True:
            await self._read_one(link)

    async def _read_one(self, link: _Link) -> None:
        try:
            reply = await link.conn.read_response(timeout=math.inf, disconnect_on_error=False)
        except (RedisError, OSError) as exc:
            raise _LinkDown(str(exc) or type(exc).__name__) from None
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
        channel = self._channel_of(raw_channel)
        if channel is None or channel not in self._channels:
            return  # unsubscribed while it was in flight
        publication = _decode_envelope(envelope, channel)
        if publication is None:
            return
        try:
            handler(publication)
        except Exception:
            logger.exception("the hub's handler failed on a publication of %r", channel)


_LINK_ERRORS: Final = (_LinkDown, TimeoutError, RedisError, OSError, BrokerUnavailable)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _position(position: Any) -> tuple[int | None, str | None]:
    """``(offset, epoch)`` from ``b"<offset> <epoch>"`` (``b"- -"``: none)."""
    raw = position.encode() if isinstance(position, str) else bytes(position)
    offset, epoch = raw.split(b" ")
    if offset == b"-":
        return None, None
    return int(offset), epoch.decode()


def _decode_envelope(envelope: Any, channel: str) -> Publication | None:
    """A publication from hubbub's pub/sub format, or None (logged) for anything else."""
    try:
        tag, offset, epoch, body = envelope.split(b" ", 3)
        if tag != _TAG:
            raise ValueError("not a hubbub envelope")
        publication = _PUBLICATION.decode(body)
        if publication.channel != channel or publication.codec not in CODECS_BY_NAME:
            raise ValueError("channel or codec does not match")
        if offset != b"-":
            publication = msgspec.structs.replace(
                publication, offset=int(offset), epoch=epoch.decode()
            )
    except (AttributeError, ValueError, TypeError, RecursionError, msgspec.DecodeError) as exc:
        logger.warning("dropped an unreadable publication on %r: %s", channel, exc)
        return None
    return publication


def _decode_entry(entry: Any, channel: str, epoch: str) -> Publication | None:
    """A publication from one stream entry ``[b"<offset>-0", [b"d", body]]``, or None."""
    try:
        entry_id, fields = entry
        offset, _, seq = entry_id.partition(b"-")
        if seq != b"0" or len(fields) != 2 or fields[0] != b"d":
            raise ValueError("not a hubbub stream entry")
        publication = _PUBLICATION.decode(fields[1])
        if publication.channel != channel or publication.codec not in CODECS_BY_NAME:
            raise ValueError("channel or codec does not match")
        return msgspec.structs.replace(publication, offset=int(offset), epoch=epoch)
    except (AttributeError, ValueError, TypeError, RecursionError, msgspec.DecodeError) as exc:
        logger.warning("dropped an unreadable history entry in %r: %s", channel, exc)
        return None
