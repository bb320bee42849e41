"""Optional OpenTelemetry spans: publish → broker publish → fan-out, read back from the SDK.

The spans are recorded by the real OpenTelemetry SDK (``InMemorySpanExporter``)
through a ``TracerProvider`` handed to the hub, so no global state is touched.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from hubbub import Hub, Namespace

from .asgi_driver import serving

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans finished by the provider of :func:`provider`, in memory."""
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """An SDK tracer provider exporting synchronously to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    """The finished spans called ``name``."""
    return [span for span in spans if span.name == name]


async def test_client_publish_is_traced_to_the_fan_out(
    anyio_backend: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """One trace: ``hubbub.publish`` → ``hubbub.broker.publish`` → ``hubbub.fan_out``."""
    hub = Hub(
        anonymous=True,
        namespaces=[Namespace(name="feed", history_size=10)],
        tracing=provider,
    )
    async with serving(hub) as clients:
        publisher, _ = await clients.connect()
        listener, _ = await clients.connect()
        await publisher.subscribe("feed:a")
        await listener.subscribe("feed:a")
        await publisher.send_json({"type": "publish", "channel": "feed:a", "data": 1, "id": 7})
        assert (await listener.receive_json())["offset"] == 1
    spans = tuple(exporter.get_finished_spans())
    [publish] = by_name(spans, "hubbub.publish")
    [broker] = by_name(spans, "hubbub.broker.publish")
    [fan_out] = by_name(spans, "hubbub.fan_out")
    assert publish.kind is SpanKind.PRODUCER and publish.parent is None
    attributes = dict(publish.attributes or {})
    epoch = attributes.pop("hubbub.epoch")
    assert isinstance(epoch, str) and epoch
    assert attributes == {
        "hubbub.channel": "feed:a",
        "hubbub.namespace": "feed",
        "hubbub.offset": 1,
    }
    assert broker.kind is SpanKind.CLIENT
    assert broker.parent is not None and broker.parent.span_id == publish.context.span_id
    assert dict(broker.attributes or {}) == {
        "hubbub.channel": "feed:a",
        "hubbub.broker": "MemoryBroker",
    }
    # The memory broker delivers in the publisher's task: the fan-out is the broker call's child.
    assert fan_out.kind is SpanKind.CONSUMER
    assert fan_out.parent is not None and fan_out.parent.span_id == broker.context.span_id
    assert fan_out.context.trace_id == publish.context.trace_id
    assert dict(fan_out.attributes or {}) == {
        "hubbub.channel": "feed:a",
        "hubbub.namespace": "feed",
        "hubbub.kind": "message",
        "hubbub.offset": 1,
        "hubbub.subscribers": 2,
    }


async def test_server_publish_without_history_and_a_failure(
    anyio_backend: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """No offset where no history; a publish into no namespace makes no span at all."""
    hub = Hub(anonymous=True, tracing=provider)
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        await ws.subscribe("news")
        assert await hub.publish("news", {"n": 1}) is None
        assert (await ws.receive_json())["data"] == {"n": 1}
        with pytest.raises(Exception, match="namespace"):
            await hub.publish("nowhere:x", 1)
    spans = tuple(exporter.get_finished_spans())
    [publish] = by_name(spans, "hubbub.publish")
    assert "hubbub.offset" not in (publish.attributes or {})
    assert publish.status.status_code is not StatusCode.ERROR
    [fan_out] = by_name(spans, "hubbub.fan_out")
    assert (fan_out.attributes or {})["hubbub.subscribers"] == 1
    assert "hubbub.offset" not in (fan_out.attributes or {})


async def test_tracing_true_uses_the_global_provider(anyio_backend: str) -> None:
    """``tracing=True`` without an SDK configured: the API's no-op spans, publishing works."""
    hub = Hub(anonymous=True, tracing=True)
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        await ws.subscribe("news")
        await hub.publish("news", 1)
        assert (await ws.receive_json())["data"] == 1


def test_tracing_without_the_package_fails_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """``opentelemetry-api`` missing: a clear ImportError naming the extra, at construction."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r"hubbub\[otel\]"):
        Hub(anonymous=True, tracing=True)
    Hub(anonymous=True)  # tracing off needs nothing


def test_tracing_off_never_imports_opentelemetry() -> None:
    """A hub without tracing publishes and fans out without importing OpenTelemetry."""
    code = (
        "import sys, anyio\n"
        "from hubbub import Hub\n"
        "async def main():\n"
        "    async with Hub(anonymous=True) as hub:\n"
        "        await hub.publish('news', 1)\n"
        "anyio.run(main)\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
