"""Commands out and their replies back: ids, waiters, timeouts, the current socket.

The protocol matches a reply to its command by ``id`` (docs/protocol.md §3).
:class:`Requests` numbers the commands, keeps one waiter per command in flight
and hands it its reply when the reader sees it — in frame order, through the
waiter's ``apply``, so a ``subscribed`` takes effect before the live
publications read after it. It also holds the socket of the session in
progress: a command sent while reconnecting waits for the next one (within the
request timeout), and when a session ends every command still waiting learns
that its connection was lost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TypeVar

import anyio
import httpx
from httpx_ws import AsyncWebSocketSession, HTTPXWSException

from ..messages import Command, Error, ServerMessage
from ._errors import ClientError, ConnectionLost, RequestFailed, RequestTimeout
from ._wire import Wire

__all__ = ["Requests"]

_R = TypeVar("_R", bound=ServerMessage)


class _Waiter:
    """A command waiting for its reply; ``apply`` runs in the reader, in frame order."""

    __slots__ = ("apply", "error", "event", "reply")

    def __init__(self, apply: Callable[[ServerMessage], None] | None) -> None:
        self.apply = apply
        self.event = anyio.Event()
        self.reply: ServerMessage | None = None
        self.error: ClientError | None = None


class Requests:
    """The client's commands in flight on the current session.

    Args:
        wire: the codec commands are encoded in.
        timeout: seconds :meth:`call` waits, connection and reply together.
        check: raises when the client cannot take commands (closed or failed
            for good); called before each command and whenever a wait for a
            connection wakes up.
    """

    def __init__(self, wire: Wire, timeout: float, check: Callable[[], None]) -> None:
        self._wire = wire
        self.timeout = timeout
        self._check = check
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        self.ws: AsyncWebSocketSession | None = None
        """The socket of the session in progress (``None`` between sessions)."""
        self._connected = anyio.Event()

    @property
    def connected(self) -> bool:
        """Whether a session is open right now."""
        return self.ws is not None and self._connected.is_set()

    def check(self) -> None:
        """Raise the reason the client takes no commands, if there is one."""
        self._check()

    # -- the session's side -------------------------------------------------------------------

    def attach(self, ws: AsyncWebSocketSession) -> None:
        """A session was welcomed: commands may use ``ws`` (waiting ones wake at :meth:`open`)."""
        self.ws = ws

    def open(self) -> None:
        """Let the commands waiting for a connection go."""
        self._connected.set()

    def detach(self, error: ClientError) -> None:
        """The session ended: later commands wait for the next, waiting replies fail."""
        self.ws = None
        self._connected = anyio.Event()
        self.fail_pending(error)

    def release(self, error: ClientError) -> None:
        """The client stopped: every command in flight and every waiting one fails."""
        self.fail_pending(error)
        self._connected.set()  # the waiters wake to find the check failing

    def fail_pending(self, error: ClientError) -> None:
        """Fail every command waiting for its reply with ``error``."""
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.error = error
            waiter.event.set()

    def on_reply(self, command_id: int, reply: ServerMessage) -> None:
        """The reader saw the reply to ``command_id``: apply it in place, wake its waiter."""
        waiter = self._pending.pop(command_id, None)
        if waiter is None:
            return
        waiter.reply = reply
        if waiter.apply is not None:
            waiter.apply(reply)
        waiter.event.set()

    # -- the commands' side --------------------------------------------------------------------

    async def call(
        self, build: Callable[[int], Command], expect: type[_R], limit: float | None = None
    ) -> _R:
        """Send a command once connected and wait for its reply, all within the timeout.

        Raises:
            RequestTimeout: no connection and reply within ``limit`` (default: the timeout).
            RequestFailed: the server answered ``error``.
            ConnectionLost: the session ended before the reply came.
            ClientError: a reply of another type than ``expect``.
        """
        limit = self.timeout if limit is None else limit
        try:
            with anyio.fail_after(limit):
                while not self.connected:
                    self._check()
                    await self._connected.wait()
                self._check()
                reply = await self.request(build)
        except TimeoutError:
            raise RequestTimeout(f"no reply within {limit} s") from None
        if not isinstance(reply, expect):
            raise ClientError(f"unexpected reply {type(reply).__name__}")
        return reply

    async def request(
        self, build: Callable[[int], Command], apply: Callable[[ServerMessage], None] | None = None
    ) -> ServerMessage:
        """Send a command on the current session and wait for its reply (no timeout of its own).

        ``build`` makes the command from its id; ``apply`` runs in the reader on the
        reply, before anything read after it.

        Raises:
            ConnectionLost: not connected, or the session ended before the reply came.
            RequestFailed: the server answered ``error``.
        """
        ws = self.ws
        if ws is None:
            raise ConnectionLost("not connected")
        command_id = next(self._ids)
        waiter = _Waiter(apply)
        self._pending[command_id] = waiter
        try:
            await self.send(ws, build(command_id))
            await waiter.event.wait()
        finally:
            self._pending.pop(command_id, None)
        if waiter.error is not None:
            raise waiter.error
        reply = waiter.reply
        if isinstance(reply, Error):
            raise RequestFailed(reply.code, reply.reason)
        assert reply is not None
        return reply

    async def send(self, ws: AsyncWebSocketSession, command: Command) -> None:
        """Send ``command`` on ``ws``; a socket that is gone raises :class:`ConnectionLost`."""
        frame = self._wire.encode(command)
        try:
            if isinstance(frame, str):
                await ws.send_text(frame)
            else:
                await ws.send_bytes(frame)
        except (HTTPXWSException, OSError, httpx.HTTPError, anyio.BrokenResourceError) as exc:
            raise ConnectionLost(f"connection lost while sending: {exc!r}") from None
        except Exception as exc:  # wsproto refuses to send on a closing connection
            if type(exc).__module__.startswith("wsproto"):
                raise ConnectionLost("the connection is closing") from None
            raise
