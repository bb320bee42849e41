"""Typed payloads hubbub ships: chat messages and notifications.

A chat namespace validates every publication against a msgspec type (the
client's ``data`` must decode into it, or the publish gets ``error`` 422 that
names the failing field), and the server stamps who sent it and when.
Notifications are what :meth:`hubbub.Hub.notify` puts in a user's personal
channel.
"""

from __future__ import annotations

import time
import uuid
from functools import cache
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

__all__ = ["ChatMessage", "Notification", "chat_message_type"]

DEFAULT_MAX_LENGTH = 2000


@cache
def chat_message_type(max_length: int = DEFAULT_MAX_LENGTH) -> type[Struct]:
    """The chat message schema with ``text`` of at most ``max_length`` characters.

    Fields: ``text`` (1 to ``max_length`` characters), optional ``reply_to``
    (the offset of the message answered), optional ``nonce`` (chosen by the
    client, at most 128 characters, echoed back in the ``message`` so the
    client can match its own publication). Unknown fields are ignored.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError("max_length must be a positive integer")
    return msgspec.defstruct(
        "ChatMessage",
        [
            ("text", Annotated[str, Meta(min_length=1, max_length=max_length)]),
            ("reply_to", Annotated[int, Meta(ge=1)] | None, None),
            ("nonce", Annotated[str, Meta(max_length=128)] | None, None),
        ],
        omit_defaults=True,
        module=__name__,
    )


ChatMessage = chat_message_type()
"""The default chat message schema (``text`` of at most 2,000 characters)."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Notification(Struct, omit_defaults=False):
    """A notification pushed to every connection of one user (``Hub.notify``).

    Attributes:
        type: an application-defined kind (``"mention"``, ``"invoice.paid"``…).
        title: a short headline.
        message: the body text.
        data: free-form details for the application.
        id: unique id (a random UUID unless given).
        ts: creation time, unix milliseconds.
        read: always false when pushed; the application tracks reading.
    """

    type: str = "notification"
    title: str = ""
    message: str = ""
    data: Any = None
    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    ts: int = msgspec.field(default_factory=_now_ms)
    read: bool = False
