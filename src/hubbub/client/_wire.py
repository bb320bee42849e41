"""The client's side of the codecs: commands out, server messages in.

The message types and the two :class:`~hubbub.messages.Codec` singletons are
the server's own (``hubbub.messages``): the client reuses them and adds only
the decoders for the other direction, built once per codec.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..messages import (
    JSON,
    MSGPACK,
    ClientInfo,
    Codec,
    Command,
    Join,
    Leave,
    Message,
    ServerMessage,
)
from ._types import Publication

__all__ = ["Wire"]


class Wire:
    """Encodes commands and decodes server frames in one codec."""

    __slots__ = ("binary", "codec", "decoder")

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.binary = codec.binary
        self.decoder: msgspec.json.Decoder[ServerMessage] | msgspec.msgpack.Decoder[ServerMessage]
        if codec.binary:
            self.decoder = msgspec.msgpack.Decoder(ServerMessage)
        else:
            self.decoder = msgspec.json.Decoder(ServerMessage)

    def encode(self, command: Command) -> str | bytes:
        """A frame ready to send: ``str`` (a text frame) for JSON, ``bytes`` for MessagePack."""
        raw = self.codec.encode_value(command)
        return raw if self.binary else raw.decode()

    def raw(self, value: Any) -> msgspec.Raw:
        """A payload encoded once, carried untouched inside a ``publish``."""
        return msgspec.Raw(self.codec.encode_value(value))

    def decode(self, frame: str | bytes) -> ServerMessage:
        """Decode one server frame.

        Raises:
            msgspec.DecodeError: malformed, or a message type this client does not know.
        """
        return self.decoder.decode(frame.encode() if isinstance(frame, str) else frame)

    def publication(self, message: Message) -> Publication:
        """The application's view of a ``message``: its payload decoded."""
        return Publication(
            channel=message.channel,
            data=self.codec.decode_value(bytes(message.data)),
            offset=message.offset,
            epoch=message.epoch,
            ts=message.ts,
            sender=message.sender,
        )

    @staticmethod
    def presence_event(event: Join | Leave) -> Publication:
        """A ``join``/``leave`` as a publication of kind ``join``/``leave``."""
        who = ClientInfo(user=event.user, client=event.client, name=event.name, info=event.info)
        if isinstance(event, Join):
            return Publication(channel=event.channel, data=None, kind="join", sender=who)
        return Publication(channel=event.channel, data=None, kind="leave", sender=who)


WIRES: Final = {"json": Wire(JSON), "msgpack": Wire(MSGPACK)}
