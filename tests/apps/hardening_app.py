"""A hub for the hardening tests of the core (``tests/test_hardening_core.py``).

Served by ``python -m hubbub serve hardening_app:app``. The broker comes from
the environment: ``HUBBUB_TEST_REDIS_URL`` (Redis), ``HUBBUB_TEST_PG_URL``
(PostgreSQL), else the memory broker. Test-only: the user id is taken from
``?user=`` without any check. Namespaces, all with the library's defaults
except where said:

- ``feed:*``: history of 1000;
- ``chat:*``: ``Namespace.chat("chat")`` exactly as shipped (100 kept and
  replayed on join, 2,000 characters per text, the default payload limit);
- ``room:*``: presence with join/leave per connection;
- the default namespace: no history.

``Limits`` are the defaults except the command rate (tests pipeline commands).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from hubbub import Broker, Hub, HubApp, Identity, Limits, MemoryBroker, Namespace

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id; without it the client is anonymous."""
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    return Identity(user=user) if user else None


def _broker() -> Broker:
    if os.environ.get("HUBBUB_TEST_REDIS_URL"):
        from hubbub.brokers.redis import RedisBroker

        return RedisBroker.from_url(os.environ["HUBBUB_TEST_REDIS_URL"], timeout=2.0)
    if os.environ.get("HUBBUB_TEST_PG_URL"):
        from hubbub.brokers.postgres import PostgresBroker

        return PostgresBroker(os.environ["HUBBUB_TEST_PG_URL"], timeout=2.0)
    return MemoryBroker()


hub = Hub(
    broker=_broker(),
    anonymous=True,
    authenticator=authenticate,
    broker_timeout=5.0,
    limits=Limits(command_rate=10_000.0, command_burst=10_000),
    namespaces=[
        Namespace(),
        Namespace(name="feed", history_size=1000, history_ttl=600.0),
        Namespace.chat("chat"),
        Namespace(name="room", presence=True, join_leave=True),
    ],
)

app = HubApp(hub)
