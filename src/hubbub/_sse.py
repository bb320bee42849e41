"""Server-Sent Events: ``GET <prefix>/sse?channel=…``, a one-way stream of publications.

An SSE stream is a :class:`~hubbub._connection.Connection` with another writer:
it is registered, subscribed, fanned out to, limited and closed exactly like a
WebSocket client (same bounded send queue, same slow-consumer policy, same
``Hub.disconnect`` and drain), and only the last step differs: the writer frames
each queued JSON message as an SSE event instead of a WebSocket frame.

Every ``message`` event carries an ``id`` that encodes the position (offset and
epoch) of every history channel of the stream, so the browser's
``Last-Event-ID`` resumes them all at once through the hub's ordinary recovery
path (``subscribe`` with ``recover``). The id is base64url of a small
MessagePack document: a version and, per channel, a 63-bit fingerprint of its
name with its offset and epoch. Fingerprints rather than indexes keep an id
valid when the channel list changes; names rather than fingerprints would make
ids grow with channel names. Design notes: ``docs/protocol.md`` ("Server-Sent
Events") and ``docs/design.md``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal
from urllib.parse import parse_qsl

import anyio
import msgspec
from msgspec import Meta, Struct

from ._connection import PEER_GONE, Connection
from ._errors import HubbubError, HubNotRunning, InvalidMessage, MethodNotAllowed, RateLimited
from ._http import BEARER_CHALLENGE, Receive, Scope, SendCallable, header, query_param, send_error
from ._permissions import may_subscribe, subscribe_refused
from ._session import serve_session
from .messages import JSON, Codec, Disconnect, Position, Subscribed
from .namespaces import Namespace, validate_channel
from .protocol import NORMAL, TOKEN_EXPIRED, Close

if TYPE_CHECKING:
    from ._connection import SessionHost
    from .auth import Identity

__all__ = [
    "MAX_SSE_CHANNELS",
    "SSEStream",
    "decode_event_id",
    "encode_event_id",
    "fingerprint",
    "serve_sse",
]

logger = logging.getLogger("hubbub.sse")

MAX_EVENT_ID: Final = 8192
"""The longest ``Last-Event-ID`` accepted, in characters (400 above)."""

MAX_SSE_CHANNELS: Final = 128
"""The most channels one stream holds, whatever ``Limits.max_channels`` says.

Each history channel adds about 37 characters to every event id; past ~220
channels an id would outgrow :data:`MAX_EVENT_ID` (and the 8-16 KiB header
limits of servers and proxies), and the browser's reconnect would be refused.
At 128 (plus the personal channel) an id stays under ~4.9 KiB.
"""

_MAX_POSITIONS: Final = 1024
_MAX_EPOCH: Final = 256
_INT64: Final = 2**63 - 1
_ID_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_PING: Final = ": ping\n\n"

# -- event ids --------------------------------------------------------------------------------


class _EventId(Struct, array_like=True):
    """The decoded id: version 1, then ``(fingerprint, offset, epoch)`` per history channel."""

    version: Literal[1]
    positions: Annotated[
        list[
            tuple[
                Annotated[int, Meta(ge=0, le=_INT64)],
                Annotated[int, Meta(ge=0, le=_INT64)],
                Annotated[str, Meta(max_length=_MAX_EPOCH)],
            ]
        ],
        Meta(max_length=_MAX_POSITIONS),
    ]


_ID_ENCODER = msgspec.msgpack.Encoder()
_ID_DECODER = msgspec.msgpack.Decoder(_EventId)


@functools.lru_cache(maxsize=4096)
def fingerprint(channel: str) -> int:
    """A 63-bit fingerprint of a channel name, as stored in event ids (msgspec's int64 range)."""
    digest = hashlib.blake2b(channel.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _INT64


def encode_event_id(positions: dict[str, Position]) -> str:
    """The SSE ``id`` for the positions of a stream's history channels (URL-safe, unpadded)."""
    document = _EventId(
        1, [(fingerprint(channel), p.offset, p.epoch) for channel, p in positions.items()]
    )
    return base64.urlsafe_b64encode(_ID_ENCODER.encode(document)).rstrip(b"=").decode()


def decode_event_id(text: str, channels: list[str]) -> dict[str, Position]:
    """The positions an event id holds for ``channels`` (entries for other channels are ignored).

    Raises:
        InvalidMessage: the id is not one this server issued (malformed, too long,
            wrong version, a fingerprint twice).
    """
    if len(text) > MAX_EVENT_ID:
        raise InvalidMessage(f"Last-Event-ID longer than {MAX_EVENT_ID} characters")
    if not _ID_ALPHABET.fullmatch(text):
        raise InvalidMessage("malformed Last-Event-ID")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        document = _ID_DECODER.decode(raw)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise InvalidMessage("malformed Last-Event-ID") from None
    found: dict[int, Position] = {}
    for mark, offset, epoch in document.positions:
        if mark in found:
            raise InvalidMessage("malformed Last-Event-ID: a channel appears twice")
        found[mark] = Position(offset=offset, epoch=epoch)
    positions = {}
    for channel in channels:
        position = found.get(fingerprint(channel))
        if position is not None:
            positions[channel] = position
    return positions


# -- the stream -------------------------------------------------------------------------------


class _Head(Struct):
    """What the writer reads from a queued frame: enough to name the event and build its id."""

    type: str
    channel: str | None = None
    offset: int | None = None
    epoch: str | None = None


_HEAD = msgspec.json.Decoder(_Head)
_SUBSCRIBED = msgspec.json.Decoder(Subscribed)


def _data(frame: str) -> str:
    """``frame`` as ``data:`` lines: JSON whitespace may hold line breaks, which SSE cannot."""
    if "\n" in frame or "\r" in frame:
        return "".join(f"data: {line}\n" for line in _LINE_BREAK.split(frame))
    return f"data: {frame}\n"


class SSEStream(Connection):
    """A connection whose writer frames messages as Server-Sent Events.

    Clients of an SSE stream never send anything, so there is no idle deadline:
    ``: ping`` comments every ``ping_interval`` keep proxies from closing the
    stream, and a token's expiry still ends it (there is no ``refresh``).
    """

    __slots__ = ("_id", "_positions")

    transport = "sse"

    def __init__(
        self, host: SessionHost, *, client_id: str, identity: Identity, codec: Codec
    ) -> None:
        super().__init__(host, client_id=client_id, identity=identity, codec=codec)
        limits = self.protocol.limits
        if limits.max_channels > MAX_SSE_CHANNELS:
            # Server-side subscriptions (Hub.subscribe_user) honour this cap too.
            self.protocol.limits = replace(limits, max_channels=MAX_SSE_CHANNELS)
        self._positions: dict[str, Position] = {}
        self._id: str | None = None

    def resume_from(self, positions: dict[str, Position]) -> None:
        """Start the stream's id from the positions of the client's ``Last-Event-ID``.

        A channel whose ``subscribed`` event has not been sent yet keeps its old
        position in every id until then, so a stream dropped meanwhile resumes it.
        """
        self._positions.update(positions)
        self._id = None

    def heartbeat(self, now: float) -> None:
        protocol = self.protocol
        if protocol.closed:
            return
        if protocol.expiry is not None and now >= protocol.expiry:
            protocol.closed = True
            self.close(Close(TOKEN_EXPIRED, "token expired"))
        elif now >= protocol.next_ping:
            protocol.next_ping = now + self.host.limits.ping_interval
            self.enqueue(_PING, len(_PING))

    def ending(self) -> tuple[int, str]:
        """As for a WebSocket, except that leaving is how an SSE client says goodbye (1000)."""
        if self._close is None:
            return NORMAL, "closed by the client"
        return super().ending()

    def event_id(self) -> str:
        """The current ``id``: the newest position of every history channel."""
        if self._id is None:
            self._id = encode_event_id(self._positions)
        return self._id

    def _track(self, channel: str, offset: int, epoch: str) -> None:
        self._positions[channel] = Position(offset=offset, epoch=epoch)
        self._id = None

    def frame_event(self, frame: str) -> str:
        """One queued frame (the JSON of a server message, or a ping) as SSE text."""
        if frame is _PING:
            return frame
        head = _HEAD.decode(frame)
        kind = head.type
        if kind == "message":
            if head.offset is not None and head.epoch is not None and head.channel is not None:
                self._track(head.channel, head.offset, head.epoch)
            return f"event: message\nid: {self.event_id()}\n{_data(frame)}\n"
        if kind == "subscribed":
            return self._subscribed_event(frame)
        return f"event: {kind}\n{_data(frame)}\n"

    def _subscribed_event(self, frame: str) -> str:
        """``subscribed`` without its publications, which follow as ``message`` events.

        Its id is the position just before them, so a stream dropped while they
        are in flight resumes with them.
        """
        reply = _SUBSCRIBED.decode(frame)
        publications, reply.publications = reply.publications, []
        if publications:
            frame = JSON.encode(reply)  # type: ignore[assignment]
        if reply.offset is not None and reply.epoch is not None:
            offset = reply.offset
            first = publications[0] if publications else None
            if first is not None and first.offset is not None and first.epoch == reply.epoch:
                offset = first.offset - 1
            self._track(reply.channel, offset, reply.epoch)
            parts = [f"event: subscribed\nid: {self.event_id()}\n{_data(frame)}\n"]
        else:
            parts = [f"event: subscribed\n{_data(frame)}\n"]
        for publication in publications:
            parts.append(self.frame_event(JSON.encode(publication)))  # type: ignore[arg-type]
        return "".join(parts)

    async def run(self, receive: Receive, send: SendCallable) -> None:
        """Stream until the client goes, the hub closes the stream, or the queue overflows."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive)
            await self._stream(send)
            tg.cancel_scope.cancel()

    async def _watch(self, receive: Receive) -> None:
        """Wait for ``http.disconnect``: the only thing an SSE client ever says."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._peer_left()
                return

    async def _stream(self, send: SendCallable) -> None:
        queue = self._queue
        chunk = self.host.limits.batch_bytes
        with anyio.CancelScope() as scope:
            self._send_scope = scope
            try:
                while True:
                    if not queue:
                        if self._close is not None or self._gone:
                            break
                        self._waiting = True
                        await self._wakeup.wait()
                        continue
                    if self._gone or (self._close is not None and not self._close.flush):
                        break
                    # Events queued since the last write leave in one chunk: the SSE
                    # stream has no frames, so this is invisible to the client.
                    parts: list[str] = []
                    total = 0
                    while queue and total < chunk:
                        frame, size, _ = queue.popleft()
                        self._queued_bytes -= size
                        total += size
                        parts.append(self.frame_event(frame))  # type: ignore[arg-type]
                    body = "".join(parts).encode()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            except PEER_GONE:
                self._gone = True
        self._send_scope = None
        if self._gone:
            return
        close = self._close
        goodbye = b""
        if close is not None:
            self.close_code = close.code
            message = Disconnect(code=close.code, reason=close.reason, reconnect=close.reconnect)
            goodbye = f"event: disconnect\n{_data(JSON.encode(message))}\n".encode()  # type: ignore[arg-type]
        with anyio.move_on_after(self.host.limits.close_timeout):
            try:
                await send({"type": "http.response.body", "body": goodbye, "more_body": False})
            except PEER_GONE:
                self._gone = True


# -- the request ------------------------------------------------------------------------------


async def serve_sse(host: SessionHost, scope: Scope, receive: Receive, send: SendCallable) -> None:
    """Answer ``GET <prefix>/sse``: refuse it with a JSON error, or stream until it ends.

    The session path is the WebSocket's (:func:`hubbub._session.serve_session`);
    every refusal happens before the response starts, as JSON ``{code, reason}``.
    """
    await serve_session(host, _SSE(scope, send), scope, receive, send)


class _SSE:
    """The SSE stream's part of a session (a :class:`hubbub._session.Transport`)."""

    logger = logger

    def __init__(self, scope: Scope, send: SendCallable) -> None:
        self.connect_fields: dict[str, Any] = {"transport": "sse"}
        self.disconnect_fields: dict[str, Any] = {"transport": "sse"}
        self.scope = scope
        self.send = send
        self.wanted: list[tuple[str, Namespace]] = []
        self.positions: dict[str, Position] | None = None

    async def check(self, host: SessionHost) -> bool:
        scope = self.scope
        if scope.get("method", "GET") != "GET":
            raise MethodNotAllowed("use GET for /sse", allow="GET")
        if not host.running:
            raise HubNotRunning(f"hub is {host.state}")
        channels = _channels(scope)
        self.wanted = [(channel, host.namespaces.resolve(channel)) for channel in channels]
        event_id = header(scope, b"last-event-id") or query_param(scope, "last_event_id")
        self.positions = decode_event_id(event_id, channels) if event_id else None
        return True

    def authorize(self, host: SessionHost, identity: Identity) -> None:
        _check_access(host, identity, self.wanted)
        _charge(host, len(self.wanted))

    async def refuse(self, exc: HubbubError, retry_after: int | None, ip: str | None) -> None:
        logger.info(
            "refused an SSE stream (%d): %s",
            exc.http_status,
            exc.reason,
            extra={"event": "refused", "reason": exc.reason, "ip": ip, "transport": "sse"},
        )
        await send_error(self.send, exc, retry_after=retry_after, challenge=BEARER_CHALLENGE)

    def connection(self, host: SessionHost, identity: Identity) -> Connection:
        return SSEStream(host, client_id=host.client_id(), identity=identity, codec=JSON)

    async def begin(self, host: SessionHost, connection: Connection) -> bool:
        assert isinstance(connection, SSEStream)
        host.stats.sse_streams_total += 1
        positions = self.positions
        if positions:
            connection.resume_from(positions)
        try:
            for channel, namespace in self.wanted:
                if channel in connection.protocol.channels:
                    continue  # subscribed server-side meanwhile (Hub.subscribe_user)
                recover = None
                if positions is not None:
                    recover = positions.get(channel)
                    if recover is None and not namespace.history_size:
                        # Resuming: a channel without history cannot be recovered; say so.
                        recover = Position(offset=0, epoch="")
                await host.join(connection, channel, namespace, recover)
        except HubbubError as exc:
            logger.info("refused an SSE stream (%d): %s", exc.http_status, exc.reason)
            await send_error(self.send, exc, challenge=BEARER_CHALLENGE)
            return False
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache, no-transform"),
            (b"x-accel-buffering", b"no"),
        ]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        # A random reconnection delay spreads browsers' reconnects after a restart.
        retry = f"retry: {random.randint(1000, 5000)}\n\n".encode()
        await self.send({"type": "http.response.body", "body": retry, "more_body": True})
        return True

    async def welcome(self, host: SessionHost, connection: Connection) -> None:
        pass  # no welcome on a stream: its first events are its channels' ``subscribed``


def _charge(host: SessionHost, channels: int) -> None:
    """Refuse (429) a stream opening more channels than a client's command budget allows.

    Opening a stream does what that many ``subscribe`` commands would (history
    reads, presence leases, join events), so it costs what they would cost a
    WebSocket client: one ``subscribe`` each from the budget a new connection
    starts with (``command_burst``, and the ``subscribe`` budget if one is set).
    """
    limits = host.limits
    burst = limits.command_burst
    subscribe = limits.command_limits.get("subscribe")
    if subscribe is not None:
        burst = min(burst, subscribe[1])
    if channels > burst:
        stats = host.stats
        stats.rate_limited["command"] = stats.rate_limited.get("command", 0) + 1
        raise RateLimited(
            f"{channels} channels are more subscriptions than the command budget allows "
            f"at once ({burst})"
        )


def _channels(scope: Scope) -> list[str]:
    """The ``channel`` query parameters, validated, without repeats, in their order."""
    query = scope.get("query_string", b"").decode("latin-1")
    channels: dict[str, None] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "channel":
            channels[validate_channel(value)] = None
            if len(channels) > _MAX_POSITIONS:
                raise InvalidMessage(f"at most {_MAX_POSITIONS} channels")
    if not channels:
        raise InvalidMessage("name at least one channel: /sse?channel=…")
    return list(channels)


def _check_access(
    host: SessionHost, identity: Identity, wanted: list[tuple[str, Namespace]]
) -> None:
    """The WebSocket ``subscribe`` rules (:mod:`hubbub._permissions`), and the channel cap."""
    counted = 0
    for channel, namespace in wanted:
        allowed = may_subscribe(identity, channel, namespace)
        if allowed is None:
            continue  # the client's own personal channel
        if not allowed:
            raise subscribe_refused(channel)
        counted += 1
    cap = min(host.limits.max_channels, MAX_SSE_CHANNELS)
    if counted > cap:
        raise RateLimited(f"at most {cap} channels per stream")
