"""Prometheus metrics for a hub, read from its counters when scraped.

The fan-out path only bumps plain integers (:class:`hubbub.HubStats`); a
``prometheus_client`` counter per delivery would take a lock each time. This
collector turns those integers and the hub's live state into metric families
at scrape time, so metrics cost nothing between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .hub import Hub

__all__ = ["HubCollector", "render"]

_COUNTERS = (
    ("connections", "connections_total", "WebSocket connections accepted"),
    ("publications", "publications", "publications published by this node"),
    ("deliveries", "deliveries", "messages handed to local subscribers"),
    ("dropped", "dropped", "messages dropped for slow consumers on lossy channels"),
    ("slow_consumer_closes", "slow_consumer_closes", "connections closed 1013 for a full queue"),
    ("recovered", "recovered", "subscribes with recover answered recovered: true"),
    ("not_recovered", "not_recovered", "subscribes with recover answered recovered: false"),
    ("gaps_repaired", "gaps_repaired", "stream gaps this node filled from history"),
)


class HubCollector(Collector):
    """Exposes one hub's counters and state as ``hubbub_*`` metrics."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        stats = hub.stats
        for name, field, documentation in _COUNTERS:
            counter = CounterMetricFamily(f"hubbub_{name}", documentation, labels=["node"])
            counter.add_metric([hub.node], getattr(stats, field))
            yield counter
        channels = hub.channels()
        gauges = (
            ("connections_open", "open WebSocket connections", hub.connection_count),
            ("channels", "channels with local subscribers", len(channels)),
            ("subscriptions", "local subscriptions", sum(channels.values())),
            ("send_queue_messages", "messages waiting in send queues", hub.queued_messages()),
            ("running", "1 while the hub accepts connections", int(hub.running)),
        )
        for name, documentation, value in gauges:
            gauge = GaugeMetricFamily(f"hubbub_{name}", documentation, labels=["node"])
            gauge.add_metric([hub.node], value)
            yield gauge


def render(hub: Hub) -> bytes:
    """The hub's metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return generate_latest(registry)
