"""The client: the public façade over one supervised WebSocket session at a time.

:class:`Client` owns the lifecycle (``async with``), the application's
commands and the session loop with its close-code policy; command/reply
matching lives in ``_requests`` and the subscriptions with their recovery in
``_registry``, both driven from here.

Tasks, all in the client's own task group (structured concurrency):

- the **supervisor** (:meth:`Client._run`) connects, serves one session until
  it ends, decides from the close whether to reconnect, sleeps the back-off and
  starts over;
- per session, the **reader** (the supervisor itself, in :meth:`_read`) takes
  every frame in order: it answers ``ping``, hands replies to the waiting
  command and applies ``subscribed`` replies in place, so a subscription's
  replayed publications always come before the live ones that follow them;
- the **syncer** (``Subscriptions.syncer``) (re)subscribes channels with
  ``recover``, one task per channel so the round trips overlap: all of them
  after a reconnect, one when a gap, an epoch change or a buffer overflow was seen;
- the **refresher** sends ``refresh`` with a token from the provider before the
  connection's token expires.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import msgspec
import wsproto.events
from httpx_ws import (
    AsyncWebSocketSession,
    HTTPXWSException,
    WebSocketDisconnect,
    WebSocketUpgradeError,
    aconnect_ws,
)

from ..messages import (
    Ack,
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
    Subscribed,
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
)
from ._registry import Subscriptions, subscribed_position
from ._requests import Requests
from ._subscription import Subscription
from ._types import Backoff, HistoryResult, TokenProvider
from ._wire import WIRES, Wire

__all__ = ["Client"]

logger = logging.getLogger("hubbub.client")

# Close codes after which reconnecting cannot help (docs/protocol.md §7); 4401 is
# decided apart (it can help with a token provider).
_FINAL_CLOSES: Final = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1010, 4403})
# Handshake statuses worth retrying: overload, not running, a passing server error.
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_TOKEN_EXPIRED: Final = 4401


@dataclass(slots=True)
class _Ending:
    """How one connection attempt ended."""

    code: int | None
    reason: str
    reconnect: bool
    welcomed: bool = False


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
        if params and "batch" in params:
            # A batched frame carries several messages; this client reads one per frame.
            raise ValueError("the client reads one message per frame: leave out batch")
        self.url = _http_url(url)
        self._token = token
        self._provider = token_provider
        self._carrier = token_carrier
        self._wire: Wire = WIRES[codec]
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._refresh_margin = refresh_margin
        self._buffer_size = buffer_size
        self._headers = dict(headers or {})
        self._params = dict(params or {})

        self._requests = Requests(self._wire, request_timeout, self._check_running)
        self._subscriptions = Subscriptions(
            self._requests,
            self._wire,
            backoff=backoff,
            buffer_size=buffer_size,
            abort_session=self._abort_session,
        )
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
        self._subscriptions.finish_all(self._failure)
        self._subscriptions.clear()
        if self._failure is None:
            self._failure = closed
        self._requests.release(closed)

    @property
    def connected(self) -> bool:
        """Whether a session is open right now."""
        return self._requests.connected

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

    @property
    def gaps(self) -> int:
        """Gaps, epoch changes and buffer overflows seen while connected (each one recovered)."""
        return self._subscriptions.gaps

    @gaps.setter
    def gaps(self, value: int) -> None:
        self._subscriptions.gaps = value

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
            self._subscriptions,
            channel,
            history=history,
            token=token,
            buffer_size=self._buffer_size,
        )

    async def unsubscribe(self, channel: str) -> None:
        """End this client's subscription to ``channel`` (nothing if there is none)."""
        sub = self._subscriptions.get(channel)
        if sub is not None:
            await self._subscriptions.close(sub)

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
        ack = await self._requests.call(
            lambda id: Publish(
                channel=channel, data=raw, id=id, echo=echo, idempotency_key=idempotency_key
            ),
            Ack,
        )
        if ack.offset is None or ack.epoch is None:
            return None
        position = Position(offset=ack.offset, epoch=ack.epoch)
        self._subscriptions.own_publication(channel, position)
        return position

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
        reply = await self._requests.call(
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
        return await self._requests.call(lambda id: GetPresence(channel=channel, id=id), Presence)

    async def refresh(self, token: str | None = None) -> None:
        """Send ``refresh`` with ``token`` (default: a new one from the token provider)."""
        if token is None:
            if self._provider is None:
                raise ValueError("refresh() needs a token when there is no token_provider")
            token = await self._provider()
        new = token
        ack = await self._requests.call(lambda id: Refresh(token=new, id=id), Ack)
        if self._provider is None:
            self._token = new  # used on the next reconnect too
        self._expires = ack.expires

    # -- the client's state -------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._running:
            raise ClientClosed("the client is not running (use `async with Client(...)`)")

    def _fail(self, error: ClientError) -> None:
        """The session ended for good: every subscription and command learns why."""
        if self._failure is None:
            self._failure = error
        self._subscriptions.finish_all(error)
        self._requests.release(error)
        self._first.set()

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
            untrusted = _untrusted_certificate(exc)
            if untrusted is not None and self.welcome is None:
                # Retrying cannot make a certificate trusted: say so now. Once connected,
                # a reconnect keeps trying (a certificate may be renewed meanwhile).
                self._last_error = (
                    f"the server's TLS certificate is not trusted ({untrusted}); name its CA "
                    "with SSL_CERT_FILE, or pass an httpx client that trusts it"
                )
                self._fail(ConnectFailed(self._last_error))
                return _Ending(None, self._last_error, reconnect=False)
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
        self._subscriptions.begin({s.channel: subscribed_position(s) for s in first.subscribed})
        self._requests.attach(ws)
        self._subscriptions.wake()
        ending = _Ending(None, "connection lost", reconnect=True, welcomed=True)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._subscriptions.syncer, tg)
                if self._provider is not None:
                    tg.start_soon(self._refresher)
                self._requests.open()
                self._first.set()
                with anyio.CancelScope() as scope:
                    self._session_scope = scope
                    await self._read(ws, first, ending)
                tg.cancel_scope.cancel()
        finally:
            self._session_scope = None
            self._requests.detach(ConnectionLost(f"connection lost: {ending.reason}"))
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
                self._subscriptions.on_message(message)
            elif isinstance(message, Ping):
                with contextlib.suppress(ConnectionLost):
                    await self._requests.send(ws, Pong())
            elif isinstance(message, Join | Leave):
                self._subscriptions.on_presence(message)
            elif isinstance(message, Disconnect):
                said = message
            elif isinstance(message, Subscribed | Unsubscribed) and message.id is None:
                self._subscriptions.on_server_subscription(message)
            elif isinstance(message, Welcome):
                continue
            elif message.id is not None:
                self._requests.on_reply(message.id, message)
            elif isinstance(message, Error):
                logger.warning("server error %d: %s", message.code, message.reason)

    def _conclude(self, ending: _Ending, said: Disconnect | None) -> None:
        """The server's ``disconnect`` (if one came) decides, whatever closed the socket."""
        if said is not None:
            ending.code, ending.reason, ending.reconnect = said.code, said.reason, said.reconnect
        if ending.code == _TOKEN_EXPIRED:
            ending.reconnect = self._provider is not None  # with a new token only

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


def _untrusted_certificate(exc: BaseException) -> str | None:
    """The verification error behind a failed TLS handshake, if that is what failed.

    httpx and httpcore wrap it (``raise ... from``), possibly inside an
    exception group: the whole chain is searched.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return current.verify_message or str(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None
