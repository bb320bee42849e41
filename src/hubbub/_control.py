"""Node control commands: what one node asks every other node to do for a user.

``Hub.disconnect``, ``Hub.subscribe_user`` and ``Hub.unsubscribe_user`` act on
this node's connections at once and publish a command on
:data:`CONTROL_CHANNEL` for the others (:class:`Control`). A command is a tagged union of
msgspec Structs on ``op``, encoded as JSON: the same document nodes of 0.1
send and read, so nodes of both versions can share a broker while a cluster
is upgraded. Each command names the node that sent it, which ignores its own.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import msgspec

from ._brokercall import BrokerCalls, Spawn, now_ms
from ._errors import HubbubError
from ._join import Joins
from ._registry import Registry
from .brokers import Publication
from .messages import JSON, Unsubscribed
from .namespaces import Namespace, NamespaceRegistry, validate_channel
from .protocol import KICKED, Close

__all__ = [
    "CONTROL_CHANNEL",
    "Control",
    "ControlCommand",
    "DisconnectUser",
    "SubscribeUser",
    "UnsubscribeUser",
    "decode_control",
    "encode_control",
]

logger = logging.getLogger("hubbub")

CONTROL_CHANNEL: Final = "$control"
"""The channel nodes use to command each other (never a valid client channel name)."""


class DisconnectUser(msgspec.Struct, tag_field="op", tag="disconnect"):
    """Close every connection of ``user`` with ``code`` and ``reason``."""

    node: str
    user: str = ""
    reason: str = ""
    code: int = KICKED


class SubscribeUser(msgspec.Struct, tag_field="op", tag="subscribe"):
    """Subscribe every connection of ``user`` to ``channel`` (server-side)."""

    node: str
    user: str = ""
    channel: str = ""


class UnsubscribeUser(msgspec.Struct, tag_field="op", tag="unsubscribe"):
    """Remove ``channel`` from every connection of ``user``."""

    node: str
    user: str = ""
    channel: str = ""


ControlCommand = DisconnectUser | SubscribeUser | UnsubscribeUser

_decoder: Final = msgspec.json.Decoder(ControlCommand)
_encoder: Final = msgspec.json.Encoder()


def encode_control(command: ControlCommand) -> Publication:
    """The publication that carries ``command`` to every node."""
    return Publication(
        channel=CONTROL_CHANNEL,
        data=_encoder.encode(command),
        codec=JSON.name,
        ts=now_ms(),
        kind="control",
    )


def decode_control(data: bytes) -> ControlCommand | None:
    """The command ``data`` carries, or ``None`` for junk (and commands of unknown ``op``)."""
    try:
        return _decoder.decode(data)
    except (msgspec.MsgspecError, ValueError):
        return None


class Control:
    """Acts on a user's connections here, and tells the other nodes to do the same."""

    __slots__ = ("_calls", "_joins", "_namespaces", "_node", "_registry", "_spawn")

    def __init__(
        self,
        node: str,
        registry: Registry,
        joins: Joins,
        calls: BrokerCalls,
        namespaces: NamespaceRegistry,
        spawn: Spawn,
    ) -> None:
        self._node = node
        self._registry = registry
        self._joins = joins
        self._calls = calls
        self._namespaces = namespaces
        self._spawn = spawn

    async def disconnect(self, user: str, reason: str, code: int) -> int:
        """Close the user's connections on every node; returns how many closed here."""
        closed = self._disconnect_here(user, reason, code)
        await self._send(DisconnectUser(self._node, user, reason, code))
        return closed

    async def subscribe(self, user: str, channel: str, namespace: Namespace) -> None:
        """Subscribe the user's connections on every node (server-side)."""
        await self._joins.subscribe_user(self._registry.users.get(user, ()), channel, namespace)
        await self._send(SubscribeUser(self._node, user, channel))

    async def unsubscribe(self, user: str, channel: str) -> None:
        """Remove ``channel`` from the user's connections on every node."""
        self._unsubscribe_here(user, channel)
        await self._send(UnsubscribeUser(self._node, user, channel))

    def receive(self, publication: Publication) -> None:
        """A command from another node (or junk, which is logged and dropped)."""
        command = decode_control(publication.data)
        if command is None:
            logger.warning("dropped a malformed control command")
            return
        if command.node == self._node:
            return
        match command:
            case DisconnectUser(user=user, reason=reason, code=code):
                self._disconnect_here(user, reason, code)
            case SubscribeUser(user=user, channel=channel):
                self._spawn(partial(self.subscribe_commanded, user, channel))
            case UnsubscribeUser(user=user, channel=channel):
                self._unsubscribe_here(user, channel)

    async def subscribe_commanded(self, user: str, channel: str) -> None:
        """Another node's ``subscribe_user``: bounded like all background broker calls."""
        try:
            validate_channel(channel)
            async with self._calls.limiter():
                await self._joins.subscribe_user(
                    self._registry.users.get(user, ()), channel, self._namespaces.resolve(channel)
                )
        except HubbubError as exc:
            logger.warning("control subscribe to %r failed: %s", channel, exc.reason)

    async def _send(self, command: ControlCommand) -> None:
        await self._calls.publish(encode_control(command), None)

    def _disconnect_here(self, user: str, reason: str, code: int) -> int:
        connections = list(self._registry.users.get(user, ()))
        for connection in connections:
            connection.close(Close(code, reason, flush=True))
        return len(connections)

    def _unsubscribe_here(self, user: str, channel: str) -> None:
        for connection in list(self._registry.users.get(user, ())):
            if channel in connection.protocol.channels:
                self._registry.detach(connection, channel)
                connection.send_message(Unsubscribed(channel=channel))
