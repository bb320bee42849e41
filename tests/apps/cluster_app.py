"""What every multi-node test app shares, whatever its broker: one hub and its routes.

``redis_app`` and ``postgres_app`` build their broker and call :func:`cluster_app`;
the tests of ``tests/test_e2e_brokers.py`` run against either through the same
routes. Test-only: the user id is taken from ``?user=`` without any check.
Namespaces:

- ``feed:*``: history of 1000 (recovery after faults);
- ``room:*``: presence with join/leave per connection;
- the default namespace: no history.

Besides the hub's own routes, the app serves ``GET /ready`` (200 when the broker
reports ready, else 503), ``POST /notify {user, title}``, which calls
``hub.notify``, and ``POST /disconnect {user, title}``, which calls
``hub.disconnect`` with ``title`` as the reason; ``routes`` adds more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from hubbub import BrokerUnavailable, Hub, HubApp, Identity, Limits, Namespace, Notification
from hubbub.brokers import Broker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

Route = Callable[[Any, Any, Any], Awaitable[None]]
"""An extra ASGI route: called with ``(scope, receive, send)``."""


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id; without it the client is anonymous."""
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    return Identity(user=user) if user else None


class _NotifyRequest(msgspec.Struct):
    user: str
    title: str = ""


async def body(receive: Any) -> bytes:
    """The whole request body."""
    data = b""
    while True:
        message = await receive()
        data += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return data


async def respond(send: Any, status: int, value: Any) -> None:
    """Answer ``value`` as JSON with ``status``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": msgspec.json.encode(value)})


def cluster_app(broker: Broker, routes: Mapping[str, Route] | None = None) -> tuple[Hub, Route]:
    """The hub of one test node on ``broker``, and its ASGI app (``routes``: more POST paths)."""
    hub = Hub(
        broker=broker,
        anonymous=True,
        authenticator=authenticate,
        broker_timeout=3.0,
        limits=Limits(command_rate=10_000.0, command_burst=10_000),
        namespaces=[
            Namespace(),
            Namespace(name="feed", history_size=1000, history_ttl=600.0),
            Namespace(name="room", presence=True, join_leave=True),
        ],
    )
    hub_app = HubApp(hub)
    extra = dict(routes or {})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """The hub's app, plus the test-only routes (no auth)."""
        path = scope.get("path")
        if scope["type"] == "http" and path == "/ready":
            ready = hub.running and await broker.ready()
            await respond(send, 200 if ready else 503, {"ready": ready})
            return
        if scope["type"] == "http" and path == "/notify" and scope["method"] == "POST":
            request = msgspec.json.decode(await body(receive), type=_NotifyRequest)
            try:
                position = await hub.notify(
                    request.user, Notification(type="test", title=request.title)
                )
            except BrokerUnavailable as exc:
                await respond(send, 503, {"code": 503, "reason": exc.reason})
                return
            assert position is not None
            await respond(send, 200, {"offset": position.offset, "epoch": position.epoch})
            return
        if scope["type"] == "http" and path == "/disconnect" and scope["method"] == "POST":
            request = msgspec.json.decode(await body(receive), type=_NotifyRequest)
            closed = await hub.disconnect(request.user, request.title or "kicked")
            await respond(send, 200, {"closed_here": closed})
            return
        if scope["type"] == "http" and path in extra and scope["method"] == "POST":
            await extra[path](scope, receive, send)
            return
        await hub_app(scope, receive, send)

    return hub, app
