"""A hub whose clients take a while to drain, served by ``python -m hubbub serve``.

A client that stopped reading holds the drain for up to about two close
timeouts, which leaves a window to try a new connection while draining. Its
send queue is large, so the slow-consumer policy does not end it first.
"""

from __future__ import annotations

from hubbub import Hub, Limits

hub = Hub(
    anonymous=True,
    limits=Limits(
        max_message_size=64 * 1024,
        close_timeout=2.0,
        queue_messages=100_000,
        queue_bytes=64 * 1024 * 1024,
        command_rate=100_000.0,  # its publisher floods on purpose
        command_burst=100_000,
    ),
    drain_timeout=8.0,
)
