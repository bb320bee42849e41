"""A client's connection, whatever its transport: protocol state, bounded send queue, close.

Each accepted client gets one :class:`Connection`, of one of two transports:
:class:`~hubbub._websocket.WebSocketConnection` (a reader task: frames in →
:class:`~hubbub.protocol.ClientProtocol` → hub) and
:class:`~hubbub._sse.SSEStream` (no reader: it only watches for the client
leaving). What they share lives here: the hub hands messages over with
:meth:`Connection.enqueue`, which never awaits (a full queue applies the
slow-consumer policy instead of slowing the publisher down), and each
transport's writer drains the queue in the ASGI call's own task. Pings and idle
deadlines are driven for all connections by one hub task, so an idle
connection costs no task of its own for liveness. A connection asks the hub
for nothing but what :class:`SessionHost` offers: the hub hands it one
(``Hub.session_host``), so calls run one way, shells → hub → connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import anyio

from ._frames import COMPRESS_MIN, PLAIN, build_frame
from ._http import Receive, SendCallable
from ._http import query_param as query_param
from .auth import Identity
from .messages import ClientInfo, Codec, ServerMessage
from .protocol import TRY_AGAIN_LATER, ClientProtocol, Close

if TYPE_CHECKING:
    from ._frames import SharedFrame, SharedRun
    from ._stats import HubStats
    from .limits import Admission, Limits
    from .messages import Position
    from .namespaces import Namespace, NamespaceRegistry
    from .protocol import Execute

__all__ = [
    "PEER_GONE",
    "AsyncioSignal",
    "Connection",
    "SessionHost",
    "Signal",
    "loop_clock",
    "new_signal",
    "outside_task",
]

logger = logging.getLogger("hubbub.connection")


class SessionHost(Protocol):
    """The hub as one connection sees it, from admission to the last accounting.

    ``stats`` and ``node`` are read on the delivery path: implement them as
    plain attributes.
    """

    stats: HubStats
    """The hub's counters (commands, messages and bytes sent, closes...)."""

    node: str
    """This node's id (log records, client ids)."""

    @property
    def limits(self) -> Limits:
        """Per-connection limits."""
        ...

    @property
    def namespaces(self) -> NamespaceRegistry:
        """The hub's channel namespaces."""
        ...

    @property
    def admission(self) -> Admission:
        """Handshake rate and connection caps per IP and user."""
        ...

    @property
    def state(self) -> str:
        """The hub's lifecycle state (``running``, ``draining``...)."""
        ...

    @property
    def running(self) -> bool:
        """Whether new connections are accepted."""
        ...

    async def authenticate(self, scope: Any) -> Identity:
        """The connecting client's identity (raises from the ``HubbubError`` tree)."""
        ...

    def user_connections(self, user: str) -> int:
        """Connections ``user`` holds open on this node (the per-user cap)."""
        ...

    def client_id(self) -> str:
        """A new client id, unique on this node."""
        ...

    def open(self, connection: Connection) -> None:
        """Register an accepted connection: it receives fan-out and is drained from now on."""
        ...

    async def welcome(self, connection: Connection) -> None:
        """Make the server-side subscriptions, then queue ``welcome`` first."""
        ...

    async def join(
        self, connection: Connection, channel: str, namespace: Namespace, recover: Position | None
    ) -> None:
        """Join ``channel`` as a client's ``subscribe`` would (an SSE stream's channels)."""
        ...

    async def execute(self, connection: Connection, event: Execute) -> None:
        """Run one validated client command; a refusal is answered ``error``."""
        ...

    def execute_now(self, connection: Connection, event: Execute) -> bool:
        """Run the command without awaiting if it can (``False``: nothing done, await ``execute``).

        Called outside any task (a server's ``data_received``): it must not
        await, nor need the current task.
        """
        ...

    def end_of_read(self) -> None:
        """The server has handed over every message of one read: deliver what they published.

        Fan-out batches publications until then (or the loop's next turn), so
        that a burst read at once costs each subscriber one visit and one write.
        """
        ...

    def detach_all(self, connection: Connection) -> None:
        """Leave every channel the connection holds (it is closing)."""
        ...

    def forget(self, connection: Connection) -> None:
        """Unregister a finished connection."""
        ...


class Signal:
    """Wakes one waiting task; reusable. The portable version, built on anyio.Event."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def set(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self) -> None:
        event = self._event = anyio.Event()
        await event.wait()


class AsyncioSignal(Signal):
    """The same on asyncio with a bare future: the writer's wake-up is on the fan-out path.

    ``anyio.Event()`` costs a backend lookup per creation, and the writer needs a
    fresh one for every wait — measurably the largest cost per delivery on asyncio.
    Awaiting a plain future keeps anyio's cancellation semantics (a cancelled
    task's awaited future is cancelled).
    """

    __slots__ = ("_future", "_loop")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[None] | None = None

    def set(self) -> None:
        future = self._future
        if future is not None:
            self._future = None
            if not future.done():
                future.set_result(None)

    async def wait(self) -> None:
        future = self._future = self._loop.create_future()
        await future


def new_signal() -> Signal:
    """The fastest :class:`Signal` for the running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not on asyncio (trio)
        return Signal()
    return AsyncioSignal()


def loop_clock() -> Callable[[], float]:
    """``anyio.current_time`` without its backend lookup per call: the loop's own clock.

    Read once per client frame (the protocol's deadlines); on asyncio
    ``anyio.current_time()`` is ``loop.time()``, so the two agree.
    """
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # not on asyncio (trio)
        return anyio.current_time


def outside_task() -> bool:
    """Whether this runs in an asyncio callback rather than a task (anyio needs a task).

    ``False`` off asyncio (trio): every call runs in a task there.
    """
    try:
        return asyncio.current_task() is None
    except RuntimeError:  # no asyncio loop running
        return False


# What a send raises once the peer has gone (ASGI spec 2.4: OSError; anyio streams
# in some servers). A normal end of a connection, not an error to log.
PEER_GONE = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class Connection:
    """One client's connection: its protocol state and send queue; a transport adds its tasks.

    A transport implements :meth:`run` (its writer drains ``_queue``, and sets
    ``_waiting`` before it waits on ``_wakeup``), :meth:`heartbeat`, and
    ``_send_inline`` if it sets ``_inline``.
    """

    __slots__ = (
        "_close",
        "_enqueued_bytes",
        "_enqueued_items",
        "_gone",
        "_inline",
        "_max_bytes",
        "_max_messages",
        "_queue",
        "_queued_bytes",
        "_replies",
        "_send_scope",
        "_waiting",
        "_wakeup",
        "_wire",
        "_write_frame",
        "close_code",
        "codec",
        "host",
        "id",
        "identity",
        "info",
        "protocol",
    )

    transport: ClassVar[str]
    """``websocket``, or ``sse`` for a Server-Sent Events stream."""

    def __init__(
        self,
        host: SessionHost,
        *,
        client_id: str,
        identity: Identity,
        codec: Codec,
    ) -> None:
        limits = host.limits
        self.host = host
        self.id = client_id
        self.identity = identity
        self.codec = codec
        self.info = ClientInfo(
            user=identity.user,
            client=client_id,
            name=identity.name,
            info=dict(identity.info) if identity.info is not None else None,
        )
        self.protocol = ClientProtocol(
            identity=identity,
            codec=codec,
            namespaces=host.namespaces,
            limits=limits,
            now=anyio.current_time(),
            stats=host.stats,
        )
        self._set_expiry(identity.expires)
        self.close_code: int | None = None
        self._max_messages = limits.queue_messages
        self._max_bytes = limits.queue_bytes
        self._queue: deque[tuple[str | bytes, int, bool]] = deque()
        self._queued_bytes = 0
        # Totals ever queued: what has left the queue is these minus what is in it, so
        # join replies (exempt from the limits) are found without touching every writer.
        self._enqueued_bytes = 0
        self._enqueued_items = 0
        # Join replies still queued, as (start bytes, end bytes, start item, end item) marks
        # on those totals; None until the first (a list per idle client costs memory).
        self._replies: list[tuple[int, int, int, int]] | None = None
        self._wakeup = new_signal()
        self._waiting = False
        # Set by a transport whose writer may be bypassed: see WebSocketConnection.enqueue.
        self._inline = False
        # The server's pre-framed write (the ``hubbub.frames`` extension) once the writer
        # runs, and which shared frames this connection takes (hubbub._frames.wire_kind).
        self._write_frame: Callable[[bytes], bool] | None = None
        self._wire = 0
        self._close: Close | None = None
        self._gone = False
        self._send_scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.identity.user!r}>"

    def _set_expiry(self, expires: int | None) -> None:
        """Close 4401 ``expiry_grace`` seconds after the unix time ``expires``, unless refreshed."""
        if expires is None:
            self.protocol.expiry = None
        else:
            left = expires - time.time() + self.host.limits.expiry_grace
            self.protocol.expiry = anyio.current_time() + left

    def refresh(self, identity: Identity) -> None:
        """Take the new expiry of a refreshed token (same user; name and info are kept)."""
        self.identity = dataclasses.replace(self.identity, expires=identity.expires)
        self.protocol.identity = self.identity
        self._set_expiry(identity.expires)

    # -- hand-off (never awaits) ------------------------------------------------------------

    def enqueue(self, frame: str | bytes, size: int, droppable: bool = False) -> None:
        """Queue one encoded frame for the writer; apply the slow-consumer policy if full.

        ``droppable`` marks a message of a ``drop_oldest`` channel: such messages
        are evicted oldest first to make room, and one that cannot fit is dropped
        instead of closing the connection.
        """
        if self._close is not None:
            return
        queue = self._queue
        if self._inline and self._waiting and not queue:
            self._send_inline(frame)
            return
        if len(queue) >= self._max_messages or self._queued_bytes + size > self._max_bytes:
            if not self._make_room(size, *self._reply_share()):
                if droppable:
                    return
                self.host.stats.slow_consumer_closes += 1
                logger.warning(
                    "closing a slow consumer (1013): its send queue is full",
                    extra={
                        **self.log_fields(),
                        "event": "slow_consumer",
                        "queued": len(queue),
                        "queued_bytes": self._queued_bytes,
                    },
                )
                self.close(Close(TRY_AGAIN_LATER, "send queue full (slow consumer)", flush=False))
                return
        queue.append((frame, size, droppable))
        self._queued_bytes += size
        self._enqueued_bytes += size
        self._enqueued_items += 1
        if self._waiting:
            self._waiting = False
            self._wakeup.set()

    def enqueue_shared(self, shared: SharedFrame, droppable: bool = False) -> None:
        """Deliver a publication's frame built once for many: written now if the socket can take it.

        The fan-out fast path: while the writer is idle with nothing queued, the
        frame goes straight to the server's transport (``hubbub.frames``); when
        the server refuses (its buffer is full, the socket is closing...) the
        message takes the ordinary path, queue and slow-consumer policy included.
        """
        write = self._write_frame
        if write is not None and self._waiting and not self._queue and self._close is None:
            frame = shared.frame(self._wire)
            if frame is not None and write(frame):
                return
        self.enqueue(shared.message, shared.size, droppable)

    def enqueue_run(self, run: SharedRun, droppable: bool = False) -> None:
        """Deliver several publications of one channel, in one write if the socket can take it.

        As :meth:`enqueue_shared`, for what fan-out batched (a :class:`SharedRun`):
        one write of frames joined once for every subscriber, or else each one
        on its own, in order, by the same path as a single publication.
        """
        write = self._write_frame
        if write is not None and self._waiting and not self._queue and self._close is None:
            frame = run.frame(self._wire)
            if frame is not None and write(frame):
                return
        for shared in run.frames:
            self.enqueue_shared(shared, droppable)

    def enqueue_reply(self, frames: list[tuple[str | bytes, int]]) -> None:
        """Queue the frames of one reply (a join, a history page) whatever the queue holds.

        A reply is what the client asked for, sized by the channel's history
        rather than by the client's reading speed, so the queue's limits do not
        apply to it: with them, a room whose history outgrew the queue could
        never be joined (1013, reconnect, 1013...). Nor do its bytes count against
        the limits for what follows it, so live publications arriving while it
        is written do not close the client either. It stays bounded: by the
        reply's own size (history size times the namespace's largest payload),
        and for a WebSocket to one reply at a time, because the client's next
        command is read only once the queue has drained (:meth:`_reader`).
        """
        if self._close is not None or not frames:
            return
        queue = self._queue
        start_bytes, start_items = self._enqueued_bytes, self._enqueued_items
        for frame, size in frames:
            if self._inline and self._waiting and not queue:
                self._send_inline(frame)
                continue
            queue.append((frame, size, False))
            self._queued_bytes += size
            self._enqueued_bytes += size
            self._enqueued_items += 1
        if self._enqueued_items > start_items:
            self._reply_share()  # forgets the replies already written
            replies = self._replies
            if replies is None:
                replies = self._replies = []
            replies.append((start_bytes, self._enqueued_bytes, start_items, self._enqueued_items))
        self._wake()

    def reply_backlog(self) -> int:
        """Bytes of replies queued and not yet written (see :meth:`enqueue_reply`)."""
        return self._reply_share()[1]

    def _reply_share(self) -> tuple[int, int]:
        """Messages and bytes of replies still in the queue (exempt from its limits)."""
        replies = self._replies
        if not replies:
            return 0, 0
        sent_items = self._enqueued_items - len(self._queue)
        sent_bytes = self._enqueued_bytes - self._queued_bytes
        while replies and replies[0][3] <= sent_items:
            del replies[0]
        if not replies:
            self._replies = None
            return 0, 0
        items = held = 0
        for start_bytes, end_bytes, start_items, end_items in replies:
            items += end_items - max(start_items, sent_items)
            held += max(end_bytes - max(start_bytes, sent_bytes), 0)
        return items, held

    def _send_inline(self, frame: str | bytes) -> None:
        """Write ``frame`` now, in the caller's task (only a transport that sets ``_inline``)."""
        raise NotImplementedError

    def _make_room(self, size: int, exempt_items: int = 0, exempt_bytes: int = 0) -> bool:
        queue = self._queue
        while (
            len(queue) - exempt_items >= self._max_messages
            or self._queued_bytes - exempt_bytes + size > self._max_bytes
        ):
            for index, item in enumerate(queue):
                if item[2]:
                    del queue[index]
                    self._queued_bytes -= item[1]
                    self.host.stats.dropped += 1
                    break
            else:
                return False
        return True

    def send_message(self, message: ServerMessage) -> None:
        """Encode and queue one server message (a reply, an event).

        Where the server offers ``hubbub.frames`` and the writer is idle with
        nothing queued, the message is framed here and written at once, as
        fan-out does (:meth:`enqueue_shared`): an ``ack`` costs one encode and
        one write instead of the server's per-message framing. A payload that a
        deflate connection would compress (``COMPRESS_MIN`` and up) takes the
        ordinary path, as does everything when the server refuses the write.
        """
        codec = self.codec
        stats = self.host.stats
        kind: str = message.__struct_config__.tag  # type: ignore[assignment]
        stats.sent[kind] = stats.sent.get(kind, 0) + 1
        write = self._write_frame
        if write is not None and self._waiting and not self._queue and self._close is None:
            payload = codec.encode_bytes(message)
            size = len(payload)
            stats.bytes_out += size
            binary = codec.binary
            if (size < COMPRESS_MIN or self._wire == PLAIN) and write(build_frame(payload, binary)):
                return
            self.enqueue(payload if binary else payload.decode(), size)
            return
        frame = codec.encode(message)
        size = len(frame)
        stats.bytes_out += size
        self.enqueue(frame, size)

    def close(self, event: Close) -> None:
        """Ask for the connection to end with ``event``; safe to call from any task, any time."""
        if self._close is not None:
            return
        self._close = event
        self.protocol.closed = True
        # Nothing more will be queued for it: leave every channel now, so a frozen
        # client does not linger in the registry for the close timeout.
        self.host.detach_all(self)
        scope = self._send_scope
        if not event.flush:
            self._queue.clear()
            self._queued_bytes = 0
            if scope is not None:
                scope.cancel()
        elif scope is not None:
            # The loop's clock: close() may run in a server callback, outside any task,
            # where anyio.current_time() cannot tell the backend.
            scope.deadline = min(scope.deadline, loop_clock()() + self.host.limits.close_timeout)
        self._wake()

    def _wake(self) -> None:
        if self._waiting:
            self._waiting = False
            self._wakeup.set()

    def _peer_left(self) -> None:
        """The client has gone: stop writing at once (a transport's reader calls this)."""
        self._gone = True
        if self._send_scope is not None:
            self._send_scope.cancel()
        self._wake()

    @property
    def queued(self) -> int:
        """Messages waiting in the send queue."""
        return len(self._queue)

    async def run(self, receive: Receive, send: SendCallable) -> None:
        """Serve the accepted connection until it ends; never raises for client behaviour."""
        raise NotImplementedError

    def heartbeat(self, now: float) -> None:
        """What liveness requires at ``now`` (called by the hub's heartbeat task)."""
        raise NotImplementedError

    def log_fields(self) -> dict[str, Any]:
        """The ``extra`` fields that name this connection in a log record."""
        return {"client": self.id, "user": self.identity.user, "node": self.host.node}

    def ending(self) -> tuple[int, str]:
        """The close code and reason the connection ended with, ours or the client's."""
        close = self._close
        if close is not None and (self.close_code is None or self.close_code == close.code):
            return close.code, close.reason
        if self.close_code is not None:
            return self.close_code, "closed by the client"
        return 1006, "connection lost"
