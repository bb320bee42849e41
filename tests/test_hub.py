"""The hub's Python API and lifecycle, on asyncio and on trio.

Connections are driven in memory: ``HubApp`` is called as a plain ASGI app with
anyio memory object streams as ``receive``/``send``, so every test here runs on
both event loops without a server or a socket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from hubbub import (
    BrokerUnavailable,
    Hub,
    HubApp,
    Identity,
    InvalidMessage,
    Limits,
    MemoryBroker,
    Namespace,
    UnknownNamespace,
)
from hubbub.hub import BACKGROUND_BROKER_CALLS

from .asgi_driver import TIMEOUT, Clients, Event, MemoryWebSocket, serving

pytestmark = pytest.mark.anyio


async def wait_until(predicate: Any) -> None:
    """Poll ``predicate`` (state the hub changes in its own tasks) until it holds, or fail."""
    with anyio.fail_after(TIMEOUT):
        for _ in range(int(TIMEOUT / 0.005)):
            if predicate():
                return
            await anyio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def as_u1(scope: Mapping[str, Any]) -> Identity:
    """An authenticator that says every connection is user ``u1``."""
    return Identity(user="u1", name="User One")


# -- lifecycle ---------------------------------------------------------------------------------


async def test_async_with_starts_and_stops(anyio_backend: str) -> None:
    """``async with hub`` runs the hub inside the block and stops it after."""
    hub = Hub(anonymous=True)
    assert hub.state == "stopped" and not hub.running
    async with hub as entered:
        assert entered is hub
        assert hub.running and hub.state == "running"
    assert hub.state == "stopped" and not hub.running


async def test_starting_twice_raises(anyio_backend: str) -> None:
    """Entering a running hub again raises RuntimeError and leaves it running."""
    hub = Hub(anonymous=True)
    async with hub:
        with pytest.raises(RuntimeError, match="runs once at a time"):
            await hub.__aenter__()
        assert hub.running
    assert hub.state == "stopped"


async def test_hub_can_run_again_after_stopping(anyio_backend: str) -> None:
    """A stopped hub can be started again and serves publications."""
    hub = Hub(anonymous=True)
    async with hub:
        pass
    async with hub:
        assert await hub.publish("news", 1) is None


async def test_error_in_body_propagates_unwrapped(anyio_backend: str) -> None:
    """An exception raised inside ``async with hub`` reaches the caller as itself."""
    hub = Hub(anonymous=True)
    with pytest.raises(KeyError, match="boom"):
        async with hub:
            raise KeyError("boom")
    assert hub.state == "stopped"


async def test_cancelled_body_stops_the_hub(anyio_backend: str) -> None:
    """Cancelling the code inside ``async with hub`` stops the hub cleanly."""
    hub = Hub(anonymous=True)
    with anyio.fail_after(TIMEOUT):
        with anyio.move_on_after(0.01) as scope:
            async with hub:
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert hub.state == "stopped"


async def test_lifespan_is_an_async_context_manager(anyio_backend: str) -> None:
    """``hub.lifespan(app)`` starts the hub on entry and stops it on exit."""
    hub = Hub(anonymous=True)
    async with hub.lifespan(object()):
        assert hub.running
    assert hub.state == "stopped"
    async with hub.lifespan():
        assert hub.running
    assert hub.state == "stopped"


async def test_failing_broker_start_leaves_hub_stopped(anyio_backend: str) -> None:
    """A broker that fails to start propagates its error and the hub stays stopped."""
    broker = MemoryBroker()
    first = Hub(broker=broker, anonymous=True)
    second = Hub(broker=broker, anonymous=True)
    async with first:
        with pytest.raises(RuntimeError, match="already started"):
            await second.__aenter__()
        assert second.state == "stopped"
    assert first.state == "stopped"


async def test_publish_before_start_is_actionable(anyio_backend: str) -> None:
    """Publishing into a stopped hub raises RuntimeError that says how to start it."""
    hub = Hub(anonymous=True)
    with pytest.raises(RuntimeError) as info:
        await hub.publish("news", {"a": 1})
    message = str(info.value)
    assert "not running" in message
    assert "async with hub" in message and "lifespan=hub.lifespan" in message


async def test_publish_after_stop_raises(anyio_backend: str) -> None:
    """Publishing after the hub stopped raises RuntimeError again."""
    hub = Hub(anonymous=True)
    async with hub:
        pass
    with pytest.raises(RuntimeError, match="not running"):
        await hub.publish("news", 1)


# -- publish: argument checking ----------------------------------------------------------------


async def test_publish_unknown_namespace(anyio_backend: str) -> None:
    """Publishing into a namespace that is not configured raises UnknownNamespace (404)."""
    hub = Hub(anonymous=True)
    async with hub:
        with pytest.raises(UnknownNamespace) as info:
            await hub.publish("nope:room", 1)
    assert info.value.code == 404
    assert "nope" in info.value.reason


async def test_publish_default_namespace_missing(anyio_backend: str) -> None:
    """Without a default namespace, a channel without a colon is an unknown namespace."""
    hub = Hub(anonymous=True, namespaces=[Namespace(name="chat")])
    async with hub:
        assert await hub.publish("chat:lobby", 1) is None
        with pytest.raises(UnknownNamespace):
            await hub.publish("lobby", 1)


@pytest.mark.parametrize("channel", ["", "has space", "x" * 256, "é", "a\nb"])
async def test_publish_invalid_channel(anyio_backend: str, channel: str) -> None:
    """An invalid channel name raises InvalidMessage (400)."""
    hub = Hub(anonymous=True)
    async with hub:
        with pytest.raises(InvalidMessage) as info:
            await hub.publish(channel, 1)
    assert info.value.code == 400


async def test_publish_non_string_channel(anyio_backend: str) -> None:
    """A channel that is not a string raises InvalidMessage."""
    hub = Hub(anonymous=True)
    async with hub:
        with pytest.raises(InvalidMessage):
            await hub.publish(42, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [object(), complex(1, 2), {(1, 2): 3}])
async def test_publish_unencodable_data(anyio_backend: str, data: Any) -> None:
    """Data that cannot be encoded as JSON raises InvalidMessage."""
    hub = Hub(anonymous=True)
    async with hub:
        with pytest.raises(InvalidMessage):
            await hub.publish("news", data)


async def test_publish_deeply_nested_data(anyio_backend: str) -> None:
    """Data too deeply nested to encode raises InvalidMessage, never RecursionError."""
    hub = Hub(anonymous=True)
    data: Any = 1
    for _ in range(5000):
        data = [data]
    async with hub:
        with pytest.raises(InvalidMessage):
            await hub.publish("news", data)


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"a":1} trailing'])
async def test_publish_invalid_json_passthrough(anyio_backend: str, raw: bytes) -> None:
    """``json=`` that is not one valid JSON document raises InvalidMessage."""
    hub = Hub(anonymous=True)
    async with hub:
        with pytest.raises(InvalidMessage):
            await hub.publish("news", None, json=raw)


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"broker": object()}, TypeError),
        ({"authenticator": "not callable"}, TypeError),
        ({"limits": {"queue_messages": 5}}, TypeError),
        ({"namespaces": ["chat"]}, TypeError),
        ({"namespaces": [Namespace(), Namespace()]}, ValueError),
        ({"broker_timeout": 0}, ValueError),
        ({"drain_timeout": -1}, ValueError),
    ],
)
def test_bad_hub_arguments_fail_at_construction(kwargs: dict[str, Any], error: type) -> None:
    """Configuration mistakes raise TypeError/ValueError when the Hub is built."""
    with pytest.raises(error):
        Hub(**kwargs)


def test_bad_limits_and_namespaces_fail_at_construction() -> None:
    """Bad Limits and Namespace options raise ValueError when built, not later."""
    with pytest.raises(ValueError, match="queue_messages"):
        Limits(queue_messages=0)
    with pytest.raises(ValueError, match="ping_interval"):
        Limits(ping_interval=0)
    with pytest.raises(ValueError, match="invalid namespace name"):
        Namespace(name="a:b")
    with pytest.raises(ValueError, match="slow_consumer"):
        Namespace(slow_consumer="block")  # type: ignore[arg-type]


def test_hub_app_needs_a_hub() -> None:
    """HubApp refuses anything but a Hub with TypeError."""
    with pytest.raises(TypeError):
        HubApp(object())  # type: ignore[arg-type]


# -- fan-out through in-memory connections -----------------------------------------------------


async def test_fan_out_in_order_once_per_subscriber(anyio_backend: str) -> None:
    """Every publication reaches every subscriber exactly once, in publication order."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        sockets = [(await clients.connect())[0] for _ in range(4)]
        for ws in sockets:
            await ws.subscribe("news")
        assert hub.channels() == {"news": 4}
        publisher = sockets[0]
        for n in range(5):
            await publisher.send_json({"type": "publish", "channel": "news", "data": n, "id": 10})
        received: list[list[Any]] = []
        for ws in sockets:
            got: list[Any] = []
            while len(got) < 5:
                frame = await ws.receive_json()
                if frame["type"] == "ack":
                    continue
                assert frame["type"] == "message" and frame["channel"] == "news", frame
                got.append(frame["data"])
            received.append(got)
        assert received == [[0, 1, 2, 3, 4]] * 4
        assert hub.stats.deliveries == 20
        # No duplicate is left behind: the next message each one sees is a new one.
        await hub.publish("news", "end")
        for ws in sockets:
            frame = await ws.receive_json()
            while frame["type"] == "ack":
                frame = await ws.receive_json()
            assert frame["type"] == "message" and frame["data"] == "end", frame


async def test_hub_publish_reaches_subscribers(anyio_backend: str) -> None:
    """``hub.publish`` delivers a server-side message (no sender) to every subscriber."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        a, _ = await clients.connect()
        b, _ = await clients.connect()
        bystander, _ = await clients.connect()
        await a.subscribe("news")
        await b.subscribe("news")
        await bystander.subscribe("other")
        assert await hub.publish("news", {"headline": "hi"}) is None
        assert await hub.publish("news", None, json=b'{"raw": [1, 2.5, "x"]}') is None
        for ws in (a, b):
            first = await ws.receive_json()
            second = await ws.receive_json()
            assert first["type"] == "message" and first["data"] == {"headline": "hi"}
            assert "sender" not in first and isinstance(first["ts"], int)
            assert second["data"] == {"raw": [1, 2.5, "x"]}
        await hub.publish("other", "ping")
        assert (await bystander.receive_json())["data"] == "ping"


async def test_publish_json_passthrough_is_untouched(anyio_backend: str) -> None:
    """``publish(json=...)`` forwards the payload bytes as they were given."""
    hub = Hub(anonymous=True)
    payload = b'{"b": 1,   "a": [true, null]}'
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        await ws.subscribe("news")
        await hub.publish("news", "ignored", json=payload)
        event = await ws.receive()
        assert payload.decode() in event["text"]


async def test_publish_without_subscribers_is_fine(anyio_backend: str) -> None:
    """Publishing into a channel nobody listens to succeeds and delivers nothing."""
    hub = Hub(anonymous=True)
    async with hub:
        assert await hub.publish("empty", [1, 2, 3]) is None
    assert hub.stats.publications == 1 and hub.stats.deliveries == 0


async def test_empty_channels_are_removed(anyio_backend: str) -> None:
    """A channel disappears from ``hub.channels()`` once its last subscriber leaves."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        a, _ = await clients.connect()
        b, _ = await clients.connect()
        await a.subscribe("news")
        await b.subscribe("news")
        await b.subscribe("sport", id=2)
        assert hub.channels() == {"news": 2, "sport": 1}
        reply = await a.command({"type": "unsubscribe", "channel": "news", "id": 3})
        assert reply == {"type": "unsubscribed", "channel": "news", "id": 3}
        await wait_until(lambda: hub.channels() == {"news": 1, "sport": 1})
        b.leave()
        await wait_until(lambda: hub.channels() == {} and hub.connection_count == 1)
        # The node's broker subscription went too: a new subscriber starts afresh.
        await b_is_replaced(clients, hub)


async def b_is_replaced(clients: Clients, hub: Hub) -> None:
    """A new client can subscribe again to a channel that was emptied."""
    c, _ = await clients.connect()
    await c.subscribe("news")
    assert hub.channels() == {"news": 1}
    await hub.publish("news", "again")
    assert (await c.receive_json())["data"] == "again"


async def test_connection_count_follows_clients(anyio_backend: str) -> None:
    """``hub.connection_count`` counts open connections and drops when they leave."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        assert hub.connection_count == 0
        a, _ = await clients.connect()
        b, _ = await clients.connect()
        assert hub.connection_count == 2
        assert hub.stats.connections_total == 2
        a.leave()
        await wait_until(lambda: hub.connection_count == 1)
        b.leave()
        await wait_until(lambda: hub.connection_count == 0)


# -- users: personal channel, kick -------------------------------------------------------------


async def test_personal_channel_in_welcome(anyio_backend: str) -> None:
    """An authenticated user is subscribed server-side to ``#<user>``, listed in welcome."""
    hub = Hub(authenticator=as_u1)
    async with serving(hub) as clients:
        ws, welcome = await clients.connect()
        assert welcome["user"] == "u1"
        assert [entry["channel"] for entry in welcome["subscribed"]] == ["#u1"]
        assert welcome["version"] == 1 and welcome["node"] == hub.node
        assert hub.channels() == {"#u1": 1}
        await hub.publish("#u1", {"title": "hello"})
        message = await ws.receive_json()
        assert message["channel"] == "#u1" and message["data"] == {"title": "hello"}


async def test_anonymous_welcome_has_no_personal_channel(anyio_backend: str) -> None:
    """An anonymous client gets ``user == ""`` and no server-side subscription."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        _, welcome = await clients.connect(query=b"name=Ann")
        assert welcome["user"] == "" and welcome["subscribed"] == []
        assert hub.channels() == {}


async def test_disconnect_user_kicks_with_4403(anyio_backend: str) -> None:
    """``hub.disconnect(user)`` sends ``disconnect`` 4403 (no reconnect) and closes 4403."""
    hub = Hub(authenticator=as_u1)
    async with serving(hub) as clients:
        first, _ = await clients.connect()
        second, _ = await clients.connect()
        assert await hub.disconnect("nobody") == 0
        assert await hub.disconnect("u1", reason="banned") == 2
        for ws in (first, second):
            goodbye, code = await ws.receive_close()
            assert goodbye == {
                "type": "disconnect",
                "code": 4403,
                "reason": "banned",
                "reconnect": False,
            }
            assert code == 4403
            assert await ws.read_until_closed() == []
        await wait_until(lambda: hub.connection_count == 0 and hub.channels() == {})


# -- shutdown ----------------------------------------------------------------------------------


async def test_drain_sends_going_away(anyio_backend: str) -> None:
    """``hub.drain()`` closes clients with ``disconnect`` 1001, reconnect true."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        await ws.subscribe("news")
        await hub.publish("news", "last words")
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.drain)
            # What was queued before the drain is delivered first.
            assert (await ws.receive_json())["data"] == "last words"
            goodbye, code = await ws.receive_close()
        assert goodbye["code"] == 1001 and goodbye["reconnect"] is True
        assert code == 1001
        assert hub.state == "draining" and hub.connection_count == 0


async def test_connection_refused_while_draining(anyio_backend: str) -> None:
    """A WebSocket arriving while the hub drains is refused with HTTP 503."""
    hub = Hub(anonymous=True)
    async with serving(hub) as clients:
        await hub.drain()
        ws = await clients.open()
        start = await ws.receive()
        assert start["type"] == "websocket.http.response.start" and start["status"] == 503
        body = await ws.receive()
        assert json.loads(body["body"])["code"] == 503


async def _connect_then_stop(hub: Hub, seen: list[list[Event]]) -> None:
    """Connect two clients that read until closed, then leave ``async with hub``."""
    async with anyio.create_task_group() as tg:
        async with hub:
            clients = Clients(tg, HubApp(hub))
            for _ in range(2):
                ws, _ = await clients.connect()

                async def collect(ws: MemoryWebSocket = ws) -> None:
                    seen.append(await ws.read_until_closed())
                    ws.leave()

                tg.start_soon(collect)


async def test_stopping_the_hub_says_goodbye(anyio_backend: str) -> None:
    """Leaving ``async with hub`` sends every client ``disconnect`` 1001 with reconnect."""
    hub = Hub(anonymous=True)
    seen: list[list[Event]] = []
    with anyio.fail_after(TIMEOUT):
        await _connect_then_stop(hub, seen)
    assert hub.state == "stopped" and hub.connection_count == 0
    assert len(seen) == 2
    for events in seen:
        assert [event["type"] for event in events] == ["websocket.send", "websocket.close"]
        assert json.loads(events[0]["text"]) == {
            "type": "disconnect",
            "code": 1001,
            "reason": "server shutting down",
            "reconnect": True,
        }
        assert events[1]["code"] == 1001


# -- slow consumers ----------------------------------------------------------------------------


async def test_frozen_client_closed_1013_others_unaffected(anyio_backend: str) -> None:
    """A client that stops reading is closed 1013 (reconnect); the others get everything."""
    hub = Hub(anonymous=True, limits=Limits(queue_messages=4))
    async with serving(hub) as clients:
        frozen, _ = await clients.connect()
        healthy = [(await clients.connect())[0] for _ in range(2)]
        for ws in (frozen, *healthy):
            await ws.subscribe("ticks")
        total = 12
        for n in range(total):
            await hub.publish("ticks", n)
            for ws in healthy:
                message = await ws.receive_json()
                assert message["data"] == n
        # The frozen client's queue overflowed: once it reads again it finds the
        # goodbye, never a gap; then it is gone from the channel.
        events = await frozen.read_until_closed()
        frames = [json.loads(e["text"]) for e in events if e["type"] == "websocket.send"]
        data = [f["data"] for f in frames if f["type"] == "message"]
        assert data == list(range(len(data))) and len(data) < total
        assert frames[-1] == {
            "type": "disconnect",
            "code": 1013,
            "reason": frames[-1]["reason"],
            "reconnect": True,
        }
        assert events[-1]["type"] == "websocket.close" and events[-1]["code"] == 1013
        await wait_until(lambda: hub.channels() == {"ticks": 2})
        assert hub.stats.slow_consumer_closes == 1
        # The healthy clients still receive.
        await hub.publish("ticks", "after")
        for ws in healthy:
            assert (await ws.receive_json())["data"] == "after"


async def test_drop_oldest_namespace_keeps_frozen_client(anyio_backend: str) -> None:
    """In a ``drop_oldest`` namespace a full queue drops old messages instead of closing."""
    hub = Hub(
        anonymous=True,
        namespaces=[Namespace(), Namespace(name="cursor", slow_consumer="drop_oldest")],
        limits=Limits(queue_messages=3),
    )
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        await ws.subscribe("cursor:1")
        for n in range(10):
            await hub.publish("cursor:1", n)
        assert hub.stats.dropped > 0
        assert hub.channels() == {"cursor:1": 1}
        data = []
        with anyio.move_on_after(0.3):
            while True:
                data.append((await ws.receive_json())["data"])
        assert data[-1] == 9 and data == sorted(data) and len(data) < 10


# -- background broker calls are bounded -------------------------------------------------------


class InFlightBroker(MemoryBroker):
    """A memory broker whose presence calls take a few scheduler turns, counting overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0

    async def _slow(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
        finally:
            self.in_flight -= 1

    async def presence_remove(self, channel: str, client: str) -> None:
        await self._slow()
        await super().presence_remove(channel, client)


async def presences(hub: Hub, channels: list[str]) -> list[dict[str, Any]]:
    """Who is present in each of ``channels``, in order."""
    return [dict(await hub.presence(channel)) for channel in channels]


def presence_hub(broker: MemoryBroker) -> Hub:
    """An anonymous hub with presence and join/leave in namespace ``room``."""
    return Hub(
        broker=broker,
        anonymous=True,
        namespaces=[Namespace(), Namespace(name="room", presence=True, join_leave=True)],
        limits=Limits(command_rate=1e6, command_burst=1_000_000),
    )


async def test_departures_from_many_channels_take_turns_and_all_complete(
    anyio_backend: str,
) -> None:
    """A client leaving 128 presence channels: at most 16 removals at once, all 128 done."""
    broker = InFlightBroker()
    hub = presence_hub(broker)
    rooms = [f"room:{n}" for n in range(128)]
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        for n, room in enumerate(rooms, 1):
            await ws.subscribe(room, id=n)
        assert all(await presences(hub, rooms))
        ws.leave()

        with anyio.fail_after(TIMEOUT):
            for _ in range(int(TIMEOUT / 0.01)):
                if not any(await presences(hub, rooms)):
                    break
                await anyio.sleep(0.01)
    assert 1 < broker.most_in_flight <= BACKGROUND_BROKER_CALLS


async def test_stopping_the_hub_completes_the_departures_it_started(anyio_backend: str) -> None:
    """Stopping the hub right after clients left still removes every presence lease."""
    broker = InFlightBroker()
    hub = presence_hub(broker)
    rooms = [f"room:{n}" for n in range(40)]
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        for n, room in enumerate(rooms, 1):
            await ws.subscribe(room, id=n)
    assert broker.in_flight == 0
    async with hub:
        assert not any(await presences(hub, rooms))


class LossReportingBroker(InFlightBroker):
    """Counts overlapping history reads that repair a stream, and can report a loss."""

    async def start(self, handler: Any, lost: Any, task_group: Any = None) -> None:
        self.report_loss = lost
        await super().start(handler, lost, task_group)

    async def history(self, channel: str, **options: Any) -> Any:
        if options.get("since") is not None:
            await self._slow()
        return await super().history(channel, **options)


async def test_repairs_after_a_loss_take_turns(anyio_backend: str) -> None:
    """A loss reported on 64 channels with history repairs them at most 16 at once, all of them."""
    broker = LossReportingBroker()
    hub = Hub(
        broker=broker,
        anonymous=True,
        namespaces=[Namespace(), Namespace(name="h", history_size=10)],
        limits=Limits(command_rate=1e6, command_burst=1_000_000),
    )
    channels = [f"h:{n}" for n in range(64)]
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        for n, channel in enumerate(channels, 1):
            await ws.subscribe(channel, id=n)
            await hub.publish(channel, n)
            assert (await ws.receive_json())["offset"] == 1
        broker.report_loss(None)
        await wait_until(lambda: hub.stats.gaps_repaired == len(channels))
    assert 1 < broker.most_in_flight <= BACKGROUND_BROKER_CALLS


# -- presence is read-after-subscribe ----------------------------------------------------------


class SlowLeaseBroker(MemoryBroker):
    """Records, as each presence lease is taken, what the hub had sent by then."""

    def __init__(self) -> None:
        super().__init__()
        self.hub: Hub | None = None
        self.sent_before_lease: list[dict[str, int]] = []

    async def presence_set(self, channel: str, client: str, info: Any, ttl: float) -> None:
        assert self.hub is not None
        self.sent_before_lease.append(dict(self.hub.stats.sent))
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        await super().presence_set(channel, client, info, ttl)


async def with_room_channel(scope: Mapping[str, Any]) -> Identity:
    """User ``u1``, subscribed by the server to ``room:lobby``."""
    return Identity(user="u1", channels=("room:lobby",))


@pytest.mark.parametrize("history_size", [0, 10])
async def test_subscribed_is_sent_after_the_presence_lease(
    anyio_backend: str, history_size: int
) -> None:
    """``subscribed`` is queued only once the lease is taken: ``presence`` right after lists it."""
    broker = SlowLeaseBroker()
    hub = Hub(
        broker=broker,
        anonymous=True,
        namespaces=[
            Namespace(),
            Namespace(name="room", presence=True, join_leave=True, history_size=history_size),
        ],
    )
    broker.hub = hub
    async with serving(hub) as clients:
        ws, welcome = await clients.connect()
        await ws.subscribe("room:a")
        assert broker.sent_before_lease[-1].get("subscribed", 0) == 0
        assert welcome["client"] in await hub.presence("room:a")


async def test_welcome_is_sent_after_the_presence_leases(anyio_backend: str) -> None:
    """Server-made subscriptions listed in ``welcome`` hold their presence lease already."""
    broker = SlowLeaseBroker()
    hub = Hub(
        broker=broker,
        authenticator=with_room_channel,
        namespaces=[Namespace(), Namespace(name="room", presence=True)],
    )
    broker.hub = hub
    async with serving(hub) as clients:
        _, welcome = await clients.connect()
        assert [s["channel"] for s in welcome["subscribed"]] == ["#u1", "room:lobby"]
        assert broker.sent_before_lease == [{}]
        assert welcome["client"] in await hub.presence("room:lobby")


async def test_a_subscribe_whose_lease_fails_is_refused_and_leaves_nothing(
    anyio_backend: str,
) -> None:
    """A broker that cannot take the lease: ``error`` 500, no subscription, the channel released."""

    class NoLeaseBroker(MemoryBroker):
        async def presence_set(self, channel: str, client: str, info: Any, ttl: float) -> None:
            raise RuntimeError("presence store down")

    hub = presence_hub(NoLeaseBroker())
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        reply = await ws.command({"type": "subscribe", "channel": "room:a", "id": 7})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", 500, 7)
        await wait_until(lambda: "room:a" not in hub._registry.channels)
        assert hub.channels() == {}


# -- replies sized by history are exempt from the queue limits ---------------------------------


async def test_a_join_reply_larger_than_the_queue_is_delivered_whole(anyio_backend: str) -> None:
    """A 600 KB replay through a 96 KiB queue: split after 512 KiB, nothing closed, live follows."""
    hub = Hub(
        anonymous=True,
        namespaces=[Namespace(), Namespace(name="h", history_size=200)],
        limits=Limits(queue_bytes=96 * 1024),  # unsent replies may hold 8 times that
    )
    async with serving(hub) as clients:
        for n in range(150):
            await hub.publish("h:x", {"n": n, "pad": "x" * 4000})
        ws, _ = await clients.connect()
        await ws.send_json({"type": "subscribe", "channel": "h:x", "history": 150, "id": 1})
        await wait_until(lambda: hub.channels() == {"h:x": 1})
        for n in range(150, 160):  # queued behind the reply while nobody reads
            await hub.publish("h:x", {"n": n})
        reply = await ws.receive_json()
        assert reply["type"] == "subscribed"
        inline = [m["offset"] for m in reply["publications"]]
        assert inline == list(range(1, len(inline) + 1)) and 100 < len(inline) < 150
        assert reply["offset"] == inline[-1]
        rest = [await ws.receive_json() for _ in range(160 - len(inline))]
        assert [m["type"] for m in rest] == ["message"] * len(rest)
        assert [m["offset"] for m in rest] == list(range(len(inline) + 1, 161))
        assert hub.stats.slow_consumer_closes == 0
        # Live publications alone are still held to the limit.
        for n in range(40):
            await hub.publish("h:x", {"n": n, "pad": "x" * 4000})
        assert hub.stats.slow_consumer_closes == 1


class RefreshBroker(InFlightBroker):
    """Counts lease renewals and their overlap; can fail them as an unreachable broker."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0
        self.unreachable = False

    async def presence_set(self, channel: str, client: str, info: Any, ttl: float) -> None:
        self.renewals += 1
        if self.unreachable:
            await self._slow()
            raise BrokerUnavailable("broker down")
        await self._slow()
        await super().presence_set(channel, client, info, ttl)


async def test_lease_renewals_run_a_few_at_a_time(anyio_backend: str) -> None:
    """A round renews all 40 leases of a client, more than one and at most 16 at once."""
    broker = RefreshBroker()
    hub = presence_hub(broker)
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        for n in range(40):
            await ws.subscribe(f"room:{n}", id=n + 1)
        broker.renewals = broker.most_in_flight = 0
        await hub._presence.renew(hub._registry.connections)
        assert broker.renewals == 40
        assert 1 < broker.most_in_flight <= BACKGROUND_BROKER_CALLS


async def test_an_unreachable_broker_ends_the_renewal_round(anyio_backend: str) -> None:
    """With the broker unreachable, a round of 40 renewals stops after the first failures."""
    broker = RefreshBroker()
    hub = presence_hub(broker)
    async with serving(hub) as clients:
        ws, _ = await clients.connect()
        for n in range(40):
            await ws.subscribe(f"room:{n}", id=n + 1)
        broker.renewals = 0
        broker.unreachable = True
        await hub._presence.renew(hub._registry.connections)
        assert broker.renewals <= BACKGROUND_BROKER_CALLS
        broker.unreachable = False


async def with_server_side_stream(scope: Mapping[str, Any]) -> Identity:
    """User ``u1``, subscribed by the server to ``h:x``."""
    return Identity(user="u1", channels=("h:x",))


async def test_recovering_a_server_made_subscription_fits_one_frame(anyio_backend: str) -> None:
    """Recovery on a server-made subscription: whole within 512 KiB, else ``recovered: false``."""
    hub = Hub(
        authenticator=with_server_side_stream,
        namespaces=[Namespace(), Namespace(name="h", history_size=200)],
    )
    async with serving(hub) as clients:
        for n in range(150):
            position = await hub.publish("h:x", {"n": n, "pad": "x" * 4000})
        assert position is not None
        ws, _ = await clients.connect()
        recover = {"offset": 0, "epoch": position.epoch}
        reply = await ws.command({"type": "subscribe", "channel": "h:x", "recover": recover})
        assert (reply["recovered"], reply["publications"]) == (False, [])
        assert reply["offset"] == 150
        recover = {"offset": 100, "epoch": position.epoch}
        reply = await ws.command({"type": "subscribe", "channel": "h:x", "recover": recover})
        assert reply["recovered"] is True
        assert [m["offset"] for m in reply["publications"]] == list(range(101, 151))


async def test_written_replies_are_forgotten(anyio_backend: str) -> None:
    """200 ``history`` replies, each read: the connection keeps no record of them growing."""
    hub = Hub(
        anonymous=True,
        namespaces=[Namespace(), Namespace(name="h", history_size=10)],
        limits=Limits(command_rate=1e6, command_burst=1_000_000),
    )
    async with serving(hub) as clients:
        await hub.publish("h:x", 1)
        ws, _ = await clients.connect()
        for n in range(1, 201):
            reply = await ws.command({"type": "history", "channel": "h:x", "id": n})
            assert reply["type"] == "history"
        (connection,) = hub._registry.connections
        assert len(connection._replies or ()) <= 1


class StuckLeaseBroker(MemoryBroker):
    """Takes a presence lease, then does not answer until released (a reply in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = anyio.Event()
        self.release = anyio.Event()

    async def presence_set(self, channel: str, client: str, info: Any, ttl: float) -> None:
        await super().presence_set(channel, client, info, ttl)
        self.taken.set()
        await self.release.wait()


async def test_a_client_leaving_while_its_lease_is_in_flight_leaves_no_ghost(
    anyio_backend: str,
) -> None:
    """A lease the broker took while its reply was in flight is dropped when the client leaves."""
    broker = StuckLeaseBroker()
    hub = Hub(
        broker=broker,
        anonymous=True,
        namespaces=[Namespace(), Namespace(name="room", presence=True)],
        # The next ping's send fails on the gone socket and ends the connection's
        # tasks, the pending subscribe with them, while the lease's reply is awaited.
        limits=Limits(ping_interval=0.2, pong_timeout=1.0),
    )
    async with serving(hub) as clients:
        ws, welcome = await clients.connect()
        await ws.send_json({"type": "subscribe", "channel": "room:a", "id": 1})
        with anyio.fail_after(5):
            await broker.taken.wait()
        assert welcome["client"] in await broker.presence("room:a")  # taken at the broker
        ws.leave()  # the client goes while the lease's reply is still awaited
        with anyio.fail_after(5):
            while await broker.presence("room:a"):  # noqa: ASYNC110 - polls the broker
                await anyio.sleep(0.01)
        broker.release.set()
