"""Hubs with small limits, served by ``python -m hubbub serve small_limits:<name>``.

``hub`` has a short heartbeat and small frames, to cross every limit quickly;
``queue_hub`` has a long heartbeat and larger frames with a small send queue, so
a frozen subscriber is ended by the slow-consumer policy and nothing else.
"""

from __future__ import annotations

from hubbub import Hub, Limits, Namespace

hub = Hub(
    anonymous=True,
    limits=Limits(
        ping_interval=0.5,
        pong_timeout=0.5,
        max_message_size=1024,
        queue_messages=20,
        queue_bytes=64 * 1024,
        max_channels=3,
        close_timeout=1.0,
    ),
    namespaces=[Namespace(), Namespace(name="lossy", slow_consumer="drop_oldest")],
)

queue_hub = Hub(
    anonymous=True,
    limits=Limits(
        ping_interval=30.0,
        pong_timeout=30.0,
        max_message_size=64 * 1024,
        queue_messages=20,
        queue_bytes=256 * 1024,
        close_timeout=1.0,
        # The publisher here floods on purpose; the command rate is tested on ``hub``.
        command_rate=100_000.0,
        command_burst=100_000,
    ),
    namespaces=[Namespace(), Namespace(name="lossy", slow_consumer="drop_oldest")],
)
