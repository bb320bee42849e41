"""Pre-framed fan-out: frames built once per publication, written to every idle socket.

The frames (:mod:`hubbub._frames`) are checked against the ``websockets``
library's own parser and permessage-deflate decoder; the uvicorn protocol
(:mod:`hubbub._uvicorn_ws`) against the installed uvicorn's class; the whole
path through a real ``hubbub serve`` with hundreds of clients, deflate
clients, clients that leave mid-fan-out, and a raw client that sees the
frames' RSV1 bit on the wire.
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from hubbub._frames import (
    COMPRESS_MIN,
    OWN_DEFLATE,
    PLAIN,
    SHARED_DEFLATE,
    WINDOW_BITS,
    SharedFrame,
    build_frame,
    deflate,
    wire_kind,
)
from hubbub._uvicorn_ws import SUPPORTED, FramesProtocol, _Flag, _Inbox

from .apps.wsclient import Client, open_client, open_clients
from .servers import Server


def _parse(data: bytes, extensions: list[Any] | None = None) -> Frame:
    """One server frame parsed by ``websockets`` (unmasked); nothing may be left over."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None, extensions=extensions)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert not reader.buffer, "bytes left after the frame"
        return frame
    raise AssertionError("the frame is incomplete")


def _client_deflate(server_no_context: bool) -> PerMessageDeflate:
    """A client's side of permessage-deflate (decodes what the server sends)."""
    return PerMessageDeflate(server_no_context, False, WINDOW_BITS, WINDOW_BITS)


# -- the frames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "header"),
    [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10), (70000, 10)],
)
@pytest.mark.parametrize("binary", [False, True])
def test_frame_lengths_parse_in_websockets(size: int, header: int, binary: bool) -> None:
    """Every length class (7/16/64-bit) is one final unmasked frame that websockets reads back."""
    payload = (b"x" * size) if not binary else os.urandom(size)
    data = build_frame(payload, binary)
    assert len(data) == header + size
    frame = _parse(data)
    assert frame.fin
    assert frame.opcode is (Opcode.BINARY if binary else Opcode.TEXT)
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)
    assert bytes(frame.data) == payload


@pytest.mark.parametrize("size", [COMPRESS_MIN, 5000, 65536, 200_000])
def test_compressed_frame_is_what_websockets_would_send(size: int) -> None:
    """A shared compressed frame equals websockets' own no-context encoding, and decodes."""
    payload = json.dumps({"seq": 1, "text": "hello world " * (size // 12 + 1)})[:size].encode()
    data = build_frame(deflate(payload), binary=False, compressed=True)
    frame = _parse(data, extensions=[_client_deflate(server_no_context=True)])
    assert bytes(frame.data) == payload
    assert not frame.rsv1  # decoded
    server = PerMessageDeflate(False, True, WINDOW_BITS, WINDOW_BITS, {"memLevel": 5})
    assert bytes(server.encode(Frame(Opcode.TEXT, payload)).data) == deflate(payload)


def test_plain_frames_between_compressed_ones_leave_the_context_alone() -> None:
    """RFC 7692: plain messages on a deflate connection decode; context takeover holds."""
    server = PerMessageDeflate(False, False, WINDOW_BITS, WINDOW_BITS, {"memLevel": 5})
    client = _client_deflate(server_no_context=False)
    messages = [json.dumps({"seq": i, "text": "same words again " * 20}).encode() for i in range(9)]
    compressed_sizes = []
    for i, payload in enumerate(messages):
        if i % 2:
            data = build_frame(payload, binary=False)  # shared plain
        else:
            data = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[server])
            compressed_sizes.append(len(data))
        assert bytes(_parse(data, extensions=[client]).data) == payload
    # The context carried over: later compressed messages were far smaller than the first.
    assert compressed_sizes[-1] < compressed_sizes[0] // 2


def test_wire_kind_reads_the_extension() -> None:
    """No extension: standard path; deflate without context and a big enough window: shared."""
    write = bytes.__len__
    assert wire_kind(None) is None
    assert wire_kind({"write": None}) is None
    assert wire_kind("hubbub.frames") is None
    assert wire_kind({"write": write, "deflate": None}) == PLAIN
    assert wire_kind({"write": write, "deflate": (True, 12)}) == SHARED_DEFLATE
    assert wire_kind({"write": write, "deflate": (True, 15)}) == SHARED_DEFLATE
    assert wire_kind({"write": write, "deflate": (True, 10)}) == OWN_DEFLATE
    assert wire_kind({"write": write, "deflate": (False, 12)}) == OWN_DEFLATE


def test_shared_frame_is_built_once_and_only_when_asked() -> None:
    """Small payloads go plain to all; large ones compressed once, or left to the socket."""
    small = SharedFrame(b'{"a":1}', binary=False)
    assert small.message == '{"a":1}'
    assert small._plain is None and small._compressed is None
    plain = small.frame(PLAIN)
    assert small.frame(SHARED_DEFLATE) is plain
    assert small.frame(OWN_DEFLATE) is plain
    large = SharedFrame(b"y" * (COMPRESS_MIN * 4), binary=True)
    assert large.message == b"y" * (COMPRESS_MIN * 4)
    compressed = large.frame(SHARED_DEFLATE)
    assert compressed is not None
    assert large.frame(SHARED_DEFLATE) is compressed
    assert compressed[0] == 0x80 | 0x40 | 0x2  # FIN, RSV1, binary
    assert large.frame(OWN_DEFLATE) is None
    assert large.frame(PLAIN) == build_frame(large.payload, binary=True)


# -- uvicorn's class ---------------------------------------------------------------------------


def test_uvicorn_uses_only_what_the_lighter_queue_and_event_offer() -> None:
    """uvicorn's class touches its queue and writable event only through the methods replaced."""
    import inspect
    import re

    from uvicorn.protocols.websockets import websockets_sansio_impl

    source = inspect.getsource(websockets_sansio_impl)
    assert set(re.findall(r"self\.queue\.(\w+)", source)) <= {"put_nowait", "get", "empty", "qsize"}
    assert set(re.findall(r"self\.writable\.(\w+)", source)) <= {"set", "clear", "wait", "is_set"}


def test_inbox_is_fifo_with_several_readers_and_cancellation() -> None:
    """_Inbox keeps the queue's order, wakes readers in turn; a cancelled one loses nothing."""

    async def scenario() -> None:
        inbox = _Inbox()
        assert inbox.empty() and inbox.qsize() == 0
        for item in range(3):
            inbox.put_nowait(item)
        assert inbox.qsize() == 3
        assert [await inbox.get() for _ in range(3)] == [0, 1, 2]
        assert inbox.empty()
        first = asyncio.ensure_future(inbox.get())
        second = asyncio.ensure_future(inbox.get())
        await asyncio.sleep(0)
        inbox.put_nowait("a")
        first.cancel()  # woken, then cancelled before it ran: "a" must reach the other reader
        assert await asyncio.wait_for(second, 1) == "a"
        assert first.cancelled()
        waiting = asyncio.ensure_future(inbox.get())
        await asyncio.sleep(0)
        waiting.cancel()  # cancelled while waiting: nothing taken, nothing left behind
        await asyncio.sleep(0)
        inbox.put_nowait("b")
        assert await inbox.get() == "b"
        assert inbox._waiters is None and inbox._items is None

    asyncio.run(scenario())


def test_flag_wakes_every_waiter_as_an_asyncio_event() -> None:
    """_Flag: wait returns when set; set wakes all waiters even if cleared before they run."""

    async def scenario() -> None:
        flag = _Flag()
        assert not flag.is_set()
        waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        flag.set()
        flag.clear()
        await asyncio.sleep(0)
        assert all(w.done() and w.result() is True for w in waiters)
        cancelled = asyncio.ensure_future(flag.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert flag._waiters == []
        flag.set()
        assert flag.is_set() and await flag.wait() is True

    asyncio.run(scenario())


def test_uvicorn_class_still_has_what_the_fast_path_reads() -> None:
    """Fails loudly if uvicorn's websockets-sansio protocol changes the attributes relied on."""
    assert issubclass(FramesProtocol, WebSocketsSansIOProtocol)
    assert SUPPORTED, "uvicorn's websockets-sansio class has no write flow control"
    for name in ("handle_connect", "send", "pause_writing", "resume_writing", "connection_lost"):
        assert callable(getattr(WebSocketsSansIOProtocol, name)), name

    async def build() -> FramesProtocol:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("not called")

        config = Config(app, ws=FramesProtocol, lifespan="off")
        config.load()
        return FramesProtocol(config, ServerState(), {}, asyncio.get_running_loop())

    protocol = asyncio.run(build())
    for name in ("handshake_complete", "close_sent", "disconnected", "initial_response"):
        assert hasattr(protocol, name), name
    assert protocol.writable.is_set()
    assert protocol.conn.available_extensions[0].server_no_context_takeover is True
    assert protocol.conn.extensions == []
    assert hasattr(protocol.conn, "state")
    protocol.pause_writing()
    assert not protocol.writable.is_set()
    assert protocol.write_frame(b"\x81\x00") is False  # nor before the handshake anyway
    protocol.resume_writing()
    assert protocol.writable.is_set()
    assert protocol.write_frame(b"\x81\x00") is False  # no handshake yet


# -- end to end: hubbub serve ----------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


def _no_errors(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]


class _RawClient:
    """A WebSocket client that keeps each frame's header bits as they were on the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol = ClientProtocol(
            parse_uri("ws://127.0.0.1/ws"),
            extensions=[ClientPerMessageDeflateFactory()],
        )
        self.raw = b""
        self.handshake = True
        self.rsv1: list[bool] = []
        self.messages: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, port: int) -> _RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.protocol.send_request(client.protocol.connect())
        await client.flush()
        return client

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(message).encode())
        await self.flush()

    async def read(self, within: float = 10.0) -> None:
        """Read some bytes; note every complete frame's RSV1 and decode its message."""
        async with asyncio.timeout(within):
            data = await self.reader.read(65536)
        assert data, "the server closed the connection"
        self.protocol.receive_data(data)
        self.raw += data
        if self.handshake and b"\r\n\r\n" in self.raw:
            self.handshake = False
            self.raw = self.raw.split(b"\r\n\r\n", 1)[1]
        while not self.handshake and len(self.raw) >= 2:
            size, header = self.raw[1] & 0x7F, 2
            if size == 126:
                size, header = int.from_bytes(self.raw[2:4]), 4
            elif size == 127:
                size, header = int.from_bytes(self.raw[2:10]), 10
            if len(self.raw) < header + size:
                break
            self.rsv1.append(bool(self.raw[0] & 0x40))
            self.raw = self.raw[header + size :]
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.messages.append(json.loads(bytes(event.data)))

    async def until(self, count: int, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                await self.read(within)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.mark.anyio
async def test_deflate_client_gets_small_frames_plain_and_large_ones_compressed(
    server: Server,
) -> None:
    """A deflate client sees small publications uncompressed, large ones compressed, all decoded."""
    raw = await _RawClient.open(server.port)
    try:
        await raw.until(1)
        assert raw.messages[0]["type"] == "welcome"
        assert raw.protocol.extensions, "permessage-deflate was not negotiated"
        assert raw.protocol.extensions[0].remote_no_context_takeover is True
        await raw.send({"type": "subscribe", "channel": "wire-bits", "id": 1})
        await raw.until(2)
        assert raw.messages[1]["type"] == "subscribed"
        small = {"n": 1}
        large = {"text": "many repeated words " * 100}
        async with open_client(server.ws_url) as publisher:
            await publisher.publish("wire-bits", small)
            await publisher.publish("wire-bits", large)
            await publisher.publish("wire-bits", small)
            await raw.until(5)
        assert [m["data"] for m in raw.messages[2:]] == [small, large, small]
        # welcome went the standard way (queued before the writer ran: compressed by the
        # socket itself); the small subscribed reply was framed by the hub, plain, as small
        # publications are; the publications were shared: plain when small, compressed
        # once when large.
        assert raw.rsv1 == [True, False, False, True, False]
    finally:
        await raw.close()
    _no_errors(server)


@pytest.mark.anyio
async def test_deflate_client_gets_small_replies_plain_and_large_ones_compressed(
    server: Server,
) -> None:
    """Replies framed by the hub follow the publications' rule: a large one is still compressed."""
    raw = await _RawClient.open(server.port)
    try:
        await raw.until(1)
        long_channel = "reply-bits-" + "x" * 240
        await raw.send({"type": "unsubscribe", "channel": long_channel, "id": 2})
        await raw.until(2)
        error = raw.messages[1]
        assert (error["type"], error["code"], error["id"]) == ("error", 404, 2)
        assert len(json.dumps(error)) >= COMPRESS_MIN
        await raw.send({"type": "publish", "channel": "reply-bits", "data": {"n": 1}, "id": 3})
        await raw.until(3)
        assert (raw.messages[2]["type"], raw.messages[2]["id"]) == ("ack", 3)
        # welcome (standard path), the long error (compressed by the socket), the ack (plain)
        assert raw.rsv1 == [True, True, False]
    finally:
        await raw.close()
    _no_errors(server)


@pytest.mark.anyio
async def test_hundreds_of_subscribers_get_every_publication_in_order(server: Server) -> None:
    """300 subscribers (plain, deflate, msgpack, batching) get all 60 publications, in order.

    The text of each message is the same on every JSON client, and the same as
    on a client whose socket compresses with its own context (large messages
    take the standard ``websocket.send`` path there).
    """
    n = 60
    channel = "preframed-many"
    base = server.ws_url
    plain, stack = await open_clients(base, 120)
    try:
        deflating, more = await open_clients(base, 120, compression="deflate")
        stack.push_async_exit(more)
        binary, more = await open_clients(base, 40, subprotocols=["hubbub.v1.msgpack"])
        stack.push_async_exit(more)
        batching, more = await open_clients(base, 10, path="/ws?batch=1")
        stack.push_async_exit(more)
        # Asks for a 1 KiB window: shared compressed frames do not fit it.
        own = await stack.enter_async_context(_own_deflate_client(base))
        everyone = [*plain, *deflating, *binary, *batching]
        await asyncio.gather(*(c.subscribe(channel) for c in [*everyone, own]))
        items = [{"seq": i, "pad": "z" * (7 * i * i)} for i in range(n)]  # up to ~24 KB
        async with open_client(base) as publisher:
            texts = [_recording(c) for c in [*plain, *deflating, own]]
            async with asyncio.timeout(60):
                _, *received = await asyncio.gather(
                    publisher.publish_pipelined(channel, items, within=60),
                    *(c.messages(n, 60) for c in [*everyone, own]),
                )
        for messages in received:
            assert [m["data"] for m in messages] == items
        first = texts[0]
        assert len(first) == n
        for recorded in texts[1:]:
            assert recorded == first
    finally:
        await stack.aclose()
    _no_errors(server)


def _recording(client: Client) -> list[str]:
    """Record the raw text of every ``message`` frame the client reads from now on."""
    texts: list[str] = []
    parse = client._parse

    def record(frame: str | bytes) -> None:
        if isinstance(frame, str) and frame.startswith('{"type":"message"'):
            texts.append(frame)
        parse(frame)

    client._parse = record  # type: ignore[method-assign]
    return texts


def _own_deflate_client(base: str) -> Any:
    """A client whose deflate window is too small for shared compressed frames."""
    from contextlib import asynccontextmanager

    from websockets.asyncio.client import connect

    @asynccontextmanager
    async def opened() -> Any:
        async with connect(
            base + "/ws",
            compression=None,
            extensions=[ClientPerMessageDeflateFactory(server_max_window_bits=10)],
            ping_interval=None,
            proxy=None,
            max_size=None,
        ) as ws:
            client = Client(ws, answer_pings=True)
            assert (await client.recv())["type"] == "welcome"
            yield client

    return opened()


@pytest.mark.anyio
async def test_subscribers_leaving_mid_fan_out_do_not_disturb_the_others(server: Server) -> None:
    """Half the subscribers drop their sockets during a burst; the rest get everything."""
    n = 80
    channel = "preframed-leavers"
    stayers, stack = await open_clients(server.ws_url, 100, compression="deflate")
    try:
        leavers, more = await open_clients(server.ws_url, 100)
        stack.push_async_exit(more)
        await asyncio.gather(*(c.subscribe(channel) for c in [*stayers, *leavers]))
        items = [{"seq": i, "pad": os.urandom(1500).hex()} for i in range(n)]

        async def leave() -> None:
            for i, client in enumerate(leavers):
                client.ws.transport.abort()
                if i % 10 == 0:
                    await asyncio.sleep(0.005)

        async with open_client(server.ws_url) as publisher:
            async with asyncio.timeout(60):
                _, _, *received = await asyncio.gather(
                    publisher.publish_pipelined(channel, items, within=60),
                    leave(),
                    *(c.messages(n, 60) for c in stayers),
                )
        for messages in received:
            assert [m["data"]["seq"] for m in messages] == list(range(n))
    finally:
        await stack.aclose()
    _no_errors(server)
    async with open_client(server.ws_url) as a, open_client(server.ws_url) as b:
        await a.subscribe("after-leavers")
        await b.publish("after-leavers", {"still": "working"})
        [message] = await a.messages(1)
        assert message["data"] == {"still": "working"}


def test_zlib_window_assumption() -> None:
    """A 4 KiB-window stream decodes with any larger window (what shared frames rely on)."""
    payload = os.urandom(3000) * 4
    data = deflate(payload) + b"\x00\x00\xff\xff"
    assert zlib.decompressobj(wbits=-15).decompress(data) == payload
