"""ClientProtocol: the per-client state machine, driven by plain calls and an injected clock."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from hubbub.auth import ANONYMOUS, Identity
from hubbub.limits import Limits
from hubbub.messages import (
    JSON,
    MSGPACK,
    Codec,
    Error,
    GetHistory,
    GetPresence,
    Ping,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
)
from hubbub.namespaces import Namespace, NamespaceRegistry
from hubbub.protocol import ClientProtocol, Close, Event, Execute, Send

CODECS = [JSON, MSGPACK]
ALICE = Identity(user="alice")

DEFAULT = Namespace()
CHAT = Namespace(name="chat", presence=True, join_leave=True, history_size=100)
MEMBERS = Namespace(name="members", subscribe="authenticated", publish="authenticated")
SERVER = Namespace(name="server", subscribe="nobody", publish="nobody")
PERSONAL = Namespace(name="personal")

LIMITS = Limits(ping_interval=10.0, pong_timeout=5.0, max_message_size=1000, max_channels=3)


def make(
    *,
    identity: Identity = ALICE,
    codec: Codec = JSON,
    namespaces: list[Namespace] | None = None,
    limits: Limits = LIMITS,
    now: float = 100.0,
) -> ClientProtocol:
    """A protocol for ``identity`` accepted at clock reading ``now``."""
    registry = NamespaceRegistry(
        namespaces if namespaces is not None else [DEFAULT, CHAT, MEMBERS, SERVER], PERSONAL
    )
    return ClientProtocol(
        identity=identity, codec=codec, namespaces=registry, limits=limits, now=now
    )


def frame(codec: Codec, **fields: Any) -> str | bytes:
    """A client frame of ``codec`` holding ``fields``: text for JSON, binary for MessagePack."""
    if codec.binary:
        return msgspec.msgpack.encode(fields)
    return msgspec.json.encode(fields).decode()


def send(protocol: ClientProtocol, now: float = 101.0, **fields: Any) -> list[Event]:
    """Feed one command to ``protocol`` in its own codec."""
    return protocol.receive(frame(protocol.codec, **fields), now)


def error_of(events: list[Event]) -> Error:
    """The single ``error`` in ``events``."""
    assert len(events) == 1, events
    event = events[0]
    assert isinstance(event, Send), events
    assert isinstance(event.message, Error), events
    return event.message


def execute_of(events: list[Event]) -> Execute:
    """The single ``Execute`` in ``events``."""
    assert len(events) == 1, events
    assert isinstance(events[0], Execute), events
    return events[0]


def invalid_frame(codec: Codec) -> str | bytes:
    """A well-formed frame that fails validation (400)."""
    return frame(codec, type="nope")


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@pytest.mark.parametrize(
    ("fields", "kind", "namespace"),
    [
        ({"type": "subscribe", "channel": "room"}, Subscribe, DEFAULT),
        ({"type": "subscribe", "channel": "chat:lobby", "history": 5}, Subscribe, CHAT),
        ({"type": "subscribe", "channel": "#alice"}, Subscribe, PERSONAL),
        ({"type": "publish", "channel": "room", "data": {"x": 1}}, Publish, DEFAULT),
        ({"type": "publish", "channel": "chat:lobby", "data": "hi", "echo": False}, Publish, CHAT),
        ({"type": "history", "channel": "chat:lobby", "limit": 10}, GetHistory, CHAT),
        ({"type": "history", "channel": "room"}, GetHistory, DEFAULT),
        ({"type": "presence", "channel": "chat:lobby"}, GetPresence, CHAT),
        ({"type": "refresh", "token": "new.jwt.token"}, Refresh, None),
    ],
)
def test_commands_produce_execute(
    codec: Codec, fields: dict[str, Any], kind: type, namespace: Namespace | None
) -> None:
    """Allowed commands produce one Execute with the decoded command and its namespace."""
    protocol = make(codec=codec)
    event = execute_of(send(protocol, **fields, id=12))
    assert type(event.command) is kind
    assert event.command.id == 12
    assert event.namespace is namespace


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_unsubscribe_from_a_held_channel_produces_execute(codec: Codec) -> None:
    """``unsubscribe`` from a channel the client holds produces Execute."""
    protocol = make(codec=codec)
    protocol.add_channel("room", DEFAULT)
    event = execute_of(send(protocol, type="unsubscribe", channel="room", id=3))
    assert event.command == Unsubscribe(channel="room", id=3)
    assert event.namespace is DEFAULT


def test_execute_keeps_the_raw_payload() -> None:
    """The Execute of a publish carries the payload bytes exactly as the client sent them."""
    protocol = make()
    text = '{"type":"publish","channel":"room","data":{ "a" : [1, 2.50] }}'
    event = execute_of(protocol.receive(text, 101.0))
    assert isinstance(event.command, Publish)
    assert bytes(event.command.data) == b'{ "a" : [1, 2.50] }'


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_pong_produces_nothing(codec: Codec) -> None:
    """``pong`` is accepted silently."""
    assert send(make(codec=codec), type="pong") == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "subscribe", "channel": "nope:x"},
        {"type": "publish", "channel": "nope:x", "data": 1},
        {"type": "history", "channel": "nope:x"},
        {"type": "presence", "channel": "nope:x"},
        {"type": "unsubscribe", "channel": "nope:x"},
    ],
)
def test_unknown_namespace_is_404(fields: dict[str, Any]) -> None:
    """A channel of an unconfigured namespace is ``error`` 404 with the command's id."""
    error = error_of(send(make(), **fields, id=4))
    assert (error.code, error.id) == (404, 4)
    assert "nope" in error.reason


def test_default_namespace_missing_is_404() -> None:
    """Without a default namespace a colon-less channel is ``error`` 404."""
    protocol = make(namespaces=[CHAT])
    assert error_of(send(protocol, type="subscribe", channel="room")).code == 404


@pytest.mark.parametrize("identity", [ALICE, Identity(user="bob")], ids=["own", "other"])
def test_publish_into_personal_channel_is_403(identity: Identity) -> None:
    """Only the server publishes into ``#user`` channels: a client is refused, even its own."""
    error = error_of(send(make(identity=identity), type="publish", channel="#alice", data=1, id=2))
    assert (error.code, error.id) == (403, 2)


def test_publish_into_held_personal_channel_is_403() -> None:
    """Holding its personal channel does not let a client publish into it."""
    protocol = make()
    protocol.add_channel("#alice", PERSONAL, server_side=True)
    assert error_of(send(protocol, type="publish", channel="#alice", data=1)).code == 403


@pytest.mark.parametrize(
    ("identity", "channel"),
    [
        (ALICE, "#bob"),
        (ALICE, "#alice2"),
        (ALICE, "#"),
        (ANONYMOUS, "#alice"),
        (ANONYMOUS, "#"),
    ],
)
def test_subscribe_to_another_users_personal_channel_is_403(
    identity: Identity, channel: str
) -> None:
    """Only ``<user>`` may subscribe to ``#<user>``; anonymous clients have none."""
    error = error_of(send(make(identity=identity), type="subscribe", channel=channel, id=9))
    assert (error.code, error.id) == (403, 9)


@pytest.mark.parametrize("kind", ["history", "presence"])
def test_reading_another_users_personal_channel_is_403(kind: str) -> None:
    """History and presence of someone else's personal channel are refused 403."""
    personal = Namespace(name="personal", presence=True)
    protocol = ClientProtocol(
        identity=ALICE,
        codec=JSON,
        namespaces=NamespaceRegistry([DEFAULT], personal),
        limits=LIMITS,
        now=0.0,
    )
    assert error_of(send(protocol, type=kind, channel="#bob")).code == 403
    execute_of(send(protocol, type=kind, channel="#alice"))


@pytest.mark.parametrize("kind", ["subscribe", "publish"])
def test_authenticated_access_refuses_anonymous(kind: str) -> None:
    """An 'authenticated' namespace refuses anonymous clients 403 and admits users."""
    fields = {"type": kind, "channel": "members:room", "data": 1, "id": 1}
    assert error_of(send(make(identity=ANONYMOUS), **fields)).code == 403
    assert execute_of(send(make(identity=ALICE), **fields)).namespace is MEMBERS


@pytest.mark.parametrize("identity", [ANONYMOUS, ALICE], ids=["anonymous", "user"])
@pytest.mark.parametrize("kind", ["subscribe", "publish", "history"])
def test_nobody_access_refuses_every_client(identity: Identity, kind: str) -> None:
    """A 'nobody' namespace refuses every client 403, authenticated or not."""
    fields = {"type": kind, "channel": "server:feed", "data": 1, "id": 1}
    assert error_of(send(make(identity=identity), **fields)).code == 403


def test_can_subscribe_hook_decides() -> None:
    """``can_subscribe`` is asked with the identity and channel; False is ``error`` 403."""
    seen: list[tuple[Identity, str]] = []

    def can_subscribe(identity: Identity, channel: str) -> bool:
        seen.append((identity, channel))
        return channel.endswith("ok")

    hooked = Namespace(name="h", can_subscribe=can_subscribe)
    protocol = make(namespaces=[hooked])
    assert error_of(send(protocol, type="subscribe", channel="h:no")).code == 403
    assert execute_of(send(protocol, type="subscribe", channel="h:ok")).namespace is hooked
    assert error_of(send(protocol, type="history", channel="h:no")).code == 403
    assert seen[:2] == [(ALICE, "h:no"), (ALICE, "h:ok")]


def test_can_publish_hook_decides_on_raw_data() -> None:
    """``can_publish`` gets the raw payload bytes; False is ``error`` 403."""
    seen: list[bytes] = []

    def can_publish(identity: Identity, channel: str, data: bytes) -> bool:
        seen.append(data)
        return data == b'"ok"'

    protocol = make(namespaces=[Namespace(name="h", can_publish=can_publish)])
    assert error_of(send(protocol, type="publish", channel="h:x", data="no", id=5)).id == 5
    execute_of(send(protocol, type="publish", channel="h:x", data="ok"))
    assert seen == [b'"no"', b'"ok"']


def test_presence_disabled_is_403() -> None:
    """``presence`` in a namespace without presence is ``error`` 403."""
    assert error_of(send(make(), type="presence", channel="room", id=1)).code == 403


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_already_subscribed_is_409(codec: Codec) -> None:
    """Subscribing to a channel the client holds is ``error`` 409."""
    protocol = make(codec=codec)
    protocol.add_channel("room", DEFAULT)
    error = error_of(send(protocol, type="subscribe", channel="room", id=6))
    assert (error.code, error.id) == (409, 6)
    recover = {"offset": 1, "epoch": "e"}
    assert error_of(send(protocol, type="subscribe", channel="room", recover=recover)).code == 409


def test_server_side_subscription_with_recover_is_executed() -> None:
    """``subscribe`` with ``recover`` on a server-side subscription recovers instead of 409."""
    protocol = make()
    protocol.add_channel("#alice", PERSONAL, server_side=True)
    protocol.add_channel("chat:news", CHAT, server_side=True)
    recover = {"offset": 3, "epoch": "e"}
    for channel in ("#alice", "chat:news"):
        event = execute_of(send(protocol, type="subscribe", channel=channel, recover=recover))
        assert isinstance(event.command, Subscribe)
        assert event.command.recover is not None
        assert error_of(send(protocol, type="subscribe", channel=channel)).code == 409


def test_removed_server_side_channel_is_no_longer_special() -> None:
    """After the server removes a subscription, subscribing again is a fresh subscribe."""
    protocol = make()
    protocol.add_channel("room", DEFAULT, server_side=True)
    protocol.remove_channel("room")
    assert protocol.server_side == set()
    execute_of(send(protocol, type="subscribe", channel="room"))
    protocol.add_channel("room", DEFAULT)
    recover = {"offset": 3, "epoch": "e"}
    assert error_of(send(protocol, type="subscribe", channel="room", recover=recover)).code == 409


def test_unsubscribe_from_a_channel_not_held_is_404() -> None:
    """``unsubscribe`` from a channel the client does not hold is ``error`` 404."""
    protocol = make()
    error = error_of(send(protocol, type="unsubscribe", channel="room", id=8))
    assert (error.code, error.id) == (404, 8)
    protocol.add_channel("room", DEFAULT)
    execute_of(send(protocol, type="unsubscribe", channel="room"))
    protocol.remove_channel("room")
    assert error_of(send(protocol, type="unsubscribe", channel="room")).code == 404


def test_channel_limit_is_429() -> None:
    """Beyond ``max_channels`` a ``subscribe`` is ``error`` 429."""
    protocol = make()
    for channel in ("a", "b", "c"):
        execute_of(send(protocol, type="subscribe", channel=channel))
        protocol.add_channel(channel, DEFAULT)
    error = error_of(send(protocol, type="subscribe", channel="d", id=2))
    assert (error.code, error.id) == (429, 2)
    protocol.remove_channel("a")
    execute_of(send(protocol, type="subscribe", channel="d"))


def test_personal_channel_does_not_count_towards_the_limit() -> None:
    """The personal channel is not counted; server-side ``channels``-claim ones are."""
    protocol = make()
    protocol.add_channel("#alice", PERSONAL, server_side=True)
    protocol.add_channel("a", DEFAULT, server_side=True)
    protocol.add_channel("b", DEFAULT)
    execute_of(send(protocol, type="subscribe", channel="c"))
    protocol.add_channel("c", DEFAULT)
    assert error_of(send(protocol, type="subscribe", channel="d")).code == 429


def test_own_personal_channel_is_allowed_at_the_limit() -> None:
    """A client at the channel limit may still subscribe to its own personal channel."""
    protocol = make()
    for channel in ("a", "b", "c"):
        protocol.add_channel(channel, DEFAULT)
    assert execute_of(send(protocol, type="subscribe", channel="#alice")).namespace is PERSONAL


def test_data_over_max_payload_is_413() -> None:
    """A publication whose ``data`` is larger than ``Namespace.max_payload`` is ``error`` 413."""
    small = Namespace(name="small", max_payload=10)
    protocol = make(namespaces=[small])
    error = error_of(send(protocol, type="publish", channel="small:x", data="123456789", id=3))
    assert (error.code, error.id) == (413, 3)  # 11 bytes: the quotes count
    execute_of(send(protocol, type="publish", channel="small:x", data="12345678"))


def test_payload_size_is_measured_in_utf8_bytes() -> None:
    """``max_payload`` counts the payload's UTF-8 bytes, not its characters."""
    protocol = make(namespaces=[Namespace(name="small", max_payload=10)])
    text = '{"type":"publish","channel":"small:x","data":"éééé"}'  # 10 bytes of data
    execute_of(protocol.receive(text, 101.0))
    text = '{"type":"publish","channel":"small:x","data":"éééé€"}'  # 13 bytes of data
    assert error_of(protocol.receive(text, 101.0)).code == 413


# --------------------------------------------------------------------------- frames


def padded(size: int, char: str) -> str:
    """A valid JSON ``pong`` frame of exactly ``size`` UTF-8 bytes, padded with ``char``."""
    base = '{"type":"pong","pad":""}'
    room = size - len(base)
    width = len(char.encode())
    pad = char * (room // width) + "x" * (room % width)
    text = base[:-2] + pad + base[-2:]
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_text_frame_at_the_limit_is_accepted(char: str) -> None:
    """A text frame of exactly ``max_message_size`` UTF-8 bytes is processed."""
    protocol = make()
    assert protocol.receive(padded(1000, char), 101.0) == []
    assert not protocol.closed


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_text_frame_over_the_limit_closes_1009(char: str) -> None:
    """A text frame one UTF-8 byte over ``max_message_size`` closes 1009, multi-byte too."""
    protocol = make()
    text = padded(1001, char)
    assert len(text) <= 1000 or char == "x"
    events = protocol.receive(text, 101.0)
    assert len(events) == 1
    close = events[0]
    assert isinstance(close, Close)
    assert close.code == 1009
    assert close.reconnect is False
    assert protocol.closed


def test_text_frame_of_few_chars_but_many_bytes_closes_1009() -> None:
    """300 four-byte characters (1200 bytes) exceed a 1000-byte limit."""
    text = '{"type":"pong","pad":"' + "😀" * 300 + '"}'
    assert len(text) < 1000
    events = make().receive(text, 101.0)
    assert [type(e) for e in events] == [Close]
    assert isinstance(events[0], Close)
    assert events[0].code == 1009


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_binary_frame_over_the_limit_closes_1009(codec: Codec) -> None:
    """A binary frame over ``max_message_size`` closes 1009 whatever the codec."""
    protocol = make(codec=codec)
    events = protocol.receive(b"\x00" * 1001, 101.0)
    assert len(events) == 1
    assert isinstance(events[0], Close)
    assert events[0].code == 1009


def test_binary_frame_at_the_limit_is_processed() -> None:
    """A MessagePack frame of exactly ``max_message_size`` bytes is processed."""
    pad = "x" * (1000 - len(msgspec.msgpack.encode({"type": "pong", "pad": ""})) - 2)
    data = msgspec.msgpack.encode({"type": "pong", "pad": pad})
    assert len(data) == 1000
    assert make(codec=MSGPACK).receive(data, 101.0) == []


def test_binary_frame_on_json_is_400() -> None:
    """A binary frame on ``hubbub.v1.json`` is ``error`` 400, even if it holds valid JSON."""
    protocol = make(codec=JSON)
    error = error_of(protocol.receive(b'{"type":"pong","id":1}', 101.0))
    assert error.code == 400
    assert not protocol.closed


def test_text_frame_on_msgpack_is_400() -> None:
    """A text frame on ``hubbub.v1.msgpack`` is ``error`` 400."""
    protocol = make(codec=MSGPACK)
    assert error_of(protocol.receive('{"type":"pong","id":1}', 101.0)).code == 400
    assert not protocol.closed


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_empty_frame_is_400(codec: Codec) -> None:
    """A frame with neither text nor bytes (``None``) is ``error`` 400."""
    assert error_of(make(codec=codec).receive(None, 101.0)).code == 400


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_invalid_command_error_carries_the_id(codec: Codec) -> None:
    """An invalid command whose id is readable gets ``error`` 400 with that id."""
    error = error_of(send(make(codec=codec), type="subscribe", channel="bad name", id=77))
    assert (error.code, error.id) == (400, 77)


def test_lone_surrogate_in_text_frame_is_400() -> None:
    """A text frame holding a lone surrogate is ``error`` 400, not an exception."""
    protocol = make()
    events = protocol.receive('{"type":"subscribe","channel":"\ud800"}', 101.0)
    assert error_of(events).code == 400


def test_invalid_utf8_in_binary_frame_is_400() -> None:
    """Invalid UTF-8 inside a MessagePack string is ``error`` 400, not an exception."""
    data = b"\x83\xa4type\xa9subscribe\xa7channel\xa2\xff\xfe\xa2id\x05"
    protocol = make(codec=MSGPACK)
    assert error_of(protocol.receive(data, 101.0)).code == 400


# --------------------------------------------------------------------------- invalid counting


@pytest.mark.parametrize("codec", CODECS, ids=repr)
def test_tenth_invalid_message_closes_1008(codec: Codec) -> None:
    """The 10th ``error`` 400 in a row is sent, then the connection is closed 1008."""
    protocol = make(codec=codec, limits=Limits())
    for _ in range(9):
        assert error_of(protocol.receive(invalid_frame(codec), 101.0)).code == 400
    events = protocol.receive(invalid_frame(codec), 101.0)
    assert len(events) == 2
    first, second = events
    assert isinstance(first, Send)
    assert isinstance(first.message, Error)
    assert first.message.code == 400
    assert isinstance(second, Close)
    assert second.code == 1008
    assert second.flush is True
    assert second.reconnect is False
    assert protocol.closed


def test_max_invalid_is_configurable() -> None:
    """``Limits.max_invalid`` sets how many invalid messages in a row close the connection."""
    protocol = make(limits=Limits(max_invalid=2))
    assert error_of(protocol.receive(None, 101.0)).code == 400
    assert isinstance(protocol.receive(b"x", 101.0)[-1], Close)


def test_every_kind_of_invalid_message_counts() -> None:
    """Malformed frames, wrong frame kinds, empty frames and failed validation all count."""
    protocol = make(limits=Limits(max_invalid=5))
    for bad in [None, b"{}", "{", '{"type":"nope"}']:
        assert error_of(protocol.receive(bad, 101.0)).code == 400
    last = protocol.receive('{"type":"subscribe","channel":""}', 101.0)
    assert isinstance(last[-1], Close)
    assert last[-1].code == 1008


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "pong"},
        {"type": "subscribe", "channel": "room"},
        {"type": "publish", "channel": "#alice", "data": 1},  # 403
        {"type": "subscribe", "channel": "nope:x"},  # 404
        {"type": "unsubscribe", "channel": "other"},  # 404
        {"type": "subscribe", "channel": "held"},  # 409
        {"type": "subscribe", "channel": "e"},  # 429
    ],
)
def test_valid_command_or_refusal_resets_the_count(fields: dict[str, Any]) -> None:
    """A valid command, or a 403/404/409/429 refusal, resets the invalid-message count."""
    protocol = make(limits=Limits(max_invalid=10, max_channels=3))
    for channel in ("held", "b", "c"):
        protocol.add_channel(channel, DEFAULT)
    for _ in range(9):
        protocol.receive(invalid_frame(JSON), 101.0)
    assert not any(isinstance(e, Close) for e in send(protocol, **fields))
    for _ in range(9):
        assert error_of(protocol.receive(invalid_frame(JSON), 101.0)).code == 400
    assert not protocol.closed
    assert isinstance(protocol.receive(invalid_frame(JSON), 101.0)[-1], Close)


def test_payload_refusals_do_not_count_as_invalid() -> None:
    """``error`` 413 for a payload over ``max_payload`` is not an invalid message (§9)."""
    protocol = make(namespaces=[Namespace(max_payload=1)], limits=Limits(max_invalid=3))
    for _ in range(5):
        assert error_of(send(protocol, type="publish", channel="room", data="long")).code == 413
    assert not protocol.closed


# --------------------------------------------------------------------------- heartbeat


def test_ping_every_ping_interval() -> None:
    """A ``ping`` is due every ``ping_interval`` seconds from accept."""
    protocol = make(now=100.0)
    assert protocol.heartbeat(109.9) == []
    assert protocol.heartbeat(110.0) == [Send(Ping())]
    assert protocol.heartbeat(110.0) == []
    protocol.receive('{"type":"pong"}', 111.0)
    assert protocol.heartbeat(119.9) == []
    assert protocol.heartbeat(120.0) == [Send(Ping())]


def test_silence_closes_4408_without_flush() -> None:
    """After ``ping_interval + pong_timeout`` of silence the client is closed 4408."""
    protocol = make(now=100.0)
    assert protocol.heartbeat(110.0) == [Send(Ping())]
    assert protocol.heartbeat(114.9) == []
    events = protocol.heartbeat(115.0)
    assert len(events) == 1
    close = events[0]
    assert isinstance(close, Close)
    assert (close.code, close.flush, close.reconnect) == (4408, False, True)
    assert protocol.closed


@pytest.mark.parametrize(
    "activity",
    ['{"type":"pong"}', '{"type":"nope"}', "not json", b"binary", None],
    ids=["pong", "invalid", "malformed", "wrong-kind", "empty"],
)
def test_any_frame_counts_as_activity(activity: str | bytes | None) -> None:
    """Any frame, even an invalid one, moves the idle deadline."""
    protocol = make(now=100.0)
    protocol.receive(activity, 112.0)
    assert protocol.heartbeat(115.0) == [Send(Ping())]
    assert protocol.heartbeat(124.9) == []
    assert protocol.heartbeat(126.9) == [Send(Ping())]
    assert isinstance(protocol.heartbeat(127.0)[0], Close)


def test_oversized_frame_counts_as_activity_before_closing() -> None:
    """Even a frame that closes 1009 was activity, and nothing follows the close."""
    protocol = make(now=100.0)
    assert isinstance(protocol.receive("x" * 2000, 101.0)[0], Close)
    assert protocol.last_activity == 101.0
    assert protocol.heartbeat(200.0) == []


def test_ping_interval_longer_than_idle_window() -> None:
    """With a long ping interval the idle deadline comes first and closes 4408."""
    protocol = make(limits=Limits(ping_interval=100.0, pong_timeout=1.0), now=0.0)
    assert protocol.heartbeat(99.0) == []  # nothing is due before the first ping
    protocol.receive('{"type":"pong"}', 50.0)
    assert protocol.heartbeat(100.0) == [Send(Ping())]
    close = protocol.heartbeat(151.0)
    assert isinstance(close[0], Close)
    assert close[0].code == 4408


# --------------------------------------------------------------------------- close


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1000, False),
        (1001, True),
        (1008, False),
        (1009, False),
        (1011, True),
        (1012, True),
        (1013, True),
        (4401, False),
        (4403, False),
        (4408, True),
        (4429, True),
    ],
)
def test_close_reconnect_follows_protocol(code: int, reconnect: bool) -> None:
    """``Close.reconnect`` advises a reconnect exactly for the codes PROTOCOL §7 says."""
    assert Close(code, "r").reconnect is reconnect


def test_close_flushes_by_default() -> None:
    """A Close asks for queued messages to be flushed first unless told otherwise."""
    assert Close(1008, "r").flush is True


@pytest.mark.parametrize(
    "closer",
    ["invalid", "too-big", "idle"],
)
def test_nothing_after_close(closer: str) -> None:
    """Once a Close was produced, frames and the clock produce nothing more."""
    protocol = make(limits=Limits(max_invalid=1, max_message_size=100), now=0.0)
    if closer == "invalid":
        events = protocol.receive("{", 1.0)
    elif closer == "too-big":
        events = protocol.receive("x" * 101, 1.0)
    else:
        events = protocol.heartbeat(1000.0)
    assert isinstance(events[-1], Close)
    assert protocol.receive('{"type":"subscribe","channel":"room"}', 2.0) == []
    assert protocol.receive("{", 2.0) == []
    assert protocol.receive(b"x" * 1000, 2.0) == []
    assert protocol.heartbeat(5000.0) == []
    assert protocol.heartbeat(10_000.0) == []
