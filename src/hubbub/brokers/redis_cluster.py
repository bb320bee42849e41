"""The Redis Cluster broker: many hub nodes on one Redis Cluster (Redis >= 7, asyncio only).

Install with ``pip install 'hubbub[redis]'``. Keys, Lua scripts and the stored
format are those of :mod:`hubbub.brokers.redis`: every key of a channel carries
the channel's hash tag ``{<n>:<channel>}``, so all of them live in one slot and
each script (publish, history, presence, idempotency) runs on the channel's
shard. Publications travel by *sharded* pub/sub: the publish script ends with
``SPUBLISH`` (allowed in Lua since Redis 7.0), so pub/sub order is stream order,
and a publication reaches only the nodes of its shard instead of being
broadcast over the cluster bus as classic ``PUBLISH`` is.

Each hub node holds one ``SSUBSCRIBE`` connection per shard primary that serves
one of its channels (:mod:`._redis_shard`), checked with ``PING`` and
reconnected with back-off like the single-Redis link. When a slot moves
(resharding, a failover: the server sends ``SUNSUBSCRIBE`` on its own) or a
primary's link drops, the broker re-reads the cluster's topology, subscribes
the affected channels on their new primary and then reports them as possibly
lost, so the hub repairs them from history. A shard that is down delays only
its own channels: calls for them fail with :class:`hubbub.BrokerUnavailable`
within ``timeout``, the other shards keep flowing.

Commands go through redis-py's ``RedisCluster`` (which follows ``MOVED`` and
``ASK``); at most ``max_connections`` are in flight at once per node, and a call
that finds them all busy waits for one within ``timeout``.

Why not redis-py's own sharded pub/sub (``RedisCluster.pubsub().ssubscribe``):
it resubscribes moved channels by itself in tasks it creates (no report that
publications may have been lost in between, so no repair from history), reads
the shards by polling them one after the other, and runs outside the hub's task
group. The link here reuses the single-Redis link instead.
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import anyio
from anyio.abc import TaskGroup
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .._errors import BrokerUnavailable
from ._base import IDEMPOTENCY_KEYS, Broker, Capability, LossHandler, PublicationHandler
from ._redis_commands import RedisCommands
from ._redis_format import SPUBLISH, key
from ._redis_shard import ShardLink

__all__ = ["RedisClusterBroker"]

logger = logging.getLogger("hubbub.redis")

MAX_CONNECTIONS: Final = 50
"""Commands in flight at once per node (:meth:`RedisClusterBroker.from_url`'s default)."""

_SCHEMES: Final = {"redis+cluster": False, "rediss+cluster": True}


class RedisClusterBroker(RedisCommands, Broker):
    """Carries publications between hub nodes through a Redis Cluster (asyncio only).

    The same guarantees as :class:`~hubbub.brokers.redis.RedisBroker`, per
    channel: offsets and epochs from one Lua script on the channel's shard,
    recovery from its stream, gap repair after a lost link or a moved slot, and
    :class:`hubbub.BrokerUnavailable` within ``timeout`` when the channel's shard
    cannot be reached.

    Run the cluster with ``cluster-require-full-coverage no``: otherwise Redis
    refuses commands for *every* slot while one shard is down.

    ``prefix``, ``timeout``, ``health_check_interval``, ``reconnect_delay``,
    ``max_reconnect_delay``, ``max_connections`` and ``idempotency_keys`` are as
    for :class:`~hubbub.brokers.redis.RedisBroker`; ``max_connections`` defaults
    to the client's per-node pool size.

    Args:
        client: a ``redis.asyncio.RedisCluster``; closed on :meth:`stop` when the
            broker built it (:meth:`from_url`).
    """

    capabilities = frozenset(Capability)

    def __init__(
        self,
        client: RedisCluster,
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
        if not isinstance(client, RedisCluster):
            raise TypeError("client must be a redis.asyncio.RedisCluster")
        self._init_commands(
            client,
            SPUBLISH,
            prefix=prefix,
            timeout=timeout,
            health_check_interval=health_check_interval,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            max_connections=max_connections,
            pool_size=client.nodes_manager.connection_kwargs.get("max_connections", 100),
            idempotency_keys=idempotency_keys,
        )
        self._close_client = close_client
        self._handler: PublicationHandler | None = None
        self._lost: LossHandler | None = None
        self._task_group: TaskGroup | None = None
        self._shards: dict[str, ShardLink] = {}
        self._retired: list[ShardLink] = []
        self._topology_lock = anyio.Lock()
        self._shards_lock = anyio.Lock()
        self._refreshed = -1e9
        self._moved = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisClusterBroker:
        """A broker for ``redis+cluster://[user:password@]host:port[,host:port...]``
        (``rediss+cluster://`` for TLS).

        Any node will do as a start; more are tried if the first is down. The
        query parameters are those of :meth:`RedisBroker.from_url
        <hubbub.brokers.redis.RedisBroker.from_url>` (``prefix``, ``timeout``,
        ``health_check_interval``, ``max_connections``, ``idempotency_keys``; the
        others go to redis-py). A cluster has no database number.
        """
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in _SCHEMES:
            raise ValueError(f"not a Redis Cluster URL: {url!r}")
        parts = urlsplit("redis://" + rest)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        nodes = []
        for address in hosts.split(","):
            host, colon, port = address.rpartition(":")
            if not colon or not port.isdigit():
                host, port = address, "6379"
            if not host:
                raise ValueError(f"a Redis Cluster URL needs host:port, got {address!r}")
            nodes.append(ClusterNode(host.strip("[]"), int(port)))
        if parts.path not in ("", "/", "/0"):
            raise ValueError("a Redis Cluster has no database number: leave the path out")
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
        timeout = float(options.get("timeout", 2.0))
        options.setdefault("max_connections", MAX_CONNECTIONS)
        if options["max_connections"] < 1:
            raise ValueError("max_connections must be at least 1")
        # redis-py's own URL parser reads the remaining options (and the user info).
        auth = f"{userinfo}@" if userinfo else ""
        first = f"{nodes[0].host}:{nodes[0].port}"
        kwargs: dict[str, Any] = dict(parse_url(f"redis://{auth}{first}/?{urlencode(query)}"))
        for name in ("host", "port", "db", "connection_class"):
            kwargs.pop(name, None)
        if userinfo:
            user, _, password = userinfo.partition(":")
            kwargs["username"] = unquote(user) or None
            kwargs["password"] = unquote(password) or None
        client = RedisCluster(
            startup_nodes=nodes,
            require_full_coverage=False,
            max_connections=options["max_connections"],
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            ssl=_SCHEMES[scheme.lower()],
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            **kwargs,
        )
        return cls(client, close_client=True, **options)

    def __repr__(self) -> str:
        return f"<RedisClusterBroker prefix={self._prefix!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        """Read the cluster's topology and connect a sharded pub/sub link to every primary.

        Returns once the first attempts are over: a hub starts while the cluster
        is down, reports it through :meth:`ready`, and the links keep
        reconnecting in the background.

        Raises:
            RuntimeError: already started, or no ``task_group``.
        """
        if self._task_group is not None:
            raise RuntimeError("RedisClusterBroker is already started (one hub per broker)")
        if task_group is None:
            raise RuntimeError(
                "RedisClusterBroker runs background tasks and needs a task group to own "
                "them: use 'async with broker.run(handler, lost):' or pass one to start()"
            )
        self._handler, self._lost, self._task_group = handler, lost, task_group
        if await self._refresh(force=True):
            for node in self._client.get_primaries():
                await self._shard(node)
        else:
            logger.warning(
                "Redis Cluster unreachable at start; retrying when a channel is subscribed"
            )

    def _started(self) -> bool:
        return self._task_group is not None

    async def stop(self) -> None:
        self._handler = self._lost = None
        if self._task_group is None:
            return
        self._task_group = None
        links = [*self._shards.values(), *self._retired]
        self._shards.clear()
        self._retired.clear()
        for link in links:
            link.stop_delivering()
        for link in links:
            await link._link_task.stop(self._timeout + 1.0)
        if self._close_client:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._timeout):
                await self._client.aclose()

    async def ready(self) -> bool:
        """Whether every primary's pub/sub link is up and the cluster answers ``PING``."""
        links = list(self._shards.values())
        if not links or not all(link.up for link in links):
            return False
        try:
            await self._call(self._client.ping)
        except BrokerUnavailable:
            return False
        return True

    @property
    def outages(self) -> int:
        """Times a pub/sub link went down (read by ``/metrics``)."""
        return sum(link.outages for link in [*self._shards.values(), *self._retired])

    @property
    def reconnects(self) -> int:
        """Times a pub/sub link came back after an outage (read by ``/metrics``)."""
        return sum(link.reconnects for link in [*self._shards.values(), *self._retired])

    # -- node subscriptions ------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if self._task_group is None:
            raise RuntimeError("RedisClusterBroker is not started")
        node = self._owner(channel)
        if node is None:
            await self._follow_topology()
            node = self._owner(channel)
            if node is None:
                raise BrokerUnavailable("no Redis Cluster node serves the channel's slot")
        link = await self._shard(node)
        await link._subscribe_on_link(channel)

    async def unsubscribe(self, channel: str) -> None:
        for link in list(self._shards.values()):
            if channel in link._channels:
                await link._unsubscribe_on_link(channel)

    # -- topology ----------------------------------------------------------------------------

    def _owner(self, channel: str) -> ClusterNode | None:
        """The primary serving the channel's slot, as last read (None: unknown)."""
        slot = self._client.keyslot(key(self._prefix, channel, "pub"))
        try:
            node: ClusterNode = self._client.nodes_manager.get_node_from_slot(slot)
        except RedisError:
            return None
        return node

    async def _shard(self, node: ClusterNode) -> ShardLink:
        """The link to ``node``, started (first attempt awaited) if there was none."""
        async with self._shards_lock:
            link = self._shards.get(node.name)
            if link is None:
                if self._task_group is None:
                    raise BrokerUnavailable("the broker is stopping")
                link = ShardLink(self, node)
                self._shards[node.name] = link
                await link._link_task.start(self._task_group, "RedisClusterBroker")
            return link

    def _topology_moved(self) -> None:
        """A link saw a slot move: the next refresh must read the topology anew."""
        self._moved = True

    async def _refresh(self, *, force: bool = False) -> bool:
        """Re-read the cluster's slots (bounded by ``timeout``); False if no node answered."""
        async with self._topology_lock:
            now = anyio.current_time()
            if not force and not self._moved and now - self._refreshed < self._delay:
                return True  # another link just did
            try:
                with anyio.fail_after(self._timeout):
                    await self._client.nodes_manager.initialize()
            except (TimeoutError, RedisError, OSError) as exc:
                logger.debug("could not read the Redis Cluster topology: %s", exc)
                return False
            self._refreshed = anyio.current_time()
            self._moved = False
            return True

    async def _follow_topology(self) -> None:
        """Re-read the topology, then move every channel whose slot changed primary to
        that primary's link (which reports it lost once subscribed) and retire links to
        nodes that no longer serve anything."""
        if not await self._refresh():
            return
        moves: dict[str, list[str]] = {}
        for link in list(self._shards.values()):
            for channel in link.channels():
                node = self._owner(channel)
                if node is None or node.name == link.name:
                    continue
                link.release(channel)
                moves.setdefault(node.name, []).append(channel)
                if node.name not in self._shards:
                    await self._shard(node)
        for name, channels in moves.items():
            target = self._shards.get(name)
            if target is not None:
                logger.warning(
                    "Redis Cluster pub/sub link restored for %d channel(s) on the primary %s "
                    "(their slot moved there); publications may have been lost meanwhile",
                    len(channels),
                    name,
                    extra={"event": "broker_moved", "primary": name, "channels": len(channels)},
                )
                await target.adopt(channels)
        primaries = {node.name for node in self._client.get_primaries()}
        for name, link in list(self._shards.items()):
            if name not in primaries and not link.channels():
                del self._shards[name]
                link.retired = True
                self._retired.append(link)
                if link._link is not None:
                    link._link.fail()  # its pinger ends the connection
                logger.info("Redis Cluster node %s is no longer a primary; its link ends", name)
