"""What every ASGI shell shares: the types, reading a request, and the one JSON error answer.

A leaf: it imports nothing from hubbub but the error tree, so the shells
(``app``, ``api``, ``_admin``, ``_demo``, ``middleware``) and the connection
layer (``_connection``, ``_sse``) all use it without importing one another.

Every refusal hubbub answers over HTTP, and every WebSocket it refuses before
the upgrade, carries the same JSON body, ``{"code": <status>, "reason": ...}``,
built here by :func:`error_body`; the headers that go with it (``Retry-After``,
``Allow``, ``WWW-Authenticate``) are added here too, in one order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio
import msgspec

from ._errors import HubbubError, InvalidMessage, MessageTooLarge, MethodNotAllowed

__all__ = [
    "APIKEY_CHALLENGE",
    "BEARER_CHALLENGE",
    "DEFAULT_BODY_TIMEOUT",
    "JSON_TYPE",
    "BodyTimeout",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "SendCallable",
    "cookie",
    "deny",
    "error_body",
    "header",
    "query_param",
    "read_body",
    "respond",
    "route_path",
    "send_error",
    "send_refusal",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
SendCallable = Send
"""The older name of :data:`Send` (``hubbub.protocol.Send`` is an event, not this)."""

Headers = Iterable[tuple[bytes, bytes]]

JSON_TYPE: Final = b"application/json"
BEARER_CHALLENGE: Final = b'Bearer error="invalid_token"'
"""``WWW-Authenticate`` of a 401 for a user's token (middleware, SSE)."""
APIKEY_CHALLENGE: Final = b"apikey"
"""``WWW-Authenticate`` of a 401 for a missing or wrong key (HTTP API, admin page)."""


# -- reading a request ------------------------------------------------------------------------


def route_path(scope: Scope) -> str:
    """The path relative to where the app is mounted.

    ``scope["path"]`` includes ``root_path`` (Starlette >= 0.35, uvicorn >= 0.26);
    the app's own path is what follows it.
    """
    path: str = scope.get("path") or "/"
    root: str = scope.get("root_path") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    if len(path) > 1 and path.endswith("/"):
        # Litestar's mounts hand the app "/ws/" for "<prefix>/ws".
        path = path[:-1]
    return path or "/"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), decoded as latin-1, or ``None``."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def cookie(scope: Mapping[str, Any], name: str) -> str | None:
    """The value of cookie ``name``, from the first ``Cookie`` header that holds it non-empty.

    A header the cookie parser refuses is passed over, never raised: a browser
    may send any bytes.
    """
    for key, value in scope.get("headers") or ():
        if key.lower() == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            morsel = jar.get(name)
            if morsel is not None and morsel.value:
                return str(morsel.value)
    return None


def query_param(scope: Scope, name: str) -> str | None:
    """The last value of query parameter ``name`` in the handshake, or ``None``.

    Never raises, whatever the query string holds.
    """
    query = scope.get("query_string", b"").decode("latin-1")
    found = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == name:
            found = value
    return found


# -- answering --------------------------------------------------------------------------------


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Headers | None = None,
) -> None:
    """A complete HTTP response: ``Content-Type``, ``Content-Length``, then ``headers``."""
    all_headers: list[Any] = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(headers or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def error_body(status: int, reason: str) -> bytes:
    """The JSON body of every refusal: ``{"code": <status>, "reason": ...}``."""
    return msgspec.json.encode({"code": status, "reason": reason})


def _error_headers(
    exc: HubbubError | None,
    status: int,
    retry_after: int | None,
    challenge: bytes | None,
    headers: Headers,
) -> list[tuple[bytes, bytes]]:
    found: list[tuple[bytes, bytes]] = []
    if retry_after is not None:
        found.append((b"retry-after", str(retry_after).encode()))
    if isinstance(exc, MethodNotAllowed):
        found.append((b"allow", exc.allow.encode()))
    if challenge is not None and status == 401:
        found.append((b"www-authenticate", challenge))
    found.extend(headers)
    return found


async def send_refusal(
    send: Send,
    status: int,
    reason: str,
    *,
    retry_after: int | None = None,
    headers: Headers = (),
) -> None:
    """Answer a JSON refusal with ``status``: for the few that are no :class:`HubbubError`."""
    extra = _error_headers(None, status, retry_after, None, headers)
    await respond(send, status, error_body(status, reason), JSON_TYPE, extra)


async def send_error(
    send: Send,
    exc: HubbubError,
    *,
    retry_after: int | None = None,
    challenge: bytes | None = None,
    headers: Headers = (),
) -> None:
    """Answer ``exc`` as JSON with its HTTP status, before any response started.

    Headers after ``Content-Type`` and ``Content-Length``: ``Retry-After`` (when
    ``retry_after`` is given), ``Allow`` (for :class:`MethodNotAllowed`),
    ``WWW-Authenticate: <challenge>`` (on a 401, when a challenge is given),
    then ``headers``.
    """
    status = exc.http_status
    extra = _error_headers(exc, status, retry_after, challenge, headers)
    await respond(send, status, error_body(status, exc.reason), JSON_TYPE, extra)


async def deny(
    scope: Scope, send: Send, exc: HubbubError, *, retry_after: int | None = None
) -> None:
    """Refuse a WebSocket before accepting it, with ``exc``'s HTTP status where possible.

    Uses the ASGI WebSocket denial-response extension where the server offers it
    (uvicorn does); elsewhere the only answer is a bare close, which servers turn
    into 403.
    """
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = error_body(exc.http_status, exc.reason)
        headers = [
            (b"content-type", JSON_TYPE),
            (b"content-length", str(len(body)).encode()),
            *_error_headers(exc, exc.http_status, retry_after, None, ()),
        ]
        await send(
            {"type": "websocket.http.response.start", "status": exc.http_status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": exc.reason[:120]})


class BodyTimeout(HubbubError):
    """A request body that stopped arriving: 408 (HTTP only)."""

    code = 408
    http_status = 408
    default_reason = "the request body did not arrive in time"


DEFAULT_BODY_TIMEOUT: Final = 10.0
"""Seconds a request body may take to arrive in full (408 after)."""


async def read_body(scope: Scope, receive: Receive, max_body: int, seconds: float) -> bytes:
    """The whole request body, at most ``max_body`` bytes, within ``seconds``.

    uvicorn has no deadline for a request body, so a client dripping one byte a
    second would otherwise hold the request (and its task) open for ever.

    Raises:
        MessageTooLarge: the body (or its ``Content-Length``) is over ``max_body``.
        BodyTimeout: it did not arrive in full within ``seconds``.
        InvalidMessage: a bad ``Content-Length``, or the client went away.
    """
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise InvalidMessage("invalid Content-Length") from None
            if declared > max_body:
                raise MessageTooLarge(f"the body is over {max_body} bytes")
    chunks: list[bytes] = []
    size = 0
    more = True
    deadline = anyio.current_time() + seconds
    while more:
        with anyio.move_on_after(deadline - anyio.current_time()) as waited:
            message = await receive()
        if waited.cancelled_caught:
            raise BodyTimeout(f"the body did not arrive within {seconds:g} s")
        if message["type"] != "http.request":
            raise InvalidMessage("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise MessageTooLarge(f"the body is over {max_body} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
