"""``HubAPI``: the server HTTP API (PROTOCOL §8) for backends in any language.

Every request carries ``Authorization: apikey <key>``; the key is compared in
constant time against every configured key (several keys allow rotation). An
address that sent 10 wrong keys within a minute gets 429 (``Retry-After``)
until that minute ends.
Without any key the API is off and answers 404 to everything. Bodies and
queries decode into the msgspec Structs below, which also generate the OpenAPI
document served at ``openapi.json`` (no key needed to read it), so the document
and the code cannot disagree. Bodies are limited in size; every error is JSON
``{code, reason}`` with the matching HTTP status.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from ._api_wire import (
    BroadcastResult,
    ChannelCount,
    ChannelResult,
    ChannelsResult,
    DisconnectResult,
    Empty,
    ErrorBody,
    PositionResult,
)
from ._commands import MAX_HISTORY_LIMIT
from ._errors import (
    AuthenticationFailed,
    HubbubError,
    HubNotRunning,
    InternalError,
    InvalidMessage,
    MethodNotAllowed,
    NotFound,
    RateLimited,
)
from ._fanout import message as _message
from ._http import (
    APIKEY_CHALLENGE,
    DEFAULT_BODY_TIMEOUT,
    JSON_TYPE,
    Receive,
    Scope,
    SendCallable,
    deny,
    read_body,
    respond,
    route_path,
    send_error,
)
from ._keys import KeyGuard, check_key, validate_key
from ._openapi import Endpoint, build_document
from ._permissions import check_server_subscribe
from ._version import __version__
from .chat import Notification
from .hub import Hub
from .messages import (
    CHANNEL_PATTERN,
    JSON,
    MAX_DEPTH,
    ClientInfo,
    Message,
    Position,
    json_too_deep,
)
from .namespaces import validate_channel
from .protocol import KICKED

__all__ = ["DEFAULT_MAX_BODY", "HubAPI"]

# The request bodies' names before 0.2, when they collided with the wire messages
# (``hubbub.messages.Publish``, ``Disconnect``) and the client's ``HistoryResult``.
_RENAMED: Final = {
    "Publish": "PublishRequest",
    "Broadcast": "BroadcastRequest",
    "Notify": "NotifyRequest",
    "Disconnect": "DisconnectRequest",
    "HistoryResult": "HistoryPageResult",
}


def __getattr__(name: str) -> Any:
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"hubbub.api.{name} is deprecated; use hubbub.api.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]


logger = logging.getLogger("hubbub")

DEFAULT_MAX_BODY: Final = 64 * 1024
"""The default largest request body, in bytes."""

_MAX_BROADCAST: Final = 1000
_DOCUMENT: Final = "openapi.json"

Channel = Annotated[str, Meta(pattern=CHANNEL_PATTERN, description="A channel name.")]
User = Annotated[str, Meta(min_length=1, description="A user id (the JWT `sub`).")]
NotifiedUser = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z0-9_\-:.@#=/]{1,254}(?!\n)$",
        description="A user id that makes a valid personal channel `#<user>`.",
    ),
]

# -- request and result bodies: the API's wire types (and the OpenAPI schemas) ------------------


class PublishRequest(Struct):
    """Publish `data` (any JSON value) into one channel from the server."""

    channel: Channel
    data: Raw
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class BroadcastRequest(Struct):
    """Publish the same `data` into several channels; each gets its own result."""

    channels: Annotated[list[str], Meta(min_length=1, max_length=_MAX_BROADCAST)]
    data: Raw


class NotifyRequest(Struct):
    """Push a notification into the user's personal channel."""

    user: NotifiedUser
    notification: Notification


class DisconnectRequest(Struct):
    """Close every connection of the user, on every node."""

    user: User
    code: Annotated[
        int,
        Meta(
            ge=1000,
            le=4999,
            description="1000, 1001, 1008, 1011-1013 or 3000-4999",
            extra_json_schema={
                "anyOf": [
                    {"enum": [1000, 1001, 1008, 1011, 1012, 1013]},
                    {"minimum": 3000, "maximum": 4999},
                ]
            },
        ),
    ] = KICKED
    reason: Annotated[str, Meta(max_length=120, description="At most 120 bytes of UTF-8")] = (
        "disconnected by the server"
    )


class UserChannel(Struct):
    """A user and a channel: the server-side (un)subscription of every connection of the user."""

    user: User
    channel: Channel


class PresenceQuery(Struct, forbid_unknown_fields=True):
    channel: Channel


Since = Annotated[
    str,
    Meta(
        pattern=r"^(0|[1-9][0-9]{0,17}):[^\s]{1,128}$",
        description="`<offset>:<epoch>`, a position from a message or a history answer.",
    ),
]


class HistoryQuery(Struct, forbid_unknown_fields=True):
    """Without `since`: the newest `limit`; with it: the first `limit` after that position."""

    channel: Channel
    limit: Annotated[int, Meta(ge=1, le=MAX_HISTORY_LIMIT)] = MAX_HISTORY_LIMIT
    since: Since | UnsetType = UNSET
    reverse: bool = False


class NoQuery(Struct, forbid_unknown_fields=True):
    pass


class PresenceResult(Struct):
    """The WebSocket `presence` reply without `type`/`id`."""

    channel: str
    clients: dict[str, ClientInfo]
    users: int


class HistoryPageResult(Struct):
    """The WebSocket `history` reply without `type`/`id`."""

    channel: str
    publications: list[Message]
    offset: int | UnsetType = UNSET
    epoch: str | UnsetType = UNSET


class StatsResult(Struct):
    """This node's figures."""

    node: str
    connections: int
    channels: int
    connections_total: int
    publications: int
    deliveries: int
    dropped: int
    slow_consumer_closes: int


_Handler = Callable[["HubAPI", Any], Awaitable[Struct]]


def _allowed_close_code(code: int) -> bool:
    return code in (1000, 1001, 1008, 1011, 1012, 1013) or 3000 <= code <= 4999


def _position(position: Position | None) -> PositionResult:
    if position is None:
        return PositionResult()
    return PositionResult(offset=position.offset, epoch=position.epoch)


class HubAPI:
    """Serves the server HTTP API of a hub over ASGI (mount it at ``<prefix>/api``).

    Args:
        hub: the hub the API acts on.
        keys: the accepted API keys (printable ASCII, no spaces, at least 16
            characters); none turns the API off (every request answers 404).
        max_body: the largest request body in bytes (413 above).
        body_timeout: seconds the whole body may take to arrive (408 after), so
            a body dripped byte by byte cannot hold a request open for ever.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        keys: Iterable[str] = (),
        max_body: int = DEFAULT_MAX_BODY,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        if not isinstance(hub, Hub):
            raise TypeError("HubAPI needs a hubbub.Hub")
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be an iterable of strings, not a single string")
        accepted = [validate_key(key, "an API key") for key in keys]
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError("max_body must be a positive integer")
        if isinstance(body_timeout, bool) or not isinstance(body_timeout, int | float):
            raise TypeError("body_timeout must be a number of seconds")
        if not body_timeout > 0:
            raise ValueError("body_timeout must be positive")
        self.hub = hub
        self.max_body = max_body
        self.body_timeout = float(body_timeout)
        self._keys = tuple(accepted)
        self.guard = KeyGuard("api", trusted_proxies=hub.limits.trusted_proxies)
        """Counts wrong keys per client address (429 after too many)."""

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (without one the API answers 404)."""
        return bool(self._keys)

    def set_keys(self, keys: Iterable[str]) -> None:
        """Replace the accepted keys (key rotation, ``hubbub serve``'s SIGHUP reload).

        Every key is checked first; on an error nothing changes. Requests already
        past their key check finish; the next request is checked against the new
        keys. No key turns the API off (404).
        """
        if isinstance(keys, str | bytes):
            raise TypeError("keys must be an iterable of strings, not a single string")
        self._keys = tuple(validate_key(key, "an API key") for key in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
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
            if endpoint == _DOCUMENT:
                self._check_method(scope, "GET")
                await respond(send, 200, _document(_base(scope)), JSON_TYPE, headers)
                return
            self._authenticate(scope, headers)
            route = _ROUTES.get(endpoint)
            if route is None:
                raise NotFound(f"no API endpoint {endpoint!r}")
            spec, handler = route
            self._check_method(scope, spec.method)
            if spec.body is not None:
                argument: Any = _decode(await self._read_body(scope, receive), spec.body)
            else:
                argument = _query(scope, spec.query or NoQuery)
            if not self.hub.running:
                raise HubNotRunning()
            result = await handler(self, argument)
        except HubbubError as exc:
            await send_error(send, exc, challenge=APIKEY_CHALLENGE, headers=headers)
            return
        except Exception:
            # A bug (or a failing user hook) must still answer JSON, not a bare 500.
            logger.exception("the HTTP API failed on %r", endpoint)
            await send_error(send, InternalError("internal error"), headers=headers)
            return
        await respond(send, 200, msgspec.json.encode(result), JSON_TYPE, headers)

    @staticmethod
    def _check_method(scope: Scope, method: str) -> None:
        if scope.get("method", "GET") != method:
            raise MethodNotAllowed(f"use {method} here", allow=method)

    def _authenticate(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
        check = check_key(scope, self._keys, self.guard)
        if check.outcome == "locked":
            headers.append((b"retry-after", str(check.retry_after).encode()))
            raise RateLimited("too many wrong API keys from this address; retry later")
        if check.outcome == "missing":
            raise AuthenticationFailed("send Authorization: apikey <key>")
        if check.outcome == "wrong":
            raise AuthenticationFailed("wrong API key")

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        return await read_body(scope, receive, self.max_body, self.body_timeout)

    # -- endpoints -------------------------------------------------------------------------

    async def _publish(self, request: PublishRequest) -> PositionResult:
        position = await self.hub.publish(
            request.channel, json=bytes(request.data), idempotency_key=request.idempotency_key
        )
        return _position(position)

    async def _broadcast(self, request: BroadcastRequest) -> BroadcastResult:
        # Data no channel could take is refused as a whole, not once per channel.
        JSON.check_data(request.data)
        data = bytes(request.data)
        results: list[ChannelResult] = []
        for channel in request.channels:
            try:
                position = await self.hub.publish(channel, json=data)
            except HubbubError as exc:
                error = ErrorBody(code=exc.code, reason=exc.reason)
                results.append(ChannelResult(channel=channel, error=error))
                continue
            if position is None:
                results.append(ChannelResult(channel=channel))
            else:
                results.append(
                    ChannelResult(channel=channel, offset=position.offset, epoch=position.epoch)
                )
        return BroadcastResult(results=results)

    async def _notify(self, request: NotifyRequest) -> PositionResult:
        return _position(await self.hub.notify(request.user, request.notification))

    async def _disconnect(self, request: DisconnectRequest) -> DisconnectResult:
        if not _allowed_close_code(request.code):
            raise InvalidMessage("code must be 1000, 1001, 1008, 1011-1013 or 3000-4999")
        if len(request.reason.encode()) > 120:
            raise InvalidMessage("reason must be at most 120 bytes of UTF-8")
        closed = await self.hub.disconnect(request.user, request.reason, code=request.code)
        return DisconnectResult(disconnected=closed)

    async def _subscribe(self, request: UserChannel) -> Empty:
        """Subscribe the user server-side, as far as the namespace allows that user.

        The server may subscribe a user where clients may not subscribe themselves
        (``subscribe="nobody"``), but the namespace's own ``can_subscribe`` hook is
        asked for the user (an ``Identity`` with only ``user`` set: the API acts for
        a user, not for one connection), and a personal channel only ever holds its
        own user.
        """
        user, channel = request.user, request.channel
        validate_channel(channel)
        check_server_subscribe(user, channel, self.hub.namespaces.resolve(channel))
        await self.hub.subscribe_user(user, channel)
        return Empty()

    async def _unsubscribe(self, request: UserChannel) -> Empty:
        await self.hub.unsubscribe_user(request.user, request.channel)
        return Empty()

    async def _channels(self, query: NoQuery) -> ChannelsResult:
        channels = sorted(self.hub.channels().items())
        return ChannelsResult(
            channels=[ChannelCount(channel=name, subscribers=n) for name, n in channels]
        )

    async def _presence(self, query: PresenceQuery) -> PresenceResult:
        clients = await self.hub.presence(query.channel)
        users = {info.user or client for client, info in clients.items()}
        return PresenceResult(channel=query.channel, clients=clients, users=len(users))

    async def _history(self, query: HistoryQuery) -> HistoryPageResult:
        since: Position | None = None
        if query.since is not UNSET:
            offset, _, epoch = query.since.partition(":")
            since = Position(offset=int(offset), epoch=epoch)
        page = await self.hub.history(
            query.channel, limit=query.limit, since=since, reverse=query.reverse
        )
        result = HistoryPageResult(
            channel=query.channel, publications=[_message(p, JSON) for p in page.publications]
        )
        if self.hub.namespaces.resolve(query.channel).history_size:
            result.offset = page.position.offset
            result.epoch = page.position.epoch
        return result

    async def _stats(self, query: NoQuery) -> StatsResult:
        stats = self.hub.stats
        return StatsResult(
            node=self.hub.node,
            connections=self.hub.connection_count,
            channels=len(self.hub.channels()),
            connections_total=stats.connections_total,
            publications=stats.publications,
            deliveries=stats.deliveries,
            dropped=stats.dropped,
            slow_consumer_closes=stats.slow_consumer_closes,
        )


_BODY_ERRORS: Final = (400, 408, 413, 503)

_ROUTES: Final[dict[str, tuple[Endpoint, _Handler]]] = {
    "publish": (
        Endpoint(
            "POST",
            "Publish into a channel",
            PositionResult,
            body=PublishRequest,
            errors=(*_BODY_ERRORS, 404, 422),
            description="A retry with the same `idempotency_key` within the namespace's "
            "window is not delivered again and answers the first position.",
        ),
        HubAPI._publish,
    ),
    "broadcast": (
        Endpoint(
            "POST",
            "Publish into several channels",
            BroadcastResult,
            body=BroadcastRequest,
            errors=_BODY_ERRORS,
            description="One result per channel, in order; a channel's failure is reported "
            "in its result and the others are still published.",
        ),
        HubAPI._broadcast,
    ),
    "notify": (
        Endpoint(
            "POST", "Notify a user", PositionResult, body=NotifyRequest, errors=(*_BODY_ERRORS, 422)
        ),
        HubAPI._notify,
    ),
    "disconnect": (
        Endpoint(
            "POST",
            "Disconnect a user",
            DisconnectResult,
            body=DisconnectRequest,
            errors=_BODY_ERRORS,
        ),
        HubAPI._disconnect,
    ),
    "subscribe": (
        Endpoint(
            "POST",
            "Subscribe every connection of a user, on every node",
            Empty,
            body=UserChannel,
            errors=(*_BODY_ERRORS, 403, 404, 429),
            description="Server-side: each connection gets `subscribed` without `id`. The "
            "namespace's `can_subscribe` hook is asked for the user (403); 429 when a "
            "connection of the user on this node holds the most channels allowed (nothing "
            "is subscribed then).",
        ),
        HubAPI._subscribe,
    ),
    "unsubscribe": (
        Endpoint(
            "POST",
            "Unsubscribe every connection of a user, on every node",
            Empty,
            body=UserChannel,
            errors=_BODY_ERRORS,
        ),
        HubAPI._unsubscribe,
    ),
    "channels": (
        Endpoint("GET", "This node's channels", ChannelsResult, query=NoQuery, errors=(503,)),
        HubAPI._channels,
    ),
    "presence": (
        Endpoint(
            "GET",
            "Who is present in a channel",
            PresenceResult,
            query=PresenceQuery,
            errors=(400, 403, 404, 503),
        ),
        HubAPI._presence,
    ),
    "history": (
        Endpoint(
            "GET",
            "A channel's kept publications",
            HistoryPageResult,
            query=HistoryQuery,
            errors=(400, 404, 410, 503),
            description="Without `since`: the newest `limit`; with `since=<offset>:<epoch>`: "
            "the first `limit` after that position (410 when the epoch is not the stream's). "
            "Oldest first unless `reverse`. A channel without history answers no publications "
            "and no position.",
        ),
        HubAPI._history,
    ),
    "stats": (
        Endpoint("GET", "This node's figures", StatsResult, query=NoQuery, errors=(503,)),
        HubAPI._stats,
    ),
}


@lru_cache(maxsize=16)
def _document(base: str) -> bytes:
    """The document for the API mounted at ``base``.

    Bounded: ``base`` comes from the request path, and a mount whose prefix holds
    a path parameter would otherwise grow the cache with every new value.
    """

    document = build_document(
        {name: spec for name, (spec, _) in _ROUTES.items()},
        error=ErrorBody,
        base=base,
        version=__version__,
    )
    document["paths"][f"/{_DOCUMENT}"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document (no key needed)",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return msgspec.json.encode(document)


def _base(scope: Scope) -> str:
    """Where the API is mounted: the request's path without ``/openapi.json``."""
    path: str = (scope.get("path") or "").rstrip("/")
    return path[: -len(_DOCUMENT) - 1] if path.endswith("/" + _DOCUMENT) else ""


def _decode(body: bytes, body_type: type[Struct]) -> Any:
    try:
        value = msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        value = _with_whole_floats(body, body_type, exc)
    except (msgspec.DecodeError, RecursionError):
        raise InvalidMessage("the body is not valid JSON") from None
    if json_too_deep(body):
        raise InvalidMessage(f"the body is nested deeper than {MAX_DEPTH} levels")
    return value


_WHOLE_FLOAT: Final = re.compile(r"Expected `int`, got `float` - at `\$((?:\.[A-Za-z_]\w*)+)`")


def _with_whole_floats(body: bytes, body_type: type[Struct], error: msgspec.ValidationError) -> Any:
    """Decode again, reading ``4403.0`` where an integer is expected as ``4403``.

    JSON Schema (and so the OpenAPI document) counts ``2.0`` as the integer 2,
    and some encoders (Python's ``json`` for a float) write it so; msgspec does
    not. Only the fields the error names are changed, one by one, a few at most.
    """
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        raise InvalidMessage(f"invalid request: {error}") from None
    for _ in range(4):
        match = _WHOLE_FLOAT.fullmatch(str(error))
        if match is None:
            break
        *parents, last = match.group(1)[1:].split(".")
        holder = document
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        number = holder.get(last) if isinstance(holder, dict) else None
        if not isinstance(number, float) or not number.is_integer():
            break
        holder[last] = int(number)
        try:
            return msgspec.convert(document, body_type)
        except msgspec.ValidationError as again:
            error = again
    raise InvalidMessage(f"invalid request: {error}") from None


def _query(scope: Scope, query_type: type[Struct]) -> Any:
    from urllib.parse import parse_qsl

    raw: bytes = scope.get("query_string", b"")
    try:
        pairs = dict(parse_qsl(raw.decode(), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError:
        raise InvalidMessage("the query string is not UTF-8") from None
    try:
        return msgspec.convert(pairs, query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"invalid query: {exc}") from None
