"""A hub on the PostgreSQL broker, for the multi-node and fault tests
(``tests/test_e2e_brokers.py``, ``tests/test_e2e_postgres.py``).

Served by ``python -m hubbub serve postgres_app:app``, several processes on one
database whose URL comes from ``HUBBUB_TEST_PG_URL``. The hub, its namespaces
and its test-only routes are :mod:`cluster_app`'s, plus ``POST /order
{channel, n, commit}``: the application's own transaction, which inserts a row
into ``orders`` and publishes ``{"n": n}`` with ``publish_in``, then commits or
rolls back.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import psycopg
from cluster_app import body, cluster_app, respond

from hubbub.brokers.postgres import PostgresBroker

URL = os.environ["HUBBUB_TEST_PG_URL"]

broker = PostgresBroker(
    URL,
    timeout=1.0,
    health_check_interval=0.25,
    poll_interval=0.5,
    reconnect_delay=0.05,
    max_reconnect_delay=0.5,
)


class _Order(msgspec.Struct):
    channel: str
    n: int
    commit: bool = True


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


async def _order_route(scope: Any, receive: Any, send: Any) -> None:
    order = msgspec.json.decode(await body(receive), type=_Order)
    await respond(send, 200, {"offset": await _order(order)})


hub, app = cluster_app(broker, {"/order": _order_route})
