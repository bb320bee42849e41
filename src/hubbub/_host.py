"""The hub as its connections see it: :class:`HubHost`, the hub's session host.

Kept apart from :mod:`hubbub.hub` so that the hub's module holds its public API
and lifecycle; this adapter only forwards a connection's requests to the part
that owns the work (the registry, the joins, the command dispatch).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from itertools import count
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._connection import Connection
    from .auth import Identity
    from .hub import Hub
    from .limits import Admission, Limits
    from .messages import Position
    from .namespaces import Namespace, NamespaceRegistry
    from .protocol import Execute

__all__ = ["HubHost"]


class HubHost:
    """The hub's :class:`~hubbub._connection.SessionHost`: what its connections may ask of it.

    A separate object keeps the hub's own namespace for its public API, and
    each method calls the part that owns the work directly (no extra hop).
    """

    __slots__ = (
        "_all_gone",
        "_hub",
        "_ids",
        "_joins",
        "_registry",
        "end_of_read",
        "execute",
        "execute_now",
        "node",
        "stats",
    )

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        # The hub's dispatch itself, not a method calling it: one coroutine less per command.
        self.execute: Callable[[Connection, Execute], Coroutine[Any, Any, None]] = hub._execute
        self.execute_now: Callable[[Connection, Execute], bool] = hub._execute_now
        self.end_of_read: Callable[[], None] = hub._fanout.flush
        self._registry = hub._registry
        self._joins = hub._joins
        self._ids = count(1)
        self.stats = hub.stats
        self.node = hub.node

    @property
    def limits(self) -> Limits:
        return self._hub.limits

    @property
    def namespaces(self) -> NamespaceRegistry:
        return self._hub.namespaces

    @property
    def admission(self) -> Admission:
        return self._hub.admission

    @property
    def state(self) -> str:
        return self._hub.state

    @property
    def running(self) -> bool:
        return self._hub.running

    async def authenticate(self, scope: Any) -> Identity:
        hub = self._hub
        return await hub._commands.authenticate(scope, anonymous=hub.anonymous)

    def user_connections(self, user: str) -> int:
        return len(self._registry.users.get(user, ()))

    def client_id(self) -> str:
        return f"{self.node}.{next(self._ids)}"

    def open(self, connection: Connection) -> None:
        self._registry.add(connection)
        self.stats.connections_total += 1

    async def welcome(self, connection: Connection) -> None:
        await self._joins.welcome(connection, self.node)

    async def join(
        self, connection: Connection, channel: str, namespace: Namespace, recover: Position | None
    ) -> None:
        await self._joins.subscribe(connection, channel, namespace, recover=recover)

    def detach_all(self, connection: Connection) -> None:
        self._registry.detach_all(connection)

    def forget(self, connection: Connection) -> None:
        registry = self._registry
        registry.remove(connection)
        all_gone = self._hub._all_gone
        if not registry.connections and all_gone is not None:
            all_gone.set()
