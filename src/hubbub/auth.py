"""Who a client is: the :class:`Identity` and the :class:`Authenticator` extension point.

hubbub asks an authenticator once per connection, before the WebSocket is
accepted, so a refusal is an HTTP status (401/403) rather than a close after
the fact. Authenticators are small async callables; JWT verification
(:class:`hubbub.JWTAuthenticator`) and the pure-ASGI middleware
(:class:`hubbub.AuthMiddleware`) build on this seam. :func:`find_token` reads
the token carriers of protocol §2 in their order; design notes in ``docs/auth.md``.

An authenticator may also offer ``async verify(token) -> Identity`` (used for the
``refresh`` command) and ``async verify_channel_token(token, *, user, channel)``
(channel tokens, protocol §4); the hub uses them where present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol
from urllib.parse import parse_qsl

__all__ = ["ANONYMOUS", "DEFAULT_COOKIE", "Authenticator", "Identity", "find_token"]

DEFAULT_COOKIE = "hubbub_token"
BEARER_SUBPROTOCOL = "bearer."


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated (or anonymous) party behind one connection.

    Attributes:
        user: the user id (the JWT ``sub``); ``""`` for an anonymous client.
        name: a display name shown to others, if any.
        info: a small JSON object shown to others as the sender and in presence.
        expires: unix seconds after which the credentials are no longer valid.
        channels: channels the client is subscribed to on connect, server-side.
    """

    user: str = ""
    name: str | None = None
    info: Mapping[str, Any] | None = field(default=None, compare=False)
    expires: int | None = None
    channels: tuple[str, ...] = ()

    @property
    def anonymous(self) -> bool:
        """Whether this identity has no user id."""
        return not self.user


ANONYMOUS = Identity()


class Authenticator(Protocol):
    """Turns a connection's ASGI scope into an :class:`Identity`.

    Return ``None`` when the request carries no credentials at all (the hub then
    admits it as anonymous only where anonymous access is enabled). Raise
    :class:`hubbub.AuthenticationFailed` (401) for bad credentials and
    :class:`hubbub.PermissionDenied` (403) for a known but refused party. Never
    log the credentials themselves.
    """

    async def __call__(self, scope: Mapping[str, Any]) -> Identity | None: ...


def find_token(
    scope: Mapping[str, Any],
    *,
    cookie: str | None = DEFAULT_COOKIE,
    query: str | None = "token",
) -> str | None:
    """The token a request carries, from the carriers of protocol §2, in their order.

    ``Authorization: Bearer <jwt>``; a ``bearer.<jwt>`` subprotocol entry
    (WebSocket only); the cookie named ``cookie``; the query parameter named
    ``query``. ``None`` turns a carrier off. Returns ``None`` when no carrier
    holds a token. Pure: no I/O, never raises for any header content.
    """
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    if scope.get("type") == "websocket":
        for entry in scope.get("subprotocols") or ():
            if entry.startswith(BEARER_SUBPROTOCOL) and len(entry) > len(BEARER_SUBPROTOCOL):
                return str(entry[len(BEARER_SUBPROTOCOL) :])
    if cookie:
        for name, value in headers:
            if name.lower() == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except CookieError:
                    continue
                morsel = jar.get(cookie)
                if morsel is not None and morsel.value:
                    return str(morsel.value)
    if query:
        raw: bytes = scope.get("query_string", b"")
        found = None
        for key, item in parse_qsl(raw.decode("latin-1"), keep_blank_values=False):
            if key == query:
                found = item
        if found:
            return found
    return None
