"""Hubs behind JWT authentication, served by ``python -m hubbub serve auth_app:<name>``.

``app``: a hub behind :class:`hubbub.AuthMiddleware` with an HS256 secret, an
audience and an issuer, an Origin allow-list, a ``private`` namespace that only
channel tokens open, tight ``publish`` budgets and a short expiry grace.
``caps_app``: the same keys with small per-IP and per-user caps and a slow
handshake rate. ``rsa_hub``: a bare hub whose keys ``hubbub serve
--jwt-public-key`` supplies.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from hubbub import AuthMiddleware, Hub, HubApp, JWTAuthenticator, Limits, Namespace

SECRET = "s3cret-for-tests-only-0123456789abcdef"  # 38 bytes: HS256 needs 32+
AUDIENCE = "hubbub-tests"
ISSUER = "https://auth.example.com"
ORIGIN = "https://app.example.com"


def mint(
    sub: str = "alice",
    *,
    ttl: float = 300.0,
    key: str | bytes = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A token as the user's backend would mint it (override any claim with ``claims``)."""
    now = time.time()
    payload: dict[str, Any] = {
        "sub": sub,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": int(now),
        "exp": int(now + ttl),
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def authenticator() -> JWTAuthenticator:
    """The servers' authenticator."""
    return JWTAuthenticator(secret=SECRET, audience=AUDIENCE, issuer=ISSUER, leeway=0)


NAMESPACES = [
    Namespace(subscribe="authenticated", publish="authenticated"),
    Namespace(name="private", subscribe="nobody", publish="nobody"),
]

hub = Hub(
    authenticator=authenticator(),
    namespaces=NAMESPACES,
    limits=Limits(
        ping_interval=0.4,
        pong_timeout=5.0,
        expiry_grace=0.5,
        command_limits={"publish": (1.0, 3)},
        flood_refusals=10,
    ),
)
app = AuthMiddleware(HubApp(hub), authenticator=hub.authenticator, allowed_origins=[ORIGIN])

caps_hub = Hub(
    authenticator=authenticator(),
    namespaces=NAMESPACES,
    limits=Limits(
        max_connections_per_user=2,
        max_connections_per_ip=4,
        handshake_rate=0.5,
        handshake_burst=8,
    ),
)
caps_app = HubApp(caps_hub)

rsa_hub = Hub(namespaces=NAMESPACES)
