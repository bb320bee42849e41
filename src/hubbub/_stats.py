"""The hub's counters and latency histograms: plain ints read at scrape time.

A leaf module: the protocol state machine, connections, the hub, the
middleware and the metrics collector all count into :class:`HubStats`, so it
depends on none of them.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Final

__all__ = ["BROKER_BUCKETS", "HubStats", "LatencyHistogram"]

BROKER_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) of the broker latency histogram's buckets; the last one is +Inf."""


@dataclass(slots=True)
class LatencyHistogram:
    """Observations counted into :data:`BROKER_BUCKETS`, in plain ints (no lock).

    ``counts[i]`` is the number of observations in bucket ``i`` alone (not
    cumulative); the last entry counts those above the largest bound.
    """

    counts: list[int] = field(default_factory=lambda: [0] * (len(BROKER_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (Prometheus buckets are inclusive upper bounds)."""
        self.counts[bisect_left(BROKER_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class HubStats:
    """Counters since the hub was built (read them, do not write them).

    They are plain ints and dicts of ints, bumped once per publication, command or
    connection event, never per delivery where it can be avoided; the metrics
    collector (:mod:`hubbub.metrics`) reads them at scrape time. Dict keys come
    from small fixed sets (message types, close codes, refusal kinds), never
    from client data.
    """

    connections_total: int = 0
    sse_streams_total: int = 0
    publications: int = 0
    deliveries: int = 0
    dropped: int = 0
    slow_consumer_closes: int = 0
    recovered: int = 0
    not_recovered: int = 0
    gaps_repaired: int = 0
    bytes_in: int = 0
    """Size of the frames clients sent (text frames: characters)."""
    bytes_out: int = 0
    """Size of the frames handed to send queues (batching and compression aside)."""
    broker_losses: int = 0
    """Times the broker reported that publications may have been lost (its link dropped)."""
    commands: dict[str, int] = field(default_factory=dict)
    """Client commands received, by ``type`` (``invalid``: frames that did not decode)."""
    sent: dict[str, int] = field(default_factory=dict)
    """Server messages handed to send queues, by ``type``."""
    rate_limited: dict[str, int] = field(default_factory=dict)
    """429 refusals by kind: ``command``, ``channels``, ``handshake``, ``user_connections``."""
    auth_failures: dict[str, int] = field(default_factory=dict)
    """Refused credentials by reason (see ``docs/design.md``, Observability)."""
    closes: dict[str, int] = field(default_factory=dict)
    """Connections ended, by close code (codes outside the protocol's: ``other``)."""
    broker_latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    """Round-trip time of the hub's broker calls, by broker method."""
