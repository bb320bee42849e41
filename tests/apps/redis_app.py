"""A hub on the Redis broker, for the multi-node and fault tests (``tests/test_e2e_redis.py``).

Served by ``python -m hubbub serve redis_app:app``, several processes on one
Redis. The Redis URL comes from ``HUBBUB_TEST_REDIS_URL``. Test-only: the user
id is taken from ``?user=`` without any check. Namespaces:

- ``feed:*``: history of 1000 (recovery after faults);
- ``room:*``: presence with join/leave per connection;
- the default namespace: no history.

Besides the hub's own routes, ``app`` serves ``GET /ready`` (200 when the broker
reports ready, else 503), ``POST /notify {user, title}``, which calls
``hub.notify``, and ``POST /disconnect {user, title}``, which calls
``hub.disconnect`` with ``title`` as the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from hubbub import BrokerUnavailable, Hub, HubApp, Identity, Limits, Namespace, Notification
from hubbub.brokers.redis import RedisBroker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id; without it the client is anonymous."""
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    return Identity(user=user) if user else None


broker = RedisBroker.from_url(
    os.environ["HUBBUB_TEST_REDIS_URL"], timeout=1.0, health_check_interval=0.5
)
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

_hub_app = HubApp(hub)


class _NotifyRequest(msgspec.Struct):
    user: str
    title: str = ""


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


async def _json(send: Any, status: int, value: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": msgspec.json.encode(value)})


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The hub's app, plus ``GET /ready`` and ``POST /notify`` (test-only, no auth)."""
    if scope["type"] == "http" and scope["path"] == "/ready":
        ready = hub.running and await broker.ready()
        await _json(send, 200 if ready else 503, {"ready": ready})
        return
    if scope["type"] == "http" and scope["path"] == "/notify" and scope["method"] == "POST":
        request = msgspec.json.decode(await _body(receive), type=_NotifyRequest)
        try:
            position = await hub.notify(
                request.user, Notification(type="test", title=request.title)
            )
        except BrokerUnavailable as exc:
            await _json(send, 503, {"code": 503, "reason": exc.reason})
            return
        assert position is not None
        await _json(send, 200, {"offset": position.offset, "epoch": position.epoch})
        return
    if scope["type"] == "http" and scope["path"] == "/disconnect" and scope["method"] == "POST":
        request = msgspec.json.decode(await _body(receive), type=_NotifyRequest)
        closed = await hub.disconnect(request.user, request.title or "kicked")
        await _json(send, 200, {"closed_here": closed})
        return
    await _hub_app(scope, receive, send)
