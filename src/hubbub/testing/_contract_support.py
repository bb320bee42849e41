"""The broker contract's helpers: what a contract test drives a broker with
(re-exported by :mod:`hubbub.testing.contract`, which documents them)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, TypeVar

import anyio

from hubbub.brokers import (
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    Publication,
    PublicationKind,
)
from hubbub.messages import ClientInfo

__all__ = [
    "KEEP",
    "WAIT",
    "BrokerFactory",
    "BrokerUnderTest",
    "ManualClock",
    "Recorder",
    "RunningBroker",
    "data_of",
    "default_history",
    "offsets",
    "publication",
    "requires",
]

WAIT = 5.0
"""Seconds a test waits for a publication it expects before failing."""

KEEP = HistoryOptions(size=100, ttl=3600.0)
"""History options for tests that do not test expiry: nothing expires during a test."""


_Test = TypeVar("_Test", bound=Callable[..., Any])


def requires(*capabilities: Capability) -> Callable[[_Test], _Test]:
    """Mark a contract test as needing ``capabilities``: skipped for brokers without them."""

    def mark(test: _Test) -> _Test:
        test.hubbub_requires = frozenset(capabilities)  # type: ignore[attr-defined]
        return test

    return mark


def default_history(broker: Broker) -> HistoryOptions | None:
    """:data:`KEEP` for a broker that keeps history, else ``None`` (pub/sub only)."""
    return KEEP if Capability.HISTORY in broker.capabilities else None


class ManualClock:
    """A monotonic clock that moves only when told to: pass it as a broker's ``clock``."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds


@dataclass
class BrokerUnderTest:
    """A new broker, not started yet, and how to move its clock forward."""

    broker: Broker
    advance: Callable[[float], Awaitable[None]]


BrokerFactory = Callable[[], Awaitable[BrokerUnderTest]]
"""What the ``make_broker`` fixture returns: builds one broker per call."""


class Recorder:
    """The hub's side of a broker: records every delivered publication and reported loss."""

    def __init__(self) -> None:
        self.delivered: list[Publication] = []
        self.lost: list[Collection[str] | None] = []
        self._changed = anyio.Event()

    def handler(self, publication: Publication) -> None:
        """The ``PublicationHandler`` given to ``Broker.start``."""
        self.delivered.append(publication)
        self._changed.set()

    def on_lost(self, channels: Collection[str] | None) -> None:
        """The ``LossHandler`` given to ``Broker.start``."""
        self.lost.append(channels)
        self._changed.set()

    def on(self, channel: str) -> list[Publication]:
        """The publications delivered so far for ``channel``, in delivery order."""
        return [p for p in self.delivered if p.channel == channel]

    async def wait_for(self, channel: str, count: int) -> list[Publication]:
        """Wait until ``count`` publications of ``channel`` were delivered; return them all."""
        with anyio.fail_after(WAIT):
            while len(self.on(channel)) < count:
                self._changed = anyio.Event()
                await self._changed.wait()
        return self.on(channel)


@dataclass
class RunningBroker:
    """A started broker, what it delivered, and helpers for one contract test."""

    broker: Broker
    recorder: Recorder
    advance: Callable[[float], Awaitable[None]]
    prefix: str = field(default_factory=lambda: f"contract-{secrets.token_hex(4)}-")
    _marks: int = 0

    @property
    def keeps_history(self) -> bool:
        """Whether the broker declares :attr:`Capability.HISTORY`."""
        return Capability.HISTORY in self.broker.capabilities

    def channel(self, name: str) -> str:
        """A channel name unique to this test."""
        return self.prefix + name

    async def publish(
        self,
        channel: str,
        data: bytes = b'"x"',
        history: HistoryOptions | EllipsisType | None = ...,
        idempotency: Idempotency | None = None,
        **fields: Any,
    ) -> Publication:
        """Publish one publication built from ``fields`` (see :func:`publication`).

        ``history`` defaults to :data:`KEEP` where the broker keeps history, else ``None``.
        """
        options = default_history(self.broker) if history is ... else history
        return await self.broker.publish(publication(channel, data, **fields), options, idempotency)

    async def publish_many(
        self, channel: str, count: int, history: HistoryOptions | EllipsisType | None = ...
    ) -> list[Publication]:
        """Publish ``count`` publications one after the other (data ``0``, ``1``, ...)."""
        return [await self.publish(channel, str(n).encode(), history=history) for n in range(count)]

    async def settle(self) -> None:
        """Wait until everything published so far has been delivered (see the module doc)."""
        marker = self.channel("marker")
        if self._marks == 0:
            await self.broker.subscribe(marker)
        self._marks += 1
        await self.publish(marker, history=None)
        await self.recorder.wait_for(marker, self._marks)


def publication(
    channel: str,
    data: bytes = b'"x"',
    *,
    kind: PublicationKind = "message",
    sender: ClientInfo | None = None,
    exclude: str | None = None,
    codec: str = "json",
) -> Publication:
    """A publication as the hub hands it to a broker (no offset or epoch yet)."""
    return Publication(
        channel=channel,
        data=data,
        codec=codec,
        ts=time.time_ns() // 1_000_000,
        sender=sender,
        exclude=exclude,
        kind=kind,
    )


def data_of(publications: list[Publication]) -> list[bytes]:
    """The payloads of publications, in order."""
    return [p.data for p in publications]


def offsets(publications: list[Publication] | HistoryPage) -> list[int | None]:
    """The offsets of publications (or of a history page's publications), in order."""
    if isinstance(publications, HistoryPage):
        publications = publications.publications
    return [p.offset for p in publications]
