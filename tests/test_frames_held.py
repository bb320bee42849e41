"""Frames held for one event-loop turn and written in one call (``hubbub._uvicorn_ws``).

Each test runs hubbub's uvicorn protocol class on a real TCP connection over
127.0.0.1, with a real WebSocket handshake from the ``websockets`` sans-I/O
client, and reads what reached the client's socket byte for byte: a socket's
first frame in a turn is written at once; the frames after it in the same
turn arrive together, never before the turn ends unless the hold bound is
crossed, always before anything written after them (a standard send, the
close reply, the shutdown's 1012), and never after the connection is gone.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from hubbub._frames import build_frame
from hubbub._uvicorn_ws import SUPPORTED, FramesProtocol
from hubbub._ws_gate import HOLD_BYTES, watched

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="uvicorn < 0.52.1: no pre-framed path")


class _Peer:
    """The client's end: a non-blocking socket and a sans-I/O WebSocket client."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/ws"))
        self.frames: list[Frame] = []

    def ready_bytes(self) -> bytes:
        """What has reached the socket already, without waiting."""
        chunks = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    async def read(self, count: int, within: float = 5.0) -> list[Frame]:
        """Wait for ``count`` more frames (data or close)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while len(self.frames) < count:
                data = await loop.sock_recv(self.sock, 65536)
                self.feed(data)
                if not data:
                    break
        taken, self.frames = self.frames[:count], self.frames[count:]
        return taken

    def feed(self, data: bytes) -> None:
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


async def _app(scope: Any, receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@asynccontextmanager
async def served(app: Any, **config: Any) -> AsyncIterator[tuple[FramesProtocol, socket.socket]]:
    """hubbub's protocol class serving one real loopback connection, before the handshake.

    Yields the protocol and the client's non-blocking socket; ``config`` goes to
    uvicorn's ``Config``. Both ends are closed on the way out.
    """
    loop = asyncio.get_running_loop()
    settings = Config(app, ws=FramesProtocol, lifespan="off", ws_ping_interval=None, **config)
    settings.load()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    client.setblocking(False)
    protocol = FramesProtocol(settings, ServerState(), {}, loop)
    await loop.connect_accepted_socket(lambda: protocol, accepted)
    try:
        yield protocol, client
    finally:
        if not protocol.transport.is_closing():
            protocol.transport.close()
        client.close()
        await asyncio.sleep(0)


@asynccontextmanager
async def _accepted(app: Any = _app) -> AsyncIterator[tuple[FramesProtocol, _Peer]]:
    """hubbub's protocol serving one real loopback connection, past the handshake."""
    loop = asyncio.get_running_loop()
    async with served(app) as (protocol, client):
        peer = _Peer(client)
        peer.protocol.send_request(peer.protocol.connect())
        peer.send(b"".join(peer.protocol.data_to_send()))
        async with asyncio.timeout(5):
            while peer.protocol.state is not State.OPEN:
                assert peer.protocol.handshake_exc is None, peer.protocol.handshake_exc
                peer.feed(await loop.sock_recv(client, 65536))
        assert protocol.handshake_complete
        yield protocol, peer


def _text(frame: Frame) -> str:
    assert frame.opcode is Opcode.TEXT, frame
    return bytes(frame.data).decode()


def _frame(text: str) -> bytes:
    return build_frame(text.encode(), binary=False)


@pytest.mark.anyio
async def test_the_first_frame_of_a_turn_leaves_at_once_the_rest_together_at_its_end() -> None:
    async with _accepted() as (protocol, peer):
        for i in range(3):
            assert protocol.write_frame(_frame(f"m{i}"))
        # Loopback delivers within the send() call: what was written is there already.
        assert peer.ready_bytes() == _frame("m0"), "the first frame was not written at once"
        assert protocol.held == [_frame("m1"), _frame("m2")]
        await asyncio.sleep(0)  # the loop's next turn writes the held ones, in one call
        await asyncio.sleep(0.05)
        assert peer.ready_bytes() == _frame("m1") + _frame("m2")
        assert protocol.held is None and protocol.held_bytes == 0
        # A later turn starts again: its first frame is written at once.
        assert protocol.write_frame(_frame("next turn"))
        assert peer.ready_bytes() == _frame("next turn")


@pytest.mark.anyio
async def test_frames_past_the_hold_bound_are_written_at_once() -> None:
    async with _accepted() as (protocol, peer):
        frame = build_frame(b"x" * 4000, binary=False)
        count = HOLD_BYTES // len(frame) + 2  # the first is written at once, then the bound
        for _ in range(count):
            assert protocol.write_frame(frame)
        # Written in this turn, without yielding: loopback delivers within the send() call.
        data = peer.ready_bytes()
        assert len(data) >= HOLD_BYTES + len(frame), len(data)
        peer.feed(data)
        got = await peer.read(count)
        assert [bytes(f.data) for f in got] == [b"x" * 4000] * count
        assert protocol.held is None


@pytest.mark.anyio
async def test_a_standard_send_goes_out_after_the_held_frames() -> None:
    async with _accepted() as (protocol, peer):
        assert protocol.write_frame(_frame("first"))
        assert protocol.write_frame(_frame("second"))
        assert protocol.held is not None
        await protocol.send({"type": "websocket.send", "text": "third"})
        assert [_text(f) for f in await peer.read(3)] == ["first", "second", "third"]


@pytest.mark.anyio
async def test_the_close_reply_goes_out_after_the_held_frames() -> None:
    """The client's close arrives in the same turn as held frames: they go first, then the reply."""
    async with _accepted() as (protocol, peer):
        assert protocol.write_frame(_frame("written"))
        assert protocol.write_frame(_frame("held"))
        assert protocol.held is not None
        peer.protocol.send_close(1000, "bye")
        # Handed to the protocol in this very turn, as a data_received callback queued
        # before the turn's end would be.
        protocol.data_received(b"".join(peer.protocol.data_to_send()))
        written, first, second = await peer.read(3)
        assert (_text(written), _text(first)) == ("written", "held")
        assert second.opcode is Opcode.CLOSE
        assert Close.parse(bytes(second.data)).code == 1000
        assert protocol.write_frame(build_frame(b"late", binary=False)) is False


@pytest.mark.anyio
async def test_shutdown_writes_the_held_frames_before_its_1012() -> None:
    async with _accepted() as (protocol, peer):
        assert protocol.write_frame(_frame("written"))
        assert protocol.write_frame(_frame("before shutdown"))
        assert protocol.held is not None
        protocol.shutdown()
        written, first, second = await peer.read(3)
        assert (_text(written), _text(first)) == ("written", "before shutdown")
        assert Close.parse(bytes(second.data)).code == 1012


@pytest.mark.anyio
async def test_frames_held_for_a_connection_that_is_gone_are_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _accepted() as (protocol, peer):
        assert protocol.write_frame(_frame("written"))
        assert protocol.write_frame(_frame("never"))
        assert protocol.held is not None
        protocol.transport.abort()
        await asyncio.sleep(0.05)
        assert protocol.held is None
        assert protocol.write_frame(_frame("after")) is False
        try:
            received = peer.ready_bytes()
        except ConnectionResetError:
            received = b""
        assert b"never" not in received and b"after" not in received
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.anyio
async def test_a_paused_transport_refuses_frames_but_writes_those_already_held() -> None:
    """Flow control is read when a frame is taken: held ones still leave, later ones are refused."""
    async with _accepted() as (protocol, peer):
        assert protocol.write_frame(_frame("written"))
        assert protocol.write_frame(_frame("taken"))
        protocol.pause_writing()
        assert protocol.write_frame(_frame("refused")) is False
        await asyncio.sleep(0.05)
        assert [_text(f) for f in await peer.read(2)] == ["written", "taken"]
        protocol.resume_writing()
        assert protocol.write_frame(_frame("again"))
        assert [_text(f) for f in await peer.read(1)] == ["again"]


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn's protocol classes are asyncio protocols."""
    return "asyncio"


# -- the write gate: one flag kept equal to every condition it stands for ----------------------


def _full_condition(protocol: FramesProtocol) -> bool:
    """What write_frame checked on every frame before the gate: each flag read afresh."""
    return (
        not protocol.close_sent
        and not protocol.waiting_sends
        and not protocol.disconnected
        and protocol.handshake_complete
        and protocol.initial_response is None
        and protocol.writable.is_set()
        and protocol.conn.state is State.OPEN
    )


def _check_gate(protocol: FramesProtocol) -> None:
    gate = protocol.gate
    # What write_frame also checked: the transport not closing (the gate is shut first).
    expected = _full_condition(protocol) and not protocol.transport.is_closing()
    assert gate.open is expected, {name: getattr(gate, name) for name in gate.__slots__}
    assert gate.gone is protocol.disconnected


@pytest.mark.anyio
@pytest.mark.parametrize(
    "ending", ["app close", "peer close", "protocol error", "shutdown", "abort", "peer eof"]
)
async def test_the_gate_follows_every_flag_through_a_connection_s_life(ending: str) -> None:
    """After each event of a connection's life the gate is what the flags say, and a frame is
    taken exactly when they allow it."""
    async with _accepted() as (protocol, peer):
        _check_gate(protocol)
        assert protocol.gate.open and protocol.write_frame(_frame("open"))
        protocol.pause_writing()
        _check_gate(protocol)
        assert protocol.write_frame(_frame("paused")) is False
        sending = asyncio.ensure_future(protocol.send({"type": "websocket.send", "text": "waits"}))
        await asyncio.sleep(0)
        assert protocol.waiting_sends == 1
        _check_gate(protocol)
        protocol.resume_writing()
        _check_gate(protocol)
        assert protocol.write_frame(_frame("passes the waiting send")) is False
        await sending
        _check_gate(protocol)
        assert protocol.write_frame(_frame("after it"))
        if ending == "app close":
            await protocol.send({"type": "websocket.close", "code": 1000})
        elif ending == "peer close":
            peer.protocol.send_close(1000, "bye")
            protocol.data_received(b"".join(peer.protocol.data_to_send()))
        elif ending == "protocol error":
            protocol.data_received(b"\x83\x80\x00\x00\x00\x00")  # reserved opcode 3
        elif ending == "shutdown":
            protocol.shutdown()
        elif ending == "peer eof":
            peer.sock.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.05)
        else:
            protocol.transport.abort()
            await asyncio.sleep(0.05)
        _check_gate(protocol)
        assert not protocol.gate.open
        assert protocol.write_frame(_frame("late")) is False
        await asyncio.sleep(0.05)
        _check_gate(protocol)


@pytest.mark.anyio
async def test_the_gate_shuts_when_the_app_returns_without_a_close() -> None:
    """uvicorn closes the transport when the app returns; no frame is taken after that."""
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await done.wait()

    async with _accepted(app) as (protocol, _peer):
        assert protocol.write_frame(_frame("while it runs"))
        done.set()
        await asyncio.sleep(0.05)
        assert protocol.transport.is_closing() or protocol.disconnected
        _check_gate(protocol)
        assert protocol.write_frame(_frame("after it returned")) is False


def test_websockets_state_can_be_watched() -> None:
    """The installed websockets changes its state through a property setter (what the gate
    watches); otherwise hubbub would offer no pre-framed writes."""
    from websockets.server import ServerProtocol

    subclass = watched(ServerProtocol)
    assert subclass is not None and issubclass(subclass, ServerProtocol)
    assert watched(ServerProtocol) is subclass  # made once per class
