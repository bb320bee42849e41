"""The WebSocket transport: ``<prefix>/ws`` from the handshake to the close frame.

:class:`WebSocketConnection` is a :class:`~hubbub._connection.Connection` with
a reader (frames → :class:`~hubbub.protocol.ClientProtocol` → the host's
``execute``) and a writer of WebSocket frames (one per message, or batched for
``?batch=1``, or written inline by the publisher while the writer is idle,
pre-framed when the server offers ``hubbub.frames``: :mod:`hubbub._frames`).
What else differs from an SSE stream, for :func:`hubbub._session.serve_session`:
the ``websocket.connect`` message, the subprotocol (codec) negotiation, a
refusal as a denial response (HTTP status and JSON body where the server
supports it), ``websocket.accept``, and the ``welcome`` first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

import anyio

from ._connection import PEER_GONE, AsyncioSignal, Connection, Signal, loop_clock, new_signal
from ._errors import HubbubError, HubNotRunning, InvalidMessage, RateLimited
from ._frames import EXTENSION, wire_kind
from ._http import Receive, Scope, SendCallable, deny, query_param
from ._session import serve_session
from .messages import JSON, Codec, Disconnect, Error, codec_for_subprotocol
from .protocol import INTERNAL_ERROR, Close, Execute, Send

if TYPE_CHECKING:
    from ._connection import SessionHost
    from .auth import Identity

__all__ = ["WebSocketConnection", "serve_websocket"]

logger = logging.getLogger("hubbub.connection")

_RESUME_TYPE = "hubbub.resume"
_RESUME: dict[str, Any] = {"type": _RESUME_TYPE}
"""What the direct receiver hands ``receive()`` when the reader task must go on (``_deferred``)."""


class _Resume:
    """Finishes, in the awaiting task, a send coroutine that was started elsewhere.

    The inline fast path (see :meth:`WebSocketConnection._send_inline`) starts a send in the
    publisher's task; if it suspends (the socket's buffer is full), the writer
    task takes over here: the same protocol as ``yield from``, entered midway.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, None]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                value = yield yielded
            except BaseException as exc:  # cancellation thrown into the waiting task
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    yielded = coro.send(value)
                except StopIteration:
                    return


# ASGI servers whose WebSocket ``send`` may be started in one task and finished in
# another: it only awaits an asyncio.Event for write flow control, then writes to
# the transport synchronously, and uses nothing bound to the calling task.
_INLINE_SENDERS = frozenset(
    {
        "uvicorn.protocols.websockets.websockets_sansio_impl",
        "uvicorn.protocols.websockets.wsproto_impl",
        "hubbub._uvicorn_ws",  # uvicorn's websockets-sansio, subclassed (hubbub serve)
    }
)


def _can_send_inline(send: SendCallable, signal: Signal) -> bool:
    owner = getattr(send, "__self__", None)
    return isinstance(signal, AsyncioSignal) and type(owner).__module__ in _INLINE_SENDERS


class WebSocketConnection(Connection):
    """A client on a WebSocket: a reader of commands and a writer of frames."""

    __slots__ = (
        "_asgi_send",
        "_batch",
        "_clock",
        "_deferred",
        "_frames",
        "_pending",
        "_reader_waiting",
        "_room",
    )

    transport = "websocket"

    def __init__(
        self,
        host: SessionHost,
        *,
        client_id: str,
        identity: Identity,
        codec: Codec,
        batch: bool,
        frames: Any = None,
    ) -> None:
        super().__init__(host, client_id=client_id, identity=identity, codec=codec)
        self._batch = batch
        self._frames = frames  # the scope's hubbub.frames extension, if the server offers it
        self._asgi_send: SendCallable | None = None
        self._pending: _Resume | None = None
        self._room = new_signal()
        self._reader_waiting = False
        # Events the direct receiver left to the reader task (a command that awaits).
        self._deferred: list[Send | Execute | Close] | None = None

    def _send_inline(self, frame: str | bytes) -> None:
        """Send while the writer is idle, without waking it: the fan-out fast path.

        Waking a writer task per delivery costs a task switch each; when the
        writer is idle and the server's ``send`` completes without suspending
        (its socket buffer has room), the publisher's task does the write
        directly, as a hand-written fan-out loop would. If ``send`` suspends,
        the writer finishes it (:class:`_Resume`) before anything queued later,
        so order is kept and the publisher never waits.
        """
        assert self._asgi_send is not None
        if self.codec.binary:
            coro = self._asgi_send({"type": "websocket.send", "bytes": frame})
        else:
            coro = self._asgi_send({"type": "websocket.send", "text": frame})
        try:
            yielded = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return
        except PEER_GONE:
            self._gone = True
            self._wake()
            return
        except Exception:
            logger.exception("ASGI send failed", extra=self.log_fields())
            self._gone = True
            self._wake()
            return
        self._pending = _Resume(coro, yielded)  # type: ignore[arg-type]
        self._wake()

    async def run(self, receive: Receive, send: SendCallable) -> None:
        """Serve the accepted connection until it ends; never raises for client behaviour.

        The writer runs in the caller's task, the reader in a second one. On
        asyncio that is a bare task rather than an anyio task group: the group
        (its scope, its state per task, an ``asyncio.Event``) is ~3 KB per idle
        connection (docs/design.md, "Idle memory"), and what it would do is done
        here: a reader that fails ends the connection, and the reader is
        cancelled and waited for before this returns.
        """
        if not isinstance(self._wakeup, AsyncioSignal):
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader, receive)
                await self._writer(send)
                tg.cancel_scope.cancel()
            return
        reader = asyncio.get_running_loop().create_task(self._reader(receive))
        reader.add_done_callback(self._reader_done)
        try:
            await self._writer(send)
        finally:
            if not reader.done():
                reader.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait((reader,))
        if not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    def _reader_done(self, reader: asyncio.Task[None]) -> None:
        """A reader that failed (a bug, not client behaviour) stops the writer as a group would."""
        if reader.cancelled() or reader.exception() is None:
            return
        self._gone = True
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._wake()

    async def _reader(self, receive: Receive) -> None:
        frames = self._frames
        direct = (
            frames.get("receive")
            if isinstance(frames, dict) and isinstance(self._wakeup, AsyncioSignal)
            else None
        )
        if direct is not None:
            self._clock = loop_clock()
            direct(self._receive_now, self.host.end_of_read)
        try:
            await self._read(receive)
        finally:
            if direct is not None:
                direct(None)

    async def _read(self, receive: Receive) -> None:
        protocol = self.protocol
        execute = self.host.execute
        clock = loop_clock()
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                if self._close is not None:
                    continue
                text = message.get("text")
                frame = text if text is not None else message.get("bytes")
                if frame is not None:
                    self.host.stats.bytes_in += len(frame)
                events: list[Send | Execute | Close] | None = None
            elif kind == _RESUME_TYPE:  # what the direct receiver left (_receive_now)
                events, self._deferred = self._deferred or [], None
                if self._close is not None:
                    continue  # as for a frame read while closing: not run
            elif kind == "websocket.disconnect":
                self.close_code = message.get("code", 1005)
                self._peer_left()
                return
            else:
                continue
            try:
                for event in protocol.receive(frame, clock()) if events is None else events:
                    if isinstance(event, Execute):
                        await execute(self, event)
                    else:
                        self._perform(event)
            except Exception:
                logger.exception("internal error while handling a frame", extra=self.log_fields())
                self.close(Close(INTERNAL_ERROR, "internal error", flush=True))
            # Back-pressure on the client's own commands: a pipelined burst must not
            # fill its queue with replies faster than the writer sends them (receive()
            # returns buffered frames without yielding). Wait for room instead.
            if self._crowded():
                self._reader_waiting = True
                await self._room.wait()

    def _crowded(self) -> bool:
        queue = self._queue
        return len(queue) * 2 >= self._max_messages or self._queued_bytes * 2 >= self._max_bytes

    def _receive_now(self, frame: str | bytes) -> dict[str, Any] | None:
        """The server's direct receiver: one frame handled in its ``data_received``.

        Called only while the reader waits in ``receive()`` with nothing
        queued, so nothing is overtaken. A command the host can run without
        awaiting (``execute_now``) costs no task switch; one that awaits is
        left, with whatever follows it, to the reader (the ``_RESUME`` message
        wakes it). A crowded send queue hands the frame itself to the reader,
        which waits for room before it reads on (the back-pressure above).
        """
        if self._close is not None:
            return None  # as the reader does: nothing more is read from a closing client
        if self._crowded():
            if isinstance(frame, str):
                return {"type": "websocket.receive", "text": frame}
            return {"type": "websocket.receive", "bytes": frame}
        self.host.stats.bytes_in += len(frame)
        try:
            events = self.protocol.receive(frame, self._clock())
            execute_now = self.host.execute_now
            for index, event in enumerate(events):
                if isinstance(event, Execute):
                    if not execute_now(self, event):
                        self._deferred = events[index:]
                        return _RESUME
                else:
                    self._perform(event)
        except Exception:
            logger.exception("internal error while handling a frame", extra=self.log_fields())
            self.close(Close(INTERNAL_ERROR, "internal error", flush=True))
        return None

    def _perform(self, event: Send | Close) -> None:
        if isinstance(event, Send):
            message = event.message
            if type(message) is Error and message.code == RateLimited.code:
                logger.info(
                    "refused a command (429): %s",
                    message.reason,
                    extra={
                        **self.log_fields(),
                        "event": "rate_limited",
                        "kind": "command"
                        if message.reason.startswith("rate limited")
                        else "channels",
                    },
                )
            self.send_message(message)
        else:
            self.close(event)

    def heartbeat(self, now: float) -> None:
        """Send a due ``ping`` or close an idle client (called by the hub's heartbeat task)."""
        for event in self.protocol.heartbeat(now):
            if isinstance(event, Send):
                self.send_message(event.message)
            elif isinstance(event, Close):
                self.close(event)

    async def _writer(self, send: SendCallable) -> None:
        self._asgi_send = send
        # Batching clients keep the queue: messages that pile up between the writer's
        # wake-ups leave in one frame, which is the point of asking for batching.
        self._inline = not self._batch and _can_send_inline(send, self._wakeup)
        wire = wire_kind(self._frames) if self._inline else None
        if wire is not None:
            self._write_frame, self._wire = self._frames["write"], wire
        queue = self._queue
        batch = self._batch
        text = not self.codec.binary
        batch_bytes = self.host.limits.batch_bytes
        with anyio.CancelScope() as scope:
            self._send_scope = scope
            try:
                while True:
                    pending = self._pending
                    if pending is not None:
                        self._pending = None
                        await pending
                        continue
                    if not queue:
                        if self._close is not None or self._gone:
                            break
                        if self._reader_waiting:
                            self._reader_waiting = False
                            self._room.set()
                        self._waiting = True
                        await self._wakeup.wait()
                        continue
                    if self._gone or (self._close is not None and not self._close.flush):
                        break
                    if self._reader_waiting and (
                        len(queue) * 4 <= self._max_messages
                        and self._queued_bytes * 4 <= self._max_bytes
                    ):
                        self._reader_waiting = False
                        self._room.set()
                    if batch and len(queue) > 1:
                        parts: list[str] = []
                        total = 0
                        while queue and (not parts or total + queue[0][1] <= batch_bytes):
                            frame, size, _ = queue.popleft()
                            total += size
                            parts.append(frame)  # type: ignore[arg-type]
                        self._queued_bytes -= total
                        await send({"type": "websocket.send", "text": "\n".join(parts)})
                    else:
                        frame, size, _ = queue.popleft()
                        self._queued_bytes -= size
                        if text:
                            await send({"type": "websocket.send", "text": frame})
                        else:
                            await send({"type": "websocket.send", "bytes": frame})
            except PEER_GONE:
                self._gone = True
        self._send_scope = None
        close = self._close
        if self._gone or close is None:
            return
        self.close_code = close.code
        with anyio.move_on_after(self.host.limits.close_timeout):
            try:
                goodbye = Disconnect(
                    code=close.code, reason=close.reason, reconnect=close.reconnect
                )
                frame = self.codec.encode(goodbye)
                stats = self.host.stats
                stats.sent["disconnect"] = stats.sent.get("disconnect", 0) + 1
                stats.bytes_out += len(frame)
                if text:
                    await send({"type": "websocket.send", "text": frame})
                else:
                    await send({"type": "websocket.send", "bytes": frame})
                await send({"type": "websocket.close", "code": close.code, "reason": close.reason})
            except PEER_GONE:
                self._gone = True


async def serve_websocket(
    host: SessionHost, scope: Scope, receive: Receive, send: SendCallable
) -> None:
    """Run one WebSocket from handshake to close: refuse it with an HTTP status, or serve it."""
    await serve_session(host, _WebSocket(scope, receive, send), scope, receive, send)


# The connect record's fields per codec, and the (empty) disconnect ones: shared by every
# session, which only reads them, rather than two dicts per connection.
_CONNECT_FIELDS: dict[str, dict[str, Any]] = {}
_NO_FIELDS: dict[str, Any] = {}


class _WebSocket:
    """The WebSocket's part of a session (a :class:`hubbub._session.Transport`)."""

    __slots__ = ("codec", "connect_fields", "receive", "scope", "send", "subprotocol")

    logger = logger
    disconnect_fields = _NO_FIELDS

    def __init__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.codec: Codec = JSON
        self.subprotocol: str | None = None
        self.connect_fields: dict[str, Any] = _NO_FIELDS

    async def check(self, host: SessionHost) -> bool:
        message = await self.receive()
        if message["type"] != "websocket.connect":
            return False
        if not host.running:
            if host.state in ("draining", "stopping"):
                logger.info("refused a WebSocket (503): the hub is %s", host.state)
            else:
                logger.error(
                    "refused a WebSocket (503): the hub is %s. Start it with `async with hub:`, "
                    "`lifespan=hub.lifespan` in the parent app, or serve HubApp(hub) as the "
                    "top-level app",
                    host.state,
                )
            raise HubNotRunning(f"hub is {host.state}")
        codec, chosen = _negotiate(list(self.scope.get("subprotocols") or ()))
        if codec is None:
            raise InvalidMessage(
                "no supported subprotocol offered: use hubbub.v1.json or hubbub.v1.msgpack"
            )
        self.codec, self.subprotocol = codec, chosen
        fields = _CONNECT_FIELDS.get(codec.name)
        if fields is None:
            fields = _CONNECT_FIELDS[codec.name] = {"codec": codec.name, "transport": "websocket"}
        self.connect_fields = fields
        return True

    def authorize(self, host: SessionHost, identity: Identity) -> None:
        pass  # a WebSocket's channels are checked command by command (ClientProtocol)

    async def refuse(self, exc: HubbubError, retry_after: int | None, ip: str | None) -> None:
        await deny(self.scope, self.send, exc, retry_after=retry_after)

    def connection(self, host: SessionHost, identity: Identity) -> Connection:
        codec = self.codec
        return WebSocketConnection(
            host,
            client_id=host.client_id(),
            identity=identity,
            codec=codec,
            batch=codec is JSON and _query_flag(self.scope, "batch"),
            frames=(self.scope.get("extensions") or {}).get(EXTENSION),
        )

    async def begin(self, host: SessionHost, connection: Connection) -> bool:
        await self.send({"type": "websocket.accept", "subprotocol": self.subprotocol})
        return True

    async def welcome(self, host: SessionHost, connection: Connection) -> None:
        try:
            await host.welcome(connection)
        except HubbubError as exc:
            connection.send_message(Error(code=exc.code, reason=exc.reason))
            connection.close(Close(exc.close_code, exc.reason))


def _negotiate(subprotocols: list[str]) -> tuple[Codec | None, str | None]:
    """The codec and the subprotocol to echo; ``(None, None)`` when nothing offered is usable.

    ``bearer.<jwt>`` entries carry a token, never a codec, and are never echoed.
    """
    if not subprotocols:
        return JSON, None
    for name in subprotocols:
        if not name.startswith("bearer."):
            codec = codec_for_subprotocol(name)
            if codec is not None:
                return codec, name
    return None, None


def _query_flag(scope: Scope, name: str) -> bool:
    value = query_param(scope, name)
    return value is not None and value.lower() in ("1", "true", "yes")
