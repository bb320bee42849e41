"""A custom broker: several hubs in one process sharing a bus, with presence but no history.

The smallest useful :class:`hubbub.brokers.Broker`: every hub node gets a
:class:`BusBroker` on the same :class:`Bus`, and a publication on any node
reaches every node that subscribed to its channel, in publish order. It keeps
presence leases (so it declares :attr:`Capability.PRESENCE`) but no streams:
a hub using it refuses, when it starts, any namespace with ``history_size``
(personal channels included, which keep history by default).

It is the example of ``docs/brokers.md`` and passes the broker contract
(``tests/test_custom_broker.py``)::

    bus = Bus()
    personal = Namespace(name="personal")  # no history: this broker keeps none
    hub_a = Hub(broker=BusBroker(bus), personal=personal)
    hub_b = Hub(broker=BusBroker(bus), personal=personal)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from anyio.abc import TaskGroup

from hubbub.brokers import (
    Broker,
    Capability,
    HistoryOptions,
    Idempotency,
    LossHandler,
    Publication,
    PublicationHandler,
)
from hubbub.messages import ClientInfo

__all__ = ["Bus", "BusBroker"]


class Bus:
    """What the nodes share: who is attached, and the presence leases.

    Args:
        clock: seconds on a monotonic clock (the contract tests move it by hand).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.nodes: list[BusBroker] = []
        self.leases: dict[str, dict[str, tuple[float, ClientInfo]]] = {}


class BusBroker(Broker):
    """One node's connection to a :class:`Bus` (a new bus of its own by default)."""

    capabilities = frozenset({Capability.PRESENCE})

    def __init__(self, bus: Bus | None = None) -> None:
        self.bus = bus if bus is not None else Bus()
        self._handler: PublicationHandler | None = None
        self._channels: set[str] = set()

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        # Nothing can be lost between nodes of one process, so ``lost`` is never called.
        if self._handler is not None:
            raise RuntimeError("BusBroker is already started")
        self._handler = handler
        self.bus.nodes.append(self)

    async def stop(self) -> None:
        if self in self.bus.nodes:
            self.bus.nodes.remove(self)
        self._handler = None
        self._channels.clear()

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        if self._handler is None:
            raise RuntimeError("BusBroker is not started")
        if history is not None or idempotency is not None:
            # The hub never asks (it checks capabilities); a direct caller learns here.
            raise ValueError("BusBroker keeps no history and no idempotency keys")
        # Synchronous hand-off to every subscribed node: one order for everyone.
        for node in tuple(self.bus.nodes):
            if publication.channel in node._channels and node._handler is not None:
                node._handler(publication)
        return publication

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    # -- presence: leases that expire unless refreshed ---------------------------------------

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        self.bus.leases.setdefault(channel, {})[client] = (self.bus.clock() + ttl, info)

    async def presence_remove(self, channel: str, client: str) -> None:
        leases = self.bus.leases.get(channel)
        if leases is not None:
            leases.pop(client, None)
            if not leases:
                del self.bus.leases[channel]

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        now = self.bus.clock()
        leases = self.bus.leases.get(channel, {})
        for client in [c for c, (expires, _) in leases.items() if expires <= now]:
            del leases[client]  # expired leases are dropped when their channel is read
        if not leases:
            self.bus.leases.pop(channel, None)
        return {client: info for client, (_, info) in leases.items()}
