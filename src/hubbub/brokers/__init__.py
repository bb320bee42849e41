"""Brokers: the :class:`Broker` extension point and the brokers that ship.

``MemoryBroker`` (one process, the default) is imported here; other brokers
live in their own modules and are imported only when used, so ``import
hubbub`` never imports a backend's client library.
"""

from __future__ import annotations

from ._base import Broker as Broker
from ._base import Capability as Capability
from ._base import HistoryOptions as HistoryOptions
from ._base import HistoryPage as HistoryPage
from ._base import Idempotency as Idempotency
from ._base import LossHandler as LossHandler
from ._base import Publication as Publication
from ._base import PublicationHandler as PublicationHandler
from ._base import PublicationKind as PublicationKind
from ._base import UnsupportedCapability as UnsupportedCapability
from .memory import MemoryBroker as MemoryBroker


def broker_from_url(url: str) -> Broker:
    """The broker a URL names: ``memory://``, ``redis://…`` / ``rediss://…``,
    ``redis+sentinel://host:port[,host:port…]/service_name[/db]`` (a primary found
    through Redis Sentinel), ``redis+cluster://host:port[,host:port…]`` (a Redis
    Cluster), ``redis+shards://host:port[,host:port…][/db]`` (channels spread over
    independent Redis servers) — each also as ``rediss+…`` for TLS — or
    ``postgresql://…`` / ``postgres://…``.

    Backends other than memory are imported only here, when asked for.

    Raises:
        ValueError: the scheme is not one hubbub ships, or the URL is malformed
            (the message says how).
    """
    scheme = url.partition("://")[0].lower()
    if url.lower() in ("memory://", "memory"):
        return MemoryBroker()
    if scheme in ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"):
        try:
            from .redis import RedisBroker
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise _needs_redis("Redis broker", exc) from None
        return RedisBroker.from_url(url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        try:
            from .redis_cluster import RedisClusterBroker
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise _needs_redis("Redis Cluster broker", exc) from None
        return RedisClusterBroker.from_url(url)
    if scheme in ("redis+shards", "rediss+shards"):
        try:
            from .redis_shards import ShardedRedisBroker
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise _needs_redis("sharded Redis broker", exc) from None
        return ShardedRedisBroker.from_url(url)
    if scheme in ("postgres", "postgresql"):
        try:
            from .postgres import PostgresBroker

            return PostgresBroker.from_url(url)
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ValueError(
                f"the PostgreSQL broker needs psycopg: pip install 'hubbub[postgres]' ({exc})"
            ) from None
    raise ValueError(
        f"unknown broker URL {url!r}: use memory://, redis://host:port/db, "
        "redis+sentinel://host:port,host:port/service_name, redis+cluster://host:port,host:port, "
        "redis+shards://host:port,host:port or postgresql://user@host:port/db"
    )


__all__ = [
    "Broker",
    "Capability",
    "HistoryOptions",
    "HistoryPage",
    "Idempotency",
    "LossHandler",
    "MemoryBroker",
    "Publication",
    "PublicationHandler",
    "PublicationKind",
    "UnsupportedCapability",
    "broker_from_url",
]


def _needs_redis(broker: str, exc: ImportError) -> ValueError:
    """The one message for a Redis URL without the ``redis`` package: what to install."""
    return ValueError(f"the {broker} needs the redis package: pip install 'hubbub[redis]' ({exc})")
