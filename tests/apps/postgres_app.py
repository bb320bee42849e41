"""A hub on the PostgreSQL broker, for the multi-node and fault tests
(``tests/test_e2e_postgres.py``).

Served by ``python -m hubbub serve postgres_app:app``, several processes on one
database whose URL comes from ``HUBBUB_TEST_PG_URL``. Test-only: the user id is
taken from ``?user=`` without any check. Namespaces: ``feed:*`` (history of
1000, recovery after faults), ``room:*`` (presence) and the default one (no
history).

Besides the hub's own routes, ``app`` serves ``GET /ready`` (200 when the broker
reports ready, else 503) and ``POST /order {channel, n, commit}``: the
application's own transaction, which inserts a row into ``orders`` and
publishes ``{"n": n}`` with ``publish_in``, then commits or rolls back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec
import psycopg

from hubbub import Hub, HubApp, Identity, Limits, Namespace
from hubbub.brokers.postgres import PostgresBroker

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

URL = os.environ["HUBBUB_TEST_PG_URL"]


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id; without it the client is anonymous."""
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    return Identity(user=user) if user else None


broker = PostgresBroker(
    URL,
    timeout=1.0,
    health_check_interval=0.25,
    poll_interval=0.5,
    reconnect_delay=0.05,
    max_reconnect_delay=0.5,
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


class _Order(msgspec.Struct):
    channel: str
    n: int
    commit: bool = True


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


async def _order(order: _Order) -> int | None:
    """The application's transaction: a row and its announcement, both or neither."""
    async with await psycopg.AsyncConnection.connect(URL, connect_timeout=2) as conn:
        async with conn.transaction(force_rollback=not order.commit):
            await conn.execute("CREATE TABLE IF NOT EXISTS orders (n int, channel text)")
            await conn.execute("INSERT INTO orders VALUES (%s, %s)", (order.n, order.channel))
            published = await broker.publish_in(
                conn,
                order.channel,
                {"n": order.n},
                history=hub.namespaces.resolve(order.channel),
            )
    return published.offset


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The hub's app, plus ``GET /ready`` and ``POST /order`` (test-only, no auth)."""
    if scope["type"] == "http" and scope["path"] == "/ready":
        ready = hub.running and await broker.ready()
        await _json(send, 200 if ready else 503, {"ready": ready})
        return
    if scope["type"] == "http" and scope["path"] == "/order" and scope["method"] == "POST":
        order = msgspec.json.decode(await _body(receive), type=_Order)
        await _json(send, 200, {"offset": await _order(order)})
        return
    await _hub_app(scope, receive, send)
