"""What a client's commands do, other than joining a stream (:mod:`hubbub._join`).

Also how a connecting client is authenticated. One handler per command —
``publish``, ``history``, ``presence``, ``refresh`` and a subscribe's channel
token — each of which answers the connection or
raises from the :class:`~hubbub.HubbubError` tree (which the hub's dispatch
turns into an ``error`` reply). :meth:`Commands.publish` is also the path of
the server's own ``Hub.publish``: the history and idempotency options of the
namespace, the publication count, the optional trace span, one broker call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

import msgspec
from msgspec import Raw

from ._brokercall import BrokerCalls, now_ms
from ._connection import Connection
from ._errors import AuthenticationFailed, HubbubError, InvalidMessage, PermissionDenied
from ._http import query_param
from ._join import REPLY_FRAME_BYTES, encode_all, send_reply
from ._session import auth_failure
from ._stats import HubStats
from ._tracing import Tracing
from .auth import (
    Authenticator,
    ChannelTokenAuthenticator,
    Identity,
    RefreshingAuthenticator,
    check_identity,
)
from .brokers import Capability, HistoryOptions, Idempotency, Publication
from .messages import (
    JSON,
    Ack,
    ClientInfo,
    GetHistory,
    GetPresence,
    History,
    Message,
    Presence,
    Publish,
    Refresh,
    Subscribe,
)
from .namespaces import Namespace

__all__ = ["MAX_HISTORY_LIMIT", "Commands", "server_publication"]

MAX_HISTORY_LIMIT: Final = 100
"""The default and largest ``limit`` of the ``history`` command."""


class Commands:
    """The handlers of a client's ``publish``, ``history``, ``presence`` and ``refresh``."""

    __slots__ = ("_calls", "authenticator", "stats", "tracing")

    def __init__(
        self,
        calls: BrokerCalls,
        stats: HubStats,
        tracing: Tracing | None,
        authenticator: Authenticator | None,
    ) -> None:
        self._calls = calls
        self.stats = stats
        self.tracing = tracing
        self.authenticator = authenticator

    async def authenticate(self, scope: Any, *, anonymous: bool) -> Identity:
        """The identity of a connecting client: the middleware's, the authenticator's, or
        anonymous where allowed.

        Raises:
            AuthenticationFailed: no credentials, and anonymous clients are not admitted.
        """
        # An AuthMiddleware in front already verified the request: use its identity.
        found = getattr(scope.get("user"), "hubbub_identity", None)
        if isinstance(found, Identity) and found.user:
            return found
        identity = await self.authenticator(scope) if self.authenticator is not None else None
        if identity is None:
            if not anonymous:
                raise AuthenticationFailed("credentials required")
            identity = Identity(name=_anonymous_name(scope))
        return identity

    async def publish(
        self, publication: Publication, namespace: Namespace, idempotency_key: str | None = None
    ) -> Publication:
        """Publish through the broker with the namespace's history and idempotency options."""
        history = _history(namespace)
        idempotency = (
            Idempotency(idempotency_key, namespace.idempotency_window)
            if idempotency_key is not None
            else None
        )
        if (
            idempotency is not None
            and Capability.IDEMPOTENCY not in self._calls.broker.capabilities
        ):
            raise InvalidMessage("idempotency_key is not supported by this hub's broker")
        self.stats.publications += 1
        tracing = self.tracing
        if tracing is None:
            return await self._calls.publish(publication, history, idempotency)
        channel = publication.channel
        with tracing.publish(channel, namespace.name) as span:
            with tracing.broker_publish(channel, type(self._calls.broker).__name__):
                published = await self._calls.publish(publication, history, idempotency)
            if published.offset is not None and published.epoch is not None:
                span.set_attribute("hubbub.offset", published.offset)
                span.set_attribute("hubbub.epoch", published.epoch)
        return published

    async def client_publish(
        self, connection: Connection, command: Publish, namespace: Namespace
    ) -> None:
        published = await self.publish(
            _publication(connection, command, namespace), namespace, command.idempotency_key
        )
        connection.send_message(Ack(id=command.id, offset=published.offset, epoch=published.epoch))

    def client_publish_now(
        self, connection: Connection, command: Publish, namespace: Namespace
    ) -> bool:
        """:meth:`client_publish` without awaiting, where the broker allows (``False``: not done).

        The common case of the embedded broker: no idempotency key (its
        capability check and options) and no tracing (spans are entered in
        the publishing task).
        """
        if command.idempotency_key is not None or self.tracing is not None:
            return False
        publication = _publication(connection, command, namespace)
        self.stats.publications += 1  # counted before the broker answers, as publish() does
        published = self._calls.publish_now(publication, _history(namespace))
        if published is None:
            self.stats.publications -= 1
            return False
        connection.send_message(Ack(id=command.id, offset=published.offset, epoch=published.epoch))
        return True

    async def history(
        self, connection: Connection, command: GetHistory, namespace: Namespace
    ) -> None:
        if not namespace.history_size:
            reply = History(channel=command.channel, publications=[], id=command.id)
        else:
            limit = min(command.limit or MAX_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
            page = await self._calls.history(
                command.channel, since=command.since, limit=limit, reverse=command.reverse
            )
            encoded = encode_all(page.publications, connection.codec)
            # Over REPLY_FRAME_BYTES, keep those nearest where the page starts: after
            # ``since`` (the oldest), else at the top (the newest); the client reads on
            # from there. ``reverse`` flips which end of the list that is.
            newest = (command.since is None) != command.reverse
            if newest:
                encoded.reverse()
            kept, used = 0, 0
            while kept < len(encoded) and (
                not kept or used + len(encoded[kept]) <= REPLY_FRAME_BYTES
            ):
                used += len(encoded[kept])
                kept += 1
            encoded = encoded[:kept]
            if newest:
                encoded.reverse()
            reply = History(
                channel=command.channel,
                publications=cast("list[Message]", [Raw(raw) for raw in encoded]),
                id=command.id,
                offset=page.position.offset,
                epoch=page.position.epoch,
            )
        send_reply(connection, reply, self.stats)

    async def presence(self, connection: Connection, command: GetPresence) -> None:
        clients: Mapping[str, ClientInfo] = await self._calls.presence(command.channel)
        users = {info.user or client for client, info in clients.items()}
        connection.send_message(
            Presence(
                channel=command.channel, clients=dict(clients), users=len(users), id=command.id
            )
        )

    async def refresh(self, connection: Connection, command: Refresh) -> None:
        """Take a new connection token for the same user; answer ``ack`` with its ``expires``."""
        try:
            await self._refresh(connection, command)
        except HubbubError as exc:
            auth_failure(self.stats, "refresh", exc, **connection.log_fields())
            raise

    async def _refresh(self, connection: Connection, command: Refresh) -> None:
        if connection.identity.anonymous:
            raise PermissionDenied("an anonymous connection has no token to refresh")
        authenticator = self.authenticator
        if isinstance(authenticator, RefreshingAuthenticator):
            identity = await authenticator.verify(command.token)
        elif authenticator is not None:
            # Any authenticator reading the Authorization header can verify a bare token.
            scope = {
                "type": "websocket",
                "headers": [(b"authorization", b"Bearer " + command.token.encode())],
            }
            identity = await authenticator(scope)
        else:
            identity = None
        if not isinstance(identity, Identity) or not identity.user:
            raise AuthenticationFailed("the new token is not valid")
        check_identity(identity)  # what the handshake checks (an expiry beyond 64 bits)
        if identity.user != connection.identity.user:
            raise PermissionDenied("the new token is for another user")
        connection.refresh(identity)
        connection.send_message(Ack(id=command.id, expires=identity.expires))

    async def check_channel_token(self, connection: Connection, command: Subscribe) -> None:
        """Verify a channel token granting a subscription the namespace forbids (§4)."""
        authenticator = self.authenticator
        if (
            command.token is None
            or not isinstance(authenticator, ChannelTokenAuthenticator)
            or connection.identity.anonymous
        ):
            raise PermissionDenied(f"not allowed to subscribe to {command.channel!r}")
        try:
            await authenticator.verify_channel_token(
                command.token, user=connection.identity.user, channel=command.channel
            )
        except HubbubError as exc:
            extra = connection.log_fields()
            auth_failure(self.stats, "channel_token", exc, channel=command.channel, **extra)
            raise


def _anonymous_name(scope: Any) -> str | None:
    """The display name an anonymous client asked for with ``?name=``, cleaned up."""
    value = query_param(scope, "name")
    if value is None:
        return None
    name = "".join(ch for ch in value if ch.isprintable()).strip()[:64]
    return name or None


def server_publication(
    channel: str, namespace: Namespace, data: Any, json: bytes | None
) -> Publication:
    """What ``Hub.publish`` sends: ``data`` encoded (or ``json`` checked) and validated.

    Raises:
        InvalidMessage: the data cannot be encoded, or ``json`` is not a JSON document.
        InvalidData: the data does not match the namespace's schema.
    """
    if json is None:
        try:
            json = msgspec.json.encode(data)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidMessage(f"data cannot be encoded as JSON: {exc}") from None
    else:
        try:
            msgspec.json.decode(json)
        except (msgspec.DecodeError, RecursionError):
            raise InvalidMessage("json is not a valid JSON document") from None
    JSON.check_data(Raw(json))
    json = namespace.validate(json, JSON.name)
    return Publication(channel=channel, data=json, codec="json", ts=now_ms())


def _history(namespace: Namespace) -> HistoryOptions | None:
    if not namespace.history_size:
        return None
    return HistoryOptions(namespace.history_size, namespace.history_ttl)


def _publication(connection: Connection, command: Publish, namespace: Namespace) -> Publication:
    echo = namespace.echo if command.echo is None else command.echo
    return Publication(
        channel=command.channel,
        data=bytes(command.data),
        codec=connection.codec.name,
        ts=now_ms(),
        sender=connection.info,
        exclude=None if echo else connection.id,
    )
