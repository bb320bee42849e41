"""``ScriptedClient``: a protocol-level WebSocket client of a hub, without sockets."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from itertools import count
from typing import Any, Literal

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._asgi import Event, run_app

__all__ = ["CommandFailed", "ConnectionClosed", "HandshakeRefused", "ScriptedClient"]

CodecName = Literal["json", "msgpack"]


class HandshakeRefused(Exception):
    """The hub refused the WebSocket before accepting it (an HTTP status, protocol §2).

    Attributes:
        status: the HTTP status (401, 403, 429, 503, ...).
        body: the decoded JSON body, ``{"code": ..., "reason": ...}``.
        headers: the response headers, lower-cased names.
    """

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        super().__init__(f"handshake refused with HTTP {status}: {body.get('reason', '')}")


class ConnectionClosed(Exception):
    """The connection is closed and every message it brought was read.

    Attributes:
        code: the close code (1006 when it ended without a close frame).
        goodbye: the ``disconnect`` message that preceded the close, if any.
    """

    def __init__(self, code: int, goodbye: dict[str, Any] | None) -> None:
        self.code = code
        self.goodbye = goodbye
        super().__init__(f"connection closed with code {code}")


class CommandFailed(Exception):
    """A command was answered with ``error`` (the reply is in :attr:`error`)."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        self.code: int = int(error.get("code", 0))
        self.reason: str = str(error.get("reason", ""))
        super().__init__(f"error {self.code}: {self.reason}")


class ScriptedClient:
    """One client connected to a hub through its ASGI app, driven step by step by a test.

    Built by :meth:`hubbub.testing.HubTester.connect`. A background reader
    takes frames from the app as a socket's buffers would, so the hub never
    waits on a client the test is not reading right now; :meth:`freeze` stops it
    (a client that stopped reading) and :meth:`drop` cuts the connection
    without a close frame. ``ping``s are answered and hidden unless
    ``auto_pong`` was turned off. Messages are plain dicts, decoded from the
    negotiated codec, batched frames split.
    """

    def __init__(
        self,
        *,
        codec: CodecName,
        timeout: float,
        auto_pong: bool,
        to_app: MemoryObjectSendStream[Event],
        from_app: MemoryObjectReceiveStream[Event],
    ) -> None:
        self.codec: CodecName = codec
        self.timeout = timeout
        self.auto_pong = auto_pong
        self.welcome: dict[str, Any] = {}
        """The ``welcome`` message (client id, user, server-side subscriptions)."""
        self.close_code: int | None = None
        """The close code once the connection ended (1006: dropped without a close frame)."""
        self.goodbye: dict[str, Any] | None = None
        """The ``disconnect`` message the hub sent before closing, if it did."""
        self._to_app = to_app
        self._from_app = from_app
        self._inbox: deque[dict[str, Any]] = deque()
        self._arrived = anyio.Event()
        self._accepted = anyio.Event()
        self._refusal: tuple[int, dict[str, str]] | None = None
        self._frozen: anyio.Event | None = None
        self._reader_scope = anyio.CancelScope()
        self._ended = False
        self._ids = count(1)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "frozen" if self.frozen else "open"
        return f"<ScriptedClient {self.id or '?'} {state}>"

    @property
    def id(self) -> str:
        """The client id the hub gave this connection (``welcome.client``)."""
        return str(self.welcome.get("client", ""))

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (messages may still wait in the inbox)."""
        return self._ended

    @property
    def frozen(self) -> bool:
        """Whether the client stopped reading (:meth:`freeze`)."""
        return self._frozen is not None

    # -- the handshake (called by HubTester) -------------------------------------------------

    async def _open(self, tg: TaskGroup, app: Any, scope: dict[str, Any], app_side: Any) -> None:
        app_receive, app_send = app_side
        tg.start_soon(run_app, app, scope, app_receive, app_send)
        tg.start_soon(self._read)
        await self._to_app.send({"type": "websocket.connect"})
        with anyio.fail_after(self.timeout):
            await self._accepted.wait()
        if self._refusal is not None:
            status, headers = self._refusal
            body: dict[str, Any] = {}
            if self._inbox:
                body = self._inbox.popleft()
            raise HandshakeRefused(status, body, headers)
        welcome = await self.receive()
        if welcome.get("type") != "welcome":
            raise AssertionError(f"expected welcome first, got {welcome}")
        self.welcome = welcome

    # -- reading -----------------------------------------------------------------------------

    async def _read(self) -> None:
        with self._reader_scope:
            try:
                while True:
                    frozen = self._frozen
                    if frozen is not None:
                        await frozen.wait()
                        continue
                    event = await self._from_app.receive()
                    await self._take(event)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
        self._end(1006)

    async def _take(self, event: Event) -> None:
        kind = event["type"]
        if kind == "websocket.accept":
            self._accepted.set()
        elif kind == "websocket.http.response.start":
            headers = {k.decode().lower(): v.decode() for k, v in event.get("headers", ())}
            self._refusal = (int(event["status"]), headers)
        elif kind == "websocket.http.response.body":
            body = event.get("body") or b"{}"
            try:
                self._deliver(json.loads(body))
            except ValueError:
                self._deliver({"body": body})
            if not event.get("more_body"):
                self._accepted.set()
        elif kind == "websocket.send":
            for message in self._decode(event):
                if self.auto_pong and message.get("type") == "ping":
                    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await self._send_frame({"type": "pong"})
                    continue
                if message.get("type") == "disconnect":
                    self.goodbye = message
                self._deliver(message)
        elif kind == "websocket.close":
            self._end(int(event.get("code", 1000)))

    def _decode(self, event: Event) -> list[dict[str, Any]]:
        text = event.get("text")
        if text is not None:
            return [json.loads(part) for part in text.split("\n")]
        decoded: dict[str, Any] = msgspec.msgpack.decode(event["bytes"])
        return [decoded]

    def _deliver(self, message: dict[str, Any]) -> None:
        self._inbox.append(message)
        self._wake()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = anyio.Event()

    def _end(self, code: int) -> None:
        if not self._ended:
            self._ended = True
            self.close_code = code
        self._accepted.set()
        self._wake()

    async def receive(self) -> dict[str, Any]:
        """The next message from the hub (wrap it in ``anyio.fail_after`` for a shorter wait).

        Raises:
            TimeoutError: nothing arrived within :attr:`timeout` seconds.
            ConnectionClosed: the connection ended and every message was read.
        """
        with anyio.fail_after(self.timeout):
            return await self._next()

    async def _next(self) -> dict[str, Any]:
        while not self._inbox:
            if self._ended:
                raise ConnectionClosed(self.close_code or 1006, self.goodbye)
            await self._arrived.wait()
        return self._inbox.popleft()

    async def receive_nothing(self, grace: float = 0.0) -> None:
        """Check that no message is waiting once everything in flight has landed.

        Waits until every other task is blocked (so whatever the hub was doing
        has reached this client), then for ``grace`` more seconds if given
        (for work that waits on a timer).

        Raises:
            AssertionError: a message arrived; it stays in the inbox.
        """
        with anyio.move_on_after(self.timeout):
            await anyio.wait_all_tasks_blocked()
        if not self._inbox and grace > 0:
            with anyio.move_on_after(grace):
                while not self._inbox:
                    await self._arrived.wait()
        if self._inbox:
            raise AssertionError(f"expected nothing, got {self._inbox[0]}")

    async def receive_all(self) -> list[dict[str, Any]]:
        """Every message waiting once everything in flight has landed (maybe none)."""
        with anyio.move_on_after(self.timeout):
            await anyio.wait_all_tasks_blocked()
        messages = list(self._inbox)
        self._inbox.clear()
        return messages

    async def receive_until(self, type: str) -> list[dict[str, Any]]:
        """Messages up to and including the next one of ``type``."""
        seen = []
        with anyio.fail_after(self.timeout):
            while True:
                message = await self._next()
                seen.append(message)
                if message.get("type") == type:
                    return seen

    async def wait_closed(self) -> list[dict[str, Any]]:
        """Read until the connection ends; return the messages read on the way.

        The close code is then :attr:`close_code` and the hub's ``disconnect``
        message :attr:`goodbye`.
        """
        seen = []
        with anyio.fail_after(self.timeout):
            while True:
                try:
                    seen.append(await self._next())
                except ConnectionClosed:
                    return seen

    # -- sending -----------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        """Send one message (a dict) in the client's codec."""
        await self._send_frame(message)

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame as is: text for ``str``, binary for ``bytes`` (malformed input tests)."""
        key = "text" if isinstance(frame, str) else "bytes"
        with anyio.fail_after(self.timeout):
            await self._to_app.send({"type": "websocket.receive", key: frame})

    async def _send_frame(self, message: Mapping[str, Any]) -> None:
        if self.codec == "msgpack":
            await self.send_raw(msgspec.msgpack.encode(message))
        else:
            await self.send_raw(msgspec.json.encode(message).decode())

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send a command with a fresh ``id`` and return its reply.

        Messages that arrive before the reply (publications, events) stay in
        the inbox, in order, for :meth:`receive`.

        Raises:
            CommandFailed: the reply is an ``error``.
        """
        id = next(self._ids)
        await self.send({"type": type, "id": id, **fields})
        with anyio.fail_after(self.timeout):
            while True:
                for index, message in enumerate(self._inbox):
                    if message.get("id") == id and message.get("type") != "message":
                        del self._inbox[index]
                        if message.get("type") == "error":
                            raise CommandFailed(message)
                        return message
                if self._ended:
                    raise ConnectionClosed(self.close_code or 1006, self.goodbye)
                await self._arrived.wait()

    async def subscribe(self, channel: str, **options: Any) -> dict[str, Any]:
        """Subscribe (``recover``, ``history``, ``token`` as options); the ``subscribed`` reply."""
        return await self.request("subscribe", channel=channel, **options)

    async def unsubscribe(self, channel: str) -> dict[str, Any]:
        """Unsubscribe; the ``unsubscribed`` reply."""
        return await self.request("unsubscribe", channel=channel)

    async def publish(self, channel: str, data: Any, **options: Any) -> dict[str, Any]:
        """Publish (``echo``, ``idempotency_key`` as options); the ``ack`` reply."""
        return await self.request("publish", channel=channel, data=data, **options)

    async def history(self, channel: str, **options: Any) -> dict[str, Any]:
        """Read history (``since``, ``limit``, ``reverse`` as options); the ``history`` reply."""
        return await self.request("history", channel=channel, **options)

    async def presence(self, channel: str) -> dict[str, Any]:
        """The ``presence`` reply for ``channel``."""
        return await self.request("presence", channel=channel)

    # -- ending and faults -------------------------------------------------------------------

    async def close(self, code: int = 1000) -> None:
        """Close from the client's side with ``code`` and wait until the hub let go."""
        if not self._ended:
            try:
                with anyio.fail_after(self.timeout):
                    await self._to_app.send({"type": "websocket.disconnect", "code": code})
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            self.thaw()
            with anyio.fail_after(self.timeout):
                while not self._ended:
                    await self._arrived.wait()
            self.close_code = code
        self._to_app.close()

    def drop(self) -> None:
        """Cut the connection abruptly: no close frame; the hub's next send fails.

        The hub sees the peer vanish (``websocket.disconnect`` 1006) and cleans
        up; :attr:`close_code` becomes 1006 and :meth:`receive` raises
        :class:`ConnectionClosed` once the inbox is read.
        """
        self._reader_scope.cancel()
        try:
            self._to_app.send_nowait({"type": "websocket.disconnect", "code": 1006})
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        self._to_app.close()
        self._from_app.close()
        self._end(1006)

    def freeze(self) -> None:
        """Stop reading, like a client whose network stalled: the hub's send queue fills
        up and its slow-consumer policy acts (1013 or dropped messages)."""
        if self._frozen is None:
            self._frozen = anyio.Event()

    def thaw(self) -> None:
        """Read again after :meth:`freeze`: what the hub sent meanwhile arrives in order."""
        frozen, self._frozen = self._frozen, None
        if frozen is not None:
            frozen.set()
