"""The direct reader of ``hubbub serve``: client frames parsed by hubbub, handed on in place.

:class:`hubbub._uvicorn_ws.FramesProtocol` parses unfragmented masked text and
binary frames, pings and pongs itself, and hands each message to the
connection's receiver in ``data_received``; at any other frame it gives the
rest of the bytes to websockets for good. These tests write frames by hand on
a raw socket to a real ``hubbub serve``: frames split at every byte, bursts
in one write, every header length, control frames, and each malformed frame
that must get websockets' answer (1002, 1007, 1009, the close reply).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri
from websockets.utils import apply_mask

from .servers import Server
from .test_preframed import _no_errors

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    wide: bool = False,
) -> bytes:
    """One client frame as bytes, any of its header fields chosen by the test.

    ``length`` claims a payload size other than the real one; ``wide`` uses the
    64-bit length form even for a short payload.
    """
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if wide or size > 65535:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    elif size > 125:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BB", first, mask_bit | size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


def text(message: dict[str, Any], **options: Any) -> bytes:
    return frame(0x1, json.dumps(message).encode(), **options)


class RawClient:
    """A socket that writes hand-made frames and reads the server's with websockets' parser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
        self.frames: list[Frame] = []
        self.messages: list[dict[str, Any]] = []
        self.eof = False

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.protocol.send_request(client.protocol.connect())
        for data in client.protocol.data_to_send():
            writer.write(data)
        await writer.drain()
        await client.until(lambda: bool(client.messages))
        assert client.messages[0]["type"] == "welcome", client.messages
        return client

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, within: float) -> None:
        async with asyncio.timeout(within):
            data = await self.reader.read(65536)
        if not data:
            self.eof = True
            self.protocol.receive_eof()
            return
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                assert event.status_code == 101, event
            elif isinstance(event, Frame):
                self.frames.append(event)
                if event.opcode is Opcode.TEXT:
                    self.messages.append(json.loads(bytes(event.data)))

    async def until(self, done: Any, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not done():
                assert not self.eof, "the server closed the connection"
                await self.read(within)

    async def replies(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` messages after the welcome (and any already read)."""
        await self.until(lambda: len(self.messages) >= count + 1)
        return self.messages[1 : count + 1]

    async def close_code(self, within: float = 10.0) -> int:
        """The code of the server's close frame (read until it comes)."""

        def closed() -> bool:
            return any(f.opcode is Opcode.CLOSE for f in self.frames) or self.eof

        async with asyncio.timeout(within):
            while not closed():
                await self.read(within)
        for received in self.frames:
            if received.opcode is Opcode.CLOSE:
                return Close.parse(received.data).code
        raise AssertionError("the server closed the socket without a close frame")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


@pytest.fixture
async def client(server: Server) -> Any:
    opened = await RawClient.open(server.port)
    yield opened
    await opened.close()


def _acks(client: RawClient) -> int:
    return sum(m["type"] == "ack" for m in client.messages)


def _publish(channel: str, index: int, data: Any = None) -> dict[str, Any]:
    return {"type": "publish", "channel": channel, "data": data or {"n": index}, "id": index}


async def test_frames_split_at_every_byte_are_read_whole(client: RawClient, server: Server) -> None:
    """Each frame arriving one byte at a time (header, mask, payload) reads as one message."""
    data = text({"type": "subscribe", "channel": "split", "id": 1})
    data += text(_publish("split", 2, "x" * 200))  # a 16-bit length
    data += text(_publish("split", 3, "y" * 5_000), wide=True)  # a 64-bit length
    for index in range(len(data)):
        client.writer.write(data[index : index + 1])
        if index % 64 == 0 or index < 300:
            await client.writer.drain()
            await asyncio.sleep(0)
    await client.writer.drain()
    replies = await client.replies(5)
    # Replies in command order, messages in publish order; no order between the two.
    assert [(r["type"], r.get("id")) for r in replies if r["type"] != "message"] == [
        ("subscribed", 1),
        ("ack", 2),
        ("ack", 3),
    ]
    messages = [r for r in replies if r["type"] == "message"]
    assert [m["data"] for m in messages] == ["x" * 200, "y" * 5_000]
    _no_errors(server)


async def test_a_burst_of_frames_in_one_write_is_answered_in_order(client: RawClient) -> None:
    """Pipelined commands in one write (the demo hub's whole burst allowance of 100): every
    reply, in the order sent."""
    await client.write(text({"type": "subscribe", "channel": "burst", "id": 1}))
    await client.replies(1)
    count = 99
    await client.write(b"".join(text(_publish("burst", 2 + i)) for i in range(count)))
    replies = await client.replies(1 + 2 * count)
    acks = [r["id"] for r in replies if r["type"] == "ack"]
    seen = [r["data"]["n"] for r in replies if r["type"] == "message"]
    assert acks == list(range(2, 2 + count))
    assert seen == list(range(2, 2 + count))


async def test_every_length_form_is_read(client: RawClient) -> None:
    """7-bit, 16-bit and 64-bit lengths, and a short payload in the 64-bit form (RFC 6455 allows
    it), all read."""
    await client.write(text({"type": "subscribe", "channel": "lengths", "id": 1}))
    await client.write(text(_publish("lengths", 2, "a" * 10)))
    await client.write(text(_publish("lengths", 3, "b" * 1000)))
    await client.write(text(_publish("lengths", 4, "c" * 10), wide=True))
    replies = await client.replies(7)
    assert [r["data"] for r in replies if r["type"] == "message"] == [
        "a" * 10,
        "b" * 1000,
        "c" * 10,
    ]


async def test_a_ping_is_answered_and_reading_goes_on(client: RawClient) -> None:
    """A client ping gets a pong with its payload; an unsolicited pong is ignored; commands after
    both are still answered."""
    await client.write(frame(0x9, b"are you there"))
    await client.until(lambda: any(f.opcode is Opcode.PONG for f in client.frames))
    [pong] = [f for f in client.frames if f.opcode is Opcode.PONG]
    assert bytes(pong.data) == b"are you there"
    await client.write(
        frame(0xA, b"unasked") + text({"type": "subscribe", "channel": "p", "id": 7})
    )
    [reply] = await client.replies(1)
    assert (reply["type"], reply["id"]) == ("subscribed", 7)


async def test_a_fragmented_message_is_assembled_and_later_frames_still_read(
    client: RawClient,
) -> None:
    """A message in three fragments (websockets reads it) and a plain frame after it."""
    body = json.dumps({"type": "subscribe", "channel": "frag", "id": 1}).encode()
    data = frame(0x1, body[:5], fin=False) + frame(0x0, body[5:9], fin=False)
    data += frame(0x0, body[9:]) + text(_publish("frag", 2))
    await client.write(data)
    replies = await client.replies(3)
    assert [(r["type"], r.get("id")) for r in replies] == [
        ("subscribed", 1),
        ("message", None),
        ("ack", 2),
    ]


async def test_a_close_frame_gets_the_close_reply(client: RawClient) -> None:
    """The client's close, after a publish in the same write: the ack, then the close reply."""
    data = text(_publish("bye", 1)) + frame(0x8, struct.pack("!H", 1000) + b"done")
    await client.write(data)
    assert await client.close_code() == 1000
    assert (client.messages[1]["type"], client.messages[1]["id"]) == ("ack", 1)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(0x1, b'{"type":"subscribe"}', masked=False), 1002),  # clients must mask
        (frame(0x1, b"{}", masked=False), 1002),  # shorter than a masked frame's header
        (frame(0x1, b'{"type":"subscribe"}', rsv=0b100), 1002),  # RSV1 without deflate
        (frame(0x1, b'{"type":"subscribe"}', rsv=0b001), 1002),  # RSV3
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(0x9, b"p" * 126), 1002),  # a control frame over 125 bytes
        (frame(0x9, b"ping", fin=False), 1002),  # a fragmented control frame
        (frame(0x0, b"continuation of nothing"), 1002),
        (frame(0x1, b'{"data":"\xff\xfe"}'), 1007),  # text that is not UTF-8
        (frame(0x1, b"", length=2**40)[:14], 1009),  # a 1 TiB claim: only its header is sent
    ],
    ids=[
        "unmasked",
        "unmasked-short",
        "rsv1",
        "rsv3",
        "opcode",
        "long-ping",
        "fragmented-ping",
        "stray-continuation",
        "bad-utf8",
        "huge-length",
    ],
)
async def test_a_malformed_frame_gets_websockets_answer(
    client: RawClient, server: Server, bad: bytes, code: int
) -> None:
    """After a good command in the same write, each malformed frame closes with the code
    websockets gives it, and nothing is logged as an error (a reply to the command that can no
    longer be sent is a peer gone, not a failure)."""
    await client.write(text(_publish("bad", 1)) + bad)
    assert await client.close_code() == code
    if len(client.messages) > 1:  # answered before the close, when read directly
        assert (client.messages[1]["type"], client.messages[1]["id"]) == ("ack", 1)
    await asyncio.sleep(0.2)  # the connection's end is logged after the close
    _no_errors(server)


async def test_a_frame_over_the_size_limit_split_in_two_closes_1009(client: RawClient) -> None:
    """A 2 MiB frame (websockets' limit is 1 MiB here) sent as a header first, then data."""
    header = frame(0x1, b"", length=2 * 1024 * 1024)[:14]
    await client.write(header[:3])
    await asyncio.sleep(0.05)
    await client.write(header[3:] + b"x" * 1000)
    assert await client.close_code() == 1009


async def test_a_slow_consumer_closed_by_a_direct_publish_leaves_no_error(server: Server) -> None:
    """A subscriber that never reads is closed 1013 from the publisher's direct path: leaving
    its channels (which starts broker work) must not fail outside a task."""
    sleeper = await RawClient.open(server.port)
    publisher = await RawClient.open(server.port)
    try:
        await sleeper.write(text({"type": "subscribe", "channel": "slow", "id": 1}))
        await sleeper.replies(1)
        payload = "z" * 60_000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        sent, batch = 0, 90  # the demo hub allows a burst of 100 commands, then 50 a second
        # The sleeper stops reading: its socket buffer, then its queue (1 MiB), fill up.
        while "closing a slow consumer" not in server.log():
            data = b"".join(text(_publish("slow", 10 + sent + i, payload)) for i in range(batch))
            sent += batch
            await publisher.write(data)
            await publisher.until(lambda n=sent: _acks(publisher) >= n)
            assert loop.time() < deadline, "the sleeper was never closed"
            batch = 10
            await asyncio.sleep(0.25)
        # The publisher goes on being served.
        await publisher.write(text({"type": "subscribe", "channel": "after", "id": 99}))
        await publisher.until(lambda: any(m.get("id") == 99 for m in publisher.messages))
    finally:
        await sleeper.close()
        await publisher.close()
    _no_errors(server)


def _server_conn() -> Any:
    """websockets' own server protocol after a handshake, as uvicorn's class holds it."""
    from websockets.server import ServerProtocol

    client = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
    client.send_request(client.connect())
    conn = ServerProtocol(max_size=1024)
    for data in client.data_to_send():
        conn.receive_data(data)
    [request] = conn.events_received()
    conn.send_response(conn.accept(request))
    conn.data_to_send()
    return conn


def test_the_boundary_check_follows_websockets_parser() -> None:
    """``at_frame_boundary`` is true between frames only: not within a frame's bytes, not
    within a fragmented message, not after a close."""
    from hubbub._uvicorn_ws import at_frame_boundary, frame_limit

    conn = _server_conn()
    assert at_frame_boundary(conn) and frame_limit(conn) == 1024
    whole = text({"type": "pong"})
    conn.receive_data(whole[:2])
    assert not conn.reader.buffer  # the header read: nothing buffered, yet inside a frame
    assert not at_frame_boundary(conn)
    conn.receive_data(whole[2:])
    assert at_frame_boundary(conn)
    conn.receive_data(frame(0x1, b"[1,", fin=False))
    assert not at_frame_boundary(conn)  # a message in fragments
    conn.receive_data(frame(0x0, b"2]"))
    assert at_frame_boundary(conn)
    conn.receive_data(frame(0x8, struct.pack("!H", 1000)))
    assert not at_frame_boundary(conn)  # closing: websockets discards from here
