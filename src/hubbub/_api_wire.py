"""The HTTP API's answers that its Python client decodes too (``hubbub.client.api``).

A leaf beside ``messages``: the server (``hubbub.api``) encodes these Structs
and the client decodes them, so the client never imports the server to know
what an answer looks like. They also become the OpenAPI document's schemas.
"""

from __future__ import annotations

from msgspec import UNSET, Struct, UnsetType

__all__ = [
    "BroadcastResult",
    "ChannelCount",
    "ChannelResult",
    "ChannelsResult",
    "DisconnectResult",
    "Empty",
    "ErrorBody",
    "PositionResult",
]


class ErrorBody(Struct):
    """Every error: `code` equals the HTTP status."""

    code: int
    reason: str


class PositionResult(Struct):
    """The publication's position; empty for a channel without history."""

    offset: int | UnsetType = UNSET
    epoch: str | UnsetType = UNSET


class ChannelResult(Struct):
    """One channel of a broadcast: its position, or the error that kept it out."""

    channel: str
    offset: int | UnsetType = UNSET
    epoch: str | UnsetType = UNSET
    error: ErrorBody | UnsetType = UNSET


class BroadcastResult(Struct):
    results: list[ChannelResult]


class DisconnectResult(Struct):
    """How many connections were closed on this node (every node closes the user's)."""

    disconnected: int


class Empty(Struct):
    pass


class ChannelCount(Struct):
    channel: str
    subscribers: int


class ChannelsResult(Struct):
    """This node's channels that have local subscribers."""

    channels: list[ChannelCount]
