"""Prometheus metrics for a hub, read from its counters when scraped.

The fan-out path only bumps plain integers (:class:`hubbub.HubStats`), once per
publication rather than per delivery; a ``prometheus_client`` counter per
delivery would take a lock each time. This collector turns those integers,
the broker latency buckets and the hub's live state into metric families at
scrape time, so metrics cost nothing between scrapes. Every metric is named
``hubbub_*`` and labelled with the hub's ``node``; the other labels take values
from small fixed sets (message types, close codes, refusal kinds), never from
client data. The table of metrics is in the README.

A scrape costs the same however many clients are connected, except for three
gauges that walk every channel or connection (``hubbub_channels``,
``hubbub_subscriptions``, ``hubbub_send_queue_messages``: about 20 ms of event
loop at 100,000 of each). Those are computed at most once per
:data:`GAUGE_MAX_AGE` seconds per hub, and at most once per 50 times their own
cost, so scraping in a loop takes at most ~2% of the event loop for them; every
counter, ``hubbub_connections_open`` and ``hubbub_running`` are read at each
scrape. Keeping those sums up to date on every subscribe and every queued
message instead would put work on the fan-out path for a figure read every 15 s.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, get_args, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._session import AUTH_FAILURE_REASONS
from ._stats import BROKER_BUCKETS, LatencyHistogram
from .hub import Hub
from .messages import Command, ServerMessage

__all__ = ["GAUGE_MAX_AGE", "HubCollector", "LinkHealth", "render"]

GAUGE_MAX_AGE: Final = 1.0
"""Seconds the gauges that walk every channel or connection may be reused for."""
_COST_FACTOR: Final = 50
"""The walk is reused for at least this many times what it cost (at most 2% of the loop)."""

_COUNTERS = (
    ("connections", "connections_total", "WebSocket connections accepted"),
    ("publications", "publications", "publications published by this node"),
    ("deliveries", "deliveries", "messages handed to local subscribers"),
    ("dropped", "dropped", "messages dropped for slow consumers on lossy channels"),
    ("slow_consumer_closes", "slow_consumer_closes", "connections closed 1013 for a full queue"),
    ("recovered", "recovered", "subscribes with recover answered recovered: true"),
    ("not_recovered", "not_recovered", "subscribes with recover answered recovered: false"),
    ("gaps_repaired", "gaps_repaired", "stream gaps this node filled from history"),
    ("bytes_received", "bytes_in", "size of the frames clients sent"),
    ("bytes_sent", "bytes_out", "size of the frames handed to send queues"),
    ("broker_losses", "broker_losses", "times the broker said publications may have been lost"),
)

# Label values shown from the first scrape (as 0), so rates exist before the first event.
_COMMAND_TYPES: Final = (*(t.__struct_config__.tag for t in get_args(Command)), "invalid")
_MESSAGE_TYPES: Final = tuple(t.__struct_config__.tag for t in get_args(ServerMessage))
_RATE_LIMIT_KINDS: Final = ("command", "channels", "handshake", "user_connections")

_LABELLED = (
    (
        "commands_received",
        "commands",
        "type",
        _COMMAND_TYPES,
        "client commands received, by type (invalid: frames that did not decode)",
    ),
    ("messages_sent", "sent", "type", _MESSAGE_TYPES, "server messages queued, by type"),
    ("rate_limited", "rate_limited", "kind", _RATE_LIMIT_KINDS, "429 refusals, by kind"),
    (
        "auth_failures",
        "auth_failures",
        "reason",
        tuple(sorted(AUTH_FAILURE_REASONS)),
        "refused credentials, by reason",
    ),
    ("connections_closed", "closes", "code", (), "connections ended, by close code"),
)


@runtime_checkable
class LinkHealth(Protocol):
    """A broker with a link that can drop (Redis): how often it did, and came back."""

    outages: int
    reconnects: int


@dataclass(frozen=True, slots=True)
class _Walked:
    """The figures that walk every channel or connection, and until when they stand."""

    channels: int
    subscriptions: int
    queued: int
    until: float


# One per hub, so every scrape of a hub (every HubApp serving it) shares the walk.
_WALKED: weakref.WeakKeyDictionary[Hub, _Walked] = weakref.WeakKeyDictionary()


def _walk(hub: Hub, max_age: float, clock: Callable[[], float]) -> _Walked:
    now = clock()
    walked = _WALKED.get(hub)
    if walked is not None and now < walked.until:
        return walked
    channels = hub.channels()
    queued = hub.queued_messages()
    cost = clock() - now
    walked = _Walked(
        channels=len(channels),
        subscriptions=sum(channels.values()),
        queued=queued,
        until=now + max(max_age, _COST_FACTOR * cost) if max_age > 0 else now,
    )
    _WALKED[hub] = walked
    return walked


class HubCollector(Collector):
    """Exposes one hub's counters and state as ``hubbub_*`` metrics.

    Args:
        hub: the hub.
        max_age: seconds the channel, subscription and queued-message gauges
            may be reused for (see the module docstring); 0 walks every time.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        max_age: float = GAUGE_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_age, bool) or not isinstance(max_age, int | float) or max_age < 0:
            raise ValueError("max_age must be a number of seconds, 0 or more")
        self.hub = hub
        self.max_age = float(max_age)
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        node = hub.node
        stats = hub.stats
        for name, field, documentation in _COUNTERS:
            counter = CounterMetricFamily(f"hubbub_{name}", documentation, labels=["node"])
            counter.add_metric([node], getattr(stats, field))
            yield counter
        for name, field, label, known, documentation in _LABELLED:
            counts: Mapping[str, int] = getattr(stats, field)
            labelled = CounterMetricFamily(f"hubbub_{name}", documentation, labels=["node", label])
            for value, count in sorted({**dict.fromkeys(known, 0), **counts}.items()):
                labelled.add_metric([node, value], count)
            yield labelled
        broker = hub.broker
        health = broker if isinstance(broker, LinkHealth) else None
        for name, documentation, value in (
            ("broker_outages", "times the broker's link went down", health and health.outages),
            (
                "broker_reconnects",
                "times the broker's link came back",
                health and health.reconnects,
            ),
        ):
            counter = CounterMetricFamily(f"hubbub_{name}", documentation, labels=["node"])
            counter.add_metric([node], value or 0)
            yield counter
        yield _latency(node, stats.broker_latency)
        walked = _walk(hub, self.max_age, self.clock)
        gauges = (
            ("connections_open", "open WebSocket connections", hub.connection_count),
            ("channels", "channels with local subscribers", walked.channels),
            ("subscriptions", "local subscriptions", walked.subscriptions),
            ("send_queue_messages", "messages waiting in send queues", walked.queued),
            ("running", "1 while the hub accepts connections", int(hub.running)),
        )
        for name, documentation, value in gauges:
            gauge = GaugeMetricFamily(f"hubbub_{name}", documentation, labels=["node"])
            gauge.add_metric([node], value)
            yield gauge


def _latency(node: str, histograms: Mapping[str, LatencyHistogram]) -> Metric:
    """The broker round-trip histogram, its buckets made cumulative here, not when observed."""
    family = HistogramMetricFamily(
        "hubbub_broker_latency_seconds",
        "round-trip time of the hub's broker calls, by broker method",
        labels=["node", "op"],
    )
    bounds = [*(repr(bound) for bound in BROKER_BUCKETS), "+Inf"]
    for op, histogram in sorted(histograms.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family.add_metric([node, op], buckets, sum_value=histogram.total)
    return family


def render(hub: Hub, *, max_age: float = GAUGE_MAX_AGE) -> bytes:
    """The hub's metrics in the Prometheus text format (``max_age``: see :class:`HubCollector`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub, max_age=max_age))
    return generate_latest(registry)
