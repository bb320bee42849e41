"""The hubbub exception tree and the one table that maps errors to the wire.

Every runtime failure hubbub reports is a :class:`HubbubError`. Each subclass
names exactly one ``error.code`` (sent in an ``error`` frame), one WebSocket
close code (used where the failure ends the connection) and one HTTP status
(used where it happens before the upgrade or in the HTTP API)::

    HubbubError                      code  close  http
    ├── InvalidMessage               400   1008   400
    │   └── MessageTooLarge          413   1009   413
    ├── AuthenticationFailed         401   4401   401
    ├── PermissionDenied             403   4403   403
    ├── NotFound                     404   1008   404
    │   └── UnknownNamespace         404   1008   404
    ├── MethodNotAllowed             405   1008   405
    ├── AlreadySubscribed            409   1008   409
    ├── StreamGone                   410   1008   410
    ├── InvalidData                  422   1008   422
    ├── RateLimited                  429   4429   429
    ├── InternalError                500   1011   500
    └── Unavailable                  503   1013   503
        ├── BrokerUnavailable        503   1013   503
        └── HubNotRunning            503   1013   503

``MethodNotAllowed`` is for HTTP only (the API, the admin page, SSE): no
WebSocket command can cause it.

Configuration mistakes are not part of this tree: they raise ``ValueError`` or
``TypeError`` when the object is built.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadySubscribed",
    "AuthenticationFailed",
    "BrokerUnavailable",
    "HubNotRunning",
    "HubbubError",
    "InternalError",
    "InvalidData",
    "InvalidMessage",
    "MessageTooLarge",
    "MethodNotAllowed",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "StreamGone",
    "Unavailable",
    "UnknownNamespace",
]


class HubbubError(Exception):
    """Root of every runtime error hubbub raises.

    Attributes:
        code: the ``error.code`` of the wire protocol.
        close_code: the WebSocket close code used when this error ends a connection.
        http_status: the HTTP status used before the upgrade and in the HTTP API.
        reason: a human-readable explanation, safe to show to the client.
    """

    code: ClassVar[int] = 500
    close_code: ClassVar[int] = 1011
    http_status: ClassVar[int] = 500
    default_reason: ClassVar[str] = "internal error"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        super().__init__(self.reason)


class InvalidMessage(HubbubError):
    """A frame could not be decoded or a command failed validation."""

    code = 400
    close_code = 1008
    http_status = 400
    default_reason = "invalid message"


class MessageTooLarge(InvalidMessage):
    """A frame or a payload is larger than the configured limit."""

    code = 413
    close_code = 1009
    http_status = 413
    default_reason = "message too large"


class AuthenticationFailed(HubbubError):
    """The credentials are missing, malformed, expired or badly signed."""

    code = 401
    close_code = 4401
    http_status = 401
    default_reason = "authentication failed"


class PermissionDenied(HubbubError):
    """The client is authenticated but not allowed to do this."""

    code = 403
    close_code = 4403
    http_status = 403
    default_reason = "permission denied"


class NotFound(HubbubError):
    """The thing the command names does not exist (or is not held by the client)."""

    code = 404
    close_code = 1008
    http_status = 404
    default_reason = "not found"


class UnknownNamespace(NotFound):
    """The channel's namespace is not configured on this hub."""

    default_reason = "unknown namespace"


class MethodNotAllowed(HubbubError):
    """An HTTP request used a method the endpoint does not take (answered with ``Allow``).

    Args:
        reason: as for every error.
        allow: the ``Allow`` header's value, the methods the endpoint takes.
    """

    code = 405
    close_code = 1008
    http_status = 405
    default_reason = "method not allowed"

    def __init__(self, reason: str | None = None, *, allow: str = "GET") -> None:
        super().__init__(reason)
        self.allow = allow


class AlreadySubscribed(HubbubError):
    """The client already holds a subscription to this channel."""

    code = 409
    close_code = 1008
    http_status = 409
    default_reason = "already subscribed"


class StreamGone(HubbubError):
    """The epoch a command names belongs to a stream that no longer exists."""

    code = 410
    close_code = 1008
    http_status = 410
    default_reason = "stream epoch changed"


class InvalidData(HubbubError):
    """The payload is well-formed but fails the channel's schema."""

    code = 422
    close_code = 1008
    http_status = 422
    default_reason = "data does not match the channel schema"


class RateLimited(HubbubError):
    """The command was refused (not executed) because a limit was reached."""

    code = 429
    close_code = 4429
    http_status = 429
    default_reason = "rate limited"


class InternalError(HubbubError):
    """A fault inside hubbub; never caused by client input."""


class Unavailable(HubbubError):
    """The hub cannot serve the request right now; retrying later may succeed."""

    code = 503
    close_code = 1013
    http_status = 503
    default_reason = "service unavailable"


class BrokerUnavailable(Unavailable):
    """The broker could not be reached; the command was not executed."""

    default_reason = "broker unavailable"


class HubNotRunning(Unavailable):
    """The hub was not started (or is draining for shutdown)."""

    default_reason = "hub not running"
