"""A broker wrapper that fails on command: outages, lost deliveries, stalls, epoch resets."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal

import anyio
from anyio.abc import TaskGroup

from .._errors import BrokerUnavailable
from ..brokers import (
    Broker,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    LossHandler,
    MemoryBroker,
    Publication,
    PublicationHandler,
)
from ..messages import ClientInfo, Position

__all__ = ["FaultyBroker"]

Mode = Literal["up", "down", "deaf", "stalled"]


class FaultyBroker(Broker):
    """Wraps a broker and breaks it on command, deterministically.

    Healthy (``mode == "up"``) it only forwards and records each call's name in
    :attr:`calls`. The faults are the ones a real backend shows, each answered
    by the hub the way production answers it:

    - :meth:`fail`: the backend is down. Every call raises
      :class:`hubbub.BrokerUnavailable`, ``ready()`` is False, nothing is delivered.
    - :meth:`deafen`: the link to the backend dropped silently. Publishes still
      succeed (and are kept in history), but nothing reaches this node.
    - :meth:`stall`: the backend is frozen. Calls hang until :meth:`restore`
      (the hub's ``broker_timeout`` turns them into 503s meanwhile).
    - :meth:`restore`: back to normal and, unless told otherwise, report the
      possible loss through the ``lost`` callback, as a broker whose link came
      back must: the hub repairs its channels from history.
    - :meth:`reset_epoch`: a channel's stream is lost (a backend restarted
      without persistence); its next publication starts a new epoch at offset 1.

    Args:
        inner: the broker doing the work (a new :class:`~hubbub.MemoryBroker` by default).
    """

    def __init__(self, inner: Broker | None = None) -> None:
        self.inner: Broker = inner if inner is not None else MemoryBroker()
        self.capabilities = self.inner.capabilities
        self.mode: Mode = "up"
        self.calls: list[str] = []
        """Names of the broker methods the hub called, in order (``ready`` excluded)."""
        self.losses_reported = 0
        self._lost: LossHandler | None = None
        self._resumed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<FaultyBroker {self.mode} around {self.inner!r}>"

    # -- faults ------------------------------------------------------------------------------

    def fail(self) -> None:
        """Take the backend down: calls raise ``BrokerUnavailable``, deliveries are lost."""
        self._set("down")

    def deafen(self) -> None:
        """Lose every delivery to this node while publishes keep succeeding."""
        self._set("deaf")

    def stall(self) -> None:
        """Make every call hang until :meth:`restore` (a frozen backend)."""
        self._set("stalled")

    def restore(self, *, report_loss: bool = True) -> None:
        """Back to normal; report possible loss of every channel unless ``report_loss`` is False."""
        self._set("up")
        if report_loss and self._lost is not None:
            self.report_loss()

    def report_loss(self, channels: Collection[str] | None = None) -> None:
        """Tell the hub that publications of ``channels`` (``None``: any) may have been lost."""
        if self._lost is None:
            raise RuntimeError("the broker is not started")
        self.losses_reported += 1
        self._lost(channels)

    def reset_epoch(self, channel: str) -> None:
        """Forget ``channel``'s stream, as a backend that lost it: a new epoch follows.

        Raises:
            TypeError: the wrapped broker is not a ``MemoryBroker`` (other
                brokers' streams live in their backend: delete them there).
        """
        if not isinstance(self.inner, MemoryBroker):
            raise TypeError("reset_epoch needs a MemoryBroker inside the FaultyBroker")
        # The testing kit belongs to the package; it may reach into the memory broker.
        self.inner._streams.pop(channel, None)

    def _set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "stalled":
            if self._resumed is None:
                self._resumed = anyio.Event()
        else:
            self._resume()

    def _resume(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.set()

    async def _check(self, name: str) -> None:
        self.calls.append(name)
        resumed = self._resumed
        if resumed is not None:
            await resumed.wait()
        if self.mode == "down":
            raise BrokerUnavailable(f"{name}: broker down (FaultyBroker.fail)")

    # -- the Broker interface ----------------------------------------------------------------

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        await self._check("start")

        def deliver(publication: Publication) -> None:
            if self.mode == "up":
                handler(publication)

        self._lost = lost
        await self.inner.start(deliver, lost, task_group)

    async def stop(self) -> None:
        # Stopping always works, whatever the fault: tests must be able to tear down.
        self.calls.append("stop")
        self._lost = None
        self._resume()
        await self.inner.stop()

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        await self._check("publish")
        return await self.inner.publish(publication, history, idempotency)

    async def subscribe(self, channel: str) -> None:
        await self._check("subscribe")
        await self.inner.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._check("unsubscribe")
        await self.inner.unsubscribe(channel)

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        await self._check("history")
        return await self.inner.history(channel, since=since, limit=limit, reverse=reverse)

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        await self._check("presence_set")
        await self.inner.presence_set(channel, client, info, ttl)

    async def presence_remove(self, channel: str, client: str) -> None:
        await self._check("presence_remove")
        await self.inner.presence_remove(channel, client)

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        await self._check("presence")
        return await self.inner.presence(channel)

    async def ready(self) -> bool:
        return self.mode == "up" and await self.inner.ready()
