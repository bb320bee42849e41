"""Per-connection limits: liveness, sizes, queue bounds.

Every limit has a safe default from the protocol (``docs/protocol.md`` §6) and
is checked when :class:`Limits` is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Limits", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to every client connection.

    Args:
        ping_interval: seconds between server ``ping`` messages.
        pong_timeout: extra seconds of silence tolerated after a ping interval;
            a client silent for ``ping_interval + pong_timeout`` is closed 4408.
        max_message_size: largest client frame in bytes; larger closes 1009.
        max_invalid: the Nth invalid message in a row closes the connection 1008
            (after its ``error`` 400 is sent).
        max_channels: subscriptions per client (the personal channel does not
            count); beyond it ``subscribe`` gets ``error`` 429.
        queue_messages: messages a client's send queue may hold.
        queue_bytes: bytes a client's send queue may hold.
        close_timeout: seconds allowed for flushing and closing a connection
            before it is dropped (a client that stopped reading cannot hold it open).
        batch_bytes: the largest frame built when a client asked for batching.
        command_rate: commands per second a client may sustain (token bucket);
            beyond it a command gets ``error`` 429 and is not executed.
        command_burst: commands a client may send at once (the bucket's size).
        flood_refusals: this many 429 refusals within ``flood_window`` seconds
            close the connection 4429.
        flood_window: see ``flood_refusals``.
    """

    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    max_message_size: int = 64 * 1024
    max_invalid: int = 10
    max_channels: int = 128
    queue_messages: int = 1000
    queue_bytes: int = 1024 * 1024
    close_timeout: float = 5.0
    batch_bytes: int = 64 * 1024
    command_rate: float = 50.0
    command_burst: int = 100
    flood_refusals: int = 50
    flood_window: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "ping_interval",
            "pong_timeout",
            "close_timeout",
            "command_rate",
            "flood_window",
        ):
            check_positive_number(f"Limits.{name}", getattr(self, name))
        for name in (
            "max_message_size",
            "max_invalid",
            "max_channels",
            "queue_messages",
            "queue_bytes",
            "batch_bytes",
            "command_burst",
            "flood_refusals",
        ):
            check_positive_int(f"Limits.{name}", getattr(self, name))

    @property
    def idle_timeout(self) -> float:
        """Seconds of client silence after which the connection is closed 4408."""
        return self.ping_interval + self.pong_timeout


class TokenBucket:
    """A token bucket with an injected clock: ``rate`` tokens per second, at most ``burst``."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """Take one token at ``now``; False (and nothing taken) when the bucket is empty."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


def check_positive_number(name: str, value: object) -> None:
    """Raise a clear error unless ``value`` is a finite number above zero (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number, not {value!r}")


def check_positive_int(name: str, value: object, *, zero: bool = False) -> None:
    """Raise a clear error unless ``value`` is an int above zero (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < (0 if zero else 1):
        raise ValueError(f"{name} must be {'>= 0' if zero else 'positive'}, not {value!r}")
