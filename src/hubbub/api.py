"""``HubAPI``: the server HTTP API (PROTOCOL §8) for backends in any language.

Every request carries ``Authorization: apikey <key>``; the key is compared in
constant time against every configured key (several keys allow rotation).
Without any key the API is off and answers 404 to everything. Bodies are JSON,
decoded by msgspec and limited in size; every error is JSON ``{code, reason}``
with the matching HTTP status.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Raw, Struct

from ._connection import Receive, Scope, SendCallable, deny
from ._errors import (
    AuthenticationFailed,
    HubbubError,
    HubNotRunning,
    InvalidMessage,
    MessageTooLarge,
    NotFound,
)
from .chat import Notification
from .hub import MAX_HISTORY_LIMIT, Hub, _message
from .messages import JSON
from .protocol import KICKED

__all__ = ["DEFAULT_MAX_BODY", "HubAPI"]

DEFAULT_MAX_BODY: Final = 64 * 1024
"""The default largest request body, in bytes."""

_JSON_TYPE: Final = b"application/json"
_MAX_BROADCAST: Final = 1000


class _Publish(Struct):
    channel: str
    data: Raw
    idempotency_key: str | None = None


class _Broadcast(Struct):
    channels: Annotated[list[str], Meta(min_length=1, max_length=_MAX_BROADCAST)]
    data: Raw


class _Notify(Struct):
    user: str
    notification: Notification


class _Disconnect(Struct):
    user: str
    code: int = KICKED
    reason: str = "disconnected by the server"


class _UserChannel(Struct):
    user: str
    channel: str


class _MethodNotAllowed(HubbubError):
    code = 405
    http_status = 405
    default_reason = "method not allowed"


_Handler = Callable[["HubAPI", Any], Awaitable[dict[str, Any]]]


def _allowed_close_code(code: int) -> bool:
    return code in (1000, 1001, 1008, 1011, 1012, 1013) or 3000 <= code <= 4999


class HubAPI:
    """Serves the server HTTP API of a hub over ASGI (mount it at ``<prefix>/api``).

    Args:
        hub: the hub the API acts on.
        keys: the accepted API keys (printable ASCII, no spaces); none turns the
            API off (every request answers 404).
        max_body: the largest request body in bytes (413 above).
    """

    def __init__(
        self, hub: Hub, *, keys: Iterable[str] = (), max_body: int = DEFAULT_MAX_BODY
    ) -> None:
        if not isinstance(hub, Hub):
            raise TypeError("HubAPI needs a hubbub.Hub")
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be an iterable of strings, not a single string")
        accepted: list[bytes] = []
        for key in keys:
            if not isinstance(key, str):
                raise TypeError("every API key must be a str")
            if not key or not key.isascii() or not key.isprintable() or " " in key:
                raise ValueError("an API key must be non-empty printable ASCII without spaces")
            accepted.append(key.encode())
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError("max_body must be a positive integer")
        self.hub = hub
        self.max_body = max_body
        self._keys = tuple(accepted)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (without one the API answers 404)."""
        return bool(self._keys)

    async def __call__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        from .app import route_path

        if scope["type"] == "http":
            await self.handle(route_path(scope).lstrip("/"), scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()
            await deny(scope, send, NotFound("no WebSocket endpoint here"))

    async def handle(
        self, endpoint: str, scope: Scope, receive: Receive, send: SendCallable
    ) -> None:
        """Answer one HTTP request for ``endpoint`` (the path after ``api/``)."""
        headers: list[tuple[bytes, bytes]] = []
        try:
            if not self._keys:
                raise NotFound("not found")
            self._authenticate(scope)
            route = _ROUTES.get(endpoint)
            if route is None:
                raise NotFound(f"no API endpoint {endpoint!r}")
            method, handler, body_type = route
            if scope.get("method", "GET") != method:
                headers.append((b"allow", method.encode()))
                raise _MethodNotAllowed(f"use {method} for {endpoint}")
            if body_type is None:
                argument: Any = _query(scope)
            else:
                argument = _decode(await self._read_body(scope, receive), body_type)
            if not self.hub.running:
                raise HubNotRunning()
            result = await handler(self, argument)
        except HubbubError as exc:
            if isinstance(exc, AuthenticationFailed):
                headers.append((b"www-authenticate", b"apikey"))
            error = {"code": exc.http_status, "reason": exc.reason}
            await _respond(send, exc.http_status, msgspec.json.encode(error), headers)
            return
        await _respond(send, 200, msgspec.json.encode(result), headers)

    def _authenticate(self, scope: Scope) -> None:
        given: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                scheme, _, rest = bytes(value).strip().partition(b" ")
                if scheme.lower() == b"apikey":
                    given = rest.strip()
                break
        if not given:
            raise AuthenticationFailed("send Authorization: apikey <key>")
        # Compare with every key, never stopping early: the time taken does not
        # tell which key (or how much of one) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise AuthenticationFailed("wrong API key")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise InvalidMessage("invalid Content-Length") from None
                if declared > self.max_body:
                    raise MessageTooLarge(f"the body is over {self.max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise InvalidMessage("the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise MessageTooLarge(f"the body is over {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    # -- endpoints -------------------------------------------------------------------------

    async def _publish(self, request: _Publish) -> dict[str, Any]:
        position = await self.hub.publish(
            request.channel, json=bytes(request.data), idempotency_key=request.idempotency_key
        )
        return {} if position is None else {"offset": position.offset, "epoch": position.epoch}

    async def _broadcast(self, request: _Broadcast) -> dict[str, Any]:
        data = bytes(request.data)
        results: list[dict[str, Any]] = []
        for channel in request.channels:
            try:
                position = await self.hub.publish(channel, json=data)
            except HubbubError as exc:
                results.append(
                    {"channel": channel, "error": {"code": exc.code, "reason": exc.reason}}
                )
                continue
            result: dict[str, Any] = {"channel": channel}
            if position is not None:
                result.update(offset=position.offset, epoch=position.epoch)
            results.append(result)
        return {"results": results}

    async def _notify(self, request: _Notify) -> dict[str, Any]:
        position = await self.hub.notify(request.user, request.notification)
        return {} if position is None else {"offset": position.offset, "epoch": position.epoch}

    async def _disconnect(self, request: _Disconnect) -> dict[str, Any]:
        if not request.user:
            raise InvalidMessage("disconnect needs a user id")
        if not _allowed_close_code(request.code):
            raise InvalidMessage("code must be 1000, 1001, 1008, 1011-1013 or 3000-4999")
        if len(request.reason.encode()) > 120:
            raise InvalidMessage("reason must be at most 120 bytes of UTF-8")
        closed = await self.hub.disconnect(request.user, request.reason, code=request.code)
        return {"disconnected": closed}

    async def _subscribe(self, request: _UserChannel) -> dict[str, Any]:
        await self.hub.subscribe_user(request.user, request.channel)
        return {}

    async def _unsubscribe(self, request: _UserChannel) -> dict[str, Any]:
        await self.hub.unsubscribe_user(request.user, request.channel)
        return {}

    async def _channels(self, query: dict[str, str]) -> dict[str, Any]:
        channels = sorted(self.hub.channels().items())
        return {"channels": [{"channel": name, "subscribers": n} for name, n in channels]}

    async def _presence(self, query: dict[str, str]) -> dict[str, Any]:
        channel = _required(query, "channel")
        clients = await self.hub.presence(channel)
        users = {info.user or client for client, info in clients.items()}
        return {"channel": channel, "clients": clients, "users": len(users)}

    async def _history(self, query: dict[str, str]) -> dict[str, Any]:
        channel = _required(query, "channel")
        raw_limit = query.get("limit", str(MAX_HISTORY_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            raise InvalidMessage("limit must be an integer") from None
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise InvalidMessage(f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
        page = await self.hub.history(channel, limit=limit)
        body: dict[str, Any] = {
            "channel": channel,
            "publications": [_message(p, JSON) for p in page.publications],
        }
        if self.hub.namespaces.resolve(channel).history_size:
            body.update(offset=page.position.offset, epoch=page.position.epoch)
        return body

    async def _stats(self, query: dict[str, str]) -> dict[str, Any]:
        stats = self.hub.stats
        return {
            "node": self.hub.node,
            "connections": self.hub.connection_count,
            "channels": len(self.hub.channels()),
            "connections_total": stats.connections_total,
            "publications": stats.publications,
            "deliveries": stats.deliveries,
            "dropped": stats.dropped,
            "slow_consumer_closes": stats.slow_consumer_closes,
        }


_ROUTES: Final[dict[str, tuple[str, _Handler, type[Struct] | None]]] = {
    "publish": ("POST", HubAPI._publish, _Publish),
    "broadcast": ("POST", HubAPI._broadcast, _Broadcast),
    "notify": ("POST", HubAPI._notify, _Notify),
    "disconnect": ("POST", HubAPI._disconnect, _Disconnect),
    "subscribe": ("POST", HubAPI._subscribe, _UserChannel),
    "unsubscribe": ("POST", HubAPI._unsubscribe, _UserChannel),
    "channels": ("GET", HubAPI._channels, None),
    "presence": ("GET", HubAPI._presence, None),
    "history": ("GET", HubAPI._history, None),
    "stats": ("GET", HubAPI._stats, None),
}


def _decode(body: bytes, body_type: type[Struct]) -> Any:
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"invalid request: {exc}") from None
    except (msgspec.DecodeError, RecursionError):
        raise InvalidMessage("the body is not valid JSON") from None


def _query(scope: Scope) -> dict[str, str]:
    from urllib.parse import parse_qsl

    raw: bytes = scope.get("query_string", b"")
    try:
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise InvalidMessage("the query string is not UTF-8") from None


def _required(query: dict[str, str], name: str) -> str:
    value = query.get(name)
    if not value:
        raise InvalidMessage(f"the {name} parameter is required")
    return value


async def _respond(send: SendCallable, status: int, body: bytes, headers: list[Any]) -> None:
    from .app import _respond as respond

    await respond(send, status, body, _JSON_TYPE, headers)
