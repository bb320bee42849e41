"""``GET <prefix>/metrics``: the hub's counters and state in the Prometheus text format.

In-process through Starlette's TestClient where exact figures are checked, then
through a real uvicorn (``hubbub serve``) and a real redis-server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from hubbub import Hub, HubApp, Namespace
from hubbub.brokers.redis import RedisBroker
from hubbub.hub import BROKER_BUCKETS, LatencyHistogram
from hubbub.metrics import HubCollector, render

from .apps.auth_app import ORIGIN, mint
from .apps.wsclient import REPLIES, Client
from .asgi_driver import serving
from .redis_server import redis_server
from .servers import Server, run_server


def samples(text: str) -> dict[str, float]:
    """Every sample of a scrape, by metric name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_connections_publications_and_recovery() -> None:
    """Counters and gauges follow what the hub did, read at scrape time."""
    hub = Hub(anonymous=True, namespaces=[Namespace(), Namespace(name="h", history_size=10)])
    with TestClient(HubApp(hub)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_json({"type": "subscribe", "channel": "h:x", "id": 1})
            epoch = ws.receive_json()["epoch"]
            ws.send_json({"type": "publish", "channel": "h:x", "data": 1, "id": 2})
            replies = {ws.receive_json()["type"], ws.receive_json()["type"]}
            assert replies == {"ack", "message"}
            ws.send_json({"type": "unsubscribe", "channel": "h:x", "id": 3})
            ws.receive_json()
            recover = {"offset": 0, "epoch": epoch}
            ws.send_json({"type": "subscribe", "channel": "h:x", "id": 4, "recover": recover})
            assert ws.receive_json()["recovered"] is True
            response = client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            scraped = samples(response.text)
            assert scraped["hubbub_connections_total"] == 1
            assert scraped["hubbub_connections_open"] == 1
            assert scraped["hubbub_publications_total"] == 1
            assert scraped["hubbub_deliveries_total"] == 1
            assert scraped["hubbub_recovered_total"] == 1
            assert scraped["hubbub_not_recovered_total"] == 0
            assert scraped["hubbub_channels"] == 1
            assert scraped["hubbub_subscriptions"] == 1
            assert scraped["hubbub_running"] == 1


def test_metrics_key_is_required_when_configured() -> None:
    """With ``metrics_key`` the scrape needs ``Authorization: apikey <key>``; 401 otherwise."""
    hub = Hub(anonymous=True)
    with TestClient(HubApp(hub, metrics_key="s3cret-metrics-key")) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"authorization": "apikey nope"})
        assert wrong.status_code == 401
        right = client.get("/metrics", headers={"authorization": "apikey s3cret-metrics-key"})
        assert right.status_code == 200
        assert "hubbub_running" in right.text
        # Read as the HTTP API and the admin page read it: scheme in any case, spaces trimmed.
        relaxed = client.get(
            "/metrics", headers={"authorization": "  ApiKey   s3cret-metrics-key "}
        )
        assert relaxed.status_code == 200
        bearer = client.get("/metrics", headers={"authorization": "Bearer s3cret-metrics-key"})
        assert bearer.status_code == 401


@pytest.mark.parametrize("key", ["", "short-key-15chr", "has space-0123456789"])
def test_a_bad_metrics_key_is_refused_when_built(key: str) -> None:
    """An empty, spaced or under-16-character key fails at construction."""
    with pytest.raises(ValueError, match="metrics_key"):
        HubApp(Hub(anonymous=True), metrics_key=key)


# -- what the collector adds up ----------------------------------------------------------------


def families(text: str) -> dict[str, Metric]:
    """Every metric family of a scrape, by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def labelled(text: str, name: str, label: str) -> dict[str, float]:
    """The samples of one labelled counter, by the value of ``label``."""
    family = families(text)[name]
    return {s.labels[label]: s.value for s in family.samples if s.name == name + "_total"}


def check_histogram(family: Metric) -> dict[str, float]:
    """Assert one histogram family is well formed; return each ``op``'s ``_count``."""
    assert family.type == "histogram"
    counts: dict[str, float] = {}
    by_op: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    for sample in family.samples:
        op = sample.labels["op"]
        if sample.name.endswith("_bucket"):
            by_op.setdefault(op, []).append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            counts[op] = sample.value
        elif sample.name.endswith("_sum"):
            sums[op] = sample.value
    assert by_op, "no histogram series"
    for op, buckets in by_op.items():
        bounds = [bound for bound, _ in buckets]
        values = [value for _, value in buckets]
        assert bounds == [*BROKER_BUCKETS, float("inf")], bounds
        assert values == sorted(values), f"{op}: buckets are not cumulative: {values}"
        assert values[-1] == counts[op] > 0
        assert sums[op] >= 0
    return counts


def test_traffic_is_counted_by_type_with_exact_bytes() -> None:
    """Commands in and messages out by type; bytes equal what the sockets carried, both codecs."""
    hub = Hub(anonymous=True, namespaces=[Namespace(), Namespace(name="h", history_size=10)])
    sent_chars = received = 0
    with TestClient(HubApp(hub)) as client:
        with (
            client.websocket_connect("/ws") as js,
            client.websocket_connect("/ws", subprotocols=["hubbub.v1.msgpack"]) as mp,
        ):

            def send_js(message: dict[str, Any]) -> None:
                nonlocal sent_chars
                text = json.dumps(message)
                sent_chars += len(text)
                js.send_text(text)

            def recv_js() -> dict[str, Any]:
                nonlocal received
                text = js.receive_text()
                received += len(text)
                return dict(json.loads(text))

            def recv_mp() -> dict[str, Any]:
                nonlocal received
                frame = mp.receive_bytes()
                received += len(frame)
                return dict(msgspec.msgpack.decode(frame))

            assert recv_js()["type"] == recv_mp()["type"] == "welcome"
            send_js({"type": "subscribe", "channel": "h:x", "id": 1})
            assert recv_js()["type"] == "subscribed"
            frame = msgspec.msgpack.encode({"type": "subscribe", "channel": "h:x", "id": 1})
            sent_chars += len(frame)
            mp.send_bytes(frame)
            assert recv_mp()["type"] == "subscribed"
            for n in range(3):
                send_js({"type": "publish", "channel": "h:x", "data": {"n": n}, "id": 10 + n})
            kinds = sorted(recv_js()["type"] for _ in range(6))
            assert kinds == ["ack"] * 3 + ["message"] * 3
            assert [recv_mp()["type"] for _ in range(3)] == ["message"] * 3
            send_js({"type": "nonsense"})
            assert recv_js()["type"] == "error"
            text = client.get("/metrics").text
        scraped = samples(text)
        assert scraped["hubbub_bytes_received_total"] == sent_chars
        assert scraped["hubbub_bytes_sent_total"] == received
        commands = labelled(text, "hubbub_commands_received", "type")
        assert commands["subscribe"] == 2 and commands["publish"] == 3
        assert commands["invalid"] == 1 and commands["refresh"] == 0
        sent = labelled(text, "hubbub_messages_sent", "type")
        assert sent["message"] == 6 == scraped["hubbub_deliveries_total"]
        assert sent["ack"] == 3 and sent["subscribed"] == 2 and sent["welcome"] == 2
        assert sent["error"] == 1 and sent["join"] == 0
        counts = check_histogram(families(text)["hubbub_broker_latency_seconds"])
        assert counts["publish"] == 3
        assert counts["subscribe"] >= 1 and counts["history"] >= 2
        # Leaving: each close is counted by its code once the connection is gone.
    closed = labelled(render(hub).decode(), "hubbub_connections_closed", "code")
    assert sum(closed.values()) == 2, closed
    assert set(closed) <= {"1000", "1005", "1006"}, closed


def test_every_metric_is_documented_with_the_node_label() -> None:
    """Each family is ``hubbub_*`` with a ``node`` label, and the README's table names it."""
    hub = Hub(anonymous=True, node="n1")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for family in text_string_to_metric_families(render(hub).decode()):
        assert family.name.startswith("hubbub_"), family.name
        shown = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{shown}`" in readme, f"{shown} is not in the README's metrics table"
        for sample in family.samples:
            assert sample.labels["node"] == "n1", sample


def test_latency_buckets_take_their_upper_bound_inclusively() -> None:
    """An observation equal to a bound lands in that bucket; above the last, in +Inf."""
    histogram = LatencyHistogram()
    for seconds in (0.0, BROKER_BUCKETS[0], BROKER_BUCKETS[0] * 1.01, 1e9):
        histogram.observe(seconds)
    assert histogram.counts[0] == 2 and histogram.counts[1] == 1 and histogram.counts[-1] == 1
    assert sum(histogram.counts) == 4


# -- through a real uvicorn ---------------------------------------------------------------------


@asynccontextmanager
async def _client(
    server: Server, token: str | None = None, origin: str | None = ORIGIN
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with connect(
        server.ws_url + "/ws",
        additional_headers=headers,
        subprotocols=[Subprotocol("hubbub.v1.json")],
        origin=Origin(origin) if origin is not None else None,
        ping_interval=None,
        proxy=None,
        open_timeout=10,
        close_timeout=2,
    ) as ws:
        client = Client(ws, answer_pings=True)
        assert (await client.recv(10.0))["type"] == "welcome"
        yield client


async def _refused(server: Server, token: str | None, origin: str | None = ORIGIN) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with _client(server, token, origin):
            pass
    return int(caught.value.response.status_code)


async def _reply(client: Client, command_id: int) -> dict[str, Any]:
    """The reply to ``command_id``; other messages stay queued, in order."""
    held: list[dict[str, Any]] = []
    try:
        for _ in range(1000):
            message = await client.recv(10.0)
            if message["type"] in REPLIES and message.get("id") == command_id:
                return message
            held.append(message)
        raise AssertionError(f"no reply to {command_id}")
    finally:
        client.pending.extendleft(reversed(held))


def _scrape(server: Server) -> str:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the websockets client is asyncio-only
async def test_metrics_move_as_traffic_flows_through_uvicorn(
    anyio_backend: str, tmp_path: Path
) -> None:
    """Refused tokens, a 429, publications, deliveries and broker calls, read off ``/metrics``."""
    argv = ["-m", "hubbub", "serve", "auth_app:app", "--port", "{port}"]
    with run_server(argv, tmp_path) as server:
        before = _scrape(server)
        assert samples(before)["hubbub_connections_total"] == 0
        assert await _refused(server, mint("alice", ttl=-60)) == 401
        assert await _refused(server, None) == 401
        assert await _refused(server, mint("alice"), origin="https://evil.example") == 403
        async with (
            _client(server, mint("alice")) as alice,
            _client(server, mint("bob")) as bob,
        ):
            await alice.subscribe("room")
            await bob.subscribe("room")
            # The app allows a burst of 3 publishes, then 1/s: six at once meet a 429.
            ids = [alice.next_id() for _ in range(6)]
            for n in ids:
                await alice.send({"type": "publish", "channel": "room", "data": n, "id": n})
            replies = [await _reply(alice, n) for n in ids]
            acked = sum(r["type"] == "ack" for r in replies)
            refused = sum(r["type"] == "error" and r["code"] == 429 for r in replies)
            assert acked + refused == 6 and refused >= 1 and acked >= 3
            got = [m["data"] for m in await bob.messages(acked)]
            assert len(got) == acked
            text = _scrape(server)
        scraped = samples(text)
        assert scraped["hubbub_connections_total"] == 2
        assert scraped["hubbub_publications_total"] == acked
        # alice hears her own publications too (echo): two subscribers each.
        assert scraped["hubbub_deliveries_total"] == 2 * acked
        assert labelled(text, "hubbub_messages_sent", "type")["message"] == 2 * acked
        commands = labelled(text, "hubbub_commands_received", "type")
        assert commands["publish"] == 6 and commands["subscribe"] == 2
        assert labelled(text, "hubbub_rate_limited", "kind")["command"] == refused
        failures = labelled(text, "hubbub_auth_failures", "reason")
        assert failures == {
            "channel_token": 0,
            "forbidden": 0,
            "invalid_token": 1,
            "missing": 1,
            "origin": 1,
            "refresh": 0,
        }
        counts = check_histogram(families(text)["hubbub_broker_latency_seconds"])
        assert counts["publish"] == acked
        assert scraped["hubbub_bytes_received_total"] > 0
        assert scraped["hubbub_bytes_sent_total"] > 0
        assert scraped["hubbub_connections_open"] == 2
        # Once both have left, their closes are counted by code (1000 from the client).
        for _ in range(100):
            after = _scrape(server)
            if samples(after)["hubbub_connections_open"] == 0:
                break
            await anyio.sleep(0.05)
        assert labelled(after, "hubbub_connections_closed", "code") == {"1000": 2}


# -- the Redis broker's link --------------------------------------------------------------------


async def until(predicate: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the Redis broker runs on asyncio only
async def test_broker_outage_and_reconnect_are_counted(anyio_backend: str, tmp_path: Path) -> None:
    """CLIENT KILL TYPE pubsub on a real redis-server: outage, reconnect and loss counted."""
    with redis_server(tmp_path) as redis:
        broker = RedisBroker.from_url(
            redis.url, timeout=1.0, health_check_interval=0.25, reconnect_delay=0.05
        )
        hub = Hub(anonymous=True, broker=broker, namespaces=[Namespace(name="h", history_size=5)])
        async with hub:
            await until(broker.ready)
            await hub._registry.ensure("h:x", hub.namespaces.resolve("h:x"))
            scraped = samples(render(hub).decode())
            assert scraped["hubbub_broker_outages_total"] == 0
            assert scraped["hubbub_broker_reconnects_total"] == 0
            assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") == 1
            await until(lambda: broker.reconnects >= 1 and hub.stats.broker_losses >= 1)
            scraped = samples(render(hub).decode())
            assert scraped["hubbub_broker_outages_total"] == 1
            assert scraped["hubbub_broker_reconnects_total"] == 1
            assert scraped["hubbub_broker_losses_total"] == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_close_codes_outside_the_protocol_are_counted_as_other(anyio_backend: str) -> None:
    """A client's own close code (4000) is ``other``; the label set stays bounded."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        first, _ = await clients.connect()
        second, _ = await clients.connect()
        first.leave(4000)
        second.leave(1001)
        await until(lambda: sum(hub.stats.closes.values()) == 2)
        closed = labelled(render(hub).decode(), "hubbub_connections_closed", "code")
    assert closed == {"other": 1, "1001": 1}


def test_gauges_that_walk_every_channel_are_reused_for_a_second() -> None:
    """Channels, subscriptions and queued messages are walked at most once per ``max_age`` (or
    50 times the walk's cost); counters and open connections are read at every scrape."""

    class Counting(Hub):
        walks = 0
        tick = 0.0

        def channels(self) -> dict[str, int]:
            Counting.walks += 1
            now[0] += Counting.tick  # the walk takes this long on the test's clock
            return super().channels()

    now = [100.0]
    hub = Counting(anonymous=True)
    collector = HubCollector(hub, max_age=1.0, clock=lambda: now[0])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def scrape() -> dict[str, float]:
        return samples(generate_latest(registry).decode())

    assert scrape()["hubbub_channels"] == 0 and Counting.walks == 1
    hub.stats.publications += 5
    now[0] += 0.5
    scraped = scrape()
    assert Counting.walks == 1 and scraped["hubbub_publications_total"] == 5
    now[0] += 0.5
    scrape()
    assert Counting.walks == 2
    Counting.tick = 0.1  # a slow walk: reused for 50 x 0.1 s
    now[0] += 1.0
    scrape()
    assert Counting.walks == 3
    now[0] += 4.8
    scrape()
    assert Counting.walks == 3
    now[0] += 0.2
    scrape()
    assert Counting.walks == 4
    assert render(hub, max_age=0) and Counting.walks == 5
    with pytest.raises(ValueError, match="max_age"):
        HubCollector(hub, max_age=-1)
