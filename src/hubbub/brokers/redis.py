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
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .._errors import BrokerUnavailable
from ._base import (
    IDEMPOTENCY_KEYS,
    Broker,
    Capability,
    LossHandler,
    PublicationHandler,
)
from ._link import LinkTask
from ._redis_commands import RedisCommands
from ._redis_format import (
    PUBLISH,
)
from ._redis_link import Link, PubSubLink

__all__ = ["MAX_CONNECTIONS", "RedisBroker"]

logger = logging.getLogger("hubbub.redis")

_T = TypeVar("_T")
_BUSY_LOG_EVERY: Final = 10.0

MAX_CONNECTIONS: Final = 50
"""Commands in flight at once per node (:meth:`RedisBroker.from_url`'s pool size)."""


class RedisBroker(PubSubLink, RedisCommands, Broker):
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
        self._init_commands(
            client,
            PUBLISH,
            prefix=prefix,
            timeout=timeout,
            health_check_interval=health_check_interval,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            max_connections=max_connections,
            pool_size=client.connection_pool.max_connections,
            idempotency_keys=idempotency_keys,
        )
        self._close_client = close_client
        self._handler: PublicationHandler | None = None
        self._lost: LossHandler | None = None
        self.outages = 0
        """Times the pub/sub link went down (read by ``/metrics``)."""
        self.reconnects = 0
        """Times the pub/sub link came back after an outage (read by ``/metrics``)."""
        self._link_task = LinkTask(self._run_link, "Redis pub/sub link", logger)
        self._channels: set[str] = set()
        self._link: Link | None = None

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

    def _started(self) -> bool:
        return self._link_task.running

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

    # -- node subscriptions ------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if not self._link_task.running:
            raise RuntimeError("RedisBroker is not started")
        await self._subscribe_on_link(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._unsubscribe_on_link(channel)
