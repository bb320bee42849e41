"""Who a client is: the :class:`Identity` and the :class:`Authenticator` extension point.

hubbub asks an authenticator once per connection, before the WebSocket is
accepted, so a refusal is an HTTP status (401/403) rather than a close after
the fact. Authenticators are small async callables; JWT verification
(:class:`hubbub.JWTAuthenticator`) and the pure-ASGI middleware
(:class:`hubbub.AuthMiddleware`) build on this seam. :func:`find_token` reads
the token carriers of protocol §2 in their order; :func:`cookie_allowed` decides
whether a token from the ambient cookie may be used (design notes in ``docs/auth.md``);
:func:`check_identity` holds every identity to what both codecs can carry.

An authenticator may also offer ``async verify(token) -> Identity`` (used for the
``refresh`` command; :class:`RefreshingAuthenticator`) and ``async
verify_channel_token(token, *, user, channel)`` (channel tokens, protocol §4;
:class:`ChannelTokenAuthenticator`); the hub uses them where present.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import msgspec
from msgspec import Raw

from ._errors import AuthenticationFailed, HubbubError
from ._http import cookie as cookie_value
from .messages import MSGPACK

__all__ = [
    "ANONYMOUS",
    "DEFAULT_COOKIE",
    "Authenticator",
    "ChannelTokenAuthenticator",
    "Identity",
    "RefreshingAuthenticator",
    "check_identity",
    "cookie_allowed",
    "find_credentials",
    "find_token",
]

DEFAULT_COOKIE = "hubbub_token"
BEARER_SUBPROTOCOL = "bearer."

ALLOWED_ORIGINS = "hubbub.allowed_origins"
"""Scope key where :class:`~hubbub.AuthMiddleware` leaves its normalised Origin allow-list,
so that authenticators accept a cookie token from the origins it allows."""

Carrier = Literal["header", "subprotocol", "query", "cookie"]

_INT64 = 2**63


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated (or anonymous) party behind one connection.

    Attributes:
        user: the user id (the JWT ``sub``); ``""`` for an anonymous client.
        name: a display name shown to others, if any.
        info: a small JSON object shown to others as the sender and in presence.
        expires: unix seconds after which the credentials are no longer valid.
        channels: channels the client is subscribed to on connect, server-side.
        claims: the verified token payload, when the identity comes from a token
            (:class:`~hubbub.JWTAuthenticator` fills it), so that permission rules
            can read claims of their own (a namespace's ``ChannelClaim`` access).
            Never sent to any client.
    """

    user: str = ""
    name: str | None = None
    info: Mapping[str, Any] | None = field(default=None, compare=False)
    expires: int | None = None
    channels: tuple[str, ...] = ()
    claims: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

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


@runtime_checkable
class RefreshingAuthenticator(Protocol):
    """An authenticator that can also verify a bare connection token (the ``refresh`` command).

    ``verify`` returns the token's :class:`Identity` or raises
    :class:`hubbub.AuthenticationFailed` (401). Without it the hub verifies a
    refreshed token by calling the authenticator with a scope that carries only
    ``Authorization: Bearer <token>``. :class:`hubbub.JWTAuthenticator` is one.
    """

    async def verify(self, token: str) -> Identity: ...


@runtime_checkable
class ChannelTokenAuthenticator(Protocol):
    """An authenticator that can check channel tokens (protocol §4).

    ``verify_channel_token`` returns when ``token`` grants ``user`` a
    subscription to ``channel`` that the namespace would refuse, and raises
    :class:`hubbub.PermissionDenied` (403) otherwise. Without it a ``subscribe``
    carrying a channel token is refused like one without.
    :class:`hubbub.JWTAuthenticator` is one.
    """

    async def verify_channel_token(self, token: str, *, user: str, channel: str) -> None: ...


def find_token(
    scope: Mapping[str, Any],
    *,
    cookie: str | None = DEFAULT_COOKIE,
    query: str | None = "token",
) -> str | None:
    """The token a request carries, from the carriers of protocol §2, in their order.

    See :func:`find_credentials`, which also says which carrier held it.
    """
    found = find_credentials(scope, cookie=cookie, query=query)
    return found[0] if found is not None else None


def find_credentials(
    scope: Mapping[str, Any],
    *,
    cookie: str | None = DEFAULT_COOKIE,
    query: str | None = "token",
) -> tuple[str, Carrier] | None:
    """The token a request carries and its carrier, from the carriers of protocol §2.

    In order: ``Authorization: Bearer <jwt>``; a ``bearer.<jwt>`` subprotocol
    entry (WebSocket only); the query parameter named ``query``; the cookie
    named ``cookie``. The carriers a page chooses come before the cookie the
    browser adds by itself, so a fresh explicit token beats a stale cookie.
    ``None`` turns a carrier off. Returns ``None`` when no carrier holds a
    token. Pure: no I/O, never raises for any header content.
    """
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip(), "header"
    if scope.get("type") == "websocket":
        for entry in scope.get("subprotocols") or ():
            if entry.startswith(BEARER_SUBPROTOCOL) and len(entry) > len(BEARER_SUBPROTOCOL):
                return str(entry[len(BEARER_SUBPROTOCOL) :]), "subprotocol"
    if query:
        raw: bytes = scope.get("query_string", b"")
        found = None
        for key, item in parse_qsl(raw.decode("latin-1"), keep_blank_values=False):
            if key == query:
                found = item
        if found:
            return found, "query"
    if cookie:
        found = cookie_value(scope, cookie)
        if found is not None:
            return found, "cookie"
    return None


def cookie_allowed(scope: Mapping[str, Any], allowed: Collection[str] | None = None) -> bool:
    """Whether a token found in a cookie may be used for this request.

    The browser attaches the cookie to every request to the host, whichever
    page made it (another subdomain, or any site with ``SameSite=None``), so
    the cookie proves nothing about who asked. It counts only when the browser
    says the request comes from a page we trust: an ``Origin`` header naming
    this server itself (its ``Host``) or one of ``allowed`` (normalised origins,
    see :func:`normalise_origin`), plus those of an :class:`~hubbub.AuthMiddleware`
    in front; or ``Sec-Fetch-Site: same-origin`` (a same-origin ``EventSource``
    sends no ``Origin``), or ``none`` without ``Origin`` (a URL the user typed).
    Scripts can set neither header. A request with neither (a non-browser
    client, an old browser) is refused: such clients send ``Authorization``
    instead.
    """
    origin = host = fetch_site = None
    for name, value in scope.get("headers") or ():
        lower = name.lower()
        if lower == b"origin":
            origin = value.decode("latin-1")
        elif lower == b"host":
            host = value.decode("latin-1")
        elif lower == b"sec-fetch-site":
            fetch_site = value.decode("latin-1").strip().lower()
    if fetch_site == "same-origin":
        # The browser compared the page with the URL it opened: a proxy that
        # rewrites Host cannot mislead this one.
        return True
    if origin is None:
        return fetch_site == "none"
    normal = normalise_origin(origin, strict=False)
    if not normal:
        return False
    extra = scope.get(ALLOWED_ORIGINS)
    if (allowed is not None and normal in allowed) or (
        isinstance(extra, frozenset) and normal in extra
    ):
        return True
    return host is not None and _same_host(normal, host)


def _same_host(origin: str, host: str) -> bool:
    """Whether a normalised ``origin`` names the ``Host`` the request was sent to."""
    scheme, _, rest = origin.partition("://")
    try:
        parts = urlsplit("//" + host.strip())
        port = parts.port
    except ValueError:
        return False
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return False
    if port is None:
        port = 443 if scheme == "https" else 80
    return rest == f"{parts.hostname.lower()}:{port}"


def normalise_origin(origin: str, *, strict: bool = True) -> str:
    """``scheme://host:port`` with the default port made explicit, lower-cased.

    With ``strict`` (configuration), anything but a bare origin raises ValueError;
    otherwise (a request header) an unparsable value becomes ``""``, never allowed.
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        if strict:
            raise ValueError(f"not an origin: {origin!r}") from None
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        if strict:
            raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
        return ""
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


def check_identity(identity: object) -> Identity:
    """``identity`` if every client can be told about it, else AuthenticationFailed (401).

    An identity travels in ``welcome``, as the ``sender`` of every publication
    and in presence, to JSON and MessagePack clients alike. A value only one
    codec can carry (an integer beyond 64 bits, a non-string key, a lone
    surrogate, an object msgspec cannot encode) would otherwise fail the
    fan-out halfway or raise inside the ASGI app; it is refused at the
    handshake instead, as ``publish`` data is (``Codec.check_data``).
    """
    if not isinstance(identity, Identity):
        raise AuthenticationFailed("invalid identity: the authenticator returned no Identity")
    if not isinstance(identity.user, str):
        raise AuthenticationFailed("invalid identity: user must be a string")
    if identity.name is not None and not isinstance(identity.name, str):
        raise AuthenticationFailed("invalid identity: name must be a string")
    if identity.info is not None and not isinstance(identity.info, Mapping):
        raise AuthenticationFailed("invalid identity: info must be an object")
    expires = identity.expires
    if expires is not None and (
        isinstance(expires, bool) or not isinstance(expires, int) or not -_INT64 <= expires < _INT64
    ):
        raise AuthenticationFailed("invalid identity: expires must be a 64-bit integer")
    channels = identity.channels
    if not isinstance(channels, tuple) or not all(isinstance(c, str) for c in channels):
        raise AuthenticationFailed("invalid identity: channels must be strings")
    document = {
        "user": identity.user,
        "name": identity.name,
        "info": dict(identity.info) if identity.info is not None else None,
        "channels": list(channels),
    }
    try:
        msgspec.json.encode(document)
        MSGPACK.check_data(Raw(msgspec.msgpack.encode(document)))
    except (HubbubError, TypeError, ValueError, OverflowError, RecursionError):
        raise AuthenticationFailed(
            "invalid identity: not representable in both codecs (integers must fit in "
            "64 bits, keys must be strings, strings valid Unicode)"
        ) from None
    return identity
