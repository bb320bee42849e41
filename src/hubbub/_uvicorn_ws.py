"""uvicorn's websockets-sansio protocol, plus one write path for frames built once.

``hubbub serve`` hands this class to ``uvicorn.Config(ws=...)``. It is
uvicorn's own implementation with two additions:

- the ``hubbub.frames`` ASGI scope extension (:data:`hubbub._frames.EXTENSION`):
  a synchronous ``write(frame) -> bool`` that puts an already-built frame on the
  transport, so fan-out frames a publication once instead of once per
  subscriber. It refuses (``False``) whenever the frame could not go out now and
  in order: handshake not complete, close sent or received, peer gone, transport
  closing, the transport's write buffer above its high-water mark (uvicorn's
  ``writable`` event clear), or a standard ``send`` waiting for room. The caller
  then falls back to its queue and ``websocket.send``, so flow control and the
  slow-consumer policy are unchanged.
- at most two writes per socket per event-loop turn: a socket's first frame
  in a turn is written at once; later ones in the same turn are held until the
  turn ends (``Coalescer``) and leave in one ``transport.write``, so a socket
  that gets several publications (and the ``ack`` of its own) while the app
  works through a burst costs two ``send()`` system calls, not one per frame.
  On loopback most of a delivery's CPU is the kernel's, per call. Anything
  else uvicorn or the app writes on the socket (a standard ``send``, a close
  frame, the shutdown's 1012) first writes what is held, so order on the wire
  is the order of the calls (docs/design.md, "At most two writes per socket
  per loop turn").
- permessage-deflate negotiated with ``server_no_context_takeover`` (RFC 7692
  lets a server require it): every message is then compressed alone, so one
  compressed frame is right for every such connection, and no connection keeps
  a compressor between messages. That is ``ws_compression = "shared"``, the
  default; ``"per-connection"`` (:class:`PerConnectionProtocol`) keeps uvicorn's
  own negotiation (context takeover) and leaves the connections that negotiated
  it to the standard ``send``, so each compresses every message with its own
  context (fewest bytes, most CPU); ``"off"`` is uvicorn's
  ``ws_per_message_deflate=False`` (:data:`PROTOCOLS` maps the three).

- a direct reader (``read_frames``): after the handshake, plain client frames
  are parsed here and handed to the app's receiver in ``data_received``
  (``hubbub.frames["receive"]``), any other frame to websockets for good.
  What websockets parses (compressed frames from browsers, fragments, and
  everything after a frame given to it) reaches the same receiver from
  uvicorn's ``send_receive_event_to_app``, once websockets has decompressed,
  assembled and checked it: no queue, no task switch there either.
- a write gate (:class:`Gate`): whether a frame may be written is kept in one
  small object, recomputed when a flag it depends on changes, so a fan-out to
  tens of thousands of sockets reads one attribute per frame, not eight spread
  over uvicorn's objects.

Everything else is uvicorn's; the attributes relied on are checked by
tests/test_preframed.py and tests/test_frames_held.py against the installed
uvicorn and websockets. Imported only by ``hubbub serve``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Final

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, State

from ._frames import EXTENSION, WINDOW_BITS
from ._ws_gate import Gate, Tracked, coalescer_for, watched

try:  # what websockets' own parser uses: its C version where built, else its Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = [
    "DEFLATE",
    "PROTOCOLS",
    "SUPPORTED",
    "FramesProtocol",
    "PerConnectionProtocol",
    "has_flow_control",
]


def has_flow_control(protocol: type) -> bool:
    """Whether uvicorn's class defines its own ``pause_writing`` (uvicorn >= 0.52.1).

    It came with the ``writable`` event and the ``disconnected`` flag the fast
    path reads. Every asyncio protocol inherits a no-op ``pause_writing`` from
    ``asyncio.BaseProtocol``, so only the class's own definition counts: an
    inherited one (uvicorn before 0.52.1; 0.40.0 and 0.52.0 were checked) would
    pass a ``getattr`` check and then fail every fan-out on the missing
    ``disconnected``.
    """
    return "pause_writing" in vars(protocol)


SUPPORTED = has_flow_control(WebSocketsSansIOProtocol)
"""Whether the installed uvicorn's class has write flow control (uvicorn >= 0.52.1).

Before it, ``send`` never waited for the socket's buffer and the protocol had no
``disconnected`` flag: frames written directly could not be refused when a
client stops reading. ``hubbub serve`` then keeps uvicorn's own class.
"""

DEFLATE = ServerPerMessageDeflateFactory(
    server_no_context_takeover=True,
    # uvicorn's own settings otherwise: a 4 KiB window each way, memLevel 5.
    server_max_window_bits=WINDOW_BITS,
    client_max_window_bits=WINDOW_BITS,
    compress_settings={"memLevel": 5},
)
"""What ``hubbub serve`` negotiates: uvicorn's permessage-deflate, without server context."""

_OPEN = State.OPEN
_AFTER_CLOSE: Final = frozenset({"websocket.send", "websocket.close"})

logger = logging.getLogger("hubbub.connection")

# First byte of the frames the direct reader takes (FIN set, no RSV bit); any other
# (a close, a fragment, a compressed or reserved frame) hands the connection to websockets.
_TEXT: Final = 0x81
_BINARY: Final = 0x82
_PING: Final = 0x89
_PONG: Final = 0x8A

Receiver = Callable[[str | bytes], Any]
"""The app's direct receiver: a frame in; ``None`` once handled, else the ASGI message to queue."""


def at_frame_boundary(conn: Protocol) -> bool:
    """Whether websockets' parser waits for the first byte of a frame with nothing buffered.

    Only then may the connection's bytes bypass it and go back to it later:
    ``Protocol.parse`` rests in ``StreamReader.at_eof`` between frames, and
    anywhere else (inside ``Frame.parse``, or ``discard`` after a close) it
    holds state that bytes parsed elsewhere would corrupt. A parser this check
    does not recognise (another websockets) answers ``False``: websockets
    keeps parsing, as it always did.
    """
    reader: Any = getattr(conn, "reader", None)
    if reader is None or getattr(reader, "buffer", True) or conn.extensions:
        return False
    # A fragmented message under way: websockets 15+ "current_size", earlier "cur_size".
    if getattr(conn, "current_size", getattr(conn, "cur_size", 0)) is not None:
        return False
    if conn.state is not _OPEN:
        return False
    generator: Any = getattr(conn, "parser", None)
    while getattr(generator, "gi_yieldfrom", None) is not None:
        generator = generator.gi_yieldfrom
    code = getattr(generator, "gi_code", None)
    return code is not None and code.co_name == "at_eof"


def frame_limit(conn: Protocol) -> int | bool | None:
    """The largest frame websockets takes (``None``: no limit; ``False``: cannot tell).

    websockets 15+ has ``max_message_size`` and ``max_fragment_size``, earlier
    versions ``max_size``; a frame over either is websockets' to refuse (1009).
    """
    found: Any = conn
    if hasattr(found, "max_message_size"):
        limits = [
            value
            for value in (found.max_message_size, getattr(found, "max_fragment_size", None))
            if value is not None
        ]
        return min(limits) if limits else None
    if hasattr(found, "max_size"):
        return found.max_size if found.max_size is None else int(found.max_size)
    return False


class _Inbox:
    """What uvicorn's ``receive`` needs of its queue, at a fraction of ``asyncio.Queue``'s memory.

    ``asyncio.Queue`` holds three deques and an ``Event`` (~3 KiB) for each
    connection's life. uvicorn pauses reading after every message until the
    app has taken all of them, so this queue is empty almost always: its deque
    exists only while it holds something, and the futures of waiting readers
    (one, in practice) only while they wait. FIFO, any number of readers, a
    reader cancelled after being woken passes the wake-up on.
    """

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def empty(self) -> bool:
        return not self._items

    def idle(self) -> bool:
        """Empty, with a reader parked in :meth:`get` (a woken reader has left the list)."""
        return self._items is None and bool(self._waiters)

    def qsize(self) -> int:
        return len(self._items or ())

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._waiters
            if waiters is None:
                waiters = self._waiters = []
            waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in waiters:
                    waiters.remove(waiter)
                elif self._items:
                    self._wake()  # woken, then cancelled: the next reader takes the item
                raise
            finally:
                if not waiters and self._waiters is waiters:
                    self._waiters = None
        items = self._items
        item = items.popleft()
        if not items:
            self._items = None
        return item


class _Flag:
    """``asyncio.Event`` as uvicorn's write flow control uses it, without a deque per connection.

    ``set`` wakes every waiter, even if ``clear`` follows before they run, as
    ``asyncio.Event`` does.
    """

    __slots__ = ("_waiters", "changed", "on")

    def __init__(self) -> None:
        self.on = False
        self._waiters: list[asyncio.Future[None]] | None = None
        self.changed: Callable[[], None] | None = None  # told of every set and clear

    def is_set(self) -> bool:
        return self.on

    def set(self) -> None:
        if self.on:
            return
        self.on = True
        if self.changed is not None:
            self.changed()
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.on = False
        if self.changed is not None:
            self.changed()

    async def wait(self) -> bool:
        if self.on:
            return True
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)
        return True


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol offering the ``hubbub.frames`` extension."""

    shared_deflate: ClassVar[bool] = True
    """Negotiate deflate without server context and share compressed frames (``"shared"``).

    ``False`` (:class:`PerConnectionProtocol`): uvicorn's own negotiation, and no
    ``hubbub.frames`` for a connection that took it. A class attribute, set by
    a subclass, because uvicorn builds the protocol itself from the class given
    to ``uvicorn.Config(ws=...)``: two servers in one process each keep theirs.
    """

    # uvicorn's flags that the write gate depends on: each assignment re-checks it.
    close_sent = Tracked()
    disconnected = Tracked()
    handshake_complete = Tracked()
    initial_response = Tracked()
    waiting_sends = Tracked()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gate = gate = Gate()
        super().__init__(*args, **kwargs)
        # Lighter stand-ins for uvicorn's asyncio.Queue and asyncio.Event (same methods,
        # same semantics as uvicorn uses them): ~3.5 KiB less per connection.
        self.queue = self.inbox = _Inbox()  # type: ignore[assignment]
        flag = self.flag = _Flag()
        if self.writable.is_set():
            flag.set()
        self.writable = flag  # type: ignore[assignment]
        # Standard sends waiting for write room: a frame written meanwhile would pass them.
        self.waiting_sends = 0
        gate.coalescer = coalescer_for(self.loop)
        # websockets' state changes re-check the gate too (watched); a version whose
        # state cannot be watched gets no pre-framed writes (handle_connect).
        subclass = watched(type(self.conn))
        self.watched = subclass is not None
        if subclass is not None:
            self.conn.__class__ = subclass  # type: ignore[assignment]
            self.conn.hubbub_protocol = self  # type: ignore[attr-defined]
        flag.changed = self.recheck
        self.tracking = True
        self.recheck()
        # The direct reader (data_received): on from the accept while websockets' parser
        # rests between frames, off for good at the first frame it leaves to websockets.
        self.direct = False
        self.partial: bytearray | None = None  # the start of a frame not yet complete
        self.needed = 0  # bytes that frame needs in all, once its header is in
        self.limit: int | bool | None = None  # websockets' frame size limit (frame_limit)
        self.receiver: Receiver | None = None
        self.after_read: Callable[[], None] | None = None
        self.app_closed = False  # the app sent websocket.close (see send)
        # uvicorn offers deflate unless ws_per_message_deflate=False (ws_compression = "off").
        if self.shared_deflate and self.conn.available_extensions:
            self.conn.available_extensions = [DEFLATE]

    @property
    def held(self) -> list[bytes] | None:
        """Frames accepted and not yet written (the gate's)."""
        return self.gate.held

    @property
    def held_bytes(self) -> int:
        return self.gate.held_bytes

    def recheck(self) -> None:
        """Compute whether frames may be written now (:class:`Gate`): every flag at once."""
        gate = self.gate
        gate.gone = self.disconnected
        gate.open = (
            not gate.shut
            and not self.close_sent
            and not self.waiting_sends
            and not self.disconnected
            and self.handshake_complete
            and self.initial_response is None
            and self.flag.on
            and self.conn.state is _OPEN
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gate.transport = self.transport

    # The transport closes on these paths without a flag the gate watches: shut it first.

    def eof_received(self) -> None:
        super().eof_received()  # uvicorn's returns None: the transport closes when this returns
        self.gate.shut_down()

    async def run_asgi(self) -> None:
        try:
            await super().run_asgi()
        finally:
            if self.transport.is_closing():  # uvicorn closes it when the app returns
                self.gate.shut_down()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # uvicorn keeps the parsed request (its headers twice over) for nothing once
        # the scope is built: ~2 KiB per idle connection (docs/design.md, "Idle memory").
        del self.request
        # So does websockets' parser: the generator that parsed the request goes on to
        # parse frames with the request still in a local. The scope has its own copy of
        # the headers, and nothing reads the request's again: ~2 KiB more.
        event.headers.clear()
        # The app's task is created but has not run yet: the scope can still gain a key.
        if self.response.status_code != 101 or self.close_sent or not self.watched:
            return
        deflate: tuple[bool, int] | None = None
        for extension in self.conn.extensions:
            if not isinstance(extension, PerMessageDeflate):
                return  # an extension we cannot frame for: the standard path only
            if not self.shared_deflate:
                return  # its own compressor, with context, for every message: the standard path
            deflate = (extension.local_no_context_takeover, extension.local_max_window_bits)
        self.scope["extensions"][EXTENSION] = {
            "write": self.gate.write,
            "deflate": deflate,
            "receive": self.set_receiver,
        }

    def set_receiver(
        self, receiver: Receiver | None, after: Callable[[], None] | None = None
    ) -> None:
        """Hand the app each message as it is parsed, while its reader waits with nothing queued.

        ``receiver`` gets the message's ``str`` or ``bytes`` in ``data_received``
        (no task switch, no ``receive`` call) and returns ``None`` when it has
        handled it, or an ASGI message for ``receive()`` to return (the app
        wants its reader task to go on from there). While the app's ``receive``
        has something queued, or is not being awaited, messages are queued as
        uvicorn queues them, so the app sees them in order either way.
        ``None`` stops it (the app's reader ends). ``after`` is called once the
        messages of one read have all been handed over, before what the app
        wrote meanwhile leaves: the hub delivers there what they published.
        """
        self.receiver = receiver
        self.after_read = after if receiver is not None else None

    # -- the direct reader -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self.direct:
            if self.receiver is None:
                super().data_received(data)
                return
            # websockets parses; the messages it completes reach the receiver
            # (send_receive_event_to_app) and what the app writes meanwhile is held, as below.
            gate = self.gate
            if gate.held is None:
                gate.held = []
            super().data_received(data)
            self.end_read(gate)
            return
        partial = self.partial
        if partial is not None:
            partial += data
            if len(partial) < self.needed:
                return
            data = bytes(partial)
            self.partial = None
        if self.close_sent or self.conn.state is not _OPEN:
            self.give_back(data, 0)  # closing: websockets reads the close reply
            return
        # What the app writes to this socket while it handles these frames (replies, its
        # own copy of a publication) is held and leaves in one write when they are done:
        # no turn callback, one system call for the publisher's message and ack.
        gate = self.gate
        if gate.held is None:
            gate.held = []
        self.read_frames(data)
        self.end_read(gate)

    def end_read(self, gate: Gate) -> None:
        """The read's messages are all handed over: the app's ``after``, then the held writes."""
        after = self.after_read
        if after is not None:
            after()
        if gate.held:
            gate.flush()
        else:
            gate.held = None

    def send_receive_event_to_app(self) -> None:
        """A message websockets completed: to the receiver, as :meth:`deliver` hands one on.

        websockets has decompressed it, assembled its fragments, checked its size
        and its UTF-8. Only while the app's reader waits with nothing queued;
        otherwise, and after the app's close, uvicorn's own method queues it (or
        drops it) as before.
        """
        if self.receiver is None or self.close_sent or not self.inbox.idle():
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        message: str | bytes
        if self.curr_msg_data_type == "text":
            try:
                message = data.decode()
            except UnicodeDecodeError:  # websockets refuses it first; uvicorn's 1007 otherwise
                super().send_receive_event_to_app()
                return
        else:
            message = data
        self.frames = []
        self.deliver(message)

    def read_frames(self, data: bytes) -> None:
        """Parse the complete frames of ``data`` (RFC 6455 §5.2) and deliver them.

        Unfragmented masked text and binary frames up to websockets' size
        limit, pings and pongs are read here; at the first other frame (a
        close, a fragment, a reserved bit or opcode, an unmasked or oversized
        frame, text that is not UTF-8) the rest of the bytes, from that frame's
        first byte, go to websockets, which answers them as it always did (a
        close reply, 1002, 1007, 1009), and reads every later byte too.
        """
        end = len(data)
        position = 0
        limit = self.limit
        while position < end:
            if end - position < 2:
                self.keep(data, position, 2)
                return
            first = data[position]
            second = data[position + 1]
            # Refused before waiting for the rest of a header that an unmasked frame lacks.
            if not second & 0x80 or first not in (_TEXT, _BINARY, _PING, _PONG):
                self.give_back(data, position)
                return
            length = second & 0x7F
            head = 6 if length < 126 else 8 if length == 126 else 14
            if end - position < head:
                self.keep(data, position, head)
                return
            if length == 126:
                length = int.from_bytes(data[position + 2 : position + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[position + 2 : position + 10], "big")
            if (length > 125 and first >= _PING) or (limit is not None and length > limit):
                self.give_back(data, position)
                return
            start = position + head
            stop = start + length
            if stop > end:
                self.keep(data, position, stop - position)
                return
            payload = apply_mask(data[start:stop], data[start - 4 : start])
            if first == _TEXT:
                try:
                    message: str | bytes = payload.decode()
                except UnicodeDecodeError:
                    self.give_back(data, position)
                    return
            elif first == _BINARY:
                message = payload
            else:
                if self.conn.state is not _OPEN:
                    self.give_back(data, position)
                    return
                position = stop
                self.control(first, payload)
                continue
            position = stop
            self.deliver(message)

    def keep(self, data: bytes, position: int, needed: int) -> None:
        """Hold the start of a frame until ``needed`` bytes of it are in."""
        self.partial = bytearray(data[position:])
        self.needed = needed

    def give_back(self, data: bytes, position: int) -> None:
        """Leave the connection to websockets from ``position`` on (a frame's first byte)."""
        self.direct = False
        self.partial = None
        if position < len(data):
            super().data_received(data[position:])

    def control(self, first: int, payload: bytes) -> None:
        if first == _PING:
            self.conn.send_pong(payload)  # RFC 6455 §5.5.2, as websockets answers it
            self.handle_ping()
        else:
            self.handle_pong(Frame(Opcode.PONG, payload))

    def deliver(self, message: str | bytes) -> None:
        """One message to the app: to its receiver while it waits, else queued as uvicorn does."""
        if self.close_sent:
            return  # the app is past websocket.close: uvicorn discards it too
        receiver = self.receiver
        if receiver is not None and self.inbox.idle():
            try:
                event = receiver(message)
            except Exception:  # the receiver handles its errors: this is a bug, not the client
                logger.exception("the app's direct receiver failed")
                self.direct = False
                self.gate.shut_down()
                self.transport.close()
                return
            if event is None:
                return
        elif isinstance(message, str):
            event = {"type": "websocket.receive", "text": message}
        else:
            event = {"type": "websocket.receive", "bytes": message}
        self.queue.put_nowait(event)
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def write_frame(self, frame: bytes) -> bool:
        """Take one complete frame for this turn's write, or refuse (:meth:`Gate.write`)."""
        return self.gate.write(frame)

    def flush_frames(self) -> None:
        """Write the frames held for this socket (:meth:`Gate.flush`)."""
        self.gate.flush()

    # uvicorn's own writes of a close frame (or of anything after which no data may follow)
    # write the held frames first: they were accepted before, so they go before.

    def handle_close(self, event: Any) -> None:
        self.flush_frames()
        super().handle_close(event)

    def shutdown(self) -> None:
        self.flush_frames()
        super().shutdown()

    def keepalive_timeout(self) -> None:
        self.flush_frames()
        super().keepalive_timeout()

    def handle_parser_exception(self) -> None:
        self.flush_frames()
        super().handle_parser_exception()

    def connection_lost(self, exc: Exception | None) -> None:
        gate = self.gate
        gate.held = None
        gate.held_bytes = 0
        super().connection_lost(exc)
        # The gate is closed for good (``disconnected``): let refcounting free the pair
        # instead of the cycle collector (the connection object pointed back here).
        self.conn.__dict__.pop("hubbub_protocol", None)

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if self.close_sent and not self.app_closed and kind in _AFTER_CLOSE:
            # uvicorn sent the close itself (the peer's close, a protocol error): for the app
            # the peer is gone, an OSError as ASGI 2.4 asks, not uvicorn's RuntimeError for
            # an app that sends after its own close.
            raise ClientDisconnected()
        if kind == "websocket.close":
            self.app_closed = True
        if self.gate.held is not None:
            self.gate.flush()  # accepted before this message: written before it
        if not self.writable.is_set():
            self.waiting_sends += 1
            try:
                await self.writable.wait()
            finally:
                self.waiting_sends -= 1
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The handshake response is written: uvicorn never reads it again.
            del self.response
            self.limit = frame_limit(self.conn)
            self.direct = self.limit is not False and at_frame_boundary(self.conn)


class PerConnectionProtocol(FramesProtocol):
    """``ws_compression = "per-connection"``: deflate with each connection's own context.

    uvicorn's own permessage-deflate offer (context takeover, its 4 KiB window
    and memLevel 5). A connection that negotiated it gets no ``hubbub.frames``,
    so every message it receives goes through its compressor, whose context makes
    a stream of similar messages a fraction of the bytes of shared frames
    (docs/design.md, "Pre-framed fan-out"); the others keep the pre-framed path.
    """

    shared_deflate = False


PROTOCOLS: Final[dict[str, type[FramesProtocol]]] = {
    "shared": FramesProtocol,
    "per-connection": PerConnectionProtocol,
    # uvicorn offers no deflate at all (ws_per_message_deflate=False): every connection plain.
    "off": FramesProtocol,
}
"""The protocol class for each ``server.ws_compression``."""
