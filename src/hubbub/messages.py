"""Wire messages of protocol version 1 and the two codecs that carry them.

Every message is a msgspec ``Struct`` tagged on ``type``. Client commands form
one tagged union (:data:`Command`) decoded by one typed decoder per codec;
server messages are encoded by one encoder per codec. Publication payloads stay
``msgspec.Raw`` end to end, so the hub never decodes and re-encodes user data
(except once per publication when subscribers use the other codec).

New fields always get defaults (forward compatibility); unknown fields are
ignored on decode.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from ._errors import InvalidMessage

__all__ = [
    "JSON",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "Ack",
    "ClientInfo",
    "Codec",
    "Command",
    "Disconnect",
    "Error",
    "GetHistory",
    "GetPresence",
    "History",
    "Join",
    "Leave",
    "Message",
    "Ping",
    "Pong",
    "Position",
    "Presence",
    "Publish",
    "Refresh",
    "ServerMessage",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "codec_for_subprotocol",
]

PROTOCOL_VERSION: Final = 1
MAX_DEPTH: Final = 64
"""Nesting deeper than this anywhere in a message is ``error`` 400."""

# ``(?!\n)`` because ``$`` also matches before a final newline; ``\Z`` would say it
# better but is not valid in the JSON Schema (ECMA-262) that ``hubbub schema`` exports.
CHANNEL_PATTERN: Final = r"^[A-Za-z0-9_\-:.@#=/]{1,255}(?!\n)$"

_INT64_MAX: Final = 2**63 - 1
CommandId = Annotated[int, Meta(gt=0, le=_INT64_MAX)]
# The pattern is checked by Codec.decode (check_channel), with a memory of names already
# seen (msgspec's own check runs the regex on every frame); the schema still states it.
ChannelName = Annotated[str, Meta(extra_json_schema={"pattern": CHANNEL_PATTERN})]
_CHANNEL_SEARCH: Final = re.compile(CHANNEL_PATTERN).search
_KNOWN_CHANNELS: set[str] = set()
_KNOWN_CHANNELS_MAX: Final = 4096
BAD_CHANNEL: Final = "invalid channel name: 1-255 characters from [A-Za-z0-9_-:.@#=/]"
Offset = Annotated[int, Meta(ge=0, le=_INT64_MAX)]
Count = Annotated[int, Meta(ge=0, le=_INT64_MAX)]


class Position(Struct, frozen=True):
    """A place in a channel's stream: the offset is meaningful only under its epoch."""

    offset: Offset
    epoch: str


# --------------------------------------------------------------------------- client → server


class _Command(Struct, tag_field="type", omit_defaults=True):
    pass


def valid_channel(channel: str) -> bool:
    """Whether ``channel`` is a valid name (``CHANNEL_PATTERN``), from memory where it can.

    Checked after decoding rather than with ``Meta(pattern=...)`` so that a name
    seen before skips the regex: clients name the same few channels again and
    again, and the regex was a tenth of decoding a ``publish``. The memory
    holds valid names only and is emptied when full, so a client making up
    names costs the regex, never memory.
    """
    if channel in _KNOWN_CHANNELS:
        return True
    if _CHANNEL_SEARCH(channel) is None:
        return False
    if len(_KNOWN_CHANNELS) >= _KNOWN_CHANNELS_MAX:
        _KNOWN_CHANNELS.clear()
    _KNOWN_CHANNELS.add(channel)
    return True


class Subscribe(_Command, tag="subscribe"):
    channel: ChannelName
    id: CommandId | None = None
    recover: Position | None = None
    history: Count | None = None
    token: str | None = None


class Unsubscribe(_Command, tag="unsubscribe"):
    channel: ChannelName
    id: CommandId | None = None


class Publish(_Command, tag="publish"):
    channel: ChannelName
    data: Raw
    id: CommandId | None = None
    echo: bool | None = None
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class GetHistory(_Command, tag="history"):
    channel: ChannelName
    id: CommandId | None = None
    limit: Annotated[int, Meta(gt=0, le=_INT64_MAX)] | None = None
    since: Position | None = None
    reverse: bool = False


class GetPresence(_Command, tag="presence"):
    channel: ChannelName
    id: CommandId | None = None


class Refresh(_Command, tag="refresh"):
    token: str
    id: CommandId | None = None


class Pong(_Command, tag="pong"):
    id: CommandId | None = None


Command = Subscribe | Unsubscribe | Publish | GetHistory | GetPresence | Refresh | Pong
"""Every command a client may send."""


class _IdProbe(Struct):
    """Reads only ``id`` so an error can name the command even when the rest is invalid."""

    id: Any = None


# --------------------------------------------------------------------------- server → client


class _ServerMessage(Struct, tag_field="type", omit_defaults=True):
    pass


class ClientInfo(Struct, omit_defaults=True):
    """Who sent a publication, or who is present: stamped by the server, never by the client."""

    user: str
    client: str
    name: str | None = None
    info: dict[str, Any] | None = None


class Message(_ServerMessage, tag="message"):
    channel: str
    data: Raw
    ts: int
    offset: int | None = None
    epoch: str | None = None
    sender: ClientInfo | None = None


class Subscribed(_ServerMessage, tag="subscribed"):
    channel: str
    publications: list[Message]
    id: int | None = None
    offset: int | None = None
    epoch: str | None = None
    recovered: bool | None = None


class Welcome(_ServerMessage, tag="welcome", omit_defaults=False):
    client: str
    user: str
    node: str
    ping: float
    pong_timeout: float
    expires: int | None
    subscribed: list[Subscribed]
    version: int = PROTOCOL_VERSION


class Unsubscribed(_ServerMessage, tag="unsubscribed"):
    channel: str
    id: int | None = None


class _PresenceEvent(_ServerMessage):
    """A client came (``join``) or went (``leave``)."""

    channel: str
    user: str
    client: str
    info: dict[str, Any] | None = None
    name: str | None = None


class Join(_PresenceEvent, tag="join"):
    pass


class Leave(_PresenceEvent, tag="leave"):
    pass


class Ack(_ServerMessage, tag="ack"):
    id: int | None = None
    offset: int | None = None
    epoch: str | None = None
    expires: int | None = None


class History(_ServerMessage, tag="history"):
    channel: str
    publications: list[Message]
    id: int | None = None
    offset: int | None = None
    epoch: str | None = None


class Presence(_ServerMessage, tag="presence"):
    channel: str
    clients: dict[str, ClientInfo]
    users: int
    id: int | None = None


class Error(_ServerMessage, tag="error"):
    code: int
    reason: str
    id: int | None = None


class Ping(_ServerMessage, tag="ping"):
    pass


class Disconnect(_ServerMessage, tag="disconnect"):
    code: int
    reason: str
    reconnect: bool


ServerMessage = (
    Welcome
    | Subscribed
    | Unsubscribed
    | Message
    | Join
    | Leave
    | Ack
    | History
    | Presence
    | Error
    | Ping
    | Disconnect
)
"""Every message the server may send."""


# --------------------------------------------------------------------------- codecs

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_ONE_BRACKET = bytes.maketrans(b"{}", b"[]")
_DECODE_ERRORS = (msgspec.MsgspecError, ValueError, RecursionError)  # ValueError: bad UTF-8


def json_too_deep(buf: bytes) -> bool:
    """Whether a valid JSON document nests deeper than ``MAX_DEPTH``, in C-speed passes.

    Strings are taken out first (their brackets do not nest): escaped
    backslashes, then escaped quotes, are removed, so every quote left opens or
    closes a string; everything but brackets and quotes is dropped, the two
    kinds of brackets made one, and empty strings removed. What remains of
    the strings (those holding brackets) is cut out between quote pairs. Then
    each round removes the innermost pairs, ``[]``: a document that is not
    empty after ``MAX_DEPTH`` rounds nests deeper. A regex over the whole
    document did the same at 22 ns a byte (756 µs for a 34 KB payload, against
    197 µs now; docs/design.md, "The per-publication path").
    """
    # Cheap bound first: depth can never exceed the number of opening brackets.
    if buf.count(b"[") + buf.count(b"{") <= MAX_DEPTH:
        return False
    if b"\\" in buf:
        buf = buf.replace(b"\\\\", b"").replace(b'\\"', b"")
    compact = buf.translate(_ONE_BRACKET, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in compact:
        compact = b"".join(compact.split(b'"')[::2])
    for _ in range(MAX_DEPTH):
        if not compact:
            return False
        compact = compact.replace(b"[]", b"")
    return bool(compact)


def _object_too_deep(obj: object) -> bool:
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = list(item.keys()) + list(item.values())
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _json_compatible(obj: object) -> bool:
    """Whether a decoded MessagePack value has a JSON equivalent that decodes back the same.

    Refuses what JSON would silently change: non-string map keys, extension
    types and timestamps (which msgspec would turn into strings).
    """
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if type(key) is not str:
                    return False
                stack.append(value)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif not isinstance(item, str | int | float | bool | bytes | None):
            return False
    return True


class Codec:
    """One wire format: its subprotocol, frame kind, and the shared encoder/decoder.

    Instances are module-level singletons (:data:`JSON`, :data:`MSGPACK`) so the
    msgspec encoders and decoders are built once and reused by every connection.
    """

    __slots__ = ("_decoder", "_encoder", "_generic", "_probe", "binary", "name", "subprotocol")

    def __init__(self, name: Literal["json", "msgpack"]) -> None:
        self.name = name
        self.subprotocol = f"hubbub.v1.{name}"
        self.binary = name == "msgpack"
        self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder
        self._decoder: msgspec.json.Decoder[Command] | msgspec.msgpack.Decoder[Command]
        self._probe: msgspec.json.Decoder[_IdProbe] | msgspec.msgpack.Decoder[_IdProbe]
        self._generic: msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]
        if name == "json":
            self._encoder = msgspec.json.Encoder()
            self._decoder = msgspec.json.Decoder(Command)
            self._probe = msgspec.json.Decoder(_IdProbe)
            self._generic = msgspec.json.Decoder()
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._decoder = msgspec.msgpack.Decoder(Command)
            self._probe = msgspec.msgpack.Decoder(_IdProbe)
            self._generic = msgspec.msgpack.Decoder()

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"

    # -- frames ------------------------------------------------------------------------------

    def encode(self, message: ServerMessage) -> str | bytes:
        """Encode one server message into an ASGI-ready frame (``str`` for JSON)."""
        raw = self._encoder.encode(message)
        return raw if self.binary else raw.decode()

    def encode_bytes(self, message: ServerMessage) -> bytes:
        """Encode one server message into bytes in this codec."""
        return self._encoder.encode(message)

    def decode(self, frame: str | bytes) -> Command:
        """Decode and validate one client frame.

        Text must be valid Unicode and bytes valid UTF-8 everywhere, ignored
        fields included.

        Raises:
            InvalidMessage: with the command's ``id`` attached as ``exc.command_id``
                whenever it could be read.
        """
        try:
            # JSON: one C-speed pass proves the whole frame is valid UTF-8, which
            # msgspec does not check inside skipped fields or raw payloads.
            buf = frame.encode() if isinstance(frame, str) else frame
            if not self.binary and isinstance(frame, bytes):
                frame.decode()
        except UnicodeError:
            raise _invalid(f"{self.name} frame is not valid UTF-8", None) from None
        try:
            command = self._decoder.decode(buf)
        except RecursionError:
            raise _invalid("message nested too deeply", None) from None
        except msgspec.ValidationError as exc:
            raise _invalid(str(exc), self._read_id(buf)) from None
        except (msgspec.DecodeError, ValueError) as exc:
            raise _invalid(f"malformed {self.name}: {exc}", self._read_id(buf)) from None
        if self.binary:
            # The generic decode validates every string (UTF-8) and gives the depth.
            try:
                too_deep = _object_too_deep(self._generic.decode(buf))
            except _DECODE_ERRORS:
                raise _invalid("malformed msgpack", command.id) from None
        else:
            too_deep = json_too_deep(buf)
        if too_deep:
            raise _invalid(f"message nested deeper than {MAX_DEPTH} levels", command.id)
        channel = getattr(command, "channel", None)
        if channel is not None and not valid_channel(channel):
            raise _invalid(BAD_CHANNEL, command.id)
        if isinstance(command, Publish):
            self.check_data(command.data, command.id)
        return command

    def _read_id(self, frame: bytes) -> int | None:
        try:
            value = self._probe.decode(frame).id
        except _DECODE_ERRORS:
            return None
        return value if type(value) is int and 0 < value <= _INT64_MAX else None

    def check_data(self, data: Raw, command_id: int | None = None) -> None:
        """Refuse a payload that the other codec could not carry.

        JSON integers beyond 64 bits cannot become MessagePack; MessagePack
        extension types and non-string keys cannot become JSON. Checking once at
        publish time means fan-out can never fail halfway.
        """
        buf = bytes(data)
        try:
            if self.binary:
                if _json_compatible(self._generic.decode(buf)):
                    return
            else:
                # The conversion itself is the check, and the cheapest one: a regex
                # pre-filter for long numbers cost 4x a 100-byte payload's conversion
                # and 7x a 31 KB one's (docs/design.md, "The per-publication path").
                self.convert(buf, MSGPACK)
                return
        except (*_DECODE_ERRORS, OverflowError, TypeError):
            pass
        raise _invalid(
            "data cannot be represented in both codecs (integers must fit in 64 bits; "
            "MessagePack extension types and non-string keys are not allowed)",
            command_id,
        )

    def convert(self, data: bytes, target: Codec) -> bytes:
        """Re-encode a payload held in this codec into ``target``'s codec."""
        if target is self:
            return data
        value = self._generic.decode(data)
        if target.binary:
            return msgspec.msgpack.encode(value)
        return msgspec.json.encode(value)

    def decode_value(self, data: bytes) -> Any:
        """Decode any value in this codec (used by tests and the HTTP layer)."""
        return self._generic.decode(data)

    def encode_value(self, value: Any) -> bytes:
        """Encode any value in this codec."""
        return self._encoder.encode(value)


def _invalid(reason: str, command_id: int | None) -> InvalidMessage:
    exc = InvalidMessage(reason)
    exc.command_id = command_id  # type: ignore[attr-defined]
    return exc


JSON: Final = Codec("json")
MSGPACK: Final = Codec("msgpack")
CODECS: Final = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
CODECS_BY_NAME: Final[dict[str, Codec]] = {JSON.name: JSON, MSGPACK.name: MSGPACK}
"""Every codec by its name, as ``Publication.codec`` carries it: the one table of
codec names, which the hub (to re-encode a publication for each client's codec)
and the brokers (to refuse a stored or relayed publication in a codec hubbub does
not speak) both read. Treat it as read-only."""


def codec_for_subprotocol(name: str) -> Codec | None:
    """The codec a ``Sec-WebSocket-Protocol`` entry names, or ``None`` if unknown."""
    return CODECS.get(name)
