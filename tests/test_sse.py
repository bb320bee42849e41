"""Server-Sent Events (``GET /sse``) through ``HubApp`` as a plain ASGI app, on asyncio and trio.

An in-memory HTTP client stands in for the server: anyio memory streams carry
ASGI ``receive``/``send``, and the app's side has no buffer, so a client that
stops reading blocks the app's ``send`` as a full TCP window would.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from hubbub import (
    AuthMiddleware,
    BrokerUnavailable,
    HistoryPage,
    Hub,
    HubApp,
    Identity,
    InvalidMessage,
    Limits,
    MemoryBroker,
    Namespace,
    Notification,
    RateLimited,
)
from hubbub._sse import MAX_EVENT_ID, decode_event_id, encode_event_id, fingerprint
from hubbub.messages import Position

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0
Event = MutableMapping[str, Any]


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id (test-only); none means no credentials."""
    for part in scope.get("query_string", b"").decode().split("&"):
        key, _, value = part.partition("=")
        if key == "user" and value:
            return Identity(user=value)
    return None


def make_hub(**limits: Any) -> Hub:
    """A hub with history (``feed``: 100, ``hist``: 5), a members-only and a default namespace."""
    return Hub(
        anonymous=True,
        authenticator=authenticate,
        limits=Limits(**{"close_timeout": 0.5, **limits}),
        namespaces=[
            Namespace(),
            Namespace(name="feed", history_size=100),
            Namespace(name="hist", history_size=5),
            Namespace(name="members", subscribe="authenticated"),
        ],
    )


class Stream:
    """One in-memory SSE request: the test's side of the ASGI streams."""

    def __init__(
        self, tg: TaskGroup, app: HubApp, query: str, headers: list[Any], method: str = "GET"
    ) -> None:
        self.to_app: MemoryObjectSendStream[Event]
        self.from_app: MemoryObjectReceiveStream[Event]
        self.to_app, app_receive = anyio.create_memory_object_stream[Event](4)
        app_send, self.from_app = anyio.create_memory_object_stream[Event](0)
        self.done = anyio.Event()
        self.buffer = ""
        self.ended = False
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": "/sse",
            "raw_path": b"/sse",
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }

        async def run() -> None:
            try:
                async with app_send, app_receive:
                    await app(scope, app_receive.receive, app_send.send)
            finally:
                self.done.set()

        tg.start_soon(run)
        self.to_app.send_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def start(self) -> tuple[int, dict[str, str]]:
        """The response's status and headers."""
        with anyio.fail_after(TIMEOUT):
            message = await self.from_app.receive()
        assert message["type"] == "http.response.start", message
        headers = {k.decode(): v.decode() for k, v in message["headers"]}
        return int(message["status"]), headers

    async def refused(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        """A refusal: status, the JSON ``{code, reason}`` body, headers."""
        status, headers = await self.start()
        with anyio.fail_after(TIMEOUT):
            body = await self.from_app.receive()
        return status, json.loads(body["body"]), headers

    async def _more(self) -> None:
        with anyio.fail_after(TIMEOUT):
            message = await self.from_app.receive()
        assert message["type"] == "http.response.body", message
        self.buffer += message["body"].decode()
        if not message.get("more_body", False):
            self.ended = True

    async def event(self) -> dict[str, str]:
        """The next SSE event (or comment) as its fields; ``data`` lines joined by newlines."""
        while "\n\n" not in self.buffer:
            assert not self.ended, "the stream ended"
            await self._more()
        block, self.buffer = self.buffer.split("\n\n", 1)
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name or "comment"] = value
        return fields

    async def events(self, kind: str, count: int) -> list[dict[str, Any]]:
        """The next ``count`` events of type ``kind`` (others skipped), each data decoded + id."""
        found: list[dict[str, Any]] = []
        with anyio.fail_after(TIMEOUT):
            while len(found) < count:
                fields = await self.event()
                if fields.get("event") == kind:
                    found.append({**json.loads(fields["data"]), "_id": fields.get("id")})
        return found

    async def until_end(self) -> str:
        """Everything left until the response ends."""
        with anyio.fail_after(TIMEOUT):
            while not self.ended:
                await self._more()
        return self.buffer

    async def leave(self) -> None:
        """The client goes away; the app's call must then return."""
        await self.to_app.send({"type": "http.disconnect"})
        self.close()
        with anyio.fail_after(TIMEOUT):
            await self.done.wait()

    def close(self) -> None:
        """Close the test's side of both streams."""
        self.to_app.close()
        self.from_app.close()


class Harness:
    def __init__(self, tg: TaskGroup, hub: Hub) -> None:
        self.tg = tg
        self.hub = hub
        self.app = HubApp(hub)
        self.opened: list[Stream] = []

    def open(self, query: str, headers: list[Any] | None = None, method: str = "GET") -> Stream:
        stream = Stream(self.tg, self.app, query, headers or [], method)
        self.opened.append(stream)
        return stream

    async def stream(self, query: str, headers: list[Any] | None = None) -> Stream:
        """Open a stream, check its headers and its ``retry`` preamble."""
        stream = self.open(query, headers)
        status, head = await stream.start()
        assert status == 200, (status, await stream.until_end())
        assert head["content-type"] == "text/event-stream; charset=utf-8"
        assert head["cache-control"] == "no-cache, no-transform"
        first = await stream.event()
        assert 1000 <= int(first["retry"]) <= 5000
        return stream


@asynccontextmanager
async def running(hub: Hub) -> AsyncIterator[Harness]:
    """Run ``hub``; every stream still open at the end is closed from the client's side."""
    async with hub, anyio.create_task_group() as tg:
        harness = Harness(tg, hub)
        try:
            yield harness
        finally:
            for stream in harness.opened:
                stream.close()


async def publish(hub: Hub, channel: str, values: range) -> None:
    for value in values:
        await hub.publish(channel, {"n": value})


# --------------------------------------------------------------------------- event ids


def test_event_id_round_trip() -> None:
    """An id carries offset and epoch per channel; channels not asked for are ignored."""
    positions = {"feed:a": Position(offset=7, epoch="e1"), "hist:b": Position(offset=0, epoch="")}
    text = encode_event_id(positions)
    assert text.replace("-", "").replace("_", "").isalnum()  # URL-safe, no padding
    assert decode_event_id(text, ["feed:a", "hist:b", "x"]) == positions
    assert decode_event_id(text, ["feed:a"]) == {"feed:a": positions["feed:a"]}


def _raw_id(document: Any) -> str:
    """An id built from any MessagePack document, as a forger would."""
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(document)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "text",
    [
        "not base64!",
        "AAAA",
        "kgGQAA",  # trailing bytes
        encode_event_id({})[:-1] + "A",
        "x" * (MAX_EVENT_ID + 1),
        _raw_id([2, []]),  # unknown version
        _raw_id([1, [[1, -1, "e"]]]),  # negative offset
        _raw_id([1, [[1, 1, "e" * 300]]]),  # epoch too long
        _raw_id([1, [[-5, 1, "e"]]]),  # not a fingerprint
        _raw_id({"version": 1}),
    ],
)
def test_malformed_event_ids_are_refused(text: str) -> None:
    """Anything the server did not issue is ``InvalidMessage`` (400), never a crash."""
    with pytest.raises(InvalidMessage):
        decode_event_id(text, ["feed:a"])


def test_event_id_with_a_channel_twice_is_refused() -> None:
    """A forged id naming one fingerprint twice is refused."""
    mark = fingerprint("feed:a")
    with pytest.raises(InvalidMessage):
        decode_event_id(_raw_id([1, [[mark, 1, "e"], [mark, 2, "e"]]]), ["feed:a"])


# --------------------------------------------------------------------------- streaming


async def test_live_delivery_on_several_channels() -> None:
    """Publications of every listed channel arrive as ``message`` events with the WebSocket JSON."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a&channel=plain&channel=feed:b")
        subscribed = await stream.events("subscribed", 3)
        assert [s["channel"] for s in subscribed] == ["feed:a", "plain", "feed:b"]
        assert "recovered" not in subscribed[0] and subscribed[0]["offset"] == 0
        assert hub.sse_count == 1 and hub.connection_count == 1
        await hub.publish("feed:a", {"n": 1})
        await hub.publish("plain", {"n": 2})
        await hub.publish("feed:b", {"n": 3})
        messages = await stream.events("message", 3)
        assert [(m["channel"], m["data"]) for m in messages] == [
            ("feed:a", {"n": 1}),
            ("plain", {"n": 2}),
            ("feed:b", {"n": 3}),
        ]
        assert messages[0]["type"] == "message" and messages[0]["offset"] == 1
        assert "offset" not in messages[1]
        # A channel without history carries the last id unchanged.
        assert messages[1]["_id"] == messages[0]["_id"] != messages[2]["_id"]
        positions = decode_event_id(messages[2]["_id"], ["feed:a", "feed:b"])
        assert {c: p.offset for c, p in positions.items()} == {"feed:a": 1, "feed:b": 1}
        await stream.leave()
        assert hub.connection_count == 0 and hub.channels() == {}
        assert hub.stats.sse_streams_total == 1


async def _resume_after_a_drop(carrier: str) -> None:
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a&channel=feed:b")
        await stream.events("subscribed", 2)
        await publish(hub, "feed:a", range(1, 4))
        await publish(hub, "feed:b", range(1, 3))
        seen = await stream.events("message", 5)
        last = seen[-1]["_id"]
        await stream.leave()
        assert hub.connection_count == 0
        await publish(hub, "feed:a", range(4, 7))
        await publish(hub, "feed:b", range(3, 5))
        if carrier == "header":
            stream = await h.stream(
                "channel=feed:a&channel=feed:b", [(b"last-event-id", last.encode())]
            )
        else:
            stream = await h.stream(f"channel=feed:a&channel=feed:b&last_event_id={last}")
        subscribed = await stream.events("subscribed", 1)
        assert subscribed[0]["recovered"] is True and subscribed[0]["publications"] == []
        missed = await stream.events("message", 3)
        subscribed += await stream.events("subscribed", 1)
        missed += await stream.events("message", 2)
        assert [s["recovered"] for s in subscribed] == [True, True]
        assert [(m["channel"], m["data"]["n"]) for m in missed] == [
            ("feed:a", 4),
            ("feed:a", 5),
            ("feed:a", 6),
            ("feed:b", 3),
            ("feed:b", 4),
        ]
        await hub.publish("feed:a", {"n": 7})
        live = await stream.events("message", 1)
        assert live[0]["offset"] == 7 and live[0]["data"] == {"n": 7}
        await stream.leave()
        assert hub.stats.recovered == 2


async def test_last_event_id_header_recovers_what_was_missed() -> None:
    """Drop the stream, publish more, reconnect with ``Last-Event-ID``: exactly the missed ones."""
    await _resume_after_a_drop("header")


async def test_last_event_id_query_parameter_recovers_too() -> None:
    """``?last_event_id=`` works like the header (for clients that cannot set headers)."""
    await _resume_after_a_drop("query")


async def test_drop_between_subscribed_and_its_publications_loses_nothing() -> None:
    """The id of ``subscribed`` precedes its recovered publications, so they are never skipped."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a")
        first = (await stream.events("subscribed", 1))[0]["_id"]
        await stream.leave()
        await publish(hub, "feed:a", range(1, 4))
        stream = await h.stream("channel=feed:a", [(b"last-event-id", first.encode())])
        subscribed = (await stream.events("subscribed", 1))[0]
        await stream.leave()  # dropped before reading the recovered messages
        stream = await h.stream("channel=feed:a", [(b"last-event-id", subscribed["_id"].encode())])
        await stream.events("subscribed", 1)
        assert [m["offset"] for m in await stream.events("message", 3)] == [1, 2, 3]
        await stream.leave()


async def test_a_new_channel_next_to_a_resumed_one_starts_fresh() -> None:
    """A channel the id does not cover is subscribed without recovery; one without history
    is ``recovered: false`` (at-most-once)."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a")
        first = (await stream.events("subscribed", 1))[0]["_id"]
        await stream.leave()
        stream = await h.stream(
            "channel=feed:a&channel=feed:new&channel=plain", [(b"last-event-id", first.encode())]
        )
        replies = await stream.events("subscribed", 3)
        assert replies[0]["recovered"] is True
        assert "recovered" not in replies[1]
        assert replies[2]["recovered"] is False
        await stream.leave()


async def test_trimmed_history_is_signalled_not_recovered() -> None:
    """Past the kept history: ``subscribed`` with ``recovered: false`` and no publications."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=hist:a")
        first = (await stream.events("subscribed", 1))[0]["_id"]
        await stream.leave()
        await publish(hub, "hist:a", range(10))
        stream = await h.stream("channel=hist:a", [(b"last-event-id", first.encode())])
        reply = (await stream.events("subscribed", 1))[0]
        assert reply["recovered"] is False and reply["offset"] == 10
        await hub.publish("hist:a", "next")
        message = (await stream.events("message", 1))[0]
        assert message["offset"] == 11
        assert decode_event_id(message["_id"], ["hist:a"])["hist:a"].offset == 11
        await stream.leave()
        assert hub.stats.not_recovered == 1


async def test_a_changed_epoch_is_signalled_not_recovered() -> None:
    """An id naming another epoch of the stream (recreated): ``recovered: false``."""
    hub = make_hub()
    async with running(hub) as h:
        await publish(hub, "feed:a", range(3))
        stale = encode_event_id({"feed:a": Position(offset=1, epoch="gone")})
        stream = await h.stream(f"channel=feed:a&last_event_id={stale}")
        reply = (await stream.events("subscribed", 1))[0]
        assert reply["recovered"] is False and reply["offset"] == 3
        assert reply["epoch"] != "gone"
        await stream.leave()


async def test_forged_positions_are_not_recovered() -> None:
    """A well-formed id with positions the stream never had: ``recovered: false``, no crash."""
    hub = make_hub()
    async with running(hub) as h:
        await publish(hub, "feed:a", range(2))
        await publish(hub, "feed:b", range(2))
        far = Position(offset=2**63 - 1, epoch="x")
        forged = encode_event_id({"feed:a": far, "feed:b": Position(offset=0, epoch="")})
        stream = await h.stream(f"channel=feed:a&channel=feed:b&last_event_id={forged}")
        replies = await stream.events("subscribed", 2)
        assert [(r["recovered"], r["offset"]) for r in replies] == [(False, 2), (False, 2)]
        await stream.leave()


async def test_publications_with_line_breaks_stay_one_event() -> None:
    """JSON whitespace holding line breaks becomes several ``data:`` lines of one event."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a")
        await stream.events("subscribed", 1)
        await hub.publish("feed:a", json=b'{"a":\r\n[1,\r2,\n3]}')
        message = (await stream.events("message", 1))[0]
        assert message["data"] == {"a": [1, 2, 3]}
        await stream.leave()


async def test_personal_channel_for_its_own_user_only() -> None:
    """``#<user>`` streams that user's notifications; anyone else is refused 403."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=%23alice&user=alice")
        await stream.events("subscribed", 1)
        await hub.notify("alice", Notification(type="t", title="hi"))
        message = (await stream.events("message", 1))[0]
        assert message["channel"] == "#alice" and message["data"]["title"] == "hi"
        refused = h.open("channel=%23alice&user=bob")
        status, body, _ = await refused.refused()
        assert status == 403 and body["code"] == 403
        await stream.leave()


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("", [], 400),
        ("channel=bad%20name", [], 400),
        ("channel=feed:a&last_event_id=%21%21", [], 400),
        ("channel=feed:a", [(b"last-event-id", b"kgGQAA")], 400),
        ("channel=members:x", [], 403),
        ("channel=nowhere:x", [], 404),
        ("channel=a&channel=b&channel=c", [], 429),
        ("channel=feed:a", [(b"x-method", b"POST")], 405),
    ],
)
async def test_refusals_before_the_stream(query: str, headers: list[Any], status: int) -> None:
    """Every refusal is a JSON ``{code, reason}`` with the status, before any stream."""
    hub = make_hub(max_channels=2)
    async with running(hub) as h:
        stream = h.open(query, headers, "POST" if headers == [(b"x-method", b"POST")] else "GET")
        got, body, head = await stream.refused()
        assert (got, body["code"]) == (status, status) and body["reason"]
        assert head["content-type"] == "application/json"
        assert hub.connection_count == 0


async def test_refused_401_without_credentials() -> None:
    """A hub without anonymous access refuses a stream without credentials (401)."""
    hub = Hub(authenticator=authenticate)
    async with running(hub) as h:
        status, body, head = await h.open("channel=a").refused()
        assert status == 401 and body["code"] == 401 and "www-authenticate" in head
        assert hub.stats.auth_failures == {"missing": 1}
        stream = await h.stream("channel=a&user=u")
        await stream.leave()
        assert hub.stats.closes == {"1000": 1}


async def test_behind_auth_middleware() -> None:
    """``AuthMiddleware`` in front: its identity is used; no credentials is still 401."""
    hub = Hub()
    async with running(hub) as h:
        h.app = AuthMiddleware(h.app, authenticator=authenticate)  # type: ignore[assignment]
        stream = await h.stream("channel=%23mia&user=mia")
        assert (await stream.events("subscribed", 1))[0]["channel"] == "#mia"
        await stream.leave()
        status, body, _ = await h.open("channel=a").refused()
        assert status == 401 and body["code"] == 401


async def test_refused_503_when_the_hub_is_not_running() -> None:
    """A hub that was never started answers 503."""
    hub = make_hub()
    async with anyio.create_task_group() as tg:
        stream = Stream(tg, HubApp(hub), "channel=a", [])
        status, body, _ = await stream.refused()
        assert status == 503 and body["code"] == 503
        stream.close()


async def test_connection_caps_apply() -> None:
    """Per-user caps count SSE streams (429 with ``Retry-After``); so does the handshake rate."""
    hub = make_hub(max_connections_per_user=1, handshake_rate=0.001, handshake_burst=3)
    async with running(hub) as h:
        stream = await h.stream("channel=a&user=u")
        status, body, head = await h.open("channel=a&user=u").refused()
        assert status == 429 and "retry-after" in head
        await stream.leave()
        await (await h.stream("channel=a&user=u")).leave()
        status, body, head = await h.open("channel=a&user=u").refused()
        assert status == 429 and "attempts" in body["reason"]
        assert hub.stats.rate_limited == {"user_connections": 1, "handshake": 1}


async def test_pings_keep_the_stream_alive() -> None:
    """``: ping`` comments arrive every ``ping_interval``; silence never closes an SSE stream."""
    hub = make_hub(ping_interval=0.1, pong_timeout=0.1)
    async with running(hub) as h:
        stream = await h.stream("channel=a")
        await stream.events("subscribed", 1)
        pings = 0
        with anyio.fail_after(TIMEOUT):
            while pings < 5:  # well past ping_interval + pong_timeout
                fields = await stream.event()
                pings += fields == {"comment": "ping"}
        await hub.publish("a", 1)
        assert (await stream.events("message", 1))[0]["data"] == 1
        await stream.leave()


async def test_a_slow_reader_is_dropped() -> None:
    """A client that stops reading while publications flow is closed as a slow consumer."""
    hub = make_hub(queue_messages=10, close_timeout=0.2)
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a")
        await stream.events("subscribed", 1)
        with anyio.fail_after(TIMEOUT):
            for n in range(100):
                await hub.publish("feed:a", n)
                if hub.stats.slow_consumer_closes:
                    break
            await stream.done.wait()
        assert hub.stats.slow_consumer_closes == 1
        assert hub.connection_count == 0 and hub.channels() == {}


async def test_hub_disconnect_ends_the_stream() -> None:
    """``Hub.disconnect(user)`` sends ``event: disconnect`` (4403, no reconnect) and ends it."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=feed:a&user=carol")
        await stream.events("subscribed", 1)
        assert await hub.disconnect("carol", "banned") == 1
        goodbye = (await stream.events("disconnect", 1))[0]
        assert goodbye == {
            "type": "disconnect",
            "code": 4403,
            "reason": "banned",
            "reconnect": False,
            "_id": None,
        }
        await stream.until_end()
        with anyio.fail_after(TIMEOUT):
            await stream.done.wait()
        assert hub.connection_count == 0


async def _read_to_the_end(stream: Stream, into: list[str]) -> None:
    into.append(await stream.until_end())


async def test_shutdown_ends_streams_with_reconnect() -> None:
    """Stopping the hub drains SSE streams: ``disconnect`` 1001 with ``reconnect: true``."""
    hub = make_hub()
    rest: list[str] = []
    async with anyio.create_task_group() as tg:
        stream: Stream | None = None
        try:
            async with hub:
                stream = Stream(tg, HubApp(hub), "channel=a", [])
                await stream.start()
                await stream.events("subscribed", 1)

                tg.start_soon(lambda: _read_to_the_end(stream, rest))
        finally:
            if stream is not None:
                stream.close()
    assert "event: disconnect\n" in rest[0]
    data = json.loads(rest[0].split("event: disconnect\ndata: ", 1)[1].split("\n", 1)[0])
    assert data["code"] == 1001 and data["reconnect"] is True


async def test_no_task_left_after_the_client_leaves() -> None:
    """After ``http.disconnect`` the app returns and the hub holds nothing of the stream."""
    hub = make_hub()
    async with running(hub) as h:
        streams = [await h.stream(f"channel=feed:{n}&channel=plain") for n in range(3)]
        for stream in streams:
            await stream.events("subscribed", 2)
        assert hub.sse_count == 3
        for stream in streams:
            await stream.leave()  # waits for the app's call to return
        assert hub.sse_count == 0 and hub.connection_count == 0
        assert hub.channels() == {} and hub.queued_messages() == 0


async def test_an_expired_token_ends_the_stream() -> None:
    """There is no ``refresh`` on SSE: past ``exp`` plus the grace, ``disconnect`` 4401 ends it."""

    async def expiring(scope: Mapping[str, Any]) -> Identity:
        return Identity(user="dora", expires=int(time.time()))

    hub = Hub(authenticator=expiring, limits=Limits(expiry_grace=0.2, ping_interval=0.1))
    async with running(hub) as h:
        stream = await h.stream("channel=a")
        goodbye = (await stream.events("disconnect", 1))[0]
        assert goodbye["code"] == 4401 and goodbye["reconnect"] is False
        await stream.until_end()


async def test_server_side_subscribe_and_unsubscribe_reach_the_stream() -> None:
    """``Hub.subscribe_user``/``unsubscribe_user`` reach a user's stream as events."""
    hub = make_hub()
    async with running(hub) as h:
        stream = await h.stream("channel=a&user=eve")
        await stream.events("subscribed", 1)
        await hub.subscribe_user("eve", "feed:extra")
        assert (await stream.events("subscribed", 1))[0]["channel"] == "feed:extra"
        await hub.publish("feed:extra", "x")
        assert (await stream.events("message", 1))[0]["data"] == "x"
        await hub.unsubscribe_user("eve", "feed:extra")
        assert (await stream.events("unsubscribed", 1))[0]["channel"] == "feed:extra"
        await stream.leave()


class _HistoryDown(MemoryBroker):
    """The memory broker with its history reads failing, as a broker outage looks to the hub."""

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        raise BrokerUnavailable("history is down")


async def test_broker_outage_while_subscribing_is_503() -> None:
    """A broker failure before the stream starts is a 503, and nothing of the stream remains."""
    hub = Hub(
        anonymous=True, broker=_HistoryDown(), namespaces=[Namespace(name="feed", history_size=10)]
    )
    async with running(hub) as h:
        stream = h.open("channel=feed:a")
        status, body, _ = await stream.refused()
        assert status == 503 and body["reason"] == "history is down"
        with anyio.fail_after(TIMEOUT):
            await stream.done.wait()
        assert hub.connection_count == 0 and hub.channels() == {}


def test_too_many_channel_parameters_are_refused() -> None:
    """More ``channel`` parameters than an id can hold is 400 before anything else."""
    from hubbub._sse import _channels

    query = "&".join(f"channel=c{n}" for n in range(1100)).encode()
    with pytest.raises(InvalidMessage):
        _channels({"query_string": query})


async def test_a_stream_holds_at_most_max_sse_channels() -> None:
    """Above ``MAX_SSE_CHANNELS`` event ids would outgrow what the server reads back: 429."""
    from hubbub._sse import MAX_SSE_CHANNELS

    big = {f"feed:c{n}": Position(offset=10**12 + n, epoch="abcdef12") for n in range(129)}
    assert len(encode_event_id(big)) < MAX_EVENT_ID
    hub = make_hub(max_channels=1000, command_burst=MAX_SSE_CHANNELS)
    async with running(hub) as h:
        many = "&".join(f"channel=feed:c{n}" for n in range(MAX_SSE_CHANNELS + 1))
        status, body, _ = await h.open(many + "&user=zed").refused()
        assert status == 429 and str(MAX_SSE_CHANNELS) in body["reason"]
        full = "&".join(f"channel=feed:c{n}" for n in range(MAX_SSE_CHANNELS))
        stream = await h.stream(full + "&user=zed")
        await stream.events("subscribed", MAX_SSE_CHANNELS)
        with pytest.raises(RateLimited):
            await hub.subscribe_user("zed", "feed:one-too-many")
        await hub.publish("feed:one-too-many", "x")
        await hub.publish("feed:c0", "y")
        message = (await stream.events("message", 1))[0]
        assert message["channel"] == "feed:c0"
        await stream.leave()


@pytest.mark.parametrize(
    "limits",
    [{"command_burst": 3}, {"command_limits": {"subscribe": (1.0, 3)}}],
    ids=["command_burst", "subscribe_budget"],
)
async def test_opening_a_stream_is_charged_to_the_command_budget(limits: dict[str, Any]) -> None:
    """A stream opens as many channels as a client's budget allows at once; more is 429."""
    hub = make_hub(**limits)
    async with running(hub) as h:
        refused = h.open("channel=a&channel=b&channel=c&channel=d")
        status, body, _ = await refused.refused()
        assert status == 429 and "command budget" in body["reason"]
        with anyio.fail_after(TIMEOUT):
            await refused.done.wait()
        assert hub.stats.rate_limited["command"] == 1
        assert hub.connection_count == 0 and hub.admission._per_ip == {}
        stream = await h.stream("channel=a&channel=b&channel=c")
        await stream.events("subscribed", 3)
        await stream.leave()
    assert hub.admission._per_ip == {}
