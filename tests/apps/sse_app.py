"""A hub for the Server-Sent Events end-to-end tests (``tests/test_e2e_sse.py``).

Served by ``python -m hubbub serve sse_app:app``. Test-only: the user id is
taken from ``?user=`` without any check, and three unauthenticated endpoints
drive the hub from the test: ``POST /test/publish {channel, data, count}``
(``count`` publications of ``data``, each as ``{"n": i, "data": data}``),
``POST /test/disconnect {user}`` (``Hub.disconnect``) and ``GET /test/state``
(open connections, SSE streams, slow-consumer closes).

Namespaces: ``feed:*`` keeps 100 publications, ``hist:*`` keeps 5, the
default namespace none. Pings every 0.3 s; a small send queue, so a reader
that stops is dropped quickly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from hubbub import Hub, HubApp, Identity, Limits, Namespace


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id; none means anonymous."""
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    return Identity(user=user) if user else None


hub = Hub(
    anonymous=True,
    authenticator=authenticate,
    limits=Limits(
        ping_interval=0.3,
        pong_timeout=30.0,
        queue_messages=50,
        queue_bytes=256 * 1024,
        close_timeout=1.0,
    ),
    namespaces=[
        Namespace(),
        Namespace(name="feed", history_size=100),
        Namespace(name="hist", history_size=5),
    ],
)

_hub_app = HubApp(hub)


class _Publish(msgspec.Struct):
    channel: str
    data: Any = None
    count: int = 1


class _Disconnect(msgspec.Struct):
    user: str


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def _json(send: Any, value: Any) -> None:
    raw = msgspec.json.encode(value)
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The hub's app plus the test endpoints."""
    path = scope.get("path", "")
    if scope["type"] == "http" and path.startswith("/test/"):
        if path == "/test/publish":
            request = msgspec.json.decode(await _body(receive), type=_Publish)
            offsets = []
            for n in range(request.count):
                position = await hub.publish(request.channel, {"n": n, "data": request.data})
                offsets.append(position.offset if position else None)
            await _json(send, {"offsets": offsets})
        elif path == "/test/disconnect":
            kick = msgspec.json.decode(await _body(receive), type=_Disconnect)
            await _json(send, {"closed": await hub.disconnect(kick.user, "kicked")})
        else:
            await _json(
                send,
                {
                    "connections": hub.connection_count,
                    "sse": hub.sse_count,
                    "slow_consumer_closes": hub.stats.slow_consumer_closes,
                },
            )
        return
    await _hub_app(scope, receive, send)
