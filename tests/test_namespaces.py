"""Namespaces: option checks at construction, channel-name rules and channel resolution."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hubbub._errors import InvalidMessage, NotFound, UnknownNamespace
from hubbub.auth import ANONYMOUS, Identity
from hubbub.namespaces import (
    Namespace,
    NamespaceRegistry,
    personal_channel,
    personal_owner,
    validate_channel,
)

ALICE = Identity(user="alice")
PERSONAL = Namespace(name="personal")


def registry(*namespaces: Namespace) -> NamespaceRegistry:
    """A registry of ``namespaces`` with the hub's default personal namespace."""
    return NamespaceRegistry(namespaces, PERSONAL)


# --------------------------------------------------------------------------- construction


def test_defaults() -> None:
    """A bare Namespace is the open default namespace without history or presence."""
    ns = Namespace()
    assert ns.name == ""
    assert (ns.subscribe, ns.publish) == ("anyone", "anyone")
    assert ns.echo is True
    assert ns.slow_consumer == "disconnect"
    assert not ns.droppable
    assert ns.max_payload is None
    assert ns.history_size == 0
    assert ns.presence is False
    assert ns.join_leave is False


def test_namespace_is_frozen() -> None:
    """A Namespace cannot be changed after construction."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Namespace().echo = False  # type: ignore[misc]


def test_full_configuration_is_accepted() -> None:
    """Every option accepts a valid non-default value."""
    ns = Namespace(
        name="chat",
        subscribe="authenticated",
        publish="nobody",
        can_subscribe=lambda identity, channel: True,
        can_publish=lambda identity, channel, data: True,
        echo=False,
        max_payload=1,
        history_size=100,
        history_ttl=0.5,
        presence=True,
        presence_ttl=5.0,
        join_leave=True,
        join_leave_per_user=True,
        schema=dict[str, int],
        idempotency_window=1.5,
    )
    assert not ns.droppable
    assert ns.history_size == 100
    lossy = Namespace(name="cursor", slow_consumer="drop_oldest")
    assert lossy.droppable


def test_drop_oldest_with_history_is_refused() -> None:
    """A lossy policy on a channel with history would leave gaps: refused when built."""
    with pytest.raises(ValueError, match="drop_oldest"):
        Namespace(slow_consumer="drop_oldest", history_size=10)


def test_schema_must_be_a_msgspec_type() -> None:
    """A schema msgspec cannot decode into is a TypeError when the namespace is built."""
    with pytest.raises(TypeError, match=r"Namespace\.schema"):
        Namespace(schema=object())


@pytest.mark.parametrize("name", ["a", "chat", "A-Z_0.9@x=y/z", "x" * 64])
def test_valid_namespace_names(name: str) -> None:
    """Names of 1-64 characters from [A-Za-z0-9_-.@=/] are accepted."""
    assert Namespace(name=name).name == name


@pytest.mark.parametrize("name", ["a:b", "#a", "x" * 65, "a b", "é", "chat:", "a#"])
def test_invalid_namespace_names(name: str) -> None:
    """A name with a colon, a '#', a space, non-ASCII or over 64 characters is a ValueError."""
    with pytest.raises(ValueError, match="invalid namespace name"):
        Namespace(name=name)


def test_namespace_name_must_be_a_string() -> None:
    """A non-string name is a TypeError."""
    with pytest.raises(TypeError, match=r"Namespace\.name"):
        Namespace(name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("subscribe", "everyone"),
        ("subscribe", None),
        ("publish", "all"),
        ("publish", ""),
        ("slow_consumer", "block"),
        ("slow_consumer", None),
        ("max_payload", 0),
        ("max_payload", -1),
        ("max_payload", 1.5),
        ("max_payload", "10"),
        ("max_payload", True),
        ("history_size", -1),
        ("history_size", 1.5),
        ("history_size", "3"),
        ("history_size", True),
        ("history_ttl", 0),
        ("history_ttl", -1.0),
        ("history_ttl", math.nan),
        ("history_ttl", "x"),
        ("echo", "yes"),
        ("echo", None),
        ("presence", "no"),
        ("presence", 1),
    ],
)
def test_invalid_option_values(option: str, value: object) -> None:
    """A wrong value for any option is a ValueError or TypeError naming that option."""
    with pytest.raises((TypeError, ValueError), match=rf"Namespace\.{option}"):
        Namespace(**{option: value})  # type: ignore[arg-type]


def test_join_leave_needs_presence() -> None:
    """join_leave without presence is a ValueError."""
    with pytest.raises(ValueError, match=r"join_leave needs presence"):
        Namespace(join_leave=True)


def test_join_leave_must_be_a_bool() -> None:
    """A non-bool join_leave is refused, naming the option."""
    with pytest.raises((TypeError, ValueError), match=r"Namespace\.join_leave"):
        Namespace(presence=True, join_leave="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("hook", ["can_subscribe", "can_publish"])
def test_hooks_must_be_callable(hook: str) -> None:
    """A hook that is not callable is a TypeError naming it."""
    with pytest.raises(TypeError, match=rf"Namespace\.{hook}"):
        Namespace(**{hook: "yes"})  # type: ignore[arg-type]


def test_hooks_do_not_affect_equality() -> None:
    """Two namespaces with the same options but different hooks compare equal."""
    assert Namespace(can_subscribe=lambda i, c: True) == Namespace(can_subscribe=lambda i, c: False)


# --------------------------------------------------------------------------- permissions


def test_access_anyone() -> None:
    """'anyone' lets anonymous and authenticated clients subscribe and publish."""
    ns = Namespace()
    for identity in (ANONYMOUS, ALICE):
        assert ns.may_subscribe(identity, "room")
        assert ns.may_publish(identity, "room", b"1")


def test_access_authenticated() -> None:
    """'authenticated' refuses anonymous clients and admits users."""
    ns = Namespace(subscribe="authenticated", publish="authenticated")
    assert not ns.may_subscribe(ANONYMOUS, "room")
    assert not ns.may_publish(ANONYMOUS, "room", b"1")
    assert ns.may_subscribe(ALICE, "room")
    assert ns.may_publish(ALICE, "room", b"1")


def test_access_nobody() -> None:
    """'nobody' refuses every client, authenticated or not."""
    ns = Namespace(subscribe="nobody", publish="nobody")
    for identity in (ANONYMOUS, ALICE):
        assert not ns.may_subscribe(identity, "room")
        assert not ns.may_publish(identity, "room", b"1")


def test_hooks_get_identity_channel_and_data() -> None:
    """The hooks receive the identity, the channel and (for publish) the raw payload."""
    calls: list[tuple[object, ...]] = []

    def can_subscribe(identity: Identity, channel: str) -> bool:
        calls.append(("sub", identity, channel))
        return channel == "ok"

    def can_publish(identity: Identity, channel: str, data: bytes) -> bool:
        calls.append(("pub", identity, channel, data))
        return data == b"1"

    ns = Namespace(can_subscribe=can_subscribe, can_publish=can_publish)
    assert ns.may_subscribe(ALICE, "ok")
    assert not ns.may_subscribe(ALICE, "no")
    assert ns.may_publish(ALICE, "ok", b"1")
    assert not ns.may_publish(ALICE, "ok", b"2")
    assert calls == [
        ("sub", ALICE, "ok"),
        ("sub", ALICE, "no"),
        ("pub", ALICE, "ok", b"1"),
        ("pub", ALICE, "ok", b"2"),
    ]


def test_hooks_are_asked_only_after_access_allows() -> None:
    """A hook is not consulted when the namespace's access level already refuses."""
    calls: list[str] = []

    def hook(*args: object) -> bool:
        calls.append("called")
        return True

    ns = Namespace(
        subscribe="authenticated", publish="nobody", can_subscribe=hook, can_publish=hook
    )
    assert not ns.may_subscribe(ANONYMOUS, "room")
    assert not ns.may_publish(ALICE, "room", b"1")
    assert calls == []


def test_hook_results_are_made_bool() -> None:
    """Truthy and falsy hook results become True and False."""
    ns = Namespace(can_subscribe=lambda i, c: 1, can_publish=lambda i, c, d: "")  # type: ignore[arg-type, return-value]
    assert ns.may_subscribe(ALICE, "room") is True
    assert ns.may_publish(ALICE, "room", b"1") is False


# --------------------------------------------------------------------------- channel names


@pytest.mark.parametrize(
    "channel",
    ["a", "x" * 255, "chat:room-1", "A_Z.0@host=1/2#3", "#alice", "#", ":", "ns:a:b", "-._@=/"],
)
def test_valid_channel_names(channel: str) -> None:
    """1-255 characters from [A-Za-z0-9_-:.@#=/] make a channel name."""
    assert validate_channel(channel) == channel


@pytest.mark.parametrize(
    "channel",
    ["", "x" * 256, "a b", "é", "room\n", "a?b", "a*", "a\x00", "a,b", "[a]", "a\\b"],
)
def test_invalid_channel_names(channel: str) -> None:
    """Anything else is InvalidMessage (400)."""
    with pytest.raises(InvalidMessage, match="invalid channel name") as info:
        validate_channel(channel)
    assert info.value.code == 400


@pytest.mark.parametrize("channel", [None, 1, b"room", ["room"]])
def test_non_string_channel_is_invalid(channel: object) -> None:
    """A channel that is not a string is InvalidMessage."""
    with pytest.raises(InvalidMessage):
        validate_channel(channel)


def test_personal_channel_helpers() -> None:
    """``#<user>`` is the personal channel of ``<user>``; other channels have no owner."""
    assert personal_channel("alice") == "#alice"
    assert personal_owner("#alice") == "alice"
    assert personal_owner("#") == ""
    assert personal_owner("alice") is None
    assert personal_owner("chat:#alice") is None


# --------------------------------------------------------------------------- registry


def test_resolve_default_namespace() -> None:
    """A channel without a colon belongs to the default namespace."""
    default = Namespace()
    assert registry(default, Namespace(name="chat")).resolve("room") is default


def test_resolve_named_namespace() -> None:
    """``ns:rest`` belongs to namespace ``ns``; only the first colon counts."""
    chat = Namespace(name="chat")
    reg = registry(Namespace(), chat)
    assert reg.resolve("chat:room") is chat
    assert reg.resolve("chat:a:b") is chat
    assert reg.resolve("chat:") is chat


def test_resolve_personal_channel() -> None:
    """``#<user>`` belongs to the personal namespace, whatever else is configured."""
    reg = registry(Namespace(), Namespace(name="chat"))
    assert reg.resolve("#alice") is PERSONAL
    assert reg.resolve("#chat:x") is PERSONAL
    assert reg.personal is PERSONAL


def test_resolve_unknown_namespace() -> None:
    """A channel of a namespace that is not configured is UnknownNamespace (404)."""
    reg = registry(Namespace())
    with pytest.raises(UnknownNamespace, match="'nope'") as info:
        reg.resolve("nope:room")
    assert isinstance(info.value, NotFound)
    assert info.value.code == 404


def test_resolve_without_default_namespace() -> None:
    """Without a default namespace a colon-less channel is UnknownNamespace."""
    reg = registry(Namespace(name="chat"))
    with pytest.raises(UnknownNamespace, match="default namespace"):
        reg.resolve("room")
    with pytest.raises(UnknownNamespace):
        reg.resolve(":room")


def test_empty_prefix_is_the_default_namespace() -> None:
    """``:rest`` has an empty namespace name, which is the default namespace."""
    default = Namespace()
    assert registry(default).resolve(":room") is default


def test_duplicate_namespaces_are_refused() -> None:
    """Configuring the same namespace name twice is a ValueError."""
    with pytest.raises(ValueError, match="'chat' is configured twice"):
        registry(Namespace(name="chat"), Namespace(name="chat", presence=True))
    with pytest.raises(ValueError, match="configured twice"):
        registry(Namespace(), Namespace(echo=False))


def test_registry_refuses_non_namespaces() -> None:
    """Something other than a Namespace in the list is a TypeError."""
    with pytest.raises(TypeError, match="expected a Namespace, got dict"):
        NamespaceRegistry([{"name": "chat"}], PERSONAL)  # type: ignore[list-item]


def test_registry_refuses_a_non_namespace_personal() -> None:
    """A personal namespace that is not a Namespace is a TypeError."""
    with pytest.raises(TypeError):
        NamespaceRegistry([Namespace()], "personal")  # type: ignore[arg-type]


def test_registry_iterates_and_gets() -> None:
    """The registry lists its namespaces in order and finds them by name."""
    default, chat = Namespace(), Namespace(name="chat")
    reg = registry(default, chat)
    assert list(reg) == [default, chat]
    assert reg.get("chat") is chat
    assert reg.get("") is default
    assert reg.get("nope") is None


def test_registry_accepts_any_iterable() -> None:
    """Namespaces may come from a generator, consumed once."""
    reg = NamespaceRegistry((Namespace(name=n) for n in ("a", "b")), PERSONAL)
    assert [ns.name for ns in reg] == ["a", "b"]


def test_schema_validation_returns_the_data_without_unknown_fields() -> None:
    """``validate`` gives back the data as the schema decoded it: unknown fields gone."""
    chat = Namespace.chat("chat")
    assert chat.validate(b'{"text": "hi", "pad": "xxxx", "nonce": "n"}', "json") == (
        b'{"text":"hi","nonce":"n"}'
    )
    assert chat.validate(b'{"text": "\\u00e9"}', "json") == '{"text":"é"}'.encode()
    raw = b'{"anything": [1, 2]}'
    assert Namespace().validate(raw, "json") is raw


def test_chat_namespace_has_a_default_payload_limit() -> None:
    """``Namespace.chat`` limits data to 12 bytes per character plus 2 KiB, unless told."""
    assert Namespace.chat("chat").max_payload == 26_048
    assert Namespace.chat("chat", max_length=20).max_payload == 12 * 20 + 2048
    assert Namespace.chat("chat", max_payload=None).max_payload is None
