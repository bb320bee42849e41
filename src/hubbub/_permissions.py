"""Who may subscribe to, read and publish into a channel: the one place for these rules.

Used alike by a WebSocket's commands (:class:`~hubbub.protocol.ClientProtocol`),
an SSE stream's channels (:mod:`hubbub._sse`) and the HTTP API's server-side
subscribe (:mod:`hubbub.api`), so that a rule and its refusal read the same
everywhere. Each check raises :class:`~hubbub.PermissionDenied` (403) with the
reason the client sees, or returns what the caller needs to decide next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

from ._errors import PermissionDenied
from .auth import Identity
from .namespaces import personal_owner

if TYPE_CHECKING:
    from .namespaces import Namespace

__all__ = ["check_publish", "check_read", "check_server_subscribe", "may_subscribe"]

PERSONAL_ONLY: Final = "a personal channel is only for its own user"


def may_subscribe(identity: Identity, channel: str, namespace: Namespace) -> bool | None:
    """Whether ``identity`` may subscribe to ``channel``.

    Returns ``None`` for the client's own personal channel (which never counts
    against ``max_channels``), else whether the namespace allows it; where it
    does not, only a channel token can grant it (protocol §4).

    Raises:
        PermissionDenied: another user's personal channel.
    """
    owner = personal_owner(channel)
    if owner is not None:
        if not owner or owner != identity.user:
            raise PermissionDenied(PERSONAL_ONLY)
        return None
    return namespace.may_subscribe(identity, channel)


def subscribe_refused(channel: str) -> PermissionDenied:
    """The refusal of a subscription the namespace forbids (and no token grants)."""
    return PermissionDenied(f"not allowed to subscribe to {channel!r}")


def check_read(
    identity: Identity,
    channel: str,
    namespace: Namespace,
    what: Literal["history", "presence"] = "history",
) -> None:
    """Refuse ``history``/``presence`` of a channel ``identity`` may not read.

    The namespace's ``history_access``/``presence_access`` decide, or by default
    its subscription rules. (A channel the client holds is readable whatever the
    rules: the caller checks that first.)
    """
    owner = personal_owner(channel)
    if owner is not None:
        if owner != identity.user or not owner:
            raise PermissionDenied(PERSONAL_ONLY)
    elif not namespace.may_read(identity, channel, what):
        raise PermissionDenied(f"not allowed to read {channel!r}")


def check_publish(identity: Identity, channel: str, namespace: Namespace, data: bytes) -> None:
    """Refuse a client's publication: personal channels are the server's; then the namespace."""
    if personal_owner(channel) is not None:
        raise PermissionDenied("only the server publishes into personal channels")
    if not namespace.may_publish(identity, channel, data):
        raise PermissionDenied(f"not allowed to publish into {channel!r}")


def check_server_subscribe(user: str, channel: str, namespace: Namespace) -> None:
    """Refuse a server-side subscribe (HTTP API) the namespace's own hook refuses for ``user``.

    The server may subscribe a user where clients may not subscribe themselves
    (``subscribe="nobody"``), but the namespace's ``can_subscribe`` hook is asked
    for the user (an ``Identity`` with only ``user`` set: the API acts for a
    user, not for one connection), and a personal channel only ever holds its
    own user.
    """
    owner = personal_owner(channel)
    if owner is not None:
        if owner != user:
            raise PermissionDenied(PERSONAL_ONLY)
    elif namespace.can_subscribe is not None and not namespace.can_subscribe(
        Identity(user=user), channel
    ):
        raise PermissionDenied(f"the namespace does not allow {user!r} in {channel!r}")
