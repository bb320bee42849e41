"""Namespaces: per-family channel options, and the rules for channel names.

A channel ``ns:rest`` belongs to namespace ``ns``; a channel without a colon
belongs to the default namespace (``name=""``); ``#<user>`` is the personal
channel of ``<user>`` and belongs to the hub's personal namespace. Options are
checked when a :class:`Namespace` is built, so a configuration mistake fails at
start-up, not on the first message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import msgspec

from ._errors import InvalidData, InvalidMessage, UnknownNamespace
from .limits import check_positive_int, check_positive_number
from .messages import BAD_CHANNEL, valid_channel

if TYPE_CHECKING:
    from .auth import Identity

__all__ = [
    "Access",
    "AccessRule",
    "ChannelClaim",
    "Namespace",
    "NamespaceRegistry",
    "PublishCheck",
    "SlowConsumerPolicy",
    "SubscribeCheck",
    "personal_channel",
    "personal_owner",
    "validate_channel",
]

Access = Literal["anyone", "authenticated", "nobody"]
"""Who may do something in a namespace, before any hook is asked.

``anyone``: every connected client (anonymous clients only exist where the hub
allows them); ``authenticated``: clients with a user id; ``nobody``: only the
server (Python API, HTTP API)."""


@dataclass(frozen=True, slots=True)
class ChannelClaim:
    """Access granted by a claim of the client's token that names channels.

    The claim (a list of strings in the verified token payload,
    :attr:`hubbub.Identity.claims`) must name the channel itself, or
    ``<namespace>:*`` for every channel of the namespace (``*`` for the default
    namespace). Anonymous clients, identities without claims (not from a JWT) and
    a claim that is not a list of strings are refused. Name a claim of your own
    (``rooms``, ``can_publish``): the ``channels`` claim also subscribes the
    client to the channels it lists when it connects (protocol §2).
    """

    claim: str

    def __post_init__(self) -> None:
        if not isinstance(self.claim, str) or not self.claim:
            raise ValueError("ChannelClaim.claim must be a non-empty claim name")

    def allows(self, identity: Identity, channel: str) -> bool:
        """Whether ``identity``'s token names ``channel`` (or its whole namespace)."""
        claims = identity.claims
        if not identity.user or claims is None:
            return False
        named = claims.get(self.claim)
        if not isinstance(named, list):
            return False
        name, colon, _ = channel.partition(":")
        wildcard = f"{name}:*" if colon else "*"
        return any(entry == channel or entry == wildcard for entry in named)


AccessRule = Access | ChannelClaim
"""An :data:`Access` level, or a :class:`ChannelClaim` of the client's token."""

SlowConsumerPolicy = Literal["disconnect", "drop_oldest"]
"""What happens when a client's send queue is full: close it with 1013 so it
recovers (``disconnect``), or drop the oldest queued message of a lossy
channel (``drop_oldest``)."""

_NAMESPACE_RE: Final = re.compile(r"^[A-Za-z0-9_\-.@=/]{1,64}$")
PERSONAL_PREFIX: Final = "#"


class SubscribeCheck(Protocol):
    """Decides whether ``identity`` may subscribe to ``channel``.

    Called after the namespace's ``subscribe`` access allowed the client. It must
    not block for long: it runs on the client's command path. Returning False
    answers ``error`` 403.
    """

    def __call__(self, identity: Identity, channel: str) -> bool: ...


class PublishCheck(Protocol):
    """Decides whether ``identity`` may publish ``data`` (the raw payload) into ``channel``."""

    def __call__(self, identity: Identity, channel: str, data: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Namespace:
    """Options shared by every channel of one namespace.

    Args:
        name: the part before the colon; ``""`` is the default namespace.
        subscribe: who may subscribe (see :data:`Access`, or a
            :class:`ChannelClaim` of the client's token).
        publish: who may publish from a client (the same choices); the server
            may always publish.
        history_access: who may read the history of a channel they are not
            subscribed to; ``None`` (the default): whoever may subscribe.
        presence_access: who may read the presence of a channel they are not
            subscribed to; ``None`` (the default): whoever may subscribe.
        can_subscribe: optional finer check, asked after ``subscribe`` allowed it.
        can_publish: optional finer check, asked after ``publish`` allowed it.
        echo: whether a publisher receives its own publication unless it says otherwise.
        slow_consumer: the policy when a subscriber's send queue is full.
        max_payload: the largest ``data`` accepted in one publication, in bytes
            (``None``: only the frame limit applies).
        history_size: publications kept per channel (0: no history: channels are
            then at-most-once, with no offsets and no recovery).
        history_ttl: seconds a channel's history is kept after its last publication.
        presence: whether the namespace tracks presence (``presence`` command).
        presence_ttl: seconds a presence lease lives unless refreshed (the hub
            refreshes its clients' leases every third of it), so a crashed
            node's clients disappear on their own.
        join_leave: whether ``join``/``leave`` events are sent to subscribers.
        join_leave_per_user: announce a user's first connection joining and last
            one leaving, instead of every connection.
        schema: a msgspec type that client ``data`` must decode into (``error``
            422 otherwise), e.g. :data:`hubbub.chat.ChatMessage`. What is stored
            and delivered is the data re-encoded from the decoded value: fields
            the schema does not know are dropped (they would otherwise be kept
            and replayed to everyone who joins), escapes are normalised.
        idempotency_window: seconds a publish's ``idempotency_key`` is remembered,
            so a retried publish is not delivered twice.
        replay: publications replayed in ``subscribed`` when a client subscribes
            without ``recover`` and without ``history: n`` (a chat room shows its
            recent messages on join).
    """

    name: str = ""
    subscribe: AccessRule = "anyone"
    publish: AccessRule = "anyone"
    can_subscribe: SubscribeCheck | None = field(default=None, compare=False)
    can_publish: PublishCheck | None = field(default=None, compare=False)
    echo: bool = True
    slow_consumer: SlowConsumerPolicy = "disconnect"
    max_payload: int | None = None
    history_size: int = 0
    history_ttl: float = 300.0
    presence: bool = False
    presence_ttl: float = 60.0
    join_leave: bool = False
    join_leave_per_user: bool = False
    schema: Any = field(default=None, compare=False)
    idempotency_window: float = 120.0
    replay: int = 0
    history_access: AccessRule | None = None
    presence_access: AccessRule | None = None

    @classmethod
    def chat(
        cls,
        name: str,
        *,
        max_length: int = 2000,
        history_size: int = 100,
        history_ttl: float = 24 * 3600.0,
        **options: Any,
    ) -> Namespace:
        """A chat namespace: :class:`~hubbub.chat.ChatMessage` schema, history replayed
        on join (the last 100 by default), presence with join/leave events.

        ``max_payload`` defaults to the largest message the schema accepts
        written the longest way (every character of ``text`` and ``nonce`` as a
        ``\\u`` escape pair, 12 bytes): ``12 * max_length + 2048`` bytes, 26,048
        for the default 2,000 characters. Larger is ``error`` 413 before the
        schema is even read.
        """
        from .chat import chat_message_type

        options.setdefault("max_payload", 12 * max_length + 2048)
        options.setdefault("presence", True)
        options.setdefault("join_leave", True)
        options.setdefault("replay", history_size)
        return cls(
            name=name,
            schema=chat_message_type(max_length),
            history_size=history_size,
            history_ttl=history_ttl,
            **options,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError("Namespace.name must be a string")
        if self.name and not _NAMESPACE_RE.match(self.name):
            raise ValueError(
                f"invalid namespace name {self.name!r}: 1-64 characters from "
                "[A-Za-z0-9_-.@=/], no colon and no leading '#'"
            )
        for option in ("subscribe", "publish", "history_access", "presence_access"):
            value = getattr(self, option)
            if value is None and option.endswith("_access"):
                continue
            if not isinstance(value, ChannelClaim) and value not in (
                "anyone",
                "authenticated",
                "nobody",
            ):
                raise ValueError(
                    f"Namespace.{option} must be 'anyone', 'authenticated', 'nobody' or a "
                    f"ChannelClaim, not {value!r}"
                )
        if self.slow_consumer not in ("disconnect", "drop_oldest"):
            raise ValueError(
                f"Namespace.slow_consumer must be 'disconnect' or 'drop_oldest', "
                f"not {self.slow_consumer!r}"
            )
        for flag in ("echo", "presence", "join_leave", "join_leave_per_user"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"Namespace.{flag} must be True or False")
        if self.max_payload is not None:
            check_positive_int("Namespace.max_payload", self.max_payload)
        check_positive_int("Namespace.history_size", self.history_size, zero=True)
        check_positive_int("Namespace.replay", self.replay, zero=True)
        if self.replay > self.history_size:
            raise ValueError("Namespace.replay cannot exceed history_size")
        check_positive_number("Namespace.history_ttl", self.history_ttl)
        check_positive_number("Namespace.presence_ttl", self.presence_ttl)
        check_positive_number("Namespace.idempotency_window", self.idempotency_window)
        if self.history_size and self.slow_consumer == "drop_oldest":
            raise ValueError(
                "Namespace.slow_consumer='drop_oldest' drops messages, which would leave "
                "gaps in a stream with history: use it only with history_size=0"
            )
        if self.schema is not None:
            try:
                msgspec.json.Decoder(self.schema)
            except TypeError as exc:
                raise TypeError(
                    f"Namespace.schema must be a msgspec-compatible type: {exc}"
                ) from None
        if self.join_leave and not self.presence:
            raise ValueError("Namespace.join_leave needs presence=True")
        for hook in ("can_subscribe", "can_publish"):
            value = getattr(self, hook)
            if value is not None and not callable(value):
                raise TypeError(f"Namespace.{hook} must be callable")

    @property
    def droppable(self) -> bool:
        """Whether messages of this namespace may be dropped for a slow consumer."""
        return self.slow_consumer == "drop_oldest"

    def may_subscribe(self, identity: Identity, channel: str) -> bool:
        """Whether ``identity`` may subscribe to ``channel`` under these options."""
        if not _allowed(self.subscribe, identity, channel):
            return False
        return self.can_subscribe is None or bool(self.can_subscribe(identity, channel))

    def may_read(
        self, identity: Identity, channel: str, what: Literal["history", "presence"]
    ) -> bool:
        """Whether ``identity`` may read ``what`` of ``channel`` without being subscribed.

        ``history_access``/``presence_access`` when set; otherwise the
        subscription rules (with ``can_subscribe``), as before they existed.
        """
        rule = self.history_access if what == "history" else self.presence_access
        if rule is None:
            return self.may_subscribe(identity, channel)
        return _allowed(rule, identity, channel)

    def validate(self, data: bytes, codec: str) -> bytes:
        """Check ``data`` (encoded with ``codec``) against :attr:`schema`.

        Returns:
            the data to store and deliver: ``data`` itself without a schema, else
            the decoded value encoded again with ``codec``, so fields the schema
            does not know are gone.

        Raises:
            InvalidData: the data does not fit; the reason names the field.
        """
        if self.schema is None:
            return data
        try:
            value = _schema_decoder(self.schema, codec).decode(data)
        except msgspec.ValidationError as exc:
            raise InvalidData(f"data does not match the channel schema: {exc}") from None
        except (msgspec.DecodeError, ValueError, RecursionError):
            raise InvalidData("data does not match the channel schema") from None
        try:
            return _ENCODERS[codec].encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError):
            raise InvalidData("data does not match the channel schema") from None

    def may_publish(self, identity: Identity, channel: str, data: bytes) -> bool:
        """Whether ``identity`` may publish ``data`` into ``channel`` from a client."""
        if not _allowed(self.publish, identity, channel):
            return False
        return self.can_publish is None or bool(self.can_publish(identity, channel, data))


_ENCODERS: Final[dict[str, msgspec.json.Encoder | msgspec.msgpack.Encoder]] = {
    "json": msgspec.json.Encoder(),
    "msgpack": msgspec.msgpack.Encoder(),
}


@cache
def _schema_decoder(
    schema: Any, codec: str
) -> msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any]:
    if codec == "msgpack":
        return msgspec.msgpack.Decoder(schema)
    return msgspec.json.Decoder(schema)


def _allowed(access: AccessRule, identity: Identity, channel: str) -> bool:
    if isinstance(access, ChannelClaim):
        return access.allows(identity, channel)
    if access == "anyone":
        return True
    if access == "authenticated":
        return bool(identity.user)
    return False


def validate_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name, else raise ``InvalidMessage``."""
    if not isinstance(channel, str) or not valid_channel(channel):
        raise InvalidMessage(BAD_CHANNEL)
    return channel


class NamespaceRegistry:
    """Maps channels to their namespace; built once per hub."""

    __slots__ = ("_by_name", "personal")

    def __init__(self, namespaces: Iterable[Namespace], personal: Namespace) -> None:
        by_name: dict[str, Namespace] = {}
        for namespace in namespaces:
            if not isinstance(namespace, Namespace):
                raise TypeError(f"expected a Namespace, got {type(namespace).__name__}")
            if namespace.name in by_name:
                raise ValueError(f"namespace {namespace.name!r} is configured twice")
            by_name[namespace.name] = namespace
        if not isinstance(personal, Namespace):
            raise TypeError(f"expected a Namespace for personal channels, got {personal!r}")
        self._by_name: Mapping[str, Namespace] = by_name
        self.personal = personal

    def __iter__(self) -> Any:
        return iter(self._by_name.values())

    def get(self, name: str) -> Namespace | None:
        """The namespace called ``name``, if configured."""
        return self._by_name.get(name)

    def resolve(self, channel: str) -> Namespace:
        """The namespace of an already valid channel name.

        Raises:
            UnknownNamespace: no namespace is configured for the channel.
        """
        if channel.startswith(PERSONAL_PREFIX):
            return self.personal
        name, colon, _ = channel.partition(":")
        namespace = self._by_name.get(name if colon else "")
        if namespace is None:
            shown = repr(name) if colon else "the default namespace"
            raise UnknownNamespace(f"unknown namespace {shown}")
        return namespace


def personal_channel(user: str) -> str:
    """The personal channel of ``user``."""
    return PERSONAL_PREFIX + user


def personal_owner(channel: str) -> str | None:
    """The user whose personal channel ``channel`` is, or ``None``."""
    return channel[1:] if channel.startswith(PERSONAL_PREFIX) else None
