"""A hub on Redis that reports its own process state, for the churn test (``tests/test_churn.py``).

Served by ``python -m hubbub serve churn_app:app``; the Redis URL comes from
``HUBBUB_TEST_REDIS_URL``. Test-only: ``?user=`` is the user id, unchecked.
Besides the hub's routes, ``GET /test/state`` answers what a leak would move:
asyncio tasks, open file descriptors, resident memory, the hub's connections and
channels, and its SSE streams.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from hubbub import Hub, HubApp, Identity, Limits, Namespace
from hubbub.brokers.redis import RedisBroker


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    return Identity(user=user) if user else None


hub = Hub(
    broker=RedisBroker.from_url(os.environ["HUBBUB_TEST_REDIS_URL"], timeout=2.0),
    anonymous=True,
    authenticator=authenticate,
    limits=Limits(command_rate=10_000.0, command_burst=10_000),
    namespaces=[
        Namespace(),
        Namespace(name="feed", history_size=50, history_ttl=600.0),
        Namespace(name="room", presence=True, join_leave=True),
    ],
)
_hub_app = HubApp(hub)


def _pooled() -> int:
    """Connected sockets in the broker's Redis pool: bounded (``max_connections``) and kept
    open for reuse, so they are the pool's high-water mark, not a leak."""
    pool = hub.broker._client.connection_pool  # type: ignore[attr-defined]
    held = [*pool._available_connections, *pool._in_use_connections]
    return sum(1 for connection in held if connection.is_connected)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/test/state":
        gc.collect()
        state = {
            "tasks": len(asyncio.all_tasks()),
            "task_names": sorted(
                str(task.get_coro().__qualname__)  # type: ignore[union-attr]
                for task in asyncio.all_tasks()
            ),
            "fds": len(os.listdir("/proc/self/fd")),
            "redis_pool": _pooled(),
            "rss_kib": _rss_kib(),
            "connections": hub.connection_count,
            "channels": hub.channels(),
            "users": len(hub._registry.users),
        }
        body = msgspec.json.encode(state)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await _hub_app(scope, receive, send)
