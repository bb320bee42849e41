"""The client: one supervised WebSocket session at a time, reconnecting and recovering.

Tasks, all in the client's own task group (structured concurrency):

- the **supervisor** (:meth:`Client._run`) connects, serves one session until
  it ends, decides from the close whether to reconnect, sleeps the back-off and
  starts over;
- per session, the **reader** (the supervisor itself, in :meth:`_read`) takes
  every frame in order: it answers ``ping``, hands replies to the waiting
  command and applies ``subscribed`` replies in place, so a subscription's
  replayed publications always come before the live ones that follow them;
- the **syncer** (:meth:`_syncer`) (re)subscribes channels with ``recover``,
  one task per channel so the round trips overlap: all of them after a
  reconnect, one when a gap, an epoch change or a buffer overflow was seen;
- the **refresher** sends ``refresh`` with a token from the provider before the
  connection's token expires.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import msgspec
import wsproto.events
from anyio.abc import TaskGroup
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketUpgradeError,
    aconnect_ws,
)

from ..messages import (
    Ack,
    Command,
    Disconnect,
    Error,
    GetHistory,
    GetPresence,
    History,
    Join,
    Leave,
    Message,
    Ping,
    Pong,
    Position,
    Presence,
    Publish,
    Refresh,
    ServerMessage,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)
from ._errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    ConnectionLost,
    Disconnected,
    RequestFailed,
    RequestTimeout,
)
from ._stream import Verdict, classify
from ._subscription import Subscription
from ._types import Backoff, HistoryResult, TokenProvider, Unrecovered
from ._wire import WIRES, Wire

__all__ = ["Client"]

logger = logging.getLogger("hubbub.client")

# Close codes after which reconnecting cannot help (docs/protocol.md §7); 4401 is
# decided apart (it can help with a token provider).
_FINAL_CLOSES: Final = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1010, 4403})
# Handshake statuses worth retrying: overload, not running, a passing server error.
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_TOKEN_EXPIRED: Final = 4401

_R = TypeVar("_R", bound=ServerMessage)


@dataclass(slots=True)
class _Ending:
    """How one connection attempt ended."""

    code: int | None
    reason: str
    reconnect: bool
    welcomed: bool = False


class _Waiter:
    """A command waiting for its reply; ``apply`` runs in the reader, in frame order."""

    __slots__ = ("apply", "error", "event", "reply")

    def __init__(self, apply: Callable[[ServerMessage], None] | None) -> None:
        self.apply = apply
        self.event = anyio.Event()
        self.reply: ServerMessage | None = None
        self.error: ClientError | None = None


class Client:
    """An async hubbub client that reconnects and recovers on its own.

    Use it as ``async with Client(url, ...) as client:``; the block waits for
    the first ``welcome`` and leaves with the connection closed (1000) and
    every task ended. Works on asyncio and trio (anyio, httpx-ws).

    Args:
        url: the WebSocket endpoint, ``ws://host:port/<prefix>/ws`` (``wss://``,
            ``http://`` and ``https://`` are accepted too).
        token: a connection token (JWT), sent on every connect.
        token_provider: an async callable returning a fresh token; called on
            every connect, and for ``refresh`` before the token expires.
        token_carrier: ``"header"`` (``Authorization: Bearer``, the default) or
            ``"subprotocol"`` (a ``bearer.<jwt>`` entry, as browsers must).
        codec: ``"json"`` (text frames) or ``"msgpack"`` (binary frames).
        backoff: reconnect delays (exponential, full jitter); ``None``: never
            reconnect, a lost connection ends the client with ``Disconnected``.
        request_timeout: seconds a command waits for its reply (including the
            wait for a connection while reconnecting).
        connect_timeout: seconds ``async with`` waits for the first ``welcome``,
            retries included, before raising :class:`ConnectFailed`.
        refresh_margin: refresh the token this many seconds before it expires.
        buffer_size: publications buffered per subscription (see :class:`Subscription`).
        headers: extra handshake headers (e.g. ``Origin``, a cookie).
        params: extra query parameters of the WebSocket URL.

    Raises:
        ValueError: both ``token`` and ``token_provider``, an unknown codec or
            carrier, a URL that is not ws/wss/http/https, or a non-positive limit.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        token_carrier: Literal["header", "subprotocol"] = "header",
        codec: Literal["json", "msgpack"] = "json",
        backoff: Backoff | None = Backoff(),  # noqa: B008 - frozen, so shared safely
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        refresh_margin: float = 30.0,
        buffer_size: int = 1000,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("give token or token_provider, not both")
        if codec not in WIRES:
            raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")
        if token_carrier not in ("header", "subprotocol"):
            raise ValueError("token_carrier must be 'header' or 'subprotocol'")
        if min(request_timeout, connect_timeout, buffer_size) <= 0 or refresh_margin < 0:
            raise ValueError("timeouts and buffer_size must be > 0, refresh_margin >= 0")
        self.url = _http_url(url)
        self._token = token
        self._provider = token_provider
        self._carrier = token_carrier
        self._wire: Wire = WIRES[codec]
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._refresh_margin = refresh_margin
        self._buffer_size = buffer_size
        self._headers = dict(headers or {})
        self._params = dict(params or {})

        self._subs: dict[str, Subscription] = {}
        self._to_sync: dict[str, None] = {}  # ordered set of channels to (re)subscribe
        self._sync_wake = anyio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Waiter] = {}
        # Channels the server subscribed this connection to, with the position it gave.
        self._server_side: dict[str, Position | None] = {}
        self._ws: AsyncWebSocketSession | None = None
        self._connected = anyio.Event()
        self._first = anyio.Event()
        self._session_scope: anyio.CancelScope | None = None
        self._stack: AsyncExitStack | None = None
        self._running = False
        self._entered = False
        self._failure: ClientError | None = None
        self._last_error = "not connected yet"
        self._expires: int | None = None
        self.welcome: Welcome | None = None
        """The ``welcome`` of the current (or last) connection."""
        self.connections = 0
        """Connections that reached ``welcome`` (1 + the number of reconnects)."""
        self.gaps = 0
        """Gaps, epoch changes and buffer overflows seen while connected (each one recovered)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self._entered:
            raise RuntimeError("a Client can be entered only once")
        self._entered = True
        stack = AsyncExitStack()
        try:
            http = await stack.enter_async_context(httpx.AsyncClient())
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs first: stop the tasks, then leave
            self._running = True
            tg.start_soon(self._run, http)
            with anyio.move_on_after(self._connect_timeout):
                await self._first.wait()
        except BaseException:
            self._running = False
            await stack.aclose()
            raise
        if self.welcome is None:
            # Leave the task group cleanly first: raising inside it would wrap the error.
            self._running = False
            await stack.aclose()
            failure = self._failure
            if isinstance(failure, ConnectFailed):
                raise failure
            if isinstance(failure, Disconnected):
                raise ConnectFailed(failure.reason, failure.code)
            raise ConnectFailed(
                f"no connection within {self._connect_timeout} s: {self._last_error}"
            )
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (1000) and end every task and subscription."""
        stack, self._stack = self._stack, None
        self._running = False
        if stack is not None:
            await stack.aclose()
        closed = ClientClosed("the client is closed")
        for sub in list(self._subs.values()):
            sub.finish(self._failure)
        self._subs.clear()
        self._fail_pending(closed)
        if self._failure is None:
            self._failure = closed
        self._connected.set()

    @property
    def connected(self) -> bool:
        """Whether a session is open right now."""
        return self._ws is not None and self._connected.is_set()

    @property
    def client_id(self) -> str | None:
        """This connection's client id (from ``welcome``)."""
        return None if self.welcome is None else self.welcome.client

    @property
    def expires(self) -> int | None:
        """When the connection's token expires (unix seconds; updated by ``refresh``)."""
        return self._expires

    @property
    def failure(self) -> ClientError | None:
        """Why the client stopped, once it has (``None`` while it runs)."""
        return self._failure

    # -- the application's commands ----------------------------------------------------------

    def subscribe(
        self, channel: str, *, history: int | None = None, token: str | None = None
    ) -> Subscription:
        """A subscription to ``channel``, active inside ``async with``.

        Args:
            channel: the channel name.
            history: on the first subscribe, also deliver the last ``history``
                kept publications (ignored when recovering).
            token: a channel token for a namespace that otherwise forbids it.

        Entering raises :class:`RequestFailed` (403 not allowed, 404 unknown
        namespace, 409 already subscribed, 429 too many channels, ...) or
        :class:`RequestTimeout`.
        """
        return Subscription(
            self, channel, history=history, token=token, buffer_size=self._buffer_size
        )

    async def unsubscribe(self, channel: str) -> None:
        """End this client's subscription to ``channel`` (nothing if there is none)."""
        sub = self._subs.get(channel)
        if sub is not None:
            await self._close_subscription(sub)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        echo: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Position | None:
        """Publish ``data``; returns its position where the channel keeps history.

        A publish that fails with :class:`ConnectionLost` or :class:`RequestTimeout`
        may have been executed: give an ``idempotency_key`` to retry safely.
        """
        raw = self._wire.raw(data)
        ack = await self._call(
            lambda id: Publish(
                channel=channel, data=raw, id=id, echo=echo, idempotency_key=idempotency_key
            ),
            Ack,
        )
        if ack.offset is None or ack.epoch is None:
            return None
        sub = self._subs.get(channel)
        if sub is not None:
            sub.own_publication(ack.offset, ack.epoch)
        return Position(offset=ack.offset, epoch=ack.epoch)

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """Kept publications of ``channel``: the newest ``limit``, or the first after ``since``.

        A ``since`` under another epoch raises :class:`RequestFailed` with code 410.
        """
        reply = await self._call(
            lambda id: GetHistory(
                channel=channel, id=id, limit=limit, since=since, reverse=reverse
            ),
            History,
        )
        position = None
        if reply.offset is not None and reply.epoch is not None:
            position = Position(offset=reply.offset, epoch=reply.epoch)
        publications = [self._wire.publication(m) for m in reply.publications]
        return HistoryResult(channel=reply.channel, publications=publications, position=position)

    async def presence(self, channel: str) -> Presence:
        """Who is subscribed to ``channel`` (``clients`` by client id, ``users`` count)."""
        return await self._call(lambda id: GetPresence(channel=channel, id=id), Presence)

    async def refresh(self, token: str | None = None) -> None:
        """Send ``refresh`` with ``token`` (default: a new one from the token provider)."""
        if token is None:
            if self._provider is None:
                raise ValueError("refresh() needs a token when there is no token_provider")
            token = await self._provider()
        new = token
        ack = await self._call(lambda id: Refresh(token=new, id=id), Ack)
        if self._provider is None:
            self._token = new  # used on the next reconnect too
        self._expires = ack.expires

    # -- requests ----------------------------------------------------------------------------

    async def _call(
        self, build: Callable[[int], Command], expect: type[_R], limit: float | None = None
    ) -> _R:
        """Send a command once connected and wait for its reply, all within the timeout."""
        limit = self._request_timeout if limit is None else limit
        try:
            with anyio.fail_after(limit):
                while not self.connected:
                    self._check_running()
                    await self._connected.wait()
                self._check_running()
                reply = await self._request(build)
        except TimeoutError:
            raise RequestTimeout(f"no reply within {limit} s") from None
        if not isinstance(reply, expect):
            raise ClientError(f"unexpected reply {type(reply).__name__}")
        return reply

    def _check_running(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._running:
            raise ClientClosed("the client is not running (use `async with Client(...)`)")

    async def _request(
        self, build: Callable[[int], Command], apply: Callable[[ServerMessage], None] | None = None
    ) -> ServerMessage:
        ws = self._ws
        if ws is None:
            raise ConnectionLost("not connected")
        command_id = next(self._ids)
        waiter = _Waiter(apply)
        self._pending[command_id] = waiter
        try:
            await self._send(ws, build(command_id))
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

    async def _send(self, ws: AsyncWebSocketSession, command: Command) -> None:
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

    def _fail_pending(self, error: ClientError) -> None:
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.error = error
            waiter.event.set()

    def _fail(self, error: ClientError) -> None:
        """The session ended for good: every subscription and command learns why."""
        if self._failure is None:
            self._failure = error
        for sub in list(self._subs.values()):
            sub.finish(error)
        self._fail_pending(error)
        self._connected.set()
        self._first.set()

    # -- subscriptions -----------------------------------------------------------------------

    async def _open(self, sub: Subscription) -> None:
        self._check_running()
        if sub.channel in self._subs:
            # The server would answer 409 (one subscription per channel and
            # connection): refuse the same way without a round trip.
            raise RequestFailed(409, f"already subscribed to {sub.channel!r}")
        self._subs[sub.channel] = sub
        self._resync(sub)
        with anyio.move_on_after(self._request_timeout):
            await sub.ready.wait()
        if sub.ready.is_set() and sub.error is None:
            return
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        error = sub.error
        sub.finish(error)
        if error is None:
            raise RequestTimeout(f"no subscribed reply within {self._request_timeout} s")
        raise error

    async def _close_subscription(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is not sub:
            sub.finish()
            return
        del self._subs[sub.channel]
        self._to_sync.pop(sub.channel, None)
        # A subscribe may be in flight: the unsubscribe follows it in command order.
        held = sub.held or sub.syncing
        sub.finish()
        if held and self.connected:
            with contextlib.suppress(ClientError):
                await self._call(lambda id: Unsubscribe(channel=sub.channel, id=id), Unsubscribed)

    def _resync(self, sub: Subscription) -> None:
        """(Re)subscribe ``sub`` with ``recover``; its live messages wait meanwhile."""
        if self._subs.get(sub.channel) is not sub or sub.closed:
            return
        if sub.first_done and not sub.syncing:
            self.gaps += 1
        sub.overflowed = False
        sub.syncing = True
        sub.attempts += 1
        self._to_sync[sub.channel] = None
        self._sync_wake.set()

    async def _syncer(self, tg: TaskGroup) -> None:
        """Start a (re)subscription per queued channel: overlapping, one at a time per channel."""
        while True:
            for channel in list(self._to_sync):
                sub = self._subs.get(channel)
                if sub is None:
                    del self._to_sync[channel]
                elif not sub.in_sync:  # else it stays queued; its task wakes us when done
                    del self._to_sync[channel]
                    sub.in_sync = True
                    tg.start_soon(self._sync_task, sub)
            self._sync_wake = anyio.Event()
            await self._sync_wake.wait()

    async def _sync_task(self, sub: Subscription) -> None:
        try:
            if sub.attempts > 2:
                # Recovering again and again without progress: something is wrong upstream;
                # do not hammer the server meanwhile.
                await anyio.sleep((self._backoff or Backoff()).delay(sub.attempts))
            await self._sync(sub)
        finally:
            sub.in_sync = False
            if sub.channel in self._to_sync:
                self._sync_wake.set()

    async def _sync(self, sub: Subscription) -> None:
        recover = sub.position if sub.first_done else None
        if sub.channel in self._server_side:
            sub.held = sub.server_side = True
        try:
            if sub.held and not sub.server_side:
                # A client-made subscription cannot be re-asked (409): leave it first.
                with contextlib.suppress(RequestFailed):
                    with anyio.fail_after(self._request_timeout):
                        await self._request(lambda id: Unsubscribe(channel=sub.channel, id=id))
                sub.held = False
            if sub.held and recover is None:
                # Server-made and never positioned: start from where the server put it.
                recover = self._server_side.get(sub.channel)
                if recover is None:  # no history: nothing to ask, it is live already
                    self._apply_subscribed(
                        sub, Subscribed(channel=sub.channel, publications=[]), None
                    )
                    return

            asked = recover

            def apply(reply: ServerMessage) -> None:
                if isinstance(reply, Subscribed):
                    self._apply_subscribed(sub, reply, asked)

            with anyio.fail_after(self._request_timeout):
                await self._request(
                    lambda id: Subscribe(
                        channel=sub.channel,
                        id=id,
                        recover=asked,
                        history=None if asked is not None or sub.first_done else sub.history,
                        token=sub.token,
                    ),
                    apply,
                )
        except RequestFailed as exc:
            if exc.code == 409 and sub.channel in self._server_side:
                # The server subscribed us meanwhile (its `subscribed` came before this 409):
                # ask again, now as a server-made subscription.
                self._resync(sub)
                return
            if exc.code in (429, 503) and sub.first_done:
                # Not executed; try again after a pause (the session goes on meanwhile).
                await anyio.sleep(self._retry_delay())
                self._resync(sub)
                return
            logger.warning("subscribe %s refused: %s", sub.channel, exc)
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]
            sub.finish(exc)
        except TimeoutError:
            # The reply may still come, to nobody: only a new session is sure to be clean.
            logger.warning("no reply to subscribe %s: reconnecting", sub.channel)
            self._abort_session()
        except ConnectionLost:
            pass  # the next session resubscribes everything

    def _apply_subscribed(
        self, sub: Subscription, reply: Subscribed, asked: Position | None
    ) -> None:
        """Take a ``subscribed`` in frame order: replayed publications, then held live ones."""
        if self._subs.get(sub.channel) is not sub:
            return
        top = _position(reply)
        sub.held = True
        sub.overflowed = False
        if asked is not None and not reply.recovered:
            if sub.first_done:  # else the position was the server's, not one the app had seen
                sub.push(Unrecovered(channel=sub.channel, previous=asked, position=top), force=True)
            sub.position = top
        elif asked is not None:
            sub.position = asked
            for message in reply.publications:
                self._accept(sub, message, replay=True)
        else:
            for message in reply.publications:
                if sub.overflowed:
                    break
                self._deliver(sub, message)
            if not sub.overflowed:
                sub.position = top
        sub.first_done = True
        sub.ready.set()
        if sub.channel in self._to_sync:
            return  # the replay itself had a hole: keep holding live messages for the next try
        sub.syncing = False
        backlog, sub.backlog = sub.backlog, []
        for message in backlog:
            if sub.syncing:
                sub.backlog.append(message)
            else:
                self._accept(sub, message)

    def _accept(self, sub: Subscription, message: Message, *, replay: bool = False) -> None:
        """A publication for a positioned subscription: deliver, drop a duplicate, or recover."""
        verdict = classify(sub.position, message)
        if verdict is Verdict.DUPLICATE:
            return
        if sub.overflowed and message.offset is not None:
            return  # recovered from history once the application has caught up
        if verdict is Verdict.GAP and sub.explains(message):
            verdict = Verdict.DELIVER  # the hole is our own publications, not echoed to us
        if verdict is Verdict.GAP:
            logger.info(
                "%s: %s at offset %s (epoch %s) after %s: recovering",
                sub.channel,
                "gap" if replay else "gap or new epoch",
                message.offset,
                message.epoch,
                sub.position,
            )
            self._resync(sub)
            sub.backlog.append(message)
            return
        self._deliver(sub, message)

    def _deliver(self, sub: Subscription, message: Message) -> None:
        if not sub.push(self._wire.publication(message)):
            if message.offset is None:
                sub.dropped += 1
            else:
                sub.overflowed = True
            return
        sub.attempts = 0
        if message.offset is not None and message.epoch is not None:
            sub.position = Position(offset=message.offset, epoch=message.epoch)

    # -- the session -------------------------------------------------------------------------

    async def _run(self, http: httpx.AsyncClient) -> None:
        """Connect, serve, decide, back off, again: until a final close or aclose()."""
        attempt = 0
        refused_401 = False
        while True:
            ending = await self._connect_once(http, refused_401)
            refused_401 = ending.code == 401 and not ending.welcomed
            if ending.welcomed:
                attempt = 0
            if self._backoff is None or not ending.reconnect:
                self._fail(Disconnected(ending.code, ending.reason))
                return
            if self._backoff.max_attempts is not None and attempt >= self._backoff.max_attempts:
                self._fail(
                    Disconnected(ending.code, f"gave up after {attempt} attempts: {ending.reason}")
                )
                return
            delay = self._backoff.delay(attempt)
            attempt += 1
            logger.info("reconnecting in %.2f s (%s)", delay, ending.reason)
            await anyio.sleep(delay)

    def _retry_delay(self) -> float:
        return (self._backoff or Backoff()).delay(2)

    async def _connect_once(self, http: httpx.AsyncClient, refused_401: bool) -> _Ending:
        try:
            token = self._token if self._provider is None else await self._provider()
        except Exception as exc:
            self._last_error = f"token provider failed: {exc!r}"
            return _Ending(None, self._last_error, reconnect=True)
        headers = dict(self._headers)
        subprotocols = [self._wire.codec.subprotocol]
        if token is not None:
            if self._carrier == "header":
                headers["Authorization"] = f"Bearer {token}"
            else:
                subprotocols.append(f"bearer.{token}")
        try:
            async with aconnect_ws(
                self.url,
                http,
                subprotocols=subprotocols,
                headers=headers,
                params=self._params,
                # hubbub's liveness is its own ping/pong; the library's pings would only add noise.
                keepalive_ping_interval_seconds=None,
                max_message_size_bytes=1 << 20,
                session_class=AsyncWebSocketSession,
            ) as ws:
                return await self._serve(ws)
        except WebSocketUpgradeError as exc:
            status = exc.response.status_code
            self._last_error = f"handshake refused: {status} {exc.response.reason_phrase}"
            retry = status in _RETRY_STATUSES or (
                status == 401 and self._provider is not None and not refused_401
            )
            if not retry and self.welcome is None:
                self._fail(ConnectFailed(self._last_error, status))
            return _Ending(status, self._last_error, reconnect=retry)
        except Exception as exc:  # httpx/httpcore/OS errors, possibly in an ExceptionGroup
            self._last_error = f"connection failed: {exc!r}"
            logger.info("connection failed", exc_info=True)
            return _Ending(None, self._last_error, reconnect=True)

    async def _serve(self, ws: AsyncWebSocketSession) -> _Ending:
        chosen = ws.subprotocol
        if chosen != self._wire.codec.subprotocol:
            return _Ending(1002, f"the server chose subprotocol {chosen!r}", reconnect=False)
        try:
            with anyio.fail_after(self._connect_timeout):
                first = self._wire.decode(_payload(await ws.receive()))
        except (HTTPXWSException, TimeoutError, msgspec.DecodeError, ValueError) as exc:
            code = exc.code if isinstance(exc, WebSocketDisconnect) else None
            self._last_error = f"no welcome: {exc!r}"
            reconnect = code is None or code not in _FINAL_CLOSES
            return _Ending(code, self._last_error, reconnect=reconnect)
        if not isinstance(first, Welcome):
            return _Ending(None, f"expected welcome, got {type(first).__name__}", reconnect=True)
        self.welcome = first
        self._expires = first.expires
        self.connections += 1
        server_side = self._server_side = {s.channel: _position(s) for s in first.subscribed}
        for sub in self._subs.values():
            sub.held = sub.channel in server_side
            sub.server_side = sub.held
            sub.syncing = True
            sub.backlog = []
            self._to_sync[sub.channel] = None
        self._ws = ws
        self._sync_wake.set()
        ending = _Ending(None, "connection lost", reconnect=True, welcomed=True)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._syncer, tg)
                if self._provider is not None:
                    tg.start_soon(self._refresher)
                self._connected.set()
                self._first.set()
                with anyio.CancelScope() as scope:
                    self._session_scope = scope
                    await self._read(ws, first, ending)
                tg.cancel_scope.cancel()
        finally:
            self._ws = None
            self._session_scope = None
            self._connected = anyio.Event()
            self._fail_pending(ConnectionLost(f"connection lost: {ending.reason}"))
        return ending

    def _abort_session(self) -> None:
        if self._session_scope is not None:
            self._session_scope.cancel()

    async def _read(self, ws: AsyncWebSocketSession, welcome: Welcome, ending: _Ending) -> None:
        """Read frames in order until the connection ends; fill in ``ending``."""
        # The server pings every `ping` seconds: silence beyond ping + pong_timeout means the
        # path is dead even if TCP has not noticed (a half-open connection).
        idle = welcome.ping + welcome.pong_timeout
        said: Disconnect | None = None
        while True:
            try:
                event = await ws.receive(timeout=idle)
            except WebSocketDisconnect as exc:
                ending.code = exc.code
                ending.reason = exc.reason or f"closed {exc.code}"
                ending.reconnect = exc.code not in _FINAL_CLOSES
                self._conclude(ending, said)
                return
            except TimeoutError:
                ending.reason = f"nothing received for {idle} s"
                self._conclude(ending, said)
                return
            except (HTTPXWSException, OSError) as exc:
                # Also where the server gave up on a close handshake after `disconnect`.
                ending.reason = f"connection lost: {exc!r}"
                self._conclude(ending, said)
                return
            if not isinstance(event, wsproto.events.Message):
                continue
            try:
                message = self._wire.decode(_payload(event))
            except (msgspec.DecodeError, ValueError) as exc:
                # A newer server's message type, or garbage: skip it, keep the session.
                logger.warning("ignoring a frame the client cannot decode: %s", exc)
                continue
            if isinstance(message, Message):
                self._on_message(message)
            elif isinstance(message, Ping):
                with contextlib.suppress(ConnectionLost):
                    await self._send(ws, Pong())
            elif isinstance(message, Join | Leave):
                sub = self._subs.get(message.channel)
                if sub is not None and not sub.push(self._wire.presence_event(message)):
                    sub.dropped += 1
            elif isinstance(message, Disconnect):
                said = message
            elif isinstance(message, Subscribed | Unsubscribed) and message.id is None:
                self._on_server_subscription(message)
            elif isinstance(message, Welcome):
                continue
            elif message.id is not None:
                self._on_reply(message.id, message)
            elif isinstance(message, Error):
                logger.warning("server error %d: %s", message.code, message.reason)

    def _conclude(self, ending: _Ending, said: Disconnect | None) -> None:
        """The server's ``disconnect`` (if one came) decides, whatever closed the socket."""
        if said is not None:
            ending.code, ending.reason, ending.reconnect = said.code, said.reason, said.reconnect
        if ending.code == _TOKEN_EXPIRED:
            ending.reconnect = self._provider is not None  # with a new token only

    def _on_reply(self, command_id: int, reply: ServerMessage) -> None:
        waiter = self._pending.pop(command_id, None)
        if waiter is None:
            return
        waiter.reply = reply
        if waiter.apply is not None:
            waiter.apply(reply)
        waiter.event.set()

    def _on_message(self, message: Message) -> None:
        sub = self._subs.get(message.channel)
        if sub is None or sub.closed:
            return
        if sub.syncing:
            # Held until its `subscribed` arrives; bounded: what is cut off is recovered.
            if len(sub.backlog) < self._buffer_size:
                sub.backlog.append(message)
            return
        self._accept(sub, message)

    def _on_server_subscription(self, message: Subscribed | Unsubscribed) -> None:
        if isinstance(message, Unsubscribed):
            self._server_side.pop(message.channel, None)
        else:
            self._server_side[message.channel] = _position(message)
        sub = self._subs.get(message.channel)
        if sub is None:
            return
        if isinstance(message, Unsubscribed):
            # The server removed it (API unsubscribe, permission change): the iterator ends.
            del self._subs[message.channel]
            sub.held = False
            sub.finish()
        else:
            sub.held = True
            sub.server_side = True

    async def _refresher(self) -> None:
        """Refresh the token from the provider ahead of its expiry (only with a provider)."""
        tried: int | None = None  # the expiry a refresh was last tried for
        while True:
            expires = self._expires
            if expires is None:
                return
            left = expires - time.time()
            delay = max(left - self._refresh_margin, left / 2, 0.0)
            if expires == tried:
                delay = max(delay, 1.0)  # that try did not extend it: once a second at most
            await anyio.sleep(delay)
            if self._expires != expires:
                continue
            tried = expires
            try:
                await self.refresh()
            except RequestFailed as exc:
                logger.warning("token refresh refused: %s", exc)
                if exc.code == 403:
                    return  # refresh not enabled, or another user: the close will tell
            except ClientError as exc:
                logger.info("token refresh failed: %s", exc)
            except Exception as exc:
                logger.warning("token provider failed: %r", exc)


def _position(subscribed: Subscribed) -> Position | None:
    if subscribed.offset is None or subscribed.epoch is None:
        return None
    return Position(offset=subscribed.offset, epoch=subscribed.epoch)


def _payload(event: wsproto.events.Event) -> str | bytes:
    if isinstance(event, wsproto.events.TextMessage | wsproto.events.BytesMessage):
        data = event.data
        return bytes(data) if isinstance(data, bytearray) else data
    raise ValueError(f"unexpected event {type(event).__name__}")


def _http_url(url: str) -> str:
    """httpx speaks http(s): ``ws://`` becomes ``http://`` and ``wss://`` ``https://``."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    return urlunsplit((scheme, *parts[1:]))
