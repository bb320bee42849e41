"""Fuzzing (hypothesis): any input to the decoders and ClientProtocol is answered, never raised."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hubbub._errors import InvalidMessage
from hubbub.auth import ANONYMOUS, Identity
from hubbub.limits import Limits
from hubbub.messages import (
    CHANNEL_PATTERN,
    JSON,
    MSGPACK,
    Codec,
    Error,
    Publish,
    Subscribe,
    Unsubscribe,
)
from hubbub.namespaces import Namespace, NamespaceRegistry
from hubbub.protocol import ClientProtocol, Close, Event, Execute, Send

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ERROR_CODES = {400, 403, 404, 409, 413, 429}
CLOSE_CODES = {1008, 1009}
CHANNEL = re.compile(CHANNEL_PATTERN.removeprefix("^").removesuffix("$"))

NAMESPACES = [
    Namespace(),
    Namespace(name="chat", presence=True, join_leave=True, history_size=10),
    Namespace(name="members", subscribe="authenticated", publish="authenticated"),
    Namespace(name="server", subscribe="nobody", publish="nobody"),
    Namespace(name="small", max_payload=16),
    Namespace(
        name="hooked",
        can_subscribe=lambda identity, channel: len(channel) % 2 == 0,
        can_publish=lambda identity, channel, data: len(data) % 2 == 0,
    ),
]
LIMITS = Limits(max_message_size=4096, max_channels=3, max_invalid=10)


# --------------------------------------------------------------------------- value trees


@dataclass(frozen=True)
class Obj:
    """An object/map as a list of pairs, so keys may repeat and be of any type."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Token:
    """A raw JSON number token, written as is (huge, tiny or out of float range)."""

    text: str


@dataclass(frozen=True)
class Deep:
    """``levels`` nested arrays, written without recursion (msgspec itself may overflow)."""

    levels: int


@dataclass(frozen=True)
class BadStr:
    """A MessagePack str whose bytes may not be valid UTF-8."""

    raw: bytes


def to_json(value: Any) -> str:
    """Serialise a value tree as JSON text (duplicate keys kept, keys made strings)."""
    if isinstance(value, Obj):
        items = (f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.pairs)
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, Token):
        return value.text
    if isinstance(value, Deep):
        return "[" * value.levels + "]" * value.levels
    if isinstance(value, BadStr):
        return json.dumps(value.raw.decode("utf-8", "replace"))
    if isinstance(value, bytes | msgspec.msgpack.Ext):
        return '"bytes"'
    return json.dumps(value)


def _length(small: int, mid: int, big: int, n: int) -> bytes:
    if n < 16 and small >= 0:
        return bytes([small | n])
    if n < 2**16:
        return bytes([mid]) + struct.pack(">H", n)
    return bytes([big]) + struct.pack(">I", n)


def to_msgpack(value: Any) -> bytes:
    """Serialise a value tree as MessagePack (duplicate and non-string keys kept)."""
    if isinstance(value, Obj):
        body = b"".join(to_msgpack(k) + to_msgpack(v) for k, v in value.pairs)
        return _length(0x80, 0xDE, 0xDF, len(value.pairs)) + body
    if isinstance(value, list):
        return _length(0x90, 0xDC, 0xDD, len(value)) + b"".join(to_msgpack(v) for v in value)
    if isinstance(value, Deep):
        return b"\x91" * (value.levels - 1) + b"\x90"
    if isinstance(value, BadStr):
        return b"\xdb" + struct.pack(">I", len(value.raw)) + value.raw
    if isinstance(value, Token):
        try:
            number: Any = int(value.text)
        except ValueError:
            number = float(value.text)
        return to_msgpack(number)
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            return msgspec.msgpack.encode(float(value))
    return msgspec.msgpack.encode(value)


NUMBER_TOKENS = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1E-400",
        "-0",
        "0.0",
        "1.5e308",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1" * 300,
    ]
).map(Token)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    NUMBER_TOKENS,
    st.binary(max_size=8),
    st.binary(max_size=8).map(BadStr),
    st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=4)),
)


DEEP = st.one_of(st.integers(60, 68), st.sampled_from([200, 1200])).map(Deep)

KEYS = st.one_of(
    st.sampled_from(["type", "id", "channel", "data", "token", "x"]),
    st.text(max_size=6),
    st.integers(-2, 2),
    st.none(),
    st.binary(max_size=3).map(BadStr),
)

VALUES = st.recursive(
    st.one_of(SCALARS, DEEP),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(st.tuples(KEYS, children), max_size=4).map(lambda p: Obj(tuple(p))),
    ),
    max_leaves=12,
)

TYPES = st.sampled_from(
    [
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "presence",
        "refresh",
        "pong",
        "ping",
        "message",
        "welcome",
        "nope",
        "",
    ]
)
CHANNELS = st.one_of(
    st.sampled_from(
        [
            "room",
            "other",
            "chat:lobby",
            "members:a",
            "server:feed",
            "small:x",
            "hooked:ab",
            "hooked:abc",
            "nope:x",
            "#alice",
            "#bob",
            "#",
            "",
            "a b",
            "room\n",
            "x" * 255,
            "x" * 256,
        ]
    ),
    st.text(max_size=8),
)
IDS = st.one_of(
    st.integers(min_value=-2, max_value=2**66),
    st.sampled_from([None, True, False, 1.5, "1", [1]]),
)
POSITIONS = st.one_of(
    st.builds(
        lambda o, e: Obj((("offset", o), ("epoch", e))),
        st.integers(-1, 2**65),
        st.text(max_size=4),
    ),
    VALUES,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": IDS,
    "channel": CHANNELS,
    "data": VALUES,
    "echo": st.one_of(st.booleans(), VALUES),
    "recover": POSITIONS,
    "since": POSITIONS,
    "history": st.one_of(st.integers(-1, 2**65), VALUES),
    "limit": st.one_of(st.integers(-1, 2**65), VALUES),
    "reverse": st.one_of(st.booleans(), VALUES),
    "token": st.one_of(st.text(max_size=10), VALUES),
}


@st.composite
def commands(draw: st.DrawFn) -> Obj:
    """A command-shaped object: mostly right, with wrong types, duplicates and extras."""
    pairs: list[tuple[Any, Any]] = []
    if draw(st.integers(0, 9)) > 0:
        pairs.append(("type", draw(TYPES)))
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=5, unique=True))
    pairs.extend((key, draw(FIELDS[key])) for key in keys)
    if draw(st.booleans()):
        pairs.append(("channel", draw(CHANNELS)))
    pairs.extend(draw(st.lists(st.tuples(KEYS, VALUES), max_size=2)))
    if pairs and draw(st.integers(0, 4)) == 0:
        pairs.append(draw(st.sampled_from(pairs)))  # a duplicate key
    return Obj(tuple(draw(st.permutations(pairs))))


GOOD_POSITIONS = st.builds(
    lambda o, e: Obj((("offset", o), ("epoch", e))), st.integers(0, 2**63), st.text(max_size=4)
)


@st.composite
def plausible_commands(draw: st.DrawFn) -> Obj:
    """A command that is valid but for its channel and payload, which may be anything."""
    kind = draw(
        st.sampled_from(
            ["subscribe", "unsubscribe", "publish", "history", "presence", "refresh", "pong"]
        )
    )
    pairs: list[tuple[Any, Any]] = [("type", kind)]
    if kind == "refresh":
        pairs.append(("token", draw(st.text(max_size=10))))
    elif kind != "pong":
        pairs.append(("channel", draw(CHANNELS)))
    if draw(st.booleans()):
        pairs.append(("id", draw(st.integers(1, 2**63))))
    if kind == "publish":
        pairs.append(("data", draw(VALUES)))
        if draw(st.booleans()):
            pairs.append(("echo", draw(st.booleans())))
    elif kind == "subscribe" and draw(st.booleans()):
        pairs.append(("recover", draw(GOOD_POSITIONS)))
    elif kind == "history" and draw(st.booleans()):
        pairs.append(("since", draw(GOOD_POSITIONS)))
        pairs.append(("limit", draw(st.integers(1, 100))))
    return Obj(tuple(draw(st.permutations(pairs))))


def mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with some bytes replaced."""
    buf = bytearray(data)
    for position, byte in flips:
        if buf:
            buf[position % len(buf)] = byte
    return bytes(buf)


MUTATIONS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)

JSON_FRAMES = st.one_of(
    plausible_commands().map(to_json),
    st.one_of(
        commands().map(to_json),
        st.builds(
            lambda c, m: mutate(to_json(c).encode(), m).decode("utf-8", "replace"),
            commands(),
            MUTATIONS,
        ),
        VALUES.map(to_json),
        st.text(max_size=64),
        st.binary(max_size=64),
        commands().map(lambda c: to_json(c).encode()),
        st.none(),
    ),
)
MSGPACK_FRAMES = st.one_of(
    plausible_commands().map(to_msgpack),
    st.one_of(
        commands().map(to_msgpack),
        st.builds(lambda c, m: mutate(to_msgpack(c), m), commands(), MUTATIONS),
        VALUES.map(to_msgpack),
        st.binary(max_size=64),
        st.text(max_size=64),
        commands().map(to_json),
        st.none(),
    ),
)
IDENTITIES = st.sampled_from([Identity(user="alice"), ANONYMOUS])


# --------------------------------------------------------------------------- properties


def new_protocol(identity: Identity, codec: Codec) -> ClientProtocol:
    """A fresh protocol already holding ``room`` (so 409 and unsubscribe are reachable)."""
    registry = NamespaceRegistry(NAMESPACES, Namespace(name="personal"))
    protocol = ClientProtocol(
        identity=identity, codec=codec, namespaces=registry, limits=LIMITS, now=0.0
    )
    protocol.add_channel("room", NAMESPACES[0])
    if identity.user:
        protocol.add_channel("#" + identity.user, registry.personal, server_side=True)
    return protocol


def check_events(protocol: ClientProtocol, events: list[Event]) -> None:
    """Only allowed events come out, a Close comes last, and Executes are sound."""
    other = MSGPACK if protocol.codec is JSON else JSON
    for index, event in enumerate(events):
        if isinstance(event, Send):
            assert isinstance(event.message, Error), event
            assert event.message.code in ERROR_CODES, event
            assert event.message.id is None or event.message.id > 0
            protocol.codec.encode(event.message)  # the reply can be sent
        elif isinstance(event, Close):
            assert event.code in CLOSE_CODES, event
            assert index == len(events) - 1
            assert protocol.closed
        else:
            assert isinstance(event, Execute), event
            command = event.command
            channel = getattr(command, "channel", None)
            if channel is not None:
                assert CHANNEL.fullmatch(channel), channel
            if isinstance(command, Publish):
                # Fan-out to subscribers of the other codec must not fail later.
                protocol.codec.convert(bytes(command.data), other)
            # Play the hub's part so later commands meet held channels.
            if isinstance(command, Subscribe) and event.namespace is not None:
                protocol.add_channel(command.channel, event.namespace)
            elif isinstance(command, Unsubscribe):
                protocol.remove_channel(command.channel)


def run(protocol: ClientProtocol, frames: list[str | bytes | None]) -> None:
    """Feed ``frames`` one by one, checking every answer."""
    for step, frame in enumerate(frames, start=1):
        was_closed = protocol.closed
        events = protocol.receive(frame, float(step))
        if was_closed:
            assert events == []
        check_events(protocol, events)


ALICE = Identity(user="alice")


@FUZZ
@given(identity=IDENTITIES, frames=st.lists(JSON_FRAMES, min_size=1, max_size=12))
@example(identity=ALICE, frames=['{"type":"subscribe","channel":"room\\n"}'])
@example(identity=ALICE, frames=['{"type":"publish","channel":"room","data":1e400}'])
@example(identity=ALICE, frames=['{"type":"publish","channel":"room","data":-9223372036854775809}'])
@example(identity=ALICE, frames=['{"type":"subscribe","channel":"\ud800"}'])
def test_json_protocol_survives_anything(
    identity: Identity, frames: list[str | bytes | None]
) -> None:
    """A JSON client sending anything only gets errors, executes or a 1008/1009 close."""
    run(new_protocol(identity, JSON), frames)


@FUZZ
@given(identity=IDENTITIES, frames=st.lists(MSGPACK_FRAMES, min_size=1, max_size=12))
@example(identity=ALICE, frames=[b"\x83\xa4type\xa9subscribe\xa7channel\xa2\xff\xfe\xa2id\x05"])
@example(identity=ALICE, frames=[b"\x82\xa4type\xa4pong\xa1\x80\xd9\x50" + b"x" * 80])
def test_msgpack_protocol_survives_anything(
    identity: Identity, frames: list[str | bytes | None]
) -> None:
    """A MessagePack client sending anything only gets errors, executes or a 1008/1009 close."""
    run(new_protocol(identity, MSGPACK), frames)


@FUZZ
@given(codec=st.sampled_from([JSON, MSGPACK]), frame=st.binary(max_size=256))
def test_arbitrary_bytes_to_either_protocol(codec: Codec, frame: bytes) -> None:
    """Arbitrary bytes, on either codec, are an error or (when too big) a close."""
    protocol = new_protocol(Identity(user="alice"), codec)
    check_events(protocol, protocol.receive(frame, 1.0))


@FUZZ
@given(codec=st.sampled_from([JSON, MSGPACK]), frame=st.text(max_size=256))
def test_arbitrary_text_to_either_protocol(codec: Codec, frame: str) -> None:
    """Arbitrary text, on either codec, is an error, an execute, or a close."""
    protocol = new_protocol(Identity(user="alice"), codec)
    check_events(protocol, protocol.receive(frame, 1.0))


@FUZZ
@given(
    codec=st.sampled_from([JSON, MSGPACK]),
    frame=st.one_of(
        st.binary(max_size=128),
        plausible_commands().map(to_msgpack),
        plausible_commands().map(lambda c: to_json(c).encode()),
        commands().map(to_msgpack),
        commands().map(lambda c: to_json(c).encode()),
        st.builds(lambda c, m: mutate(to_json(c).encode(), m), commands(), MUTATIONS),
    ),
)
@example(codec=JSON, frame=b'{"type":"subscribe","channel":"\xff"}')
@example(codec=MSGPACK, frame=b"\x81\xa4type\xa2\xc3\x28")
def test_decoders_raise_only_invalid_message(codec: Codec, frame: bytes) -> None:
    """``Codec.decode`` either returns a command or raises InvalidMessage, nothing else."""
    try:
        command = codec.decode(frame)
    except InvalidMessage as exc:
        assert exc.code == 400
        command_id = exc.command_id  # type: ignore[attr-defined]
        assert command_id is None or (type(command_id) is int and command_id > 0)
        return
    assert command.id is None or command.id > 0
