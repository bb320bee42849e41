"""The client's exception tree: every failure the client reports is a :class:`ClientError`::

    ClientError
    ├── RequestFailed        the server answered the command with ``error`` (``code``, ``reason``)
    ├── RequestTimeout       no reply within the timeout (also a ``TimeoutError``)
    ├── ConnectionLost       the connection dropped before the reply came
    ├── ConnectFailed        no first connection: handshake refused (``status``) or unreachable
    ├── Disconnected         the server ended the session for good (``code``, ``reason``)
    └── ClientClosed         the client was used after its ``async with`` block

It is a tree of its own, apart from :class:`hubbub.HubbubError` (the server's
errors, each bound to a wire code): the client sees codes, it does not own them.
"""

from __future__ import annotations

__all__ = [
    "ClientClosed",
    "ClientError",
    "ConnectFailed",
    "ConnectionLost",
    "Disconnected",
    "RequestFailed",
    "RequestTimeout",
]


class ClientError(Exception):
    """Root of every error the hubbub client raises."""


class RequestFailed(ClientError):
    """The server refused a command with an ``error`` reply.

    Attributes:
        code: the protocol's error code (403 not allowed, 404 unknown namespace,
            409 already subscribed, 429 rate limited, 503 broker unavailable, ...).
        reason: the server's human-readable explanation.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class RequestTimeout(ClientError, TimeoutError):
    """No reply within the request timeout (the command may still have been executed)."""


class ConnectionLost(ClientError):
    """The connection dropped while a command waited for its reply.

    The command may or may not have been executed; the client reconnects on its
    own, so retrying is safe for reads and for publishes with an ``idempotency_key``.
    """


class ConnectFailed(ClientError):
    """The first connection could not be made.

    Attributes:
        status: the HTTP status of a refused handshake (401 bad token, 403 Origin
            or banned, 429 too many connections, 503 hub not running), or ``None``
            when the server could not be reached.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason if status is None else f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class Disconnected(ClientError):
    """The session ended for good: the server said not to reconnect, or reconnecting failed.

    Attributes:
        code: the close code (4403 kicked, 4401 token expired without a way to
            get a new one, 1008 invalid messages, ...) or the HTTP status of the
            last refused handshake; ``None`` when the server was unreachable.
        reason: why.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason if code is None else f"{code}: {reason}")
        self.code = code
        self.reason = reason


class ClientClosed(ClientError):
    """The client is not running (used outside its ``async with`` block)."""
