"""One session path for every transport: admit, authenticate, open, welcome, run, forget, account.

:func:`serve_session` is the life of one client on any transport: the per-IP
admission (:meth:`Admission.admit <hubbub.limits.Admission.admit>`, which
AuthMiddleware calls too), the authentication and the per-user cap, the
registration with the hub, the transport's own start, the run of the
connection's reader and writer, and at the end the unregistration, the
``hubbub_connections_closed_total`` label and the disconnect log. A
:class:`Transport` supplies only what differs: its checks before admission,
how a refusal is answered (a WebSocket denial or a JSON error), which
:class:`~hubbub._connection.Connection` serves it and how it starts
(:mod:`hubbub._websocket`, :mod:`hubbub._sse`).

The session talks to the hub only through :class:`~hubbub._connection.SessionHost`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from ._closes import close_label
from ._connection import PEER_GONE, Connection
from ._errors import AuthenticationFailed, HubbubError, PermissionDenied, RateLimited
from ._http import Receive, Scope, SendCallable
from ._redact import redact
from ._stats import HubStats
from .auth import check_identity
from .limits import ADMITTED as ADMITTED
from .protocol import NORMAL, Close

if TYPE_CHECKING:
    from ._connection import SessionHost
    from .auth import Identity

__all__ = [
    "AUTH_FAILURE_REASONS",
    "Transport",
    "auth_failure",
    "handshake_failure_reason",
    "handshake_refused",
    "serve_session",
]

logger = logging.getLogger("hubbub.connection")
auth_logger = logging.getLogger("hubbub.auth")

AUTH_FAILURE_REASONS = frozenset(
    {"missing", "invalid_token", "forbidden", "origin", "refresh", "channel_token"}
)
"""The ``reason`` label of ``hubbub_auth_failures_total`` (docs/design.md, Observability)."""


def auth_failure(stats: HubStats | None, reason: str, exc: HubbubError, **fields: Any) -> None:
    """Count and log refused credentials: ``reason`` is a fixed label, never client data.

    The log carries the error's own reason (a fixed phrase such as "token
    expired") with any token-shaped text removed; the token itself never.
    """
    if stats is not None:
        stats.auth_failures[reason] = stats.auth_failures.get(reason, 0) + 1
    auth_logger.info(
        "refused credentials (%d): %s",
        exc.http_status,
        redact(exc.reason),
        extra={
            "event": "auth_failed",
            "reason": reason,
            "status": exc.http_status,
            "detail": redact(exc.reason),
            **fields,
        },
    )


def handshake_refused(stats: HubStats | None, kind: str, why: str, ip: str | None) -> None:
    """Count and log a handshake refused 429 (``kind``: ``handshake`` or ``user_connections``)."""
    if stats is not None:
        stats.rate_limited[kind] = stats.rate_limited.get(kind, 0) + 1
    extra = {"event": "rate_limited", "kind": kind, "ip": ip}
    logger.info("refused a WebSocket (429): %s", why, extra=extra)


def handshake_failure_reason(exc: HubbubError) -> str:
    """The ``auth_failures`` label of a refused handshake."""
    if isinstance(exc, PermissionDenied):
        return "forbidden"
    if isinstance(exc, AuthenticationFailed) and exc.reason == "credentials required":
        return "missing"
    return "invalid_token"


class Transport(Protocol):
    """What differs between a WebSocket and an SSE stream; :func:`serve_session` does the rest."""

    logger: logging.Logger
    """Where the connect and disconnect records go."""

    connect_fields: dict[str, Any]
    """Extra fields of the ``connect`` record (``transport``, ``codec``)."""

    disconnect_fields: dict[str, Any]
    """Extra fields of the ``disconnect`` record."""

    async def check(self, host: SessionHost) -> bool:
        """The transport's checks before admission: raise to refuse, ``False`` to end silently."""
        ...

    def authorize(self, host: SessionHost, identity: Identity) -> None:
        """The transport's checks once the client is known (raise to refuse)."""
        ...

    async def refuse(self, exc: HubbubError, retry_after: int | None, ip: str | None) -> None:
        """Answer a refused handshake (nothing was sent yet)."""
        ...

    def connection(self, host: SessionHost, identity: Identity) -> Connection:
        """The connection that serves this client (not registered yet)."""
        ...

    async def begin(self, host: SessionHost, connection: Connection) -> bool:
        """Accept the client (the connection is registered); ``False``: refused and answered."""
        ...

    async def welcome(self, host: SessionHost, connection: Connection) -> None:
        """Queue what the client gets first, once the connect record is written."""
        ...


async def serve_session(
    host: SessionHost, transport: Transport, scope: Scope, receive: Receive, send: SendCallable
) -> None:
    """Serve one client from handshake to the last accounting; never raises for client behaviour."""
    admission = host.admission
    ip: str | None = None
    held: str | None = None  # the address whose place this session holds
    try:
        retry_after: int | None = None
        try:
            if not await transport.check(host):
                return
            # admit() holds a place of the address at once (released in ``finally``),
            # so handshakes awaiting the authenticator together cannot all pass the cap.
            ip, took, refused = await admission.admit(scope)
            if took:
                held = ip
            if refused is not None:
                retry_after = refused[1]
                handshake_refused(host.stats, "handshake", refused[0], ip)
                raise RateLimited(refused[0])
            try:
                identity = check_identity(await host.authenticate(scope))
                if identity.user:
                    # No await from here to host.open: the per-user count is exact.
                    refused = admission.check_user(host.user_connections(identity.user))
                    if refused is not None:
                        retry_after = refused[1]
                        raise RateLimited(refused[0])
            except HubbubError as exc:
                if isinstance(exc, RateLimited):
                    handshake_refused(host.stats, "user_connections", exc.reason, ip)
                else:
                    auth_failure(host.stats, handshake_failure_reason(exc), exc, ip=ip)
                raise
            transport.authorize(host, identity)
        except HubbubError as exc:
            if held is not None:
                # Given back before answering: a client retrying at once finds its place free.
                admission.closed(held)
                held = None
            await transport.refuse(exc, retry_after, ip)
            return
        connection = transport.connection(host, identity)
        host.open(connection)
        try:
            if not await transport.begin(host, connection):
                return
            transport.logger.info(
                "client connected",
                extra={
                    **connection.log_fields(),
                    "event": "connect",
                    "ip": ip,
                    **transport.connect_fields,
                },
            )
            await transport.welcome(host, connection)
            await connection.run(receive, send)
        except PEER_GONE:
            pass
        finally:
            code, reason = connection.ending()
            connection.close(Close(NORMAL, "session ended", flush=False))
            if held is not None:
                admission.closed(held)
                held = None
            host.forget(connection)
            closes = host.stats.closes
            label = close_label(code)
            closes[label] = closes.get(label, 0) + 1
            transport.logger.info(
                "client disconnected (%d): %s",
                code,
                reason,
                extra={
                    **connection.log_fields(),
                    "event": "disconnect",
                    "code": code,
                    "reason": reason,
                    **transport.disconnect_fields,
                },
            )
    finally:
        if held is not None:
            admission.closed(held)
