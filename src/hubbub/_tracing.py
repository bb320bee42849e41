"""Optional OpenTelemetry spans for publish → broker publish → fan-out.

Only ``opentelemetry-api`` is used (the ``hubbub[otel]`` extra): the application
configures the SDK, exporters and sampling. The hub holds a :class:`Tracing`
only when built with ``tracing=``; otherwise it holds ``None`` and its hot
paths test that one attribute per publication, so tracing that is off costs
no work per delivery and no import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["Tracing"]

INSTRUMENTATION = "hubbub"
"""The instrumentation scope name of every hubbub span."""


class Tracing:
    """Starts hubbub's spans on a tracer from ``provider`` (the global one by default).

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``pip install 'hubbub[otel]'``).
    """

    __slots__ = ("_kind", "_tracer")

    def __init__(self, provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ImportError(
                "Hub(tracing=...) needs the opentelemetry-api package: "
                "pip install 'hubbub[otel]' (and configure the OpenTelemetry SDK)"
            ) from exc

        self._tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider=provider)
        self._kind = trace.SpanKind

    @contextmanager
    def publish(self, channel: str, namespace: str) -> Iterator[Span]:
        """The span of one publication, from the publisher's side (``hubbub.publish``)."""
        with self._tracer.start_as_current_span(
            "hubbub.publish",
            kind=self._kind.PRODUCER,
            attributes={"hubbub.channel": channel, "hubbub.namespace": namespace},
        ) as span:
            yield span

    @contextmanager
    def broker_publish(self, channel: str, broker: str) -> Iterator[Span]:
        """The broker round trip of a publication (``hubbub.broker.publish``)."""
        with self._tracer.start_as_current_span(
            "hubbub.broker.publish",
            kind=self._kind.CLIENT,
            attributes={"hubbub.channel": channel, "hubbub.broker": broker},
        ) as span:
            yield span

    @contextmanager
    def fan_out(self, channel: str, namespace: str, attributes: dict[str, Any]) -> Iterator[Span]:
        """Handing one publication to this node's subscribers (``hubbub.fan_out``).

        With a broker that delivers in the publisher's task (the memory broker)
        this span is a child of ``hubbub.broker.publish``; with one that delivers
        from its own reader (Redis) it starts a trace of its own on each node.
        """
        with self._tracer.start_as_current_span(
            "hubbub.fan_out",
            kind=self._kind.CONSUMER,
            attributes={"hubbub.channel": channel, "hubbub.namespace": namespace, **attributes},
        ) as span:
            yield span
