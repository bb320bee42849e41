"""Pure ASGI middleware: authentication and Origin checks for HTTP and WebSocket alike.

:class:`AuthMiddleware` sets ``scope["user"]`` and ``scope["auth"]`` the way
Starlette's ``AuthenticationMiddleware`` does, so one middleware protects the
application's own HTTP routes and the hub's WebSocket. It is a plain ASGI class
(``BaseHTTPMiddleware`` skips WebSocket scopes, which would leave sockets open),
and passes every other scope type (``lifespan``) through untouched.

:class:`RedactTokens` is the logging filter that keeps tokens out of log lines:
uvicorn logs the full query string of every request, ``?token=`` included.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser

from ._errors import AuthenticationFailed, HubbubError, PermissionDenied, RateLimited
from ._http import (
    BEARER_CHALLENGE,
    Receive,
    Scope,
    SendCallable,
    deny,
    header,
    route_path,
    send_error,
)
from ._redact import RedactTokens as RedactTokens
from ._redact import install_log_redaction as install_log_redaction
from ._redact import redact as redact
from ._session import auth_failure, handshake_failure_reason, handshake_refused
from ._stats import HubStats
from .app import HubApp
from .auth import (
    ALLOWED_ORIGINS,
    DEFAULT_COOKIE,
    Authenticator,
    Identity,
    check_identity,
    find_credentials,
    normalise_origin,
)
from .limits import Admission

__all__ = ["AuthMiddleware", "HubbubUser", "RedactTokens", "install_log_redaction"]


class HubbubUser(BaseUser):
    """``scope["user"]`` for a request: a Starlette user wrapping the :class:`Identity`."""

    def __init__(self, identity: Identity) -> None:
        self.hubbub_identity = identity
        """The hub's :class:`Identity`; the hub reads it instead of authenticating again."""

    @property
    def is_authenticated(self) -> bool:
        return not self.hubbub_identity.anonymous

    @property
    def display_name(self) -> str:
        return self.hubbub_identity.name or self.hubbub_identity.user

    @property
    def identity(self) -> str:
        return self.hubbub_identity.user

    def __repr__(self) -> str:
        return f"<HubbubUser {self.hubbub_identity.user!r}>"


class AuthMiddleware:
    """Authenticate every HTTP and WebSocket request; check ``Origin`` on WebSockets.

    Args:
        app: the ASGI app to protect.
        authenticator: turns a scope into an :class:`Identity` (e.g. a
            :class:`~hubbub.JWTAuthenticator`); ``None`` checks Origin only.
        anonymous: let WebSockets without credentials through (as anonymous
            users). HTTP requests without credentials always pass, with an
            unauthenticated ``scope["user"]``: the routes decide, as with Starlette.
        allowed_origins: exact origins (``scheme://host[:port]``) allowed to open
            a WebSocket; a disallowed ``Origin`` is refused 403 before the upgrade
            (cross-site WebSocket hijacking). ``None``: no Origin check.
        require_origin: refuse WebSockets without an ``Origin`` header (browsers
            always send one; other clients usually do not).
        admission: the hub's :attr:`Hub.admission <hubbub.Hub.admission>`: pass it
            so handshake floods and connection caps per IP are refused (429) before
            any token is verified; the hub then does not count the handshake twice.
            This covers WebSockets, and the SSE streams of a ``HubApp`` the
            middleware wraps directly (elsewhere the hub counts a stream itself,
            once its token is verified).
        stats: where refusals are counted for ``/metrics`` (auth failures, 429s):
            by default the stats of the hub ``app`` serves, when ``app`` is a
            :class:`~hubbub.HubApp`.

    A bad token is refused 401 on both HTTP and WebSocket, before the upgrade,
    except a token in the cookie on an HTTP request, which counts as no
    credentials (see :meth:`_authenticate`). ``allowed_origins`` are also the
    origins whose pages may use the cookie (:func:`hubbub.auth.cookie_allowed`).
    """

    def __init__(
        self,
        app: Any,
        *,
        authenticator: Authenticator | None = None,
        anonymous: bool = False,
        allowed_origins: Iterable[str] | None = None,
        require_origin: bool = False,
        admission: Admission | None = None,
        stats: HubStats | None = None,
    ) -> None:
        if authenticator is not None and not callable(authenticator):
            raise TypeError("authenticator must be an async callable (see hubbub.Authenticator)")
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not a str")
        self.app = app
        self.authenticator = authenticator
        self.anonymous = anonymous
        self.allowed_origins = (
            frozenset(normalise_origin(o) for o in allowed_origins)
            if allowed_origins is not None
            else None
        )
        self.require_origin = require_origin
        if admission is not None and not isinstance(admission, Admission):
            raise TypeError("admission must be a Hub's admission (hubbub.limits.Admission)")
        self.admission = admission
        if stats is not None and not isinstance(stats, HubStats):
            raise TypeError("stats must be a Hub's stats (hubbub.HubStats)")
        if stats is None:
            served = getattr(app, "hub", None)
            stats = getattr(served, "stats", None) if served is not None else None
        self.stats = stats if isinstance(stats, HubStats) else None

    def set_allowed_origins(
        self, allowed_origins: Iterable[str] | None, *, require_origin: bool | None = None
    ) -> None:
        """Replace the Origin allow-list (``hubbub serve``'s SIGHUP reload); checked first.

        Takes effect from the next request; ``require_origin`` is kept unless given.
        """
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not a str")
        origins = (
            frozenset(normalise_origin(o) for o in allowed_origins)
            if allowed_origins is not None
            else None
        )
        self.allowed_origins = origins
        if require_origin is not None:
            self.require_origin = require_origin

    async def __call__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.allowed_origins is not None:
            # Authenticators accept a cookie token from the pages allowed here too.
            scope[ALLOWED_ORIGINS] = self.allowed_origins
        retry_after = None
        origin_checked = False
        reserved: str | None = None
        try:
            try:
                if kind == "websocket" or self._is_stream(scope):
                    if self.admission is not None:
                        # The hub's own admission (marks the scope, so the hub does not
                        # count it again); it holds the place at once: handshakes that
                        # await the authenticator together cannot all pass the per-IP cap.
                        ip, took, refused = await self.admission.admit(scope)
                        if refused is not None:
                            retry_after = refused[1]
                            raise RateLimited(refused[0])
                        if took:
                            reserved = ip
                if kind == "websocket":
                    self.check_origin(scope)
                    origin_checked = True
                identity = await self._authenticate(scope, kind)
                if identity is None and kind == "websocket" and not self.anonymous:
                    if self.authenticator is not None:
                        raise AuthenticationFailed("credentials required")
            except HubbubError as exc:
                if isinstance(exc, RateLimited):
                    handshake_refused(self.stats, "handshake", exc.reason, None)
                elif kind == "websocket" and not origin_checked:
                    auth_failure(self.stats, "origin", exc, transport=kind)
                else:
                    auth_failure(self.stats, handshake_failure_reason(exc), exc, transport=kind)
                if kind == "websocket":
                    message = await receive()
                    if message["type"] == "websocket.connect":
                        await deny(scope, send, exc, retry_after=retry_after)
                else:
                    await send_error(send, exc, retry_after=retry_after, challenge=BEARER_CHALLENGE)
                return
            if identity is not None:
                scope["user"] = HubbubUser(identity)
                scope["auth"] = AuthCredentials(["authenticated"])
            else:
                scope["user"] = HubbubUser(Identity())
                scope["auth"] = AuthCredentials()
            await self.app(scope, receive, send)
        finally:
            if reserved is not None:
                assert self.admission is not None
                self.admission.closed(reserved)

    def _is_stream(self, scope: Scope) -> bool:
        """Whether an HTTP request opens the served hub's SSE stream (a handshake too).

        Known only when the middleware wraps a :class:`~hubbub.HubApp` directly
        (``hubbub serve``); elsewhere the hub counts the stream after the token
        was verified.
        """
        return (
            isinstance(self.app, HubApp)
            and scope.get("method") == "GET"
            and route_path(scope) == "/sse"
        )

    async def _authenticate(self, scope: Scope, kind: str) -> Identity | None:
        """The request's identity; a bad *cookie* on an HTTP request counts as none.

        The browser sends the cookie with every request, so a stale or foreign
        one must not lock it out of routes that need no user (``/health``, the
        client module, the admin page, a stream opened with a fresh ``?token=``).
        Routes that do need a user authenticate again and refuse it there. A bad
        token the client chose to send (header, query) is still 401.
        """
        if self.authenticator is None:
            return None
        try:
            identity = await self.authenticator(scope)
            return check_identity(identity) if identity is not None else None
        except (AuthenticationFailed, PermissionDenied):
            if kind == "http" and self._carrier(scope) == "cookie":
                return None
            raise

    def _carrier(self, scope: Scope) -> str | None:
        authenticator = self.authenticator
        found = find_credentials(
            scope,
            cookie=getattr(authenticator, "cookie", DEFAULT_COOKIE),
            query=getattr(authenticator, "query", "token"),
        )
        return found[1] if found is not None else None

    def check_origin(self, scope: Scope) -> None:
        """Raise PermissionDenied (403) unless the WebSocket's ``Origin`` is allowed."""
        if self.allowed_origins is None:
            return
        origin = header(scope, b"origin")
        if origin is None:
            if self.require_origin:
                raise PermissionDenied("an Origin header is required")
            return
        if normalise_origin(origin, strict=False) not in self.allowed_origins:
            raise PermissionDenied("origin not allowed")
