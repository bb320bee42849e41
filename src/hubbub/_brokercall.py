"""Typed broker calls: one timeout, one error mapping and one latency metric for all.

Every call the hub makes to its broker goes through :class:`BrokerCalls`, so a
broker that hangs answers :class:`~hubbub.BrokerUnavailable` after
``broker_timeout``, a broker that raises something outside the
:class:`~hubbub.HubbubError` tree answers :class:`~hubbub.InternalError`
(logged once, with its traceback), and each call is timed under the label
of the broker method it calls (``HubStats.broker_latency``) — named here, not
read from the coroutine. It also holds the bound on the hub's background broker
calls (``BACKGROUND_BROKER_CALLS``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final, Literal, Protocol, TypeVar

import anyio

from ._errors import BrokerUnavailable, HubbubError, InternalError
from ._stats import HubStats, LatencyHistogram
from .brokers import (
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    Publication,
    UnsupportedCapability,
)
from .brokers.memory import MemoryBroker
from .messages import ClientInfo, Position
from .namespaces import NamespaceRegistry

__all__ = [
    "BACKGROUND_BROKER_CALLS",
    "BrokerCalls",
    "BrokerOp",
    "Spawn",
    "check_capabilities",
    "now_ms",
]

logger = logging.getLogger("hubbub")

T = TypeVar("T")

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], bool]
"""Starts a background task in the hub's task group; ``False`` when the hub is not running."""

_MEMORY_PUBLISH: Final = MemoryBroker.publish

BrokerOp = Literal[
    "publish", "subscribe", "unsubscribe", "history", "presence_set", "presence_remove", "presence"
]
"""The ``op`` label of ``HubStats.broker_latency``: the broker method called."""

BACKGROUND_BROKER_CALLS: Final = 16
"""Broker calls the hub's background work may have in flight at once, per hub.

Background work fans out per channel: presence departures when a client
leaves (one per presence channel it held; a whole node's worth on drain),
node-level unsubscribes of channels left empty, repairs of every channel
after the broker's link dropped, server-side subscriptions commanded by other
nodes. Unbounded, one client leaving 128 presence channels made 128 calls at
once and exhausted a Redis connection pool of 100, so departures failed and
presence kept the client. Bounded, each waits its turn and completes; 16
keeps a pool of any reasonable size free for client commands.
"""


class Batching(Protocol):
    """Fan-out's batch as broker calls see it (:class:`hubbub._fanout.Fanout`)."""

    flush_follows: bool
    """Set while a publish's caller will flush: no need to wait for the loop's next turn."""

    def flush(self) -> None:
        """Deliver what is batched."""
        ...


class BrokerCalls:
    """The hub's broker, called with a timeout, mapped errors and a latency metric."""

    __slots__ = ("_background", "batching", "broker", "stats", "timeout")

    def __init__(self, broker: Broker, timeout: float, stats: HubStats) -> None:
        self.broker = broker
        self.timeout = timeout
        self.stats = stats
        # The hub's fan-out batch (``Fanout``), set by the hub: an awaited publish
        # delivers what it batched before returning, so a publication the broker
        # handed back during the call has reached this node's subscribers; the
        # registry flushes it before a channel's subscribers change.
        self.batching: Batching | None = None
        self._background: anyio.CapacityLimiter | None = None

    def reset(self) -> None:
        """A new bound for a new run: anyio primitives belong to the loop that runs the hub."""
        self._background = anyio.CapacityLimiter(BACKGROUND_BROKER_CALLS)

    def limiter(self) -> anyio.CapacityLimiter:
        """The bound on background broker calls (``BACKGROUND_BROKER_CALLS``)."""
        limiter = self._background
        if limiter is None:
            limiter = self._background = anyio.CapacityLimiter(BACKGROUND_BROKER_CALLS)
        return limiter

    async def call(self, op: BrokerOp, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()`` within the timeout, timed under ``op``.

        Raises:
            BrokerUnavailable: no answer within ``timeout``.
            HubbubError: what the broker raised from the tree, unchanged.
            InternalError: anything else the broker raised (logged).
        """
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.timeout):
                return await call()
        except TimeoutError:
            reason = f"broker did not answer within {self.timeout} s"
            raise BrokerUnavailable(reason) from None
        except HubbubError:
            raise
        except Exception as exc:
            logger.exception("broker call failed")
            raise InternalError("broker error") from exc
        finally:
            # Timed whatever the outcome: a timeout is the latency an outage shows.
            self._observe(op, started)

    def _observe(self, op: BrokerOp, started: float) -> None:
        histograms = self.stats.broker_latency
        histogram = histograms.get(op)
        if histogram is None:
            histogram = histograms[op] = LatencyHistogram()
        histogram.observe(time.perf_counter() - started)

    async def ready(self) -> bool:
        """``broker.ready()`` within the timeout, for ``/ready`` and the admin page.

        A custom broker's check may raise or hang; either answers ``False``
        (logged) instead of an error or a request that never ends.
        """
        with anyio.move_on_after(self.timeout):
            try:
                return await self.broker.ready()
            except Exception:
                logger.warning("the broker's readiness check failed", exc_info=True)
                return False
        logger.warning("the broker's readiness check took over %s s", self.timeout)
        return False

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        try:
            published = self.publish_now(publication, history, idempotency)
            if published is None:
                broker = self.broker
                published = await self.call(
                    "publish", lambda: broker.publish(publication, history, idempotency)
                )
        finally:
            batching = self.batching
            if batching is not None:
                batching.flush()
        return published

    def publish_now(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication | None:
        """Publish without awaiting where the broker can (``None``: nothing done, await instead).

        ``MemoryBroker.publish`` never awaits: it is called as a plain function,
        with the same error mapping and timing but no coroutines and no
        timeout scope (nothing can hang) — the per-publication cost of the
        embedded default. A subclass's own ``publish``, or one replaced on the
        instance (a wrapper that counts, say), is awaited by :meth:`publish`.
        """
        broker = self.broker
        if (
            type(broker).publish is not _MEMORY_PUBLISH
            or not isinstance(broker, MemoryBroker)
            or "publish" in getattr(broker, "__dict__", ())
        ):
            return None
        batching = self.batching
        if batching is not None:
            # The memory broker hands the publication back within this call; whoever
            # called flushes when done (the direct reader's end of read, or
            # :meth:`publish`), so fan-out need not wait for the loop's next turn.
            batching.flush_follows = True
        started = time.perf_counter()
        try:
            return broker.publish_now(publication, history, idempotency)
        except HubbubError:
            raise
        except Exception as exc:
            logger.exception("broker call failed")
            raise InternalError("broker error") from exc
        finally:
            self._observe("publish", started)

    async def subscribe(self, channel: str) -> None:
        broker = self.broker
        await self.call("subscribe", lambda: broker.subscribe(channel))

    async def unsubscribe(self, channel: str) -> None:
        broker = self.broker
        await self.call("unsubscribe", lambda: broker.unsubscribe(channel))

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        broker = self.broker
        return await self.call(
            "history", lambda: broker.history(channel, since=since, limit=limit, reverse=reverse)
        )

    async def top(self, channel: str) -> Position:
        """The stream's position (an empty page's)."""
        return (await self.history(channel, limit=0)).position

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        broker = self.broker
        await self.call("presence_set", lambda: broker.presence_set(channel, client, info, ttl))

    async def presence_remove(self, channel: str, client: str) -> None:
        broker = self.broker
        await self.call("presence_remove", lambda: broker.presence_remove(channel, client))

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        broker = self.broker
        return await self.call("presence", lambda: broker.presence(channel))


def now_ms() -> int:
    """A publication's ``ts``: wall-clock milliseconds."""
    return time.time_ns() // 1_000_000


def check_capabilities(broker: Broker, namespaces: NamespaceRegistry) -> None:
    """Refuse to start with a namespace that needs what the broker cannot do.

    Raises:
        UnsupportedCapability: naming the first such namespace and capability.
    """
    for namespace in (*namespaces, namespaces.personal):
        personal = " (personal channels)" if namespace is namespaces.personal else ""
        needs = []
        if namespace.history_size:
            why = f"{personal} keeps history (history_size={namespace.history_size})"
            needs.append((Capability.HISTORY, why))
        if namespace.presence:
            needs.append((Capability.PRESENCE, f"{personal} tracks presence (presence=True)"))
        for capability, why in needs:
            if capability not in broker.capabilities:
                raise UnsupportedCapability(broker, namespace.name, capability, why.lstrip())
