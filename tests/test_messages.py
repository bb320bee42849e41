"""Wire messages: decoding and validating client commands, encoding server messages, codecs."""

from __future__ import annotations

import base64
import datetime
import re
import struct
from typing import Any

import msgspec
import pytest
from msgspec import Raw

from hubbub import messages
from hubbub._errors import InvalidMessage
from hubbub.messages import (
    CHANNEL_PATTERN,
    JSON,
    MSGPACK,
    PROTOCOL_VERSION,
    Ack,
    ClientInfo,
    Codec,
    Disconnect,
    Error,
    GetHistory,
    GetPresence,
    History,
    Join,
    Leave,
    Message,
    Ping,
    Pong,
    Position,
    Presence,
    Publish,
    Refresh,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    codec_for_subprotocol,
)

CODECS = [JSON, MSGPACK]
MAX_DEPTH = 64


def encode(codec: Codec, value: Any) -> bytes:
    """A client frame holding ``value`` in ``codec``."""
    if codec.binary:
        return msgspec.msgpack.encode(value)
    return msgspec.json.encode(value)


def invalid(codec: Codec, frame: bytes) -> InvalidMessage:
    """Decode ``frame`` expecting InvalidMessage (400), and return the error."""
    with pytest.raises(InvalidMessage) as info:
        codec.decode(frame)
    assert info.value.code == 400
    return info.value


def nested(levels: int) -> Any:
    """``levels`` nested arrays: ``nested(1) == []``, ``nested(2) == [[]]``."""
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


# --------------------------------------------------------------------------- commands

COMMANDS: list[tuple[dict[str, Any], Any]] = [
    ({"type": "subscribe", "channel": "room"}, Subscribe(channel="room")),
    (
        {
            "type": "subscribe",
            "channel": "chat:room",
            "id": 1,
            "recover": {"offset": 3, "epoch": "e1"},
            "history": 10,
            "token": "jwt",
        },
        Subscribe(channel="chat:room", id=1, recover=Position(3, "e1"), history=10, token="jwt"),
    ),
    ({"type": "unsubscribe", "channel": "room", "id": 2}, Unsubscribe(channel="room", id=2)),
    (
        {"type": "history", "channel": "room", "id": 3},
        GetHistory(channel="room", id=3),
    ),
    (
        {
            "type": "history",
            "channel": "room",
            "id": 3,
            "limit": 5,
            "since": {"offset": 0, "epoch": "x"},
            "reverse": True,
        },
        GetHistory(channel="room", id=3, limit=5, since=Position(0, "x"), reverse=True),
    ),
    ({"type": "presence", "channel": "room", "id": 4}, GetPresence(channel="room", id=4)),
    ({"type": "refresh", "token": "jwt", "id": 5}, Refresh(token="jwt", id=5)),
    ({"type": "pong"}, Pong()),
    ({"type": "pong", "id": 6}, Pong(id=6)),
]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(("fields", "expected"), COMMANDS)
def test_every_command_decodes(codec: Codec, fields: dict[str, Any], expected: Any) -> None:
    """Every client command decodes from both codecs into its Struct."""
    assert codec.decode(encode(codec, fields)) == expected


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(
    ("data", "echo"), [({"text": "hi"}, None), ([1, "two", None], True), ("s", False), (0, None)]
)
def test_publish_decodes_with_raw_data(codec: Codec, data: Any, echo: bool | None) -> None:
    """``publish`` keeps ``data`` as the raw bytes of the value, in the frame's codec."""
    fields = {"type": "publish", "channel": "room", "data": data, "id": 9}
    if echo is not None:
        fields["echo"] = echo
    command = codec.decode(encode(codec, fields))
    assert isinstance(command, Publish)
    assert (command.channel, command.id, command.echo) == ("room", 9, echo)
    assert codec.decode_value(bytes(command.data)) == data


def test_publish_data_is_kept_byte_for_byte() -> None:
    """A JSON payload is passed through exactly as the client wrote it, whitespace included."""
    payload = b'{ "b" : [1, 2.50, "\\u00e9"],"a":null }'
    command = JSON.decode(b'{"type":"publish","channel":"room","data":' + payload + b"}")
    assert isinstance(command, Publish)
    assert bytes(command.data) == payload


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(("fields", "expected"), COMMANDS)
def test_unknown_fields_are_ignored(codec: Codec, fields: dict[str, Any], expected: Any) -> None:
    """Fields a command does not define are skipped (forward compatibility)."""
    extra = {"future": {"nested": [1, {"x": None}]}, "zzz": "v", "flag": True}
    assert codec.decode(encode(codec, {**extra, **fields, "later": 1.5})) == expected


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("kind", ["nope", "SUBSCRIBE", "", "message", "welcome", "ping"])
def test_unknown_type_is_invalid(codec: Codec, kind: str) -> None:
    """An unknown ``type`` (server-only types included) is InvalidMessage carrying the id."""
    exc = invalid(codec, encode(codec, {"type": kind, "channel": "room", "id": 7}))
    assert exc.command_id == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(
    "value",
    [
        {"id": 1},
        {"type": None},
        {"type": 5},
        {"type": ["subscribe"]},
        [{"type": "pong"}],
        "pong",
        None,
        1,
        {},
    ],
)
def test_missing_or_wrong_type_is_invalid(codec: Codec, value: Any) -> None:
    """A frame that is not an object with a string ``type`` is InvalidMessage."""
    invalid(codec, encode(codec, value))


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("bad_id", [0, -1, True, False, 1.5, 1.0, "1", [1], {"id": 1}])
def test_id_must_be_a_positive_integer(codec: Codec, bad_id: Any) -> None:
    """An ``id`` that is not a positive integer is InvalidMessage without an id."""
    exc = invalid(codec, encode(codec, {"type": "subscribe", "channel": "room", "id": bad_id}))
    assert exc.command_id is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_id_may_be_absent_or_null(codec: Codec) -> None:
    """A command without an ``id`` (or with ``id: null``) decodes with ``id`` None."""
    assert codec.decode(encode(codec, {"type": "pong", "id": None})) == Pong()
    assert codec.decode(encode(codec, {"type": "pong"})) == Pong()


INVALID_WITH_ID: list[dict[str, Any]] = [
    {"type": "subscribe", "channel": "bad channel"},
    {"type": "subscribe", "channel": ""},
    {"type": "subscribe"},
    {"type": "subscribe", "channel": 5},
    {"type": "subscribe", "channel": "room", "history": -1},
    {"type": "subscribe", "channel": "room", "recover": {"offset": -1, "epoch": "e"}},
    {"type": "subscribe", "channel": "room", "recover": {"offset": 1}},
    {"type": "subscribe", "channel": "room", "token": 5},
    {"type": "unsubscribe", "channel": None},
    {"type": "publish", "channel": "room"},
    {"type": "publish", "channel": "room", "data": 1, "echo": "yes"},
    {"type": "history", "channel": "room", "limit": 0},
    {"type": "history", "channel": "room", "since": "x"},
    {"type": "history", "channel": "room", "reverse": 1},
    {"type": "presence"},
    {"type": "refresh"},
    {"type": "refresh", "token": None},
    {"type": "unknown", "channel": "room"},
    {"type": "publish", "channel": "room", "data": nested(MAX_DEPTH)},
]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("fields", INVALID_WITH_ID)
def test_error_carries_the_command_id(codec: Codec, fields: dict[str, Any]) -> None:
    """An invalid command whose ``id`` is readable yields InvalidMessage with that id."""
    exc = invalid(codec, encode(codec, {**fields, "id": 42}))
    assert exc.command_id == 42  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_error_carries_the_id_written_first(codec: Codec) -> None:
    """The id is found wherever it sits in the object, before or after the invalid field."""
    frame = encode(codec, {"id": 3, "type": "subscribe", "channel": "?"})
    assert invalid(codec, frame).command_id == 3  # type: ignore[attr-defined]


def test_malformed_json_has_no_id() -> None:
    """Malformed JSON is InvalidMessage without an id."""
    for frame in [b"", b"{", b'{"type":"pong","id":1', b"{'type': 'pong'}", b"nul", b"[1,]"]:
        assert invalid(JSON, frame).command_id is None  # type: ignore[attr-defined]


def test_malformed_msgpack_has_no_id() -> None:
    """Truncated or malformed MessagePack is InvalidMessage without an id."""
    whole = encode(MSGPACK, {"type": "subscribe", "channel": "room", "id": 1})
    for frame in [b"", whole[:-1], whole[:5], b"\xc1", b"\x81"]:
        assert invalid(MSGPACK, frame).command_id is None  # type: ignore[attr-defined]


def test_trailing_data_is_invalid() -> None:
    """Two messages in one frame, or trailing bytes, are InvalidMessage."""
    invalid(JSON, b'{"type":"pong"}{"type":"pong"}')
    invalid(JSON, b'{"type":"pong"} x')
    invalid(MSGPACK, encode(MSGPACK, {"type": "pong"}) + b"\x00")


# --------------------------------------------------------------------------- channel names


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(
    "channel",
    ["a", "x" * 255, "chat:room", "#alice", "A-Z_a.z@0=9/#:", "ns:a:b:c"],
)
def test_valid_channel_names_decode(codec: Codec, channel: str) -> None:
    """1-255 characters from [A-Za-z0-9_-:.@#=/] are a valid channel in every command."""
    for kind in ("subscribe", "unsubscribe", "history", "presence"):
        assert codec.decode(encode(codec, {"type": kind, "channel": channel})).channel == channel
    publish = codec.decode(encode(codec, {"type": "publish", "channel": channel, "data": 1}))
    assert isinstance(publish, Publish)
    assert publish.channel == channel


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(
    "channel",
    [
        "",
        "x" * 256,
        "room\n",
        "x" * 255 + "\n",
        "\nroom",
        "a b",
        "é",
        "a\x00",
        "a?b",
        "a,b",
        "a*",
        "a\\b",
        "a\tb",
        "a\u2028",
    ],
)
def test_invalid_channel_names_are_refused(codec: Codec, channel: str) -> None:
    """Any other channel name is InvalidMessage carrying the command's id, in every command."""
    for kind in ("subscribe", "unsubscribe", "history", "presence", "publish"):
        frame = encode(codec, {"type": kind, "channel": channel, "data": 1, "id": 5})
        assert invalid(codec, frame).command_id == 5  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("shape", ["list", "dict"])
def test_nesting_at_the_limit_is_accepted(codec: Codec, shape: str) -> None:
    """A message nested exactly 64 levels deep (the message itself is level 1) decodes."""
    value: Any = [] if shape == "list" else {}
    for _ in range(MAX_DEPTH - 2):
        value = [value] if shape == "list" else {"k": value}
    command = codec.decode(encode(codec, {"type": "publish", "channel": "room", "data": value}))
    assert isinstance(command, Publish)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("where", ["data", "unknown", "recover", "dict-data"])
def test_nesting_beyond_the_limit_is_refused(codec: Codec, where: str) -> None:
    """Nesting deeper than 64 levels anywhere in a message is InvalidMessage with the id."""
    too_deep = nested(MAX_DEPTH)  # 65 levels with the message object
    if where == "data":
        fields = {"type": "publish", "channel": "room", "data": too_deep}
    elif where == "dict-data":
        value: Any = {}
        for _ in range(MAX_DEPTH - 1):
            value = {"k": value}
        fields = {"type": "publish", "channel": "room", "data": value}
    elif where == "unknown":
        fields = {"type": "subscribe", "channel": "room", "extra": too_deep}
    else:
        recover = {"offset": 1, "epoch": "e", "extra": nested(MAX_DEPTH - 1)}
        fields = {"type": "subscribe", "channel": "room", "recover": recover}
    exc = invalid(codec, encode(codec, {**fields, "id": 8}))
    assert exc.command_id == 8  # type: ignore[attr-defined]


def test_json_depth_ignores_brackets_inside_strings() -> None:
    """Brackets inside JSON strings (escaped quotes included) are not nesting."""
    text = '\\"' + "[{" * 200 + '\\"'
    frame = b'{"type":"publish","channel":"room","data":["' + text.encode() + b'"],"x":"]]"}'
    assert isinstance(JSON.decode(frame), Publish)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize("where", ["data", "unknown"])
def test_very_deep_nesting_is_invalid_not_a_crash(codec: Codec, where: str) -> None:
    """~1000 levels (RecursionError inside msgspec) is InvalidMessage, not an exception leak."""
    if codec.binary:
        deep = b"\x91" * 1000 + b"\x90"
        head = b"\xa4type\xa7publish\xa7channel\xa4room"
        if where == "data":
            frame = b"\x83" + head + b"\xa4data" + deep
        else:
            frame = b"\x84" + head + b"\xa5extra" + deep + b"\xa4data\x01"
    else:
        deep = b"[" * 1000 + b"]" * 1000
        key = b"data" if where == "data" else b"extra"
        frame = b'{"type":"publish","channel":"room","data":1,"' + key + b'":' + deep + b"}"
    invalid(codec, frame)


# --------------------------------------------------------------------------- odd input


HUGE = [(codec, n) for codec in CODECS for n in (2**63, 2**64 - 1)] + [
    (JSON, n) for n in (10**30, -(10**30))
]


@pytest.mark.parametrize(("codec", "number"), HUGE, ids=repr)
@pytest.mark.parametrize("field", ["id", "history", "recover", "limit", "since"])
def test_huge_integers_in_fields_never_crash(codec: Codec, number: int, field: str) -> None:
    """Huge integers in typed fields decode or are InvalidMessage; an id survives a reply."""
    kind = "history" if field in ("limit", "since") else "subscribe"
    value: Any = {"offset": number, "epoch": "e"} if field in ("recover", "since") else number
    frame = encode(codec, {"type": kind, "channel": "room", field: value})
    try:
        command = codec.decode(frame)
    except InvalidMessage:
        return
    if command.id is not None:
        codec.encode(Error(code=400, reason="x", id=command.id))


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1" * 400, b"1" + b"0" * 5000])
def test_huge_numbers_as_id_never_crash(number: bytes) -> None:
    """A JSON id too large for any type is InvalidMessage, not an exception leak."""
    frame = b'{"type":"pong","id":' + number + b"}"
    try:
        JSON.decode(frame)
    except InvalidMessage:
        pass


@pytest.mark.parametrize(
    "frame",
    [
        b"\xff\xfe",
        b'{"type":"subscribe","channel":"\xff"}',
        b'{"type":"subscribe","channel":"room","id":1,"\xc3":1}',
        b'{"type":"refresh","token":"\xed\xa0\x80"}',
        b'{"type":"subscribe","channel":"room\xc0\xaf"}',
    ],
)
def test_invalid_utf8_in_json_is_invalid(frame: bytes) -> None:
    """Invalid UTF-8 anywhere in a JSON frame is InvalidMessage."""
    invalid(JSON, frame)


def test_invalid_utf8_in_json_data_is_invalid() -> None:
    """Invalid UTF-8 inside a JSON payload is refused: it could never be sent as text."""
    invalid(JSON, b'{"type":"publish","channel":"room","data":"\xff"}')


@pytest.mark.parametrize(
    "frame",
    [
        # {"type": "subscribe", "channel": <str with invalid UTF-8>, "id": 5}
        b"\x83\xa4type\xa9subscribe\xa7channel\xa2\xff\xfe\xa2id\x05",
        # {"type": "refresh", "token": <lone surrogate bytes>}
        b"\x82\xa4type\xa7refresh\xa5token\xa3\xed\xa0\x80",
        # {<invalid UTF-8 key>: 1, "type": "pong"}
        b"\x82\xa1\xff\x01\xa4type\xa4pong",
        # {"type": <invalid UTF-8>}
        b"\x81\xa4type\xa2\xc3\x28",
    ],
)
def test_invalid_utf8_in_msgpack_is_invalid(frame: bytes) -> None:
    """Invalid UTF-8 in a MessagePack string is InvalidMessage."""
    invalid(MSGPACK, frame)


def test_invalid_utf8_in_msgpack_data_is_invalid() -> None:
    """Invalid UTF-8 in a MessagePack payload string is refused: JSON cannot carry it."""
    frame = b"\x83\xa4type\xa7publish\xa7channel\xa4room\xa4data\xa1\xff"
    invalid(MSGPACK, frame)


def test_duplicate_keys_last_wins_json() -> None:
    """With duplicate keys the last one wins, for ``channel`` and for ``id``."""
    command = JSON.decode(b'{"type":"subscribe","channel":"a","id":1,"channel":"b","id":2}')
    assert command == Subscribe(channel="b", id=2)


def test_duplicate_keys_last_wins_msgpack() -> None:
    """MessagePack maps with duplicate keys also keep the last value."""
    frame = b"\x84\xa4type\xa9subscribe\xa7channel\xa1a\xa7channel\xa1b\xa2id\x07"
    assert MSGPACK.decode(frame) == Subscribe(channel="b", id=7)


def test_duplicate_id_the_error_names_the_last() -> None:
    """When ``id`` repeats, the error carries the last one, as a valid command would."""
    exc = invalid(JSON, b'{"type":"nope","id":0,"id":7}')
    assert exc.command_id == 7  # type: ignore[attr-defined]
    exc = invalid(JSON, b'{"type":"nope","id":7,"id":0}')
    assert exc.command_id is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"publish","type":"subscribe","channel":"room","data":1}',
        b'{"type":"subscribe","type":"publish","channel":"room","data":1}',
    ],
)
def test_duplicate_type_is_never_ambiguous(frame: bytes) -> None:
    """A repeated ``type`` is refused or decoded as the last one, never as the first."""
    try:
        command = JSON.decode(frame)
    except InvalidMessage:
        return
    last = frame.rsplit(b'"type":"', 1)[1].split(b'"', 1)[0].decode()
    assert type(command) is {"publish": Publish, "subscribe": Subscribe}[last]


# --------------------------------------------------------------------------- server messages

WELCOME = Welcome(
    client="c1", user="", node="n1", ping=25.0, pong_timeout=10.0, expires=None, subscribed=[]
)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_welcome_always_carries_version_and_expires(codec: Codec) -> None:
    """``welcome`` carries ``version`` 1 and ``expires`` (null when none) and every field."""
    decoded = codec.decode_value(codec.encode_bytes(WELCOME))
    assert decoded["version"] == PROTOCOL_VERSION == 1
    assert "expires" in decoded
    assert decoded["expires"] is None
    assert decoded == {
        "type": "welcome",
        "client": "c1",
        "user": "",
        "node": "n1",
        "ping": 25.0,
        "pong_timeout": 10.0,
        "expires": None,
        "subscribed": [],
        "version": 1,
    }


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (Ack(id=1), {"type": "ack", "id": 1}),
        (Ack(id=1, offset=5, epoch="e"), {"type": "ack", "id": 1, "offset": 5, "epoch": "e"}),
        (Ack(id=2, expires=99), {"type": "ack", "id": 2, "expires": 99}),
        (Error(code=400, reason="bad"), {"type": "error", "code": 400, "reason": "bad"}),
        (Error(code=404, reason="r", id=3), {"type": "error", "code": 404, "reason": "r", "id": 3}),
        (Ping(), {"type": "ping"}),
        (Unsubscribed(channel="a"), {"type": "unsubscribed", "channel": "a"}),
        (Unsubscribed(channel="a", id=4), {"type": "unsubscribed", "channel": "a", "id": 4}),
        (
            Subscribed(channel="a", publications=[]),
            {"type": "subscribed", "channel": "a", "publications": []},
        ),
        (
            Subscribed(channel="a", publications=[], id=1, offset=0, epoch="e", recovered=False),
            {
                "type": "subscribed",
                "channel": "a",
                "publications": [],
                "id": 1,
                "offset": 0,
                "epoch": "e",
                "recovered": False,
            },
        ),
        (
            Join(channel="a", user="u", client="c"),
            {"type": "join", "channel": "a", "user": "u", "client": "c"},
        ),
        (
            Leave(channel="a", user="u", client="c", info={"x": 1}),
            {"type": "leave", "channel": "a", "user": "u", "client": "c", "info": {"x": 1}},
        ),
        (
            History(channel="a", publications=[], id=1),
            {"type": "history", "channel": "a", "publications": [], "id": 1},
        ),
        (
            Presence(channel="a", clients={"c": ClientInfo(user="u", client="c")}, users=1, id=2),
            {
                "type": "presence",
                "channel": "a",
                "clients": {"c": {"user": "u", "client": "c"}},
                "users": 1,
                "id": 2,
            },
        ),
        (
            Disconnect(code=4408, reason="idle", reconnect=True),
            {"type": "disconnect", "code": 4408, "reason": "idle", "reconnect": True},
        ),
    ],
)
def test_server_messages_omit_none_fields(
    codec: Codec, message: Any, expected: dict[str, Any]
) -> None:
    """Server messages encode with their ``type`` tag and without fields left at None."""
    assert codec.decode_value(codec.encode_bytes(message)) == expected


def test_encode_gives_text_for_json_and_bytes_for_msgpack() -> None:
    """``Codec.encode`` returns an ASGI-ready frame: str for JSON, bytes for MessagePack."""
    assert JSON.encode(Ping()) == '{"type":"ping"}'
    assert MSGPACK.encode(Ping()) == msgspec.msgpack.encode({"type": "ping"})
    assert JSON.encode_bytes(Ping()) == b'{"type":"ping"}'


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_message_sender_and_raw_data(codec: Codec) -> None:
    """``message`` carries its sender without None fields and its data untouched."""
    sender = ClientInfo(user="u", client="c", name="Ann")
    message = Message(channel="a", data=Raw(encode(codec, [1])), ts=7, sender=sender)
    assert codec.decode_value(codec.encode_bytes(message)) == {
        "type": "message",
        "channel": "a",
        "data": [1],
        "ts": 7,
        "sender": {"user": "u", "client": "c", "name": "Ann"},
    }


def test_raw_json_payload_passes_byte_for_byte() -> None:
    """A JSON ``Raw`` payload appears in the encoded frame exactly as given."""
    payload = b'{ "b" :[1,  2.50, "\\u00e9", 1e3] , "a":{} }'
    frame = JSON.encode_bytes(Message(channel="a", data=Raw(payload), ts=1))
    assert frame == b'{"type":"message","channel":"a","data":' + payload + b',"ts":1}'


def test_raw_msgpack_payload_passes_byte_for_byte() -> None:
    """A MessagePack ``Raw`` payload appears in the encoded frame exactly as given."""
    # A non-canonical encoding (uint32 for 1) must survive untouched.
    payload = b"\x92\xce\x00\x00\x00\x01\xa1x"
    frame = MSGPACK.encode_bytes(Message(channel="a", data=Raw(payload), ts=1))
    assert payload in frame
    assert MSGPACK.decode_value(frame)["data"] == [1, "x"]


def test_raw_payload_from_a_command_is_passed_on_unchanged() -> None:
    """A payload decoded from a ``publish`` is re-sent in a ``message`` without re-encoding."""
    payload = b'[1 ,{"k":"v"}]'
    command = JSON.decode(b'{"type":"publish","channel":"a","data":' + payload + b"}")
    assert isinstance(command, Publish)
    frame = JSON.encode_bytes(Message(channel="a", data=command.data, ts=1))
    assert payload in frame


# --------------------------------------------------------------------------- cross-codec


def test_codec_identity() -> None:
    """Each codec names its subprotocol and frame kind; subprotocols map back to codecs."""
    assert (JSON.name, JSON.subprotocol, JSON.binary) == ("json", "hubbub.v1.json", False)
    assert (MSGPACK.name, MSGPACK.subprotocol, MSGPACK.binary) == (
        "msgpack",
        "hubbub.v1.msgpack",
        True,
    )
    assert codec_for_subprotocol("hubbub.v1.json") is JSON
    assert codec_for_subprotocol("hubbub.v1.msgpack") is MSGPACK
    assert codec_for_subprotocol("hubbub.v2.json") is None
    assert codec_for_subprotocol("") is None
    assert "json" in repr(JSON)


def test_convert_to_the_same_codec_is_identity() -> None:
    """Converting a payload into its own codec returns the very same bytes."""
    payload = b'{ "a" : 1 }'
    assert JSON.convert(payload, JSON) is payload


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, "x", None, True, False]},
        [],
        "é€😀",
        -(2**63),
        2**64 - 1,
        1.5e308,
        {"": {"nested": [{}]}},
    ],
)
def test_convert_round_trips(value: Any) -> None:
    """Payloads convert JSON → MessagePack → JSON without change."""
    as_msgpack = JSON.convert(msgspec.json.encode(value), MSGPACK)
    assert msgspec.msgpack.decode(as_msgpack) == value
    assert msgspec.json.decode(MSGPACK.convert(as_msgpack, JSON)) == value


def test_msgpack_binary_becomes_base64_in_json() -> None:
    """MessagePack ``bin`` values become base64 strings in JSON."""
    blob = bytes(range(256))
    payload = msgspec.msgpack.encode({"blob": blob})
    MSGPACK.check_data(Raw(payload))
    converted = msgspec.json.decode(MSGPACK.convert(payload, JSON))
    assert converted == {"blob": base64.b64encode(blob).decode()}


@pytest.mark.parametrize(
    "number",
    [
        b"18446744073709551616",
        b"-9223372036854775809",
        b"-9999999999999999999",
        b"123456789012345678901234567890",
        b"-123456789012345678901234567890",
    ],
)
def test_json_integers_beyond_64_bits_are_refused(number: bytes) -> None:
    """A JSON payload holding an integer that MessagePack cannot carry is InvalidMessage."""
    with pytest.raises(InvalidMessage) as info:
        JSON.check_data(Raw(b'{"n":[' + number + b"]}"), 11)
    assert info.value.code == 400
    assert info.value.command_id == 11  # type: ignore[attr-defined]
    frame = b'{"type":"publish","channel":"a","id":4,"data":' + number + b"}"
    assert invalid(JSON, frame).command_id == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "number",
    [
        b"1234567890123456789e400",
        b"1234567890123456789.5e400",
        b"[1733371234567890123, 18446744073709551616]",
        b'{"ts": 1733371234567890123, "n": -9223372036854775809}',
        b'{"deep": [[[[{"n": 123456789012345678901234567890}]]]]}',
    ],
)
def test_a_fitting_number_does_not_hide_one_that_does_not(number: bytes) -> None:
    """Every number of a JSON payload is checked, not only the first long one."""
    with pytest.raises(InvalidMessage):
        JSON.check_data(Raw(number), 11)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1E309", b"[0, 2e999]"])
def test_json_numbers_out_of_float_range_are_refused(number: bytes) -> None:
    """A JSON payload holding a number no double can hold is InvalidMessage."""
    frame = b'{"type":"publish","channel":"a","id":4,"data":' + number + b"}"
    assert invalid(JSON, frame).command_id == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "number",
    [
        b"18446744073709551615",
        b"-9223372036854775808",
        b"9223372036854775807",
        b'"123456789012345678901234567890"',
        b"0.12345678901234567890123",
        b"1.5e308",
    ],
)
def test_json_numbers_within_64_bits_are_accepted(number: bytes) -> None:
    """Integers at the 64-bit bounds, long digit strings and long fractions are accepted."""
    JSON.check_data(Raw(number))
    frame = b'{"type":"publish","channel":"a","data":' + number + b"}"
    assert isinstance(JSON.decode(frame), Publish)


@pytest.mark.parametrize(
    "value",
    [
        msgspec.msgpack.Ext(1, b"x"),
        {"k": [msgspec.msgpack.Ext(127, b"")]},
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    ],
    ids=["ext", "nested-ext", "timestamp-ext"],
)
def test_msgpack_extension_types_are_refused(value: Any) -> None:
    """A MessagePack payload holding an extension type (timestamps included) is refused."""
    frame = encode(MSGPACK, {"type": "publish", "channel": "a", "id": 6, "data": value})
    assert invalid(MSGPACK, frame).command_id == 6  # type: ignore[attr-defined]


@pytest.mark.parametrize("key", [1, None, 1.5, True, b"k"], ids=repr)
def test_msgpack_non_string_keys_are_refused(key: Any) -> None:
    """A MessagePack map with a non-string key is refused (JSON keys are strings)."""
    # Hand-built map {key: 1}, since msgspec may refuse to encode some of these keys.
    packed_key = msgspec.msgpack.encode(key)
    data = b"\x81" + packed_key + b"\x01"
    frame = b"\x84\xa4type\xa7publish\xa7channel\xa1a\xa2id\x06\xa4data" + data
    assert invalid(MSGPACK, frame).command_id == 6  # type: ignore[attr-defined]


def test_msgpack_float32_and_ints_are_accepted() -> None:
    """Ordinary MessagePack scalars (float32 included) are accepted and convert."""
    data = b"\x93" + b"\xca" + struct.pack(">f", 1.5) + b"\xcf" + (2**64 - 1).to_bytes(8) + b"\xc0"
    MSGPACK.check_data(Raw(data))
    assert msgspec.json.decode(MSGPACK.convert(data, JSON)) == [1.5, 2**64 - 1, None]


# -- channel names: checked once decoded, with a memory of valid ones ------------------------

_CHANNEL_FULL = re.compile(CHANNEL_PATTERN)


@pytest.mark.parametrize(
    "channel",
    ["ok", "a" * 255, "a" * 256, "", "with space", "line\n", "ns:x.y@z#w=v/u-t_s", "é", "a\x00"],
)
def test_a_channel_name_is_checked_the_first_time_and_every_time_after(channel: str) -> None:
    """Decoding the same name twice (the second time from memory) gives the same answer,
    the regex's, for every command that names a channel."""
    valid = _CHANNEL_FULL.search(channel) is not None
    for kind in ("subscribe", "unsubscribe", "publish", "history", "presence"):
        frame = {"type": kind, "channel": channel, "id": 7}
        if kind == "publish":
            frame["data"] = 1
        for _ in range(2):
            if valid:
                assert JSON.decode(msgspec.json.encode(frame)).channel == channel  # type: ignore[union-attr]
            else:
                with pytest.raises(InvalidMessage, match="invalid channel name") as refused:
                    JSON.decode(msgspec.json.encode(frame))
                assert refused.value.command_id == 7  # type: ignore[attr-defined]


def test_the_memory_of_channel_names_is_bounded_and_holds_no_invalid_name() -> None:
    """A client making up thousands of names costs the regex, never unbounded memory."""
    for index in range(3 * messages._KNOWN_CHANNELS_MAX):
        JSON.decode(f'{{"type":"unsubscribe","channel":"made-up-{index}"}}'.encode())
        with pytest.raises(InvalidMessage):
            JSON.decode(f'{{"type":"unsubscribe","channel":"bad name {index}"}}'.encode())
    assert 0 < len(messages._KNOWN_CHANNELS) <= messages._KNOWN_CHANNELS_MAX
    assert all(_CHANNEL_FULL.search(name) for name in messages._KNOWN_CHANNELS)
