"""The wire protocol end to end: real ``websockets`` clients against ``hubbub serve`` (uvicorn).

One demo server (``python -m hubbub serve``) is shared by the module; tests use
their own channel names so they do not see each other's publications.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .apps.wsclient import JSON, MSGPACK, Client, open_client, open_clients
from .servers import Server, run_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


async def _refusal(url: str, **options: object) -> tuple[int, dict[str, object]]:
    """Try to open a WebSocket that must be refused; its HTTP status and JSON body."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, proxy=None, open_timeout=10, **options):  # type: ignore[arg-type]
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"null")


# -- HTTP ------------------------------------------------------------------------------------


def test_health_is_200(server: Server) -> None:
    """``GET /health`` answers 200 with a JSON status."""
    with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert json.loads(response.read()) == {"status": "ok"}


def test_unknown_http_path_is_404(server: Server) -> None:
    """A plain HTTP request to an unknown path answers 404 with a JSON error."""
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(server.url + "/nowhere", timeout=5)
    with error.value:
        assert error.value.code == 404
        assert json.loads(error.value.read())["code"] == 404


# -- the handshake ---------------------------------------------------------------------------


async def test_welcome_is_the_first_message(server: Server) -> None:
    """The first message after accept is ``welcome`` with the documented fields."""
    async with open_client(server.ws_url, welcome=False) as client:
        welcome = await client.recv()
    assert welcome["type"] == "welcome"
    assert isinstance(welcome["client"], str) and welcome["client"]
    assert welcome["user"] == ""
    assert isinstance(welcome["node"], str) and welcome["node"]
    assert welcome["version"] == 1
    assert welcome["ping"] == 25
    assert welcome["pong_timeout"] == 10
    assert welcome["expires"] is None
    assert welcome["subscribed"] == []


async def test_clients_get_distinct_ids(server: Server) -> None:
    """Each connection is its own client with its own id."""
    async with open_client(server.ws_url) as a, open_client(server.ws_url) as b:
        assert a.welcome["client"] != b.welcome["client"]
        assert a.welcome["node"] == b.welcome["node"]


async def test_json_is_the_default_codec(server: Server) -> None:
    """A client that offers no subprotocol speaks JSON in text frames; nothing is echoed."""
    async with open_client(server.ws_url) as client:
        assert client.ws.subprotocol is None
        await client.subscribe("default-codec")
        assert client.frame_kinds == {str}


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ([JSON], JSON),
        ([MSGPACK], MSGPACK),
        ([MSGPACK, JSON], MSGPACK),
        ([JSON, MSGPACK], JSON),
        (["chat.v2", JSON], JSON),
    ],
)
async def test_subprotocol_is_echoed(server: Server, offered: list[str], chosen: str) -> None:
    """The server echoes the first subprotocol it supports, in the client's order."""
    async with open_client(server.ws_url, subprotocols=offered) as client:
        assert client.ws.subprotocol == chosen
        assert client.frame_kinds == ({bytes} if chosen == MSGPACK else {str})


async def test_unknown_subprotocol_only_is_refused_400(server: Server) -> None:
    """Offering only unknown subprotocols is refused with HTTP 400 before the upgrade."""
    status, body = await _refusal(server.ws_url + "/ws", subprotocols=["chat.v2", "mqtt"])
    assert status == 400
    assert body["code"] == 400
    assert isinstance(body["reason"], str) and body["reason"]


async def test_bearer_subprotocol_alone_is_refused_400(server: Server) -> None:
    """A ``bearer.<jwt>`` subprotocol offered without a codec is refused with 400."""
    status, body = await _refusal(server.ws_url + "/ws", subprotocols=["bearer.abc.def.ghi"])
    assert status == 400
    assert body["code"] == 400


async def test_wrong_websocket_path_is_404(server: Server) -> None:
    """A WebSocket to a path other than ``/ws`` is refused with 404."""
    status, body = await _refusal(server.ws_url + "/nope")
    assert status == 404
    assert body["code"] == 404
    assert isinstance(body["reason"], str)


async def test_hub_without_anonymous_or_authenticator_refuses_401(tmp_path: Path) -> None:
    """With anonymous access off and no authenticator, every WebSocket is refused 401."""
    argv = ["-m", "hubbub", "serve", "closed_hub:hub", "--port", "{port}"]
    with run_server(argv, tmp_path) as closed:
        status, body = await _refusal(closed.ws_url + "/ws")
    assert status == 401
    assert body["code"] == 401
    assert isinstance(body["reason"], str) and body["reason"]


# -- subscribe, publish, ack, message ---------------------------------------------------------


async def test_subscribe_publish_ack_and_message(server: Server) -> None:
    """Subscribers get ``message`` with sender and ts; the publisher gets ``ack``."""
    url = server.ws_url
    async with open_client(url) as a, open_client(url) as b, open_client(url) as c:
        reply = await a.request({"type": "subscribe", "channel": "room-1", "id": 5})
        # A channel without history: no offset or epoch (§9).
        assert reply == {"type": "subscribed", "channel": "room-1", "id": 5, "publications": []}
        await b.subscribe("room-1")
        before = time.time() * 1000
        ack = await c.request({"type": "publish", "channel": "room-1", "data": {"x": 1}, "id": 9})
        after = time.time() * 1000
        assert ack == {"type": "ack", "id": 9}
        for subscriber in (a, b):
            [message] = await subscriber.messages(1)
            assert message["channel"] == "room-1"
            assert message["data"] == {"x": 1}
            assert message["sender"] == {"user": "", "client": c.welcome["client"]}
            assert before - 1000 <= message["ts"] <= after + 1000
            assert "offset" not in message and "epoch" not in message
        # The publisher was not subscribed: it gets only its ack.
        with pytest.raises(TimeoutError):
            await c.recv(0.3)


async def test_replies_come_in_command_order(server: Server) -> None:
    """Replies to pipelined commands come in the order the commands were sent."""
    async with open_client(server.ws_url) as client:
        commands = [
            {"type": "subscribe", "channel": "order-a", "id": 1},
            {"type": "subscribe", "channel": "order-a", "id": 2},
            {"type": "unsubscribe", "channel": "order-b", "id": 3},
            {"type": "publish", "channel": "order-c", "data": None, "id": 4},
            {"type": "unsubscribe", "channel": "order-a", "id": 5},
            {"type": "presence", "channel": "order-a", "id": 6},
        ]
        for command in commands:
            await client.send(command)
        replies = [await client.recv() for _ in commands]
    assert [(r["type"], r["id"]) for r in replies] == [
        ("subscribed", 1),
        ("error", 2),
        ("error", 3),
        ("ack", 4),
        ("unsubscribed", 5),
        ("error", 6),
    ]
    assert [r.get("code") for r in replies] == [None, 409, 404, None, None, 403]


async def test_publisher_gets_its_own_copy_by_default(server: Server) -> None:
    """A subscribed publisher receives its own publication unless it asks otherwise."""
    async with open_client(server.ws_url) as client:
        await client.subscribe("echo-default")
        await client.publish("echo-default", "mine")
        [message] = await client.messages(1)
        assert message["data"] == "mine"
        assert message["sender"]["client"] == client.welcome["client"]


async def test_echo_false_excludes_the_publisher(server: Server) -> None:
    """``echo: false`` delivers to every subscriber but the publisher."""
    async with open_client(server.ws_url) as a, open_client(server.ws_url) as b:
        await a.subscribe("echo-off")
        await b.subscribe("echo-off")
        await a.publish("echo-off", "quiet", echo=False)
        await a.publish("echo-off", "loud", echo=True)
        assert [m["data"] for m in await a.messages(1)] == ["loud"]
        assert [m["data"] for m in await b.messages(2)] == ["quiet", "loud"]


async def test_fan_out_to_200_clients(server: Server) -> None:
    """200 subscribers each receive every publication exactly once, in order."""
    n_clients, n_messages = 200, 20
    subscribers, stack = await open_clients(server.ws_url, n_clients)
    async with stack, open_client(server.ws_url) as publisher:
        await asyncio.gather(*(s.subscribe("fan") for s in subscribers))
        await publisher.publish_pipelined("fan", range(n_messages))
        await publisher.publish("fan", "end")

        async def until_end(subscriber: Client) -> list[object]:
            seen: list[object] = []
            async with asyncio.timeout(30):
                while not seen or seen[-1] != "end":
                    [message] = await subscriber.messages(1, 30)
                    seen.append(message["data"])
            return seen

        results = await asyncio.gather(*(until_end(s) for s in subscribers))
    expected = [*range(n_messages), "end"]
    assert len(results) == n_clients
    for seen in results:
        assert seen == expected


async def test_json_and_msgpack_clients_share_a_channel(server: Server) -> None:
    """JSON and MessagePack clients see each other's publications; binary becomes base64."""
    url = server.ws_url
    async with (
        open_client(url, subprotocols=[JSON]) as text,
        open_client(url, subprotocols=[MSGPACK]) as binary,
    ):
        assert binary.ws.subprotocol == MSGPACK
        await text.subscribe("mixed")
        await binary.subscribe("mixed")

        raw = b"\x00\xffhub\x80"
        await binary.publish("mixed", {"bin": raw, "n": 7, "s": "é", "l": [1.5, None, True]})
        [seen_by_text] = await text.messages(1)
        assert seen_by_text["data"] == {
            "bin": base64.b64encode(raw).decode(),
            "n": 7,
            "s": "é",
            "l": [1.5, None, True],
        }
        assert seen_by_text["sender"]["client"] == binary.welcome["client"]
        [own] = await binary.messages(1)
        assert own["data"]["bin"] == raw

        await text.publish("mixed", {"text": "hi", "nested": {"k": [1, 2, {"z": False}]}})
        [seen_by_binary] = await binary.messages(1)
        assert seen_by_binary["data"] == {"text": "hi", "nested": {"k": [1, 2, {"z": False}]}}
        assert seen_by_binary["sender"]["client"] == text.welcome["client"]
        assert binary.frame_kinds == {bytes}
        assert text.frame_kinds == {str}


async def test_batched_frames_carry_several_messages(server: Server) -> None:
    """With ``?batch=1`` a frame may carry several ``\\n``-separated messages, all in order."""
    n = 90  # within the default command burst (100) of the publisher
    url = server.ws_url
    async with open_client(url, path="/ws?batch=1") as batched, open_client(url) as publisher:
        await batched.subscribe("batched")
        await publisher.publish_pipelined("batched", range(n))
        received = await batched.messages(n, 20)
        assert [m["data"] for m in received] == list(range(n))
        assert batched.frames < n + 2  # welcome and subscribed came in frames too
        assert batched.multi_frames >= 1


async def test_unbatched_frames_carry_one_message(server: Server) -> None:
    """Without ``?batch=1`` every frame carries exactly one message."""
    n = 100
    url = server.ws_url
    async with open_client(url) as plain, open_client(url) as publisher:
        await plain.subscribe("unbatched")
        await publisher.publish_pipelined("unbatched", range(n))
        received = await plain.messages(n, 20)
        assert [m["data"] for m in received] == list(range(n))
        assert plain.multi_frames == 0


# -- answers to bad commands (the connection stays) -------------------------------------------


def _nested(lists: int) -> object:
    """``lists`` arrays nested in each other around a 0."""
    value: object = 0
    for _ in range(lists):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param({"type": "no-such-type"}, 400, id="unknown-type"),
        pytest.param({"type": "subscribe", "channel": "bad channel"}, 400, id="bad-channel"),
        pytest.param({"type": "subscribe", "channel": "x" * 256}, 400, id="long-channel"),
        pytest.param({"type": "subscribe"}, 400, id="missing-channel"),
        pytest.param({"type": "subscribe", "channel": "nope:x"}, 404, id="unknown-namespace"),
        pytest.param({"type": "publish", "channel": "#alice", "data": 1}, 403, id="personal"),
        pytest.param({"type": "subscribe", "channel": "#alice"}, 403, id="others-personal"),
        pytest.param(
            {"type": "publish", "channel": "deep", "data": _nested(64)}, 400, id="too-deep"
        ),
        pytest.param({"type": "presence", "channel": "no-presence"}, 403, id="no-presence"),
    ],
)
async def test_bad_command_gets_error_with_its_id(
    server: Server, command: dict[str, object], code: int
) -> None:
    """A bad command gets ``error`` with the documented code and its ``id``; the client stays."""
    async with open_client(server.ws_url) as client:
        reply = await client.request({**command, "id": 41})
        assert reply["type"] == "error"
        assert reply["code"] == code
        assert reply["id"] == 41
        assert isinstance(reply["reason"], str) and reply["reason"]
        await client.subscribe("still-open")


async def test_nesting_of_64_levels_is_accepted(server: Server) -> None:
    """A message nested exactly 64 levels deep is within the limit."""
    async with open_client(server.ws_url) as client:
        await client.subscribe("deep-ok")
        # The command object is level 1, so the data may nest 63 more levels.
        await client.publish("deep-ok", _nested(63))
        [message] = await client.messages(1)
        assert message["data"] == _nested(63)


async def test_unknown_fields_are_ignored(server: Server) -> None:
    """Unknown fields in a command are ignored (forward compatibility)."""
    async with open_client(server.ws_url) as client:
        reply = await client.request(
            {"type": "subscribe", "channel": "compat", "future": {"x": 1}, "also": [1]}
        )
        assert reply["type"] == "subscribed"


async def test_frame_of_the_wrong_kind_gets_error_400(server: Server) -> None:
    """A text frame on MessagePack, or a binary frame on JSON, gets ``error`` 400."""
    async with (
        open_client(server.ws_url, subprotocols=[MSGPACK]) as binary,
        open_client(server.ws_url, subprotocols=[JSON]) as text,
    ):
        await binary.send_raw('{"type": "subscribe", "channel": "a", "id": 1}')
        reply = await binary.recv()
        assert (reply["type"], reply["code"]) == ("error", 400)
        await text.send_raw(b'{"type": "subscribe", "channel": "a", "id": 1}')
        reply = await text.recv()
        assert (reply["type"], reply["code"]) == ("error", 400)
        await binary.subscribe("ok")
        await text.subscribe("ok")
