"""Node control commands: what one node asks every other node to do for a user.

``Hub.disconnect``, ``Hub.subscribe_user`` and ``Hub.unsubscribe_user`` act on
this node's connections at once and publish a command on
:data:`CONTROL_CHANNEL` for the others. A command is a tagged union of
msgspec Structs on ``op``, encoded as JSON: the same document nodes of 0.1
send and read, so nodes of both versions can share a broker while a cluster
is upgraded. Each command names the node that sent it, which ignores its own.
"""

from __future__ import annotations

from typing import Final

import msgspec

from ._brokercall import now_ms
from .brokers import Publication
from .messages import JSON
from .protocol import KICKED

__all__ = [
    "CONTROL_CHANNEL",
    "ControlCommand",
    "DisconnectUser",
    "SubscribeUser",
    "UnsubscribeUser",
    "decode_control",
    "encode_control",
]

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
