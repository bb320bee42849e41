"""The per-client protocol state machine, free of I/O.

:class:`ClientProtocol` takes frames and clock readings in and returns events
out: a message to send, a validated command to execute, or a close. It never
awaits, so every rule of the protocol (sizes, validation, permissions that need
no broker, invalid-message counting, liveness) is tested with plain calls, the
sans-I/O idea of the ``websockets`` library. The connection layer performs the
events; the hub executes the commands.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from msgspec import Raw

from ._closes import RECONNECT as _RECONNECT
from ._errors import (
    AlreadySubscribed,
    HubbubError,
    InvalidMessage,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from ._permissions import check_publish, check_read, may_subscribe, subscribe_refused
from .auth import Identity
from .limits import Limits, TokenBucket
from .messages import (
    Codec,
    Command,
    Error,
    GetHistory,
    GetPresence,
    Ping,
    Pong,
    Publish,
    Refresh,
    ServerMessage,
    Subscribe,
    Unsubscribe,
)
from .namespaces import Namespace, NamespaceRegistry

if TYPE_CHECKING:
    from ._stats import HubStats

__all__ = ["ClientProtocol", "Close", "Execute", "Send"]

# Close codes of the protocol (docs/protocol.md §7).
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008
TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
SERVICE_RESTART: Final = 1012
TRY_AGAIN_LATER: Final = 1013
TOKEN_EXPIRED: Final = 4401
KICKED: Final = 4403
HEARTBEAT_TIMEOUT: Final = 4408
FLOODING: Final = 4429

RECONNECT: Final = _RECONNECT
"""Close codes after which a client should reconnect (docs/protocol.md §7, ``hubbub._closes``)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send this message to the client."""

    message: ServerMessage


@dataclass(slots=True)
class Execute:
    """Run this validated command; ``namespace`` is the channel's, where it has one.

    ``channel_token`` marks a ``subscribe`` the namespace forbids that carries a
    channel token: the hub runs it only if the token verifies (protocol §4).
    Not frozen, unlike the other events: one is built for every command, and a
    frozen dataclass takes three times as long to build.
    """

    command: Command
    namespace: Namespace | None
    channel_token: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection: send ``disconnect``, then a close frame with ``code``.

    ``flush`` asks for the messages already queued (such as the ``error`` that
    caused the close) to be sent first.
    """

    code: int
    reason: str
    flush: bool = True

    @property
    def reconnect(self) -> bool:
        """Whether the client is advised to reconnect."""
        return self.code in RECONNECT


Event = Send | Execute | Close


class ClientProtocol:
    """Protocol rules for one client, driven by frames and clock readings.

    Args:
        identity: who the client is.
        codec: the negotiated codec; frames of the other kind are invalid.
        namespaces: the hub's namespaces.
        limits: the connection limits.
        now: the clock reading at accept time (seconds, any monotonic origin).
        stats: the hub's counters, where commands received and refusals are counted.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        codec: Codec,
        namespaces: NamespaceRegistry,
        limits: Limits,
        now: float,
        stats: HubStats | None = None,
    ) -> None:
        self.stats = stats
        self.identity = identity
        self.codec = codec
        self.namespaces = namespaces
        self.limits = limits
        self.channels: dict[str, Namespace] = {}
        """Channels the client holds, with their namespace."""
        self.server_side: set[str] | frozenset[str] = frozenset()
        """Channels held because the server subscribed the client (not counted by the limit).

        A set only once there is one: an empty set costs 216 bytes per idle client."""
        self.invalid_in_a_row = 0
        self.bucket = TokenBucket(limits.command_rate, limits.command_burst, now)
        self.buckets: dict[str, TokenBucket] = {
            kind: TokenBucket(rate, burst, now)
            for kind, (rate, burst) in limits.command_limits.items()
        }
        """Separate budgets per command type (``Limits.command_limits``)."""
        self.expiry: float | None = None
        """Clock reading at which the connection is closed 4401 unless refreshed."""
        self.first_deadline: float | None = (
            now + limits.first_message_timeout if limits.first_message_timeout else None
        )
        # Created on the first refusal: an empty deque costs 600 bytes per idle client.
        self._refusals: deque[float] | None = None
        self.last_activity = now
        self.next_ping = now + limits.ping_interval
        self.closed = False

    # -- input ---------------------------------------------------------------------------

    def receive(self, frame: str | bytes | None, now: float) -> list[Event]:
        """Handle one client frame received at ``now``."""
        if self.closed:
            return []
        self.last_activity = now
        self.first_deadline = None
        limit = self.limits.max_message_size
        if frame is None:
            return self._invalid(InvalidMessage("empty frame"), None)
        if isinstance(frame, str):
            # A str of n characters holds at most 4n UTF-8 bytes: encode only near the limit.
            if len(frame) > limit or (
                len(frame) * 4 > limit and len(frame.encode(errors="surrogatepass")) > limit
            ):
                return self._close(TOO_BIG, str(MessageTooLarge(f"frame over {limit} bytes")))
            if self.codec.binary:
                return self._invalid(
                    InvalidMessage("text frame on hubbub.v1.msgpack: send binary frames"), None
                )
            data: str | bytes = frame
        else:
            if len(frame) > limit:
                return self._close(TOO_BIG, str(MessageTooLarge(f"frame over {limit} bytes")))
            if not self.codec.binary:
                return self._invalid(
                    InvalidMessage("binary frame on hubbub.v1.json: send text frames"), None
                )
            data = frame
        stats = self.stats
        try:
            command = self.codec.decode(data)
        except InvalidMessage as exc:
            if stats is not None:
                stats.commands["invalid"] = stats.commands.get("invalid", 0) + 1
            return self._invalid(exc, getattr(exc, "command_id", None))
        if stats is not None:
            kind: str = command.__struct_config__.tag  # type: ignore[assignment]
            stats.commands[kind] = stats.commands.get(kind, 0) + 1
        try:
            if type(command) is not Pong and not (
                self.bucket.take(now) and (not self.buckets or self._take_kind(command, now))
            ):
                return self._rate_limited(command.id, now)
            event = self._check(command)
        except HubbubError as exc:
            if exc.code == InvalidMessage.code:
                return self._invalid(exc, command.id)
            if exc.code == RateLimited.code and stats is not None:  # max_channels
                stats.rate_limited["channels"] = stats.rate_limited.get("channels", 0) + 1
            # A refusal (403/404/409/413/429) answers a well-formed command: it resets the count.
            self.invalid_in_a_row = 0
            return [Send(Error(code=exc.code, reason=exc.reason, id=command.id))]
        self.invalid_in_a_row = 0
        return [] if event is None else [event]

    def _take_kind(self, command: Command, now: float) -> bool:
        """Take a token from the command type's bucket, if it has one (``command_limits``)."""
        bucket = self.buckets.get(command.__struct_config__.tag)  # type: ignore[arg-type]
        return bucket is None or bucket.take(now)

    def _check(self, command: Command) -> Event | None:
        """Validate a decoded command against rules that need no broker."""
        if type(command) is Publish:  # the most frequent, checked first
            channel = command.channel
            namespace = self.namespaces.resolve(channel)
            data = bytes(command.data)
            if namespace.max_payload is not None and len(data) > namespace.max_payload:
                raise MessageTooLarge(f"data over {namespace.max_payload} bytes")
            check_publish(self.identity, channel, namespace, data)
            checked = namespace.validate(data, self.codec.name)
            if checked is not data:
                command.data = Raw(checked)  # as the schema decoded it: unknown fields gone
            return Execute(command, namespace)
        if isinstance(command, Pong):
            return None
        if isinstance(command, Refresh):
            return Execute(command, None)
        channel = command.channel
        namespace = self.namespaces.resolve(channel)
        if isinstance(command, Subscribe):
            if channel in self.channels:
                if command.recover is None or channel not in self.server_side:
                    raise AlreadySubscribed(f"already subscribed to {channel!r}")
            elif (allowed := may_subscribe(self.identity, channel, namespace)) is not None:
                if not allowed and command.token is None:
                    raise subscribe_refused(channel)
                if self.counted_channels() >= self.limits.max_channels:
                    raise RateLimited(f"at most {self.limits.max_channels} channels per connection")
                if not allowed:
                    return Execute(command, namespace, channel_token=True)
        elif isinstance(command, Unsubscribe):
            if channel not in self.channels:
                raise NotFound(f"not subscribed to {channel!r}")
        elif isinstance(command, GetPresence):
            if not namespace.presence:
                raise PermissionDenied("presence is not enabled for this namespace")
            if channel not in self.channels:
                check_read(self.identity, channel, namespace, "presence")
        elif isinstance(command, GetHistory):
            if channel not in self.channels:
                check_read(self.identity, channel, namespace)
        return Execute(command, namespace)

    def _rate_limited(self, command_id: int | None, now: float) -> list[Event]:
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = deque()
        refusals.append(now)
        stats = self.stats
        if stats is not None:
            stats.rate_limited["command"] = stats.rate_limited.get("command", 0) + 1
        window = self.limits.flood_window
        while refusals and refusals[0] <= now - window:
            refusals.popleft()
        events: list[Event] = [
            Send(
                Error(
                    code=RateLimited.code,
                    reason="rate limited: command not executed",
                    id=command_id,
                )
            )
        ]
        if len(refusals) >= self.limits.flood_refusals:
            events.extend(self._close(FLOODING, "kept sending after rate-limit errors"))
        return events

    def counted_channels(self) -> int:
        """Channels held that count against ``max_channels`` (the personal one does not)."""
        count = len(self.channels)
        own = "#" + self.identity.user if self.identity.user else None
        if own is not None and own in self.channels:
            count -= 1
        return count

    def _invalid(self, exc: HubbubError, command_id: int | None) -> list[Event]:
        self.invalid_in_a_row += 1
        events: list[Event] = [Send(Error(code=exc.code, reason=exc.reason, id=command_id))]
        if self.invalid_in_a_row >= self.limits.max_invalid:
            events.extend(self._close(POLICY_VIOLATION, "too many invalid messages"))
        return events

    def _close(self, code: int, reason: str, *, flush: bool = True) -> list[Event]:
        self.closed = True
        return [Close(code, reason, flush)]

    # -- state updates from the hub -------------------------------------------------------

    def add_channel(self, channel: str, namespace: Namespace, *, server_side: bool = False) -> None:
        """Record a subscription the hub has made."""
        self.channels[channel] = namespace
        if server_side:
            held = self.server_side
            if not isinstance(held, set):
                held = self.server_side = set()
            held.add(channel)

    def remove_channel(self, channel: str) -> None:
        """Forget a subscription the hub has removed."""
        self.channels.pop(channel, None)
        held = self.server_side
        if isinstance(held, set):
            held.discard(channel)

    # -- time ------------------------------------------------------------------------------

    def heartbeat(self, now: float) -> list[Event]:
        """What liveness requires at ``now``: a ``ping``, a 4408 close, or nothing."""
        if self.closed:
            return []
        if self.expiry is not None and now >= self.expiry:
            return self._close(TOKEN_EXPIRED, "token expired and not refreshed")
        if self.first_deadline is not None and now >= self.first_deadline:
            return self._close(
                HEARTBEAT_TIMEOUT, "no first message within the deadline", flush=False
            )
        if now - self.last_activity >= self.limits.idle_timeout:
            return self._close(
                HEARTBEAT_TIMEOUT, "no message within the idle deadline", flush=False
            )
        if now >= self.next_ping:
            self.next_ping = now + self.limits.ping_interval
            return [Send(Ping())]
        return []
