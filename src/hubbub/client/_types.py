"""What the client hands to the application: publications, recovery notices, results, policies."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..messages import ClientInfo, Position

__all__ = [
    "Backoff",
    "HistoryResult",
    "Item",
    "Publication",
    "TokenProvider",
    "Unrecovered",
]


@dataclass(frozen=True, slots=True)
class Publication:
    """One event of a channel, as the application sees it.

    ``kind`` is ``"message"`` for a publication, ``"join"``/``"leave"`` for
    presence events (where the namespace announces them; their ``data``,
    ``offset`` and ``epoch`` are ``None`` and ``sender`` is who came or went).
    ``offset``/``epoch`` are set on channels that keep history; the client
    delivers those exactly once and in offset order within an epoch.
    """

    channel: str
    data: Any
    kind: Literal["message", "join", "leave"] = "message"
    offset: int | None = None
    epoch: str | None = None
    ts: int | None = None
    sender: ClientInfo | None = None

    @property
    def position(self) -> Position | None:
        """Where this publication sits in its channel's stream (``None`` without history)."""
        if self.offset is None or self.epoch is None:
            return None
        return Position(offset=self.offset, epoch=self.epoch)

    @property
    def info(self) -> dict[str, Any] | None:
        """The sender's (or the joining/leaving client's) ``info`` object, if any."""
        return None if self.sender is None else self.sender.info


@dataclass(frozen=True, slots=True)
class Unrecovered:
    """Publications of ``channel`` were missed and cannot be replayed: reload its state.

    Delivered in the subscription's iterator, in place, after every publication
    of the old stream that did arrive and before any of the new one. Happens
    when the history no longer reaches back to the last position seen, or the
    stream was recreated (``position.epoch`` differs from the old one, e.g.
    after a memory-broker server restarted).

    Attributes:
        channel: the channel.
        previous: the last position the client had seen.
        position: where delivery continues from (the stream's newest offset at
            resubscription); ``None`` for channels without history.
    """

    channel: str
    previous: Position | None
    position: Position | None

    @property
    def epoch_changed(self) -> bool:
        """Whether the stream itself was replaced (rather than history running short)."""
        return (
            self.previous is not None
            and self.position is not None
            and self.previous.epoch != self.position.epoch
        )


Item = Publication | Unrecovered
"""What a subscription yields."""


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """A ``history`` reply: ``publications`` oldest first (unless asked reversed)."""

    channel: str
    publications: list[Publication]
    position: Position | None


class TokenProvider(Protocol):
    """Returns a fresh connection token (a JWT); called on every connect and refresh.

    It may raise: on a connect the attempt fails and is retried after the
    back-off; on a refresh the old token stays until the next try.
    """

    def __call__(self) -> Awaitable[str]: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: exponential back-off with full jitter.

    The delay before attempt ``n`` (0 for the first retry) is uniform in
    ``[0, min(maximum, initial * factor ** n)]`` — full jitter, so clients
    dropped together by a restart do not come back together.

    Args:
        initial: the upper bound of the first delay, in seconds.
        maximum: the cap on the upper bound, in seconds.
        factor: how fast the bound grows.
        max_attempts: consecutive failed attempts before giving up with
            :class:`~hubbub.client.Disconnected` (``None``: never give up).

    Raises:
        ValueError: a negative delay, a factor below 1, or ``max_attempts`` < 1.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < 0:
            raise ValueError("Backoff delays must be >= 0")
        if self.factor < 1:
            raise ValueError("Backoff.factor must be >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("Backoff.max_attempts must be >= 1 or None")

    def bound(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (0-based)."""
        try:
            return min(self.maximum, self.initial * self.factor**attempt)
        except OverflowError:  # far past the cap anyway
            return self.maximum

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A random delay before retry number ``attempt`` (full jitter)."""
        return rand() * self.bound(attempt)
