"""Per-connection limits: liveness, sizes, queue bounds.

Every limit has a safe default from the protocol (``docs/protocol.md`` §6) and
is checked when :class:`Limits` is built.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


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

    def __post_init__(self) -> None:
        for name in ("ping_interval", "pong_timeout", "close_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be a positive number of seconds")
        for name in (
            "max_message_size",
            "max_invalid",
            "max_channels",
            "queue_messages",
            "queue_bytes",
            "batch_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer")

    @property
    def idle_timeout(self) -> float:
        """Seconds of client silence after which the connection is closed 4408."""
        return self.ping_interval + self.pong_timeout
