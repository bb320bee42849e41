"""What a connection may ask of the hub: the :class:`SessionHost` interface.

Connections (:mod:`hubbub._connection`), the session path
(:mod:`hubbub._session`) and the two transports (:mod:`hubbub._websocket`,
:mod:`hubbub._sse`) depend on this interface, never on :class:`hubbub.Hub`:
the hub hands each one an implementation (``Hub.session_host``), so calls run
one way — shells → hub → connection — and a connection can be served by any
host that keeps these promises (a test double included).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._connection import Connection
    from ._stats import HubStats
    from .auth import Identity
    from .limits import Admission, Limits
    from .messages import Position
    from .namespaces import Namespace, NamespaceRegistry
    from .protocol import Execute

__all__ = ["SessionHost"]


class SessionHost(Protocol):
    """The hub as one connection sees it, from admission to the last accounting.

    ``stats`` and ``node`` are read on the delivery path: implement them as
    plain attributes.
    """

    stats: HubStats
    """The hub's counters (commands, messages and bytes sent, closes...)."""

    node: str
    """This node's id (log records, client ids)."""

    @property
    def limits(self) -> Limits:
        """Per-connection limits."""
        ...

    @property
    def namespaces(self) -> NamespaceRegistry:
        """The hub's channel namespaces."""
        ...

    @property
    def admission(self) -> Admission:
        """Handshake rate and connection caps per IP and user."""
        ...

    @property
    def state(self) -> str:
        """The hub's lifecycle state (``running``, ``draining``...)."""
        ...

    @property
    def running(self) -> bool:
        """Whether new connections are accepted."""
        ...

    async def authenticate(self, scope: Any) -> Identity:
        """The connecting client's identity (raises from the ``HubbubError`` tree)."""
        ...

    def user_connections(self, user: str) -> int:
        """Connections ``user`` holds open on this node (the per-user cap)."""
        ...

    def client_id(self) -> str:
        """A new client id, unique on this node."""
        ...

    def open(self, connection: Connection) -> None:
        """Register an accepted connection: it receives fan-out and is drained from now on."""
        ...

    async def welcome(self, connection: Connection) -> None:
        """Make the server-side subscriptions, then queue ``welcome`` first."""
        ...

    async def join(
        self, connection: Connection, channel: str, namespace: Namespace, recover: Position | None
    ) -> None:
        """Join ``channel`` as a client's ``subscribe`` would (an SSE stream's channels)."""
        ...

    async def execute(self, connection: Connection, event: Execute) -> None:
        """Run one validated client command; a refusal is answered ``error``."""
        ...

    def detach_all(self, connection: Connection) -> None:
        """Leave every channel the connection holds (it is closing)."""
        ...

    def forget(self, connection: Connection) -> None:
        """Unregister a finished connection."""
        ...
