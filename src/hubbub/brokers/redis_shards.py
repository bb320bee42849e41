"""The sharded Redis broker: channels spread over several independent Redis servers
(asyncio only).

Install with ``pip install 'hubbub[redis]'``. For users without Redis Cluster
who outgrow one Redis: each channel lives on exactly one *shard* (a
:class:`~hubbub.brokers.redis.RedisBroker`, so one Redis, or one behind
Sentinel), chosen by rendezvous (highest random weight) hashing of the channel
name over the shards' names. Everything of a channel — its stream, pub/sub,
presence and idempotency keys — is on its shard, so the guarantees of one Redis
hold per channel, and the scripts are the single-Redis ones.

Why rendezvous hashing: every node computes the same placement from the same
list of names with no shared state, in any order the list is given, and adding
an N+1st shard moves only the channels that now score highest on it — about
1/(N+1) of them, all onto the new shard; removing a shard moves only its own
channels. A moved channel starts over on its new shard (a new epoch: clients
recovering from the old shard's positions get ``recovered: false``), and its
history stays behind on the old shard until it expires.

Each shard keeps its own pub/sub link, connection pool and reconnection: a shard
that is down or frozen makes calls for *its* channels fail with
:class:`hubbub.BrokerUnavailable` within ``timeout``, and the other shards keep
flowing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import anyio
from anyio.abc import TaskGroup

from ..messages import ClientInfo, Position
from ._base import (
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    LossHandler,
    Publication,
    PublicationHandler,
)
from ._redis_url import BROKER_OPTIONS, broker_options, redis_options, split
from .redis import RedisBroker

__all__ = ["ShardedRedisBroker", "rendezvous"]

logger = logging.getLogger("hubbub.redis")

_SCHEMES: Final = {"redis+shards": False, "rediss+shards": True}


def _score(shard: str, channel: str) -> int:
    name = shard.encode()
    digest = hashlib.blake2b(
        b"%d:%s%s" % (len(name), name, channel.encode()), digest_size=8, person=b"hubbub-hrw"
    ).digest()
    return int.from_bytes(digest, "big")


def rendezvous(channel: str, shards: Collection[str]) -> str:
    """The shard of ``channel`` among ``shards`` (names): the one whose keyed hash of the
    channel scores highest (rendezvous hashing); ties, never seen in practice, go to the
    greater name."""
    return max(shards, key=lambda shard: (_score(shard, channel), shard))


class ShardedRedisBroker(Broker):
    """Carries publications between hub nodes through several independent Redis servers,
    each channel on one of them (asyncio only).

    Every hub node must be given the same shard *names* (the order does not
    matter): the name, not the address, decides where a channel lives. Change
    the list on every node at once (stop them all, start them with the new
    list): nodes with different lists would place a moved channel on different
    shards meanwhile.

    Args:
        shards: shard name → its broker (a :class:`~hubbub.brokers.redis.RedisBroker`,
            not started; this broker starts and stops them). Names are what the
            placement hashes: keep them stable (a Redis replaced at another
            address keeps its name, so its channels stay with it).

    Raises:
        ValueError: no shard, or an empty name.
    """

    def __init__(self, shards: Mapping[str, Broker]) -> None:
        if not shards:
            raise ValueError("a sharded broker needs at least one shard")
        if any(not name for name in shards):
            raise ValueError("every shard needs a non-empty name")
        self._shards: dict[str, Broker] = dict(shards)
        self._names = tuple(sorted(self._shards))
        self.capabilities = frozenset(Capability).intersection(
            *(b.capabilities for b in self._shards.values())
        )
        self._subscribed: dict[str, set[str]] = {name: set() for name in self._names}
        self._lost: LossHandler | None = None
        self._started = False
        self._placement: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> ShardedRedisBroker:
        """A broker for ``redis+shards://[user:password@]host:port[,host:port...][/db]``
        (``rediss+shards://`` for TLS): one shard per host, each a
        :class:`~hubbub.brokers.redis.RedisBroker` on ``redis://[user:password@]host:port/db``
        with the URL's query options (those of ``redis://``; ``max_connections`` is per
        shard). Each shard is named ``host:port`` as written.

        Raises:
            ValueError: the URL is malformed (no host, a bad port, database or option),
                or names a host twice.
        """
        parts = split(url, _SCHEMES, 6379, "sharded Redis")
        if len(parts.path) > 1 or (parts.path and not parts.path[0].isdigit()):
            raise ValueError(
                "a sharded Redis URL's path is the database number (/0), the same on every shard"
            )
        db = parts.path[0] if parts.path else "0"
        auth = ""
        if parts.username or parts.password:
            user, secret = (
                quote(parts.username or "", safe=""),
                quote(parts.password or "", safe=""),
            )
            auth = f"{user}:{secret}@"
        rest = dict(parts.query)
        broker_options(rest, options, "sharded Redis")
        redis_options(dict(rest), "sharded Redis")  # refuses unknown options and bad values
        query = urlencode(rest)
        scheme = "rediss" if parts.tls else "redis"
        urls: dict[str, str] = {}
        for host, port in parts.hosts:
            shown = f"[{host}]" if ":" in host else host
            name = f"{shown}:{port}"
            if name in urls:
                raise ValueError(f"the sharded Redis URL names {name} twice")
            urls[name] = f"{scheme}://{auth}{shown}:{port}/{db}" + (f"?{query}" if query else "")
        return cls.from_urls(urls, **options)

    @classmethod
    def from_urls(
        cls, urls: Sequence[str] | Mapping[str, str], **options: Any
    ) -> ShardedRedisBroker:
        """A broker over one :class:`~hubbub.brokers.redis.RedisBroker` per URL
        (``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``, each with its
        own options), ``options`` applying to every shard.

        ``urls`` as a mapping names each shard; as a sequence, each shard is named by
        its URL's address and path without credentials or options (``host:port/db``).

        Raises:
            ValueError: a URL is malformed, or two shards get the same name.
        """
        named: dict[str, str] = {}
        if isinstance(urls, Mapping):
            named = dict(urls)
        else:
            for url in urls:
                parts = urlsplit(url)
                name = parts.netloc.rpartition("@")[2] + (parts.path or "/0")
                if name in named:
                    raise ValueError(f"two shards are named {name!r}: give them names")
                named[name] = url
        unknown = set(options) - {*BROKER_OPTIONS, "reconnect_delay", "max_reconnect_delay"}
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}")
        return cls({name: RedisBroker.from_url(url, **options) for name, url in named.items()})

    def __repr__(self) -> str:
        return f"<ShardedRedisBroker shards={list(self._names)!r}>"

    @property
    def shards(self) -> Mapping[str, Broker]:
        """The shards by name."""
        return self._shards

    def shard_of(self, channel: str) -> str:
        """The name of the shard ``channel`` lives on."""
        name = self._placement.get(channel)
        if name is None:
            name = rendezvous(channel, self._names)
            if len(self._placement) >= 100_000:  # bounded: a cache, not a registry
                self._placement.clear()
            self._placement[channel] = name
        return name

    def _broker(self, channel: str) -> Broker:
        return self._shards[self.shard_of(channel)]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        """Start every shard (their first connection attempts run side by side).

        Raises:
            RuntimeError: already started, or no ``task_group``.
        """
        if self._started:
            raise RuntimeError("ShardedRedisBroker is already started (one hub per broker)")
        if task_group is None:
            raise RuntimeError(
                "ShardedRedisBroker runs background tasks and needs a task group to own "
                "them: use 'async with broker.run(handler, lost):' or pass one to start()"
            )
        self._lost = lost
        self._started = True

        async def start_one(name: str) -> None:
            await self._shards[name].start(handler, self._lost_on(name), task_group)

        async with anyio.create_task_group() as tg:
            for name in self._names:
                tg.start_soon(start_one, name)

    def _lost_on(self, name: str) -> LossHandler:
        def lost(channels: Collection[str] | None) -> None:
            # A shard's "any channel" means any of *its* channels, not the others'.
            handler = self._lost
            if handler is not None:
                handler(set(self._subscribed[name]) if channels is None else channels)

        return lost

    async def stop(self) -> None:
        self._lost = None
        if not self._started:
            return
        self._started = False
        for subscribed in self._subscribed.values():
            subscribed.clear()
        with anyio.CancelScope(shield=True):
            for broker in self._shards.values():
                await broker.stop()

    async def ready(self) -> bool:
        """Whether every shard is ready (its link up, its Redis answering)."""
        results: dict[str, bool] = {}

        async def check(name: str) -> None:
            results[name] = await self._shards[name].ready()

        async with anyio.create_task_group() as tg:
            for name in self._names:
                tg.start_soon(check, name)
        return all(results.values())

    @property
    def outages(self) -> int:
        """Times a shard's link went down (read by ``/metrics``)."""
        return sum(getattr(b, "outages", 0) for b in self._shards.values())

    @property
    def reconnects(self) -> int:
        """Times a shard's link came back after an outage (read by ``/metrics``)."""
        return sum(getattr(b, "reconnects", 0) for b in self._shards.values())

    # -- per channel, on its shard -----------------------------------------------------------

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        if not self._started:
            raise RuntimeError("ShardedRedisBroker is not started")
        return await self._broker(publication.channel).publish(publication, history, idempotency)

    async def subscribe(self, channel: str) -> None:
        if not self._started:
            raise RuntimeError("ShardedRedisBroker is not started")
        name = self.shard_of(channel)
        await self._shards[name].subscribe(channel)
        self._subscribed[name].add(channel)

    async def unsubscribe(self, channel: str) -> None:
        name = self.shard_of(channel)
        self._subscribed[name].discard(channel)
        await self._shards[name].unsubscribe(channel)

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        return await self._broker(channel).history(
            channel, since=since, limit=limit, reverse=reverse
        )

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        await self._broker(channel).presence_set(channel, client, info, ttl)

    async def presence_remove(self, channel: str, client: str) -> None:
        await self._broker(channel).presence_remove(channel, client)

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        return await self._broker(channel).presence(channel)
