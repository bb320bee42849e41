"""One sharded pub/sub link of the Redis Cluster broker: a connection to one shard primary.

It is the single-Redis pub/sub link (:mod:`._redis_link`) speaking sharded
pub/sub: ``SSUBSCRIBE`` (one command per hash slot, since a command may not
span slots), ``smessage`` replies. Its channels are those whose slot the
primary serves. Before every reconnection it asks the broker to refresh the
cluster's topology and hand channels whose slot moved to the link of their new
primary; a ``SUNSUBSCRIBE`` the server sends on its own (the slot moved, the
primary failed over) drops the link, which reconnects the same way. Channels
moved to this link are reported as possibly lost once subscribed here, so the
hub repairs them from history.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from .._errors import BrokerUnavailable
from ._link import LinkTask
from ._redis_format import channel_of, key
from ._redis_link import Link, LinkDown, PubSubLink, Waiter

if TYPE_CHECKING:
    from .redis_cluster import RedisClusterBroker

__all__ = ["ShardLink"]

logger = logging.getLogger("hubbub.redis")


class ShardLink(PubSubLink):
    """The sharded pub/sub link to one primary of the cluster (``host:port``)."""

    _SUBSCRIBE = "SSUBSCRIBE"
    _UNSUBSCRIBE = "SUNSUBSCRIBE"
    _MESSAGE = b"smessage"

    def __init__(self, broker: RedisClusterBroker, node: ClusterNode) -> None:
        self._broker = broker
        self._node = node
        self.name: str = node.name
        self._LINK = f"Redis Cluster shard {node.name}: pub/sub link"
        self._prefix = broker._prefix
        self._prefix_bytes = broker._prefix_bytes
        self._timeout = broker._timeout
        self._health = broker._health
        self._delay = broker._delay
        self._max_delay = broker._max_delay
        self._handler = broker._handler
        self._lost = broker._lost
        self._link_task = LinkTask(self._run_link, self._LINK, logger)
        self._channels = set()
        self._link = None
        self._moved_in: set[str] = set()
        self.retired = False
        """No longer a primary and without channels: the link ends before its next attempt."""
        self.outages = 0
        self.reconnects = 0

    @property
    def up(self) -> bool:
        """Whether the link is connected and subscribed."""
        link = self._link
        return link is not None and link.up

    def channels(self) -> set[str]:
        """The channels this link serves (a copy)."""
        return set(self._channels)

    def release(self, channel: str) -> None:
        """Stop delivering ``channel`` here: its slot moved to another primary."""
        self._channels.discard(channel)

    async def adopt(self, channels: list[str]) -> None:
        """Serve ``channels``, whose slot moved here; report them lost once subscribed."""
        link = self._link
        if link is None or not link.up:
            # Subscribed (and reported) by the next connection.
            self._channels.update(channels)
            self._moved_in.update(channels)
            return
        waiters = []
        async with link.lock:
            self._channels.update(channels)
            for batch in self._batches(sorted(channels)):
                waiter = Waiter()
                waiters.append(waiter)
                try:
                    await self._send(link, self._SUBSCRIBE, batch, waiter)
                except BrokerUnavailable:
                    # The link reconnects and reports every channel it serves.
                    self._moved_in.update(channels)
                    return
        for waiter in waiters:
            with anyio.move_on_after(self._timeout):
                await waiter.done.wait()  # set by the reader, or by the link failing
            if waiter.failed or not waiter.done.is_set():
                # Reconnect: the next connection subscribes and reports them.
                self._moved_in.update(channels)
                link.fail()
                return
        if self._lost is not None:
            self._lost([c for c in channels if c in self._channels])

    def stop_delivering(self) -> None:
        """The broker stopped: deliver and report nothing more."""
        self._handler = self._lost = None
        self._channels.clear()

    # -- hooks of the pub/sub link -----------------------------------------------------------

    def _batches(self, channels: list[str]) -> list[list[str]]:
        by_slot: defaultdict[int, list[str]] = defaultdict(list)
        for channel in channels:
            by_slot[key_slot(key(self._prefix, channel, "pub").encode())].append(channel)
        return list(by_slot.values())

    async def _before_connect(self, reconnecting: bool) -> bool:
        if reconnecting and not self.retired:
            await self._broker._follow_topology()
        return not self.retired

    def _to_report(self, channels: list[str], after_outage: bool) -> list[str]:
        moved, self._moved_in = self._moved_in, set()
        if after_outage:
            return channels
        return [c for c in channels if c in moved]

    def _unsolicited(self, name: bytes) -> None:
        channel = channel_of(self._prefix_bytes, name)
        if channel is not None and channel in self._channels:
            self._broker._topology_moved()
            raise LinkDown(f"Redis unsubscribed {channel!r}: its slot moved")

    def _pubsub_connection(self) -> AbstractConnection:
        """A new, unconnected RESP2 connection to this primary, like the cluster client's."""
        kwargs: dict[str, Any] = {
            k: v for k, v in self._node.connection_kwargs.items() if not k.startswith("maint_notif")
        }
        kwargs["protocol"] = 2
        conn: AbstractConnection = self._node.connection_class(**kwargs)
        return conn

    async def _connect(self, link: Link) -> list[str]:
        channels = await super()._connect(link)
        if self._channels - set(channels):
            # Channels moved here while this connection was subscribing: start over.
            raise LinkDown("channels moved to this shard while it connected")
        return channels
