"""Who a client is: the :class:`Identity` and the :class:`Authenticator` extension point.

hubbub asks an authenticator once per connection, before the WebSocket is
accepted, so a refusal is an HTTP status (401/403) rather than a close after
the fact. Authenticators are small async callables; JWT verification and the
pure-ASGI middleware build on this seam.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ANONYMOUS", "Authenticator", "Identity"]


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
