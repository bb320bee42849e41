"""Hostile input and busy-system races against the core, through real servers (issue #13).

Each test reproduces one hole found by attacking ``hubbub serve`` on loopback:
recovery whose cost followed a client-chosen offset, presence departures that
failed when a user left many channels at once, a chat room that one publisher
made unjoinable, and presence that was not yet visible right after
``subscribed``. The hub is ``tests/apps/hardening_app.py`` in a uvicorn
subprocess, on the broker each test names (a real ``redis-server`` or
PostgreSQL where the hole needs one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import hubbub.client
from hubbub._sse import encode_event_id
from hubbub.messages import Position

from .apps.wsclient import Client, open_client
from .pg_server import pg_server
from .redis_server import RedisServer, redis_server
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

ARGV = ["-m", "hubbub", "serve", "hardening_app:app", "--port", "{port}"]
_names = count(1)


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client and the Redis broker are asyncio-only."""
    return "asyncio"


@contextlib.contextmanager
def node(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """One hub node (``hardening_app``), ended by its PID when the block ends."""
    with run_server(ARGV, tmp_path, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The Redis of this module's tests."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_node(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One node on the module's Redis."""
    with node(tmp_path_factory.mktemp("node"), {"HUBBUB_TEST_REDIS_URL": redis.url}) as server:
        yield server


@pytest.fixture(scope="module")
def memory_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One node on the memory broker."""
    with node(tmp_path_factory.mktemp("memory")) as server:
        yield server


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}{next(_names)}"


def connect(server: Server, user: str | None = None, **options: Any) -> Any:
    """A WebSocket client of ``server`` (as ``user``, or anonymous)."""
    query = [f"user={user}"] if user else []
    if options.pop("batch", False):
        query.append("batch=1")
    path = "/ws" + ("?" + "&".join(query) if query else "")
    return open_client(server.ws_url, path=path, **options)


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The events of an SSE response: their fields, ``data`` lines joined (comments skipped)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if fields.get("event"):
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data" and "data" in fields:
            fields["data"] += "\n" + value
        elif name:
            fields[name] = value


# -- recovery costs the history, not the offset ------------------------------------------------


HUGE = 2**53 - 100
"""A top offset no history reaches (Redis keeps offsets as Lua numbers: exact below 2**53)."""


async def huge_stream(redis: RedisServer, client: Client, channel: str) -> str:
    """Make ``channel``'s stream sit at offset ``HUGE + 3`` with three kept publications."""
    first = await client.publish(channel, {"n": 0})
    # The Redis broker's key scheme (docs/scaling.md): "hubbub:{<byte length>:<channel>}:meta".
    redis.command("HSET", f"hubbub:{{{len(channel.encode())}:{channel}}}:meta", "offset", HUGE)
    for n in (1, 2, 3):
        ack = await client.publish(channel, {"n": n})
        assert ack["offset"] == HUGE + n and ack["epoch"] == first["epoch"]
    return str(first["epoch"])


async def test_recovery_from_zero_of_a_huge_stream_answers_at_once(
    redis: RedisServer, redis_node: Server
) -> None:
    """``recover`` from offset 0 of a stream at ~2**53 is ``recovered: false``, not a crash."""
    channel = unique("feed:huge")
    async with connect(redis_node) as publisher, connect(redis_node) as joiner:
        epoch = await huge_stream(redis, publisher, channel)
        reply = await joiner.subscribe(channel, recover={"offset": 0, "epoch": epoch})
        assert reply["recovered"] is False and reply["publications"] == []
        assert (reply["offset"], reply["epoch"]) == (HUGE + 3, epoch)
        near = await joiner.request(
            {"type": "subscribe", "channel": unique("feed:other"), "recover": {"offset": 1}}
        )
        assert near["type"] == "error"  # the connection is still served
    assert "Traceback" not in redis_node.log()


async def test_recovery_near_the_top_of_a_huge_stream_is_recovered(
    redis: RedisServer, redis_node: Server
) -> None:
    """Recovering two publications below a top of ~2**53 returns exactly those two."""
    channel = unique("feed:huge")
    async with connect(redis_node) as publisher, connect(redis_node) as joiner:
        epoch = await huge_stream(redis, publisher, channel)
        reply = await joiner.subscribe(channel, recover={"offset": HUGE + 1, "epoch": epoch})
        assert reply["recovered"] is True
        assert [(m["offset"], m["data"]) for m in reply["publications"]] == [
            (HUGE + 2, {"n": 2}),
            (HUGE + 3, {"n": 3}),
        ]


async def test_sse_forged_last_event_id_on_a_huge_stream(
    redis: RedisServer, redis_node: Server
) -> None:
    """An SSE ``Last-Event-ID`` naming offset 0 of a ~2**53 stream gets a stream, unrecovered."""
    channel = unique("feed:huge")
    async with connect(redis_node) as publisher:
        epoch = await huge_stream(redis, publisher, channel)
    forged = encode_event_id({channel: Position(offset=0, epoch=epoch)})

    def read() -> dict[str, Any]:
        url = f"{redis_node.url}/sse?channel={channel}"
        with httpx.stream("GET", url, headers={"Last-Event-ID": forged}, timeout=10) as response:
            assert response.status_code == 200, response.read()
            for event in sse_events(response):
                assert event["event"] == "subscribed", event
                return dict(json.loads(event["data"]))
        raise AssertionError("the stream ended before subscribed")

    subscribed = await asyncio.to_thread(read)
    assert subscribed["recovered"] is False
    assert (subscribed["offset"], subscribed["epoch"]) == (HUGE + 3, epoch)


# -- departures from many channels at once -----------------------------------------------------


async def test_leaving_128_presence_channels_completes_every_departure(
    redis: RedisServer, redis_node: Server
) -> None:
    """A user leaving 128 presence channels on Redis: every ``leave`` comes, presence forgets it."""
    rooms = [unique("room:many") for _ in range(128)]
    async with connect(redis_node) as watcher:
        for room in rooms:
            await watcher.subscribe(room)
        async with connect(redis_node, "leaver") as leaver:
            gone = leaver.welcome["client"]
            for room in rooms:
                await leaver.subscribe(room)
            joins = await watcher_events(watcher, "join", len(rooms))
            assert {j["channel"] for j in joins} == set(rooms)
        leaves = await watcher_events(watcher, "leave", len(rooms), within=30.0)
        assert {(e["channel"], e["client"]) for e in leaves} == {(room, gone) for room in rooms}
        for room in rooms:
            reply = await watcher.request({"type": "presence", "channel": room})
            assert gone not in reply["clients"], (room, reply)
    log = redis_node.log()
    assert "presence removal" not in log and "broker call failed" not in log, log[-3000:]


async def watcher_events(
    client: Client, kind: str, n: int, within: float = 15.0
) -> list[dict[str, Any]]:
    """The next ``n`` events of ``kind`` (others skipped), all within ``within`` seconds."""
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while len(found) < n:
            message = await client.recv(within)
            if message["type"] == kind:
                found.append(message)
    return found


# -- presence is read-after-subscribe, on every broker -----------------------------------------


@pytest.fixture(params=["memory", "redis", "postgres"])
def two_nodes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    """Two nodes sharing one broker (the memory broker: the same node twice)."""
    directory = tmp_path_factory.mktemp(request.param)
    with contextlib.ExitStack() as stack:
        if request.param == "memory":
            one = stack.enter_context(node(directory))
            yield one, one
            return
        if request.param == "redis":
            url = stack.enter_context(redis_server(directory)).url
            env = {"HUBBUB_TEST_REDIS_URL": url}
        else:
            env = {"HUBBUB_TEST_PG_URL": stack.enter_context(pg_server()).url}
        yield stack.enter_context(node(directory, env)), stack.enter_context(node(directory, env))


async def test_presence_lists_a_client_right_after_its_subscribed(
    two_nodes: tuple[Server, Server],
) -> None:
    """30 times: once ``subscribed`` arrives, ``presence`` on the other node lists the client."""
    first, second = two_nodes
    async with connect(second) as observer:
        for _ in range(30):
            room = unique("room:rs")
            async with connect(first) as joiner:
                await joiner.subscribe(room)
                reply = await observer.request({"type": "presence", "channel": room})
                assert joiner.welcome["client"] in reply["clients"], reply


# -- a full chat room stays joinable -----------------------------------------------------------

WIDE_TEXT = "\x01" * 2000
"""The widest chat text the default schema accepts: 2,000 characters, 6 bytes each in JSON."""
WIDE_NONCE = "\x01" * 128


@pytest.fixture
async def full_room(memory_node: Server) -> str:
    """A new default chat room on the memory node holding 100 messages of the widest kind."""
    room = unique("chat:full")
    async with connect(memory_node) as publisher:
        data = {"text": WIDE_TEXT, "nonce": WIDE_NONCE}
        assert len(json.dumps(data)) > 12_700  # each character a 6-byte \\u escape
        await publisher.publish_pipelined(room, [data] * 100, within=60.0)
    return room


async def replay(client: Client, room: str, **options: Any) -> list[dict[str, Any]]:
    """Subscribe to ``room``; every replayed publication, in ``subscribed`` or the frames after."""
    reply = await client.subscribe(room, **options)
    found = list(reply["publications"])
    top = reply["offset"] if not found else found[-1]["offset"]
    assert reply["offset"] == top
    while len(found) < 100:
        message = await client.recv(10.0)
        assert message["type"] == "message", message
        found.append(message)
    return found


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param({}, id="json"),
        pytest.param({"batch": True}, id="json-batch"),
        pytest.param({"subprotocols": ["hubbub.v1.msgpack"]}, id="msgpack"),
    ],
)
async def test_a_full_chat_room_can_be_joined(
    memory_node: Server, full_room: str, kind: dict[str, Any]
) -> None:
    """A WebSocket joining a room of 100 widest messages gets them all, frames under 1 MiB."""
    async with connect(memory_node, max_size=1024 * 1024, **kind) as joiner:
        found = await replay(joiner, full_room)
        assert [m["offset"] for m in found] == list(range(1, 101))
        assert all(m["data"] == {"text": WIDE_TEXT, "nonce": WIDE_NONCE} for m in found)
        async with connect(memory_node) as other:
            ack = await other.publish(full_room, {"text": "live"})
        live = await joiner.messages(1)
        assert (live[0]["offset"], live[0]["data"]) == (ack["offset"], {"text": "live"})


async def test_hubbub_client_joins_a_full_chat_room(memory_node: Server, full_room: str) -> None:
    """hubbub's own client (1 MiB frame limit) joins a room of 100 widest messages: all 100."""
    async with (
        hubbub.client.Client(f"{memory_node.ws_url}/ws") as client,
        client.subscribe(full_room) as subscription,
    ):
        found: list[Any] = []
        with anyio.fail_after(10):
            async for item in subscription:
                if isinstance(item, hubbub.client.Publication) and item.kind == "message":
                    found.append(item)
                if len(found) == 100:
                    break
    assert [p.offset for p in found] == list(range(1, 101))
    assert all(p.data["text"] == WIDE_TEXT for p in found)


async def test_a_full_chat_room_can_be_joined_over_sse(memory_node: Server, full_room: str) -> None:
    """An SSE stream of a room of 100 widest messages gets ``subscribed`` and all 100."""

    def read() -> list[dict[str, Any]]:
        url = f"{memory_node.url}/sse?channel={full_room}"
        found: list[dict[str, Any]] = []
        with httpx.stream("GET", url, timeout=10) as response:
            assert response.status_code == 200, response.read()
            for event in sse_events(response):
                assert event["event"] in ("subscribed", "message"), event
                if event["event"] == "message":
                    found.append(json.loads(event["data"]))
                if len(found) == 100:
                    return found
        raise AssertionError(f"the stream ended after {len(found)} messages")

    found = await asyncio.to_thread(read)
    assert [m["offset"] for m in found] == list(range(1, 101))
    assert found[-1]["data"]["text"] == WIDE_TEXT


async def test_history_of_a_full_chat_room_fits_a_frame(
    memory_node: Server, full_room: str
) -> None:
    """``history`` on a room of 100 widest messages answers within 1 MiB frames, newest last."""
    async with connect(memory_node, max_size=1024 * 1024, batch=True) as reader:
        reply = await reader.request({"type": "history", "channel": full_room})
        assert reply["type"] == "history"
        offsets = [m["offset"] for m in reply["publications"]]
        assert offsets and offsets[-1] == 100
        assert offsets == list(range(101 - len(offsets), 101))


async def test_chat_data_is_stored_without_unknown_fields(memory_node: Server) -> None:
    """Fields the chat schema does not know are dropped: live, in replay and in history."""
    room = unique("chat:pad")
    async with connect(memory_node) as listener, connect(memory_node) as publisher:
        await listener.subscribe(room)
        await publisher.publish(room, {"text": "hi", "pad": "x" * 10_000, "nonce": "n1"})
        (live,) = await listener.messages(1)
        assert live["data"] == {"text": "hi", "nonce": "n1"}
        async with connect(memory_node, subprotocols=["hubbub.v1.msgpack"]) as joiner:
            reply = await joiner.subscribe(room)
            assert [m["data"] for m in reply["publications"]] == [{"text": "hi", "nonce": "n1"}]


async def test_chat_data_over_the_default_payload_limit_is_413(memory_node: Server) -> None:
    """A chat ``publish`` larger than the default limit (26,048 bytes) gets ``error`` 413."""
    room = unique("chat:big")
    async with connect(memory_node) as publisher:
        reply = await publisher.request(
            {"type": "publish", "channel": room, "data": {"text": "hi", "pad": "x" * 26_100}}
        )
        assert (reply["type"], reply["code"]) == ("error", 413), reply
        history = await publisher.request({"type": "history", "channel": room})
        assert history["publications"] == []


async def fill_rooms(server: Server, n: int) -> dict[str, str]:
    """``n`` new default chat rooms, each holding 100 of the widest messages: room → epoch."""
    rooms: dict[str, str] = {}
    async with connect(server) as publisher:
        data = {"text": WIDE_TEXT, "nonce": WIDE_NONCE}
        for _ in range(n):
            room = unique("chat:wide")
            acks = await publisher.publish_pipelined(room, [data] * 100, within=60.0)
            rooms[room] = acks[0]["epoch"]
    return rooms


def read_sse_joins(server: Server, rooms: list[str], last_event_id: str | None) -> dict[str, Any]:
    """Open one SSE stream of ``rooms``; per room its ``subscribed`` and replayed offsets.

    Reads until a live marker published after every ``subscribed`` arrives, so
    everything replayed before it has been seen.
    """
    url = f"{server.url}/sse?" + "&".join(f"channel={room}" for room in rooms)
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    joins: dict[str, Any] = {room: {"offsets": []} for room in rooms}
    with httpx.stream("GET", url, headers=headers, timeout=20) as response:
        assert response.status_code == 200, response.read()
        subscribed = 0
        for event in sse_events(response):
            assert event["event"] in ("subscribed", "message"), event
            body = json.loads(event["data"])
            if event["event"] == "subscribed":
                joins[body["channel"]]["subscribed"] = body
                subscribed += 1
                if subscribed == len(rooms):
                    marker = {"type": "publish", "channel": rooms[0], "data": {"text": "end"}}
                    asyncio.run(publish_once(server, marker))
            elif body["data"] == {"text": "end"}:
                return joins
            else:
                joins[body["channel"]]["offsets"].append(body["offset"])
    raise AssertionError("the stream ended before the marker")


async def publish_once(server: Server, command: dict[str, Any]) -> None:
    """Send one command from a fresh client and wait for its reply."""
    async with connect(server) as client:
        await client.request(command)


async def test_an_sse_stream_joining_many_full_rooms_holds_a_bounded_replay(
    memory_node: Server,
) -> None:
    """SSE joining 8 rooms of 1.3 MB each: all joined, replays trimmed to newest past 8 MiB."""
    rooms = list(await fill_rooms(memory_node, 8))
    joins = await asyncio.to_thread(read_sse_joins, memory_node, rooms, None)
    total = sum(len(join["offsets"]) for join in joins.values())
    assert 500 < total < 800
    for join in joins.values():
        offsets = join["offsets"]
        assert offsets == list(range(101 - len(offsets), 101))
    assert joins[rooms[0]]["offsets"] == list(range(1, 101))


async def test_an_sse_stream_recovering_many_full_rooms_is_all_or_nothing(
    memory_node: Server,
) -> None:
    """SSE recovering 8 rooms of 1.3 MB each: each room whole or ``recovered: false``."""
    rooms = await fill_rooms(memory_node, 8)
    resume = encode_event_id(
        {room: Position(offset=0, epoch=epoch) for room, epoch in rooms.items()}
    )
    joins = await asyncio.to_thread(read_sse_joins, memory_node, list(rooms), resume)
    recovered = [join["subscribed"]["recovered"] for join in joins.values()]
    assert recovered[0] is True and recovered[-1] is False
    for join in joins.values():
        expected = list(range(1, 101)) if join["subscribed"]["recovered"] else []
        assert join["offsets"] == expected
