"""Messages websockets parses reach the app's receiver too (``hubbub._uvicorn_ws``).

Browsers always offer permessage-deflate, and what they send is compressed:
the direct reader leaves those frames (and fragments, and everything after a
frame it gives back) to websockets. Once websockets has decompressed,
assembled and checked a message, :class:`FramesProtocol` hands it to the same
receiver in ``data_received`` (``send_receive_event_to_app``), not to
uvicorn's queue and the app's reader task. Each test runs the protocol class
on a real loopback connection with a real handshake from a ``websockets``
client that negotiates deflate as Chromium offers it, and checks what the app
got, by which path, and what reached the client: in order, every write of a
read in one, websockets' own answers (1009, 1002) to a bomb and to garbage,
and the queue again whenever the app's reader is not waiting.
"""

from __future__ import annotations

import asyncio
import json
import socket
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from hubbub._frames import EXTENSION, build_frame
from hubbub._uvicorn_ws import SUPPORTED, FramesProtocol

from .servers import Server
from .test_direct_reader import RawClient, frame, text
from .test_frames_held import served
from .test_preframed import _no_errors

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not SUPPORTED, reason="uvicorn < 0.52.1: no hubbub protocol class"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _App:
    """An ASGI app that takes messages by the receiver while its reader waits in ``receive``.

    ``direct``: what the receiver got; ``queued``: what ``receive()`` returned;
    ``reads``: the ``after`` calls. A message starting with ``resume`` makes the
    receiver hand it back as an ASGI message (the hub's ``_RESUME``: the reader
    must go on from there); one starting with ``echo`` is written back at once
    with the gate's ``write``.
    """

    def __init__(self) -> None:
        self.direct: list[str | bytes] = []
        self.queued: list[str | bytes] = []
        self.reads = 0
        self.written: list[bool] = []  # what the gate's write answered for each echo
        self.extension: dict[str, Any] | None = None
        self.disconnect: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.extension = scope["extensions"][EXTENSION]
        self.extension["receive"](self.receiver, self.after)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnect = message
                return
            text = message.get("text")
            self.queued.append(text if text is not None else message["bytes"])

    def receiver(self, message: str | bytes) -> dict[str, Any] | None:
        self.direct.append(message)
        if isinstance(message, str) and message.startswith("resume"):
            return {"type": "websocket.receive", "text": f"resumed {message}"}
        if isinstance(message, str) and message.startswith("echo"):
            assert self.extension is not None
            self.written.append(self.extension["write"](build_frame(message.encode(), False)))
        return None

    def after(self) -> None:
        self.reads += 1


class _Peer:
    """The client's end: a socket and a sans-I/O client offering deflate as Chromium does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.protocol = ClientProtocol(
            parse_uri("ws://127.0.0.1/ws"),
            extensions=[ClientPerMessageDeflateFactory(client_max_window_bits=True)],
            max_size=None,
        )
        self.frames: list[Frame] = []
        self.eof = False

    def flush(self) -> None:
        """Write what the client protocol has to send, in one ``sendall``."""
        self.sock.setblocking(True)
        try:
            self.sock.sendall(b"".join(self.protocol.data_to_send()))
        finally:
            self.sock.setblocking(False)

    def feed(self, data: bytes) -> None:
        if data:
            self.protocol.receive_data(data)
        else:
            self.eof = True
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)

    async def read_until(self, done: Any, within: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            while not done() and not self.eof:
                self.feed(await loop.sock_recv(self.sock, 1 << 20))

    async def close_code(self) -> int:
        await self.read_until(lambda: any(f.opcode is Opcode.CLOSE for f in self.frames))
        closes = [f for f in self.frames if f.opcode is Opcode.CLOSE]
        assert closes, "the server closed the socket without a close frame"
        return Close.parse(closes[0].data).code

    def texts(self) -> list[str]:
        return [bytes(f.data).decode() for f in self.frames if f.opcode is Opcode.TEXT]


class _Writes:
    """Counts the transport's ``write`` calls (the real transport still writes)."""

    def __init__(self, transport: Any) -> None:
        self.calls = 0
        self._write = transport.write
        transport.write = self

    def __call__(self, data: bytes) -> None:
        self.calls += 1
        self._write(data)


@asynccontextmanager
async def _accepted(
    app: _App, max_size: int = 16 * 1024 * 1024
) -> AsyncIterator[tuple[FramesProtocol, _Peer]]:
    """hubbub's protocol serving one real loopback connection, deflate negotiated."""
    async with served(app, ws_max_size=max_size) as (protocol, client):
        peer = _Peer(client)
        peer.protocol.send_request(peer.protocol.connect())
        peer.flush()
        await peer.read_until(lambda: peer.protocol.state is State.OPEN)
        assert [type(e) for e in peer.protocol.extensions] == [PerMessageDeflate]
        await _until(lambda: app.extension is not None)  # the app registered its receiver
        await _until(protocol.inbox.idle)  # and waits in receive()
        assert not protocol.direct, "a deflate connection is websockets' to parse"
        yield protocol, peer


async def _until(done: Any, within: float = 5.0) -> None:
    """Poll the server's side (it runs in this loop) until ``done()``."""
    async with asyncio.timeout(within):
        while not done():  # noqa: ASYNC110 - state of the protocol, not an event
            await asyncio.sleep(0.005)


async def _settle(app: _App, count: int) -> None:
    await _until(lambda: len(app.direct) + len(app.queued) >= count)


async def test_compressed_messages_of_one_read_reach_the_receiver_in_order() -> None:
    app = _App()
    async with _accepted(app) as (_, peer):
        sent: list[str | bytes] = ["first", "second " * 50, "third ü €"]
        for text in sent:
            peer.protocol.send_text(text.encode())  # type: ignore[union-attr]
        peer.protocol.send_binary(b"\x00\x01 binary \xff")
        sent.append(b"\x00\x01 binary \xff")
        peer.flush()  # one write: the server reads them together
        await _settle(app, len(sent))
        assert app.direct == sent
        assert app.queued == []
        assert app.reads >= 1


async def test_a_fragmented_compressed_message_is_assembled_first() -> None:
    app = _App()
    async with _accepted(app) as (_, peer):
        peer.protocol.send_text(b"part one, ", fin=False)
        peer.protocol.send_continuation(b"part two, ", fin=False)
        peer.protocol.send_continuation(b"part three", fin=True)
        peer.protocol.send_text(b"after")
        peer.flush()
        await _settle(app, 2)
        assert app.direct == ["part one, part two, part three", "after"]
        assert app.queued == []


async def test_plain_and_compressed_messages_mixed_keep_their_order() -> None:
    """RFC 7692 lets a client send a message uncompressed (RSV1 clear) on a deflate connection."""
    app = _App()
    async with _accepted(app) as (_, peer):
        peer.protocol.send_text(b"compressed 1")
        plain = Frame(Opcode.TEXT, b"plain").serialize(mask=True)
        compressed = b"".join(peer.protocol.data_to_send())
        peer.protocol.send_text(b"compressed 2")
        peer.sock.setblocking(True)
        peer.sock.sendall(compressed + plain + b"".join(peer.protocol.data_to_send()))
        peer.sock.setblocking(False)
        await _settle(app, 3)
        assert app.direct == ["compressed 1", "plain", "compressed 2"]


async def test_a_message_handed_back_queues_what_follows_behind_it() -> None:
    """The receiver hands a message back (a command that awaits): that message and every
    later one of the same read reach ``receive()`` in order, none overtakes it."""
    app = _App()
    async with _accepted(app) as (protocol, peer):
        for text in ("a", "resume b", "c", "d"):
            peer.protocol.send_text(text.encode())
        peer.flush()
        await _settle(app, 4)
        assert app.direct == ["a", "resume b"]
        assert app.queued == ["resumed resume b", "c", "d"]
        # The reader took everything: the next read goes to the receiver again.
        await _until(protocol.inbox.idle)
        peer.protocol.send_text(b"e")
        peer.flush()
        await _settle(app, 6)
        assert app.direct[-1] == "e"


async def test_what_the_app_writes_during_the_read_leaves_in_one_write() -> None:
    app = _App()
    async with _accepted(app) as (protocol, peer):
        writes = _Writes(protocol.transport)
        for i in range(5):
            peer.protocol.send_text(f"echo {i}".encode())
        peer.flush()
        await peer.read_until(lambda: len(peer.texts()) >= 5)
        assert peer.texts() == [f"echo {i}" for i in range(5)]
        assert app.reads >= 1
        # One read of the five frames: one write. Loopback may split the client's write,
        # so at most one write per read, never one per echo.
        assert writes.calls <= app.reads < 5, (writes.calls, app.reads)


async def test_a_compressed_bomb_is_refused_1009_before_the_receiver() -> None:
    """8 MiB of zeros compress to a few KiB: websockets refuses the message past the
    server's size limit while inflating it, and the app never sees a byte of it."""
    app = _App()
    async with _accepted(app, max_size=65536) as (_, peer):
        peer.protocol.send_text(b"before")
        peer.flush()
        await _settle(app, 1)
        peer.protocol.send_text(b"0" * (8 * 1024 * 1024))
        peer.flush()
        assert await peer.close_code() == 1009
        assert app.direct == ["before"]
        assert app.queued == []
        await _until(lambda: app.disconnect is not None)
        assert app.disconnect is not None and app.disconnect["code"] == 1009


async def test_garbage_marked_compressed_is_refused_1002() -> None:
    app = _App()
    async with _accepted(app) as (_, peer):
        peer.protocol.send_text(b"before")
        peer.flush()
        await _settle(app, 1)
        # Not a deflate stream (a stored block's length and its complement must agree).
        peer.sock.sendall(frame(0x1, b"\x00\x05\x00\x00\x00hello", rsv=4))
        assert await peer.close_code() == 1002
        assert app.direct == ["before"]
        assert app.queued == []


async def test_messages_then_a_close_in_one_write_are_all_handled() -> None:
    """The messages before a close reach the receiver. websockets has parsed the close with
    them (its reply is queued), so the gate refuses what the app writes back: the hub then
    falls back to its queue, where the peer is gone. Whatever the gate took leaves before
    the close reply; the app gets the client's code."""
    app = _App()
    async with _accepted(app) as (_, peer):
        for i in range(3):
            peer.protocol.send_text(f"echo {i}".encode())
        peer.protocol.send_close(4321, "done")
        peer.flush()
        await peer.read_until(lambda: any(f.opcode is Opcode.CLOSE for f in peer.frames))
        assert app.direct == [f"echo {i}" for i in range(3)]
        taken = sum(app.written)
        assert app.written == [True] * taken + [False] * (3 - taken), app.written
        kinds = [f.opcode for f in peer.frames]
        assert kinds == [Opcode.TEXT] * taken + [Opcode.CLOSE], kinds
        assert peer.texts() == [f"echo {i}" for i in range(taken)]
        await _until(lambda: app.disconnect is not None)
        assert app.disconnect is not None and app.disconnect["code"] == 4321


def test_the_garbage_is_garbage_to_zlib() -> None:
    """What the test above sends must fail to inflate (else it tests nothing)."""
    with pytest.raises(zlib.error):
        zlib.decompressobj(wbits=-12).decompress(b"\x00\x05\x00\x00\x00hello\x00\x00\xff\xff")


# -- through a real `hubbub serve` --------------------------------------------------------------


async def test_a_browser_like_burst_is_acked_and_delivered_in_order(server: Server) -> None:
    """A deflate client pipelines 99 publications in one write (with its subscribe, the
    demo hub's whole burst allowance of 100 commands): every one is acked, a plain
    subscriber and the publisher's own copies see them all in order, and nothing is logged
    as an error."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    count = 99
    async with (
        connect(url, compression=None, subprotocols=["hubbub.v1.json"]) as plain,  # type: ignore[list-item]
        connect(url, compression="deflate", subprotocols=["hubbub.v1.json"]) as browser,  # type: ignore[list-item]
    ):
        assert json.loads(await plain.recv())["type"] == "welcome"
        assert json.loads(await browser.recv())["type"] == "welcome"
        assert browser.protocol.extensions, "deflate was not negotiated"
        for ws in (plain, browser):
            await ws.send(json.dumps({"type": "subscribe", "channel": "burst", "id": 10_000}))
            while json.loads(await ws.recv()).get("id") != 10_000:
                pass
        # One write for all of them: the compressed frames are built first, then sent together.
        protocol = browser.protocol
        for i in range(count):
            message = {"type": "publish", "channel": "burst", "data": {"n": i}, "id": i + 1}
            protocol.send_text(json.dumps(message).encode())
        browser.transport.write(b"".join(protocol.data_to_send()))
        acks: list[int] = []
        own: list[int] = []
        seen: list[int] = []
        async with asyncio.timeout(20):
            while len(acks) < count or len(own) < count:
                message = json.loads(await browser.recv())
                assert message["type"] != "error", message
                if message["type"] == "ack":
                    acks.append(message["id"])
                elif message["type"] == "message":
                    own.append(message["data"]["n"])
            while len(seen) < count:
                message = json.loads(await plain.recv())
                if message["type"] == "message":
                    seen.append(message["data"]["n"])
        assert acks == [i + 1 for i in range(count)]
        assert seen == own == list(range(count))
    await asyncio.sleep(0.2)  # the connections' ends are logged after the close
    _no_errors(server)


async def test_a_slow_consumer_closed_by_a_browsers_publish_leaves_no_error(
    server: Server,
) -> None:
    """A subscriber that never reads is closed 1013 by publications that a deflate client
    sends: they run from the read callback too, and leaving the slow consumer's channels
    (broker work, a task) must not fail there. The publisher goes on being served."""
    sleeper = await RawClient.open(server.port)
    url = f"ws://127.0.0.1:{server.port}/ws"
    try:
        await sleeper.write(text({"type": "subscribe", "channel": "slow", "id": 1}))
        await sleeper.replies(1)
        async with connect(
            url,
            compression="deflate",
            subprotocols=["hubbub.v1.json"],  # type: ignore[list-item]
            max_size=None,
        ) as browser:
            assert json.loads(await browser.recv())["type"] == "welcome"
            assert browser.protocol.extensions, "deflate was not negotiated"
            payload = "z" * 60_000
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            sent, batch = 0, 90  # the demo hub allows a burst of 100 commands, then 50 a second
            acked = 0
            while "closing a slow consumer" not in server.log():
                for i in range(batch):
                    message = {
                        "type": "publish",
                        "channel": "slow",
                        "data": payload,
                        "id": 10 + sent + i,
                    }
                    browser.protocol.send_text(json.dumps(message).encode())
                browser.transport.write(b"".join(browser.protocol.data_to_send()))
                sent += batch
                async with asyncio.timeout(20):
                    while acked < sent:
                        reply = json.loads(await browser.recv())
                        assert reply["type"] == "ack", reply
                        acked += 1
                assert loop.time() < deadline, "the sleeper was never closed"
                batch = 10
                await asyncio.sleep(0.25)
            await browser.send(json.dumps({"type": "subscribe", "channel": "after", "id": 99}))
            async with asyncio.timeout(10):
                while json.loads(await browser.recv()).get("id") != 99:
                    pass
    finally:
        await sleeper.close()
    _no_errors(server)
