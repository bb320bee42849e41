"""A hub for the Python client's tests (``tests/test_client*.py``).

Served by ``python -m hubbub serve client_app:app``. The broker is Redis when
``HUBBUB_TEST_REDIS_URL`` is set, the memory broker otherwise. JWTs (HS256,
``SECRET``) are verified when given; without one a client is anonymous. The
HTTP API answers to ``API_KEY``. Namespaces:

- ``feed:*``: history of 1000 (recovery across faults);
- ``short:*``: history of 5 (recovery past the kept history);
- ``room:*``: presence with join/leave events;
- the default namespace: no history.

``app``: a short heartbeat (ping every 0.5 s, closed after 1.5 s of silence),
so a client that does not answer pings is noticed quickly; a short expiry
grace; a small send queue (20 messages). ``slow_app``: the same namespaces
with a long heartbeat (30 s), so a client that stops reading is ended by the
slow-consumer policy (close 1013) and nothing else.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jwt

from hubbub import Hub, HubApp, JWTAuthenticator, Limits, Namespace
from hubbub.brokers import Broker, MemoryBroker

SECRET = "client-tests-secret-0123456789abcdef"  # 36 bytes: HS256 needs 32+
API_KEY = "client-tests-api-key"


def mint(sub: str = "alice", *, ttl: float = 300.0, **claims: Any) -> str:
    """A connection token as the application's backend would mint it."""
    now = time.time()
    payload: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl), **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def _broker() -> Broker:
    url = os.environ.get("HUBBUB_TEST_REDIS_URL")
    if not url:
        return MemoryBroker()
    from hubbub.brokers.redis import RedisBroker

    return RedisBroker.from_url(url, timeout=1.0, health_check_interval=0.5)


def _hub(ping: float, pong_timeout: float) -> Hub:
    return Hub(
        broker=_broker(),
        anonymous=True,
        authenticator=JWTAuthenticator(secret=SECRET, leeway=0),
        broker_timeout=3.0,
        limits=Limits(
            ping_interval=ping,
            pong_timeout=pong_timeout,
            expiry_grace=0.5,
            queue_messages=20,
            queue_bytes=256 * 1024,
            close_timeout=1.0,
            command_rate=100_000.0,
            command_burst=100_000,
        ),
        namespaces=[
            Namespace(),
            Namespace(name="feed", history_size=1000, history_ttl=600.0),
            Namespace(name="short", history_size=5),
            Namespace(name="room", presence=True, join_leave=True),
        ],
    )


hub = _hub(0.5, 1.0)
app = HubApp(hub, api_keys=[API_KEY])
slow_hub = _hub(30.0, 30.0)
slow_app = HubApp(slow_hub, api_keys=[API_KEY])
