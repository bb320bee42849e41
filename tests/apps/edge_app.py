"""Hubs for the hardening tests of ``tests/test_hardening_edge.py``.

Served by ``python -m hubbub serve edge_app:<name>``:

- ``slow_app`` / ``slow_mw_app``: an authenticator that awaits (as a JWKS fetch
  or a database lookup would) before naming the user from ``?user=``, with
  small per-IP and per-user caps; ``slow_mw_app`` puts the same kind of hub
  behind :class:`hubbub.AuthMiddleware` with ``admission=``.
- ``identity_app``: a custom authenticator that returns the identity ``?case=``
  names, some of which no codec can carry.
- ``budget_app``: a small command budget (10 at once), anonymous SSE streams.
- ``rate_app``: a handshake rate of 3 at once per IP, anonymous clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import anyio

from hubbub import AuthMiddleware, Hub, HubApp, Identity, Limits, Namespace


def _query(scope: Mapping[str, Any], name: str) -> str:
    return parse_qs(scope.get("query_string", b"").decode()).get(name, [""])[-1]


async def slow_authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """Wait a moment, as a JWKS fetch would, then trust ``?user=``."""
    await anyio.sleep(0.5)
    user = _query(scope, "user")
    return Identity(user=user) if user else None


def _slow_hub() -> Hub:
    return Hub(
        authenticator=slow_authenticate,
        limits=Limits(max_connections_per_ip=5, max_connections_per_user=3),
    )


slow_hub = _slow_hub()
slow_app = HubApp(slow_hub)

slow_mw_hub = _slow_hub()
slow_mw_app = AuthMiddleware(
    HubApp(slow_mw_hub), authenticator=slow_authenticate, admission=slow_mw_hub.admission
)

IDENTITIES: dict[str, Identity] = {
    "ok": Identity(user="ok", info={"n": 2**63 - 1}, expires=None),
    "big-info": Identity(user="big", info={"n": 2**70}),
    "big-expires": Identity(user="big", expires=2**70),
    "surrogate-name": Identity(user="sur", name="\ud800"),
    "surrogate-user": Identity(user="\udfff"),
    "int-keys": Identity(user="keys", info={1: "one"}),
    "not-json": Identity(user="obj", info={"x": object()}),
    "bool-expires": Identity(user="flag", expires=True),  # type: ignore[arg-type]
    "ok-big-expires": Identity(user="ok", expires=2**70),
}


async def identity_authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """The identity named by ``?case=`` or ``Authorization: Bearer <case>`` (IDENTITIES)."""
    case = _query(scope, "case")
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            case = value.decode().removeprefix("Bearer ")
    return IDENTITIES.get(case)


identity_hub = Hub(authenticator=identity_authenticate)
identity_app = HubApp(identity_hub)

budget_hub = Hub(
    anonymous=True,
    limits=Limits(command_rate=1.0, command_burst=10),
    namespaces=[Namespace(), Namespace(name="room", presence=True, join_leave=True)],
)
budget_app = HubApp(budget_hub)

rate_hub = Hub(anonymous=True, limits=Limits(handshake_rate=0.2, handshake_burst=3))
rate_app = HubApp(rate_hub)
