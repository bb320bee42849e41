"""The hub: channel registry, fan-out, the server-side Python API, and the lifecycle.

Fan-out is the product, so its path is short: the broker hands a publication
to :meth:`Hub._dispatch`, which encodes it once per codec in use and then, per
local subscriber, only appends to that subscriber's bounded queue. Nothing on
that path awaits, takes a lock or encodes per subscriber.

The hub owns one task group for its background work; connections own theirs.
It starts and stops in three equal ways: ``async with hub:``,
``lifespan=hub.lifespan`` in a parent app, or automatically when
:class:`hubbub.HubApp` is the top-level ASGI app.
"""

from __future__ import annotations

import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from itertools import count
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec import Raw

from ._connection import Connection, auth_failure, query_param
from ._errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    HubbubError,
    InternalError,
    InvalidMessage,
    PermissionDenied,
    RateLimited,
    StreamGone,
)
from ._recovery import Joined, join_stream
from ._stats import BROKER_BUCKETS, HubStats, LatencyHistogram
from ._tracing import Tracing
from .auth import Authenticator, Identity, check_identity
from .brokers import (
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    MemoryBroker,
    Publication,
    PublicationKind,
    UnsupportedCapability,
)
from .chat import Notification
from .limits import Admission, Limits
from .messages import (
    JSON,
    MSGPACK,
    Ack,
    ClientInfo,
    Codec,
    Error,
    GetHistory,
    GetPresence,
    History,
    Join,
    Leave,
    Message,
    Position,
    Presence,
    Publish,
    Refresh,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Welcome,
)
from .namespaces import Namespace, NamespaceRegistry, personal_channel, validate_channel
from .protocol import GOING_AWAY, KICKED, TRY_AGAIN_LATER, Close, Execute

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["BACKGROUND_BROKER_CALLS", "BROKER_BUCKETS", "Hub", "HubStats", "LatencyHistogram"]

logger = logging.getLogger("hubbub")

_CODECS: Final[dict[str, Codec]] = {JSON.name: JSON, MSGPACK.name: MSGPACK}
_RUNNING_HUBS: weakref.WeakSet[Hub] = weakref.WeakSet()

State = Literal["stopped", "starting", "running", "draining", "stopping"]


BACKGROUND_BROKER_CALLS: Final = 16
"""Broker calls the hub's background work may have in flight at once, per hub.

Background work fans out per channel: presence departures when a client
leaves (one per presence channel it held; a whole node's worth on drain),
node-level unsubscribes of channels left empty, repairs of every channel
after the broker's link dropped, server-side subscriptions commanded by other
nodes. Unbounded, one client leaving 128 presence channels made 128 calls at
once and exhausted a Redis connection pool of 100, so departures failed and
presence kept the client. Bounded, each waits its turn and completes; 16
keeps a pool of any reasonable size free for client commands.
"""


class _Channel:
    """Local subscribers of one channel and the node's broker subscription to it."""

    __slots__ = (
        "floors",
        "held",
        "last_epoch",
        "last_offset",
        "lock",
        "namespace",
        "on_node",
        "pending",
        "recovering",
        "subscribers",
    )

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.subscribers: dict[Connection, None] = {}
        # Connections joining the stream: live publications are buffered for them
        # while their history is read, then merged (``_recovery.join_stream``).
        self.recovering: dict[Connection, list[Publication]] = {}
        # A joined connection's newest position already sent: a broker that delivers
        # after ``publish`` returns (pub/sub) may still hand over older publications,
        # which must not reach it twice. Cleared at the first newer one.
        self.floors: dict[Connection, Position] = {}
        # The newest position this node delivered, to notice gaps (a publication
        # that skips offsets) and duplicates; while a gap is being repaired from
        # history, live publications are held here in arrival order.
        self.last_offset = 0
        self.last_epoch: str | None = None
        self.held: list[Publication] | None = None
        self.on_node = False
        self.pending = 0
        # Serialises this channel's node-level subscribe/unsubscribe calls to the
        # broker. Only the control path takes it; fan-out never does.
        self.lock = anyio.Lock()


class Hub:
    """A real-time hub: channels, fan-out and the server-side API.

    Args:
        broker: moves publications between nodes; a new :class:`MemoryBroker` by default.
        namespaces: channel namespaces; by default only the default namespace
            (channels without a colon), where any connected client may subscribe
            and publish.
        personal: options of personal channels ``#<user>``: only the server
            publishes there (``notify``) and only that user subscribes; by default
            they keep the last 100 notifications for a week, so a user who was
            offline recovers them.
        authenticator: turns a connection's scope into an :class:`Identity`.
        anonymous: admit clients without credentials (``user == ""``). Off by
            default: with no authenticator, every connection is then refused 401.
        limits: per-connection limits.
        node: this node's id (random by default), shown in ``welcome.node``.
        broker_timeout: seconds a broker call may take before the command is
            answered ``error`` 503.
        drain_timeout: seconds shutdown waits for clients to take their leave.
        tracing: OpenTelemetry spans for publish → broker publish → fan-out
            (``hubbub[otel]``): ``True`` for the global tracer provider, or a
            ``TracerProvider``. Off by default, at no cost per delivery.
    """

    def __init__(
        self,
        *,
        broker: Broker | None = None,
        namespaces: Iterable[Namespace] | None = None,
        personal: Namespace | None = None,
        authenticator: Authenticator | None = None,
        anonymous: bool = False,
        limits: Limits | None = None,
        node: str | None = None,
        broker_timeout: float = 5.0,
        drain_timeout: float = 10.0,
        tracing: bool | TracerProvider = False,
    ) -> None:
        if broker is not None and not isinstance(broker, Broker):
            raise TypeError("broker must be a hubbub.brokers.Broker")
        if authenticator is not None and not callable(authenticator):
            raise TypeError("authenticator must be an async callable (see hubbub.Authenticator)")
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError("limits must be a hubbub.Limits")
        if broker_timeout <= 0 or drain_timeout <= 0:
            raise ValueError("broker_timeout and drain_timeout must be positive")
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.namespaces = NamespaceRegistry(
            namespaces if namespaces is not None else [Namespace()],
            personal
            if personal is not None
            else Namespace(name="personal", history_size=100, history_ttl=7 * 24 * 3600.0),
        )
        self.authenticator = authenticator
        self.anonymous = anonymous
        self.limits = limits if limits is not None else Limits()
        self.admission = Admission(self.limits)
        """Handshake rate and connection caps per IP/user; its ``limiter`` may be replaced."""
        self.node = node or secrets.token_hex(4)
        self.broker_timeout = broker_timeout
        self.drain_timeout = drain_timeout
        self.stats = HubStats()
        self._tracing: Tracing | None = None
        if tracing is not False:
            self._tracing = Tracing(None if tracing is True else tracing)
        self._state: State = "stopped"
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._channels: dict[str, _Channel] = {}
        self._connections: dict[Connection, None] = {}
        self._users: dict[str, dict[Connection, None]] = {}
        self._all_gone: anyio.Event | None = None
        self._ids = count(1)
        # Made per run: anyio primitives belong to the event loop that runs the hub.
        self._background: anyio.CapacityLimiter | None = None
        # Departures started and not finished; stopping waits for them (``_settle``).
        self._departing = 0
        self._departed: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Hub node={self.node} state={self._state}>"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``stopped``, ``starting``, ``running``, ``draining`` or ``stopping``."""
        return self._state

    @property
    def running(self) -> bool:
        """Whether the hub accepts connections and commands."""
        return self._state == "running"

    async def broker_ready(self) -> bool:
        """``broker.ready()`` within ``broker_timeout``, for ``/ready`` and the admin page.

        A custom broker's check may raise or hang; either answers ``False``
        (logged) instead of an error or a request that never ends.
        """
        with anyio.move_on_after(self.broker_timeout):
            try:
                return await self.broker.ready()
            except Exception:
                logger.warning("the broker's readiness check failed", exc_info=True)
                return False
        logger.warning("the broker's readiness check took over %s s", self.broker_timeout)
        return False

    async def __aenter__(self) -> Hub:
        if self._state != "stopped":
            raise RuntimeError(f"the hub is {self._state}; a hub runs once at a time")
        _check_capabilities(self.broker, self.namespaces)
        self._state = "starting"
        self._background = anyio.CapacityLimiter(BACKGROUND_BROKER_CALLS)
        self._departing = 0
        stack = AsyncExitStack()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self.broker.start(self._dispatch, self._lost, self._tg)
            self._tg.start_soon(self._heartbeats)
            self._tg.start_soon(self._presence_leases)
            try:
                await self._broker_call(self.broker.subscribe(CONTROL_CHANNEL))
            except HubbubError as exc:
                # The broker may come up later (Redis down at start); until then
                # cross-node commands reach only this node.
                logger.warning("control channel not subscribed yet: %s", exc.reason)
        except BaseException:
            self._state = "stopped"
            self._tg = None
            await stack.aclose()
            raise
        self._stack = stack
        self._state = "running"
        _RUNNING_HUBS.add(self)
        logger.info("hub started", extra={"node": self.node})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._stack is not None and self._tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.drain()
                self._state = "stopping"
                await self._settle()
                try:
                    with anyio.fail_after(self.broker_timeout):
                        await self.broker.stop()
                except Exception:
                    logger.exception("broker did not stop cleanly")
            self._tg.cancel_scope.cancel()
            try:
                await self._stack.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                # The task group wraps an exception raised in the ``async with hub:``
                # body; let the caller's own exception propagate unwrapped.
                if exc is None or list(group.exceptions) != [exc]:
                    raise
        finally:
            _RUNNING_HUBS.discard(self)
            self._stack = None
            self._tg = None
            self._channels.clear()
            self._state = "stopped"
            logger.info("hub stopped", extra={"node": self.node})

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """A lifespan context for a parent app: ``Starlette(lifespan=hub.lifespan)``.

        Mounted ASGI apps never receive lifespan events, so a hub mounted inside
        another app must be started through the parent's lifespan.
        """
        async with self:
            yield

    async def drain(self, code: int = GOING_AWAY, reason: str = "server shutting down") -> None:
        """Refuse new connections and close every client with a reconnect-advising code.

        Each client gets ``disconnect`` (``reconnect: true``) and a close frame,
        after what was already queued for it. Waits at most ``drain_timeout``.
        """
        if self._state in ("stopped", "stopping"):
            return
        self._state = "draining"
        if not self._connections:
            return
        self._all_gone = anyio.Event()
        for connection in list(self._connections):
            connection.close(Close(code, reason, flush=True))
        with anyio.move_on_after(self.drain_timeout):
            await self._all_gone.wait()
        if self._connections:
            logger.warning(
                "%d connection(s) still open after the drain timeout",
                len(self._connections),
                extra={"node": self.node},
            )

    async def _settle(self) -> None:
        """Let the presence departures already started finish before the broker stops.

        Clients that left just before shutdown would otherwise stay listed in
        presence (and unannounced) until their leases expire. Bounded by
        ``drain_timeout``.
        """
        if not self._departing:
            return
        self._departed = anyio.Event()
        with anyio.move_on_after(self.drain_timeout):
            await self._departed.wait()
        self._departed = None
        if self._departing:
            logger.warning("%d presence departure(s) unfinished at shutdown", self._departing)

    async def _heartbeats(self) -> None:
        """Drive pings and idle deadlines for every connection from one task.

        One task for all connections instead of one per connection: idle clients
        are the common case, and a task per client costs memory. The tick is a
        quarter of the shorter of ``ping_interval`` and ``pong_timeout``
        (between 50 ms and 1 s), so deadlines are kept to within that.
        """
        limits = self.limits
        tick = min(max(min(limits.ping_interval, limits.pong_timeout) / 4, 0.05), 1.0)
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for connection in tuple(self._connections):
                connection.heartbeat(now)

    def _require_running(self) -> None:
        if self._state not in ("running", "draining"):
            raise RuntimeError(
                "the hub is not running: use `async with hub:`, pass "
                "`lifespan=hub.lifespan` to the parent app, or serve HubApp(hub) top-level"
            )

    async def _presence_leases(self) -> None:
        """Refresh the presence leases of this node's clients before they expire.

        Leases expire on their own, so a node that dies takes its clients out of
        presence within one TTL without anyone calling remove; a live node
        renews every third of the shortest TTL in use.
        """
        ttls = [ns.presence_ttl for ns in self.namespaces if ns.presence]
        if self.namespaces.personal.presence:
            ttls.append(self.namespaces.personal.presence_ttl)
        if not ttls:
            return
        period = min(ttls) / 3
        while True:
            await anyio.sleep(period)
            await self._refresh_leases()

    async def _refresh_leases(self) -> None:
        """One round of lease renewals: every lease of this node, a few at a time.

        ``BACKGROUND_BROKER_CALLS`` workers share the round (one after another,
        100,000 leases at 1 ms each would outlast a 60 s TTL). A broker that
        does not answer ends the round at once, instead of every lease waiting
        out ``broker_timeout`` in turn; the next round retries, well within the TTL.
        """
        work = [
            (connection, channel, namespace)
            for connection in tuple(self._connections)
            for channel, namespace in tuple(connection.protocol.channels.items())
            if namespace.presence
        ]
        if not work:
            return
        pending = iter(work)
        down = False

        async def worker() -> None:
            nonlocal down
            for connection, channel, namespace in pending:
                if down:
                    return
                if connection.protocol.closed or channel not in connection.protocol.channels:
                    continue  # gone meanwhile: renewing would bring back a departed lease
                try:
                    async with self._limiter():
                        await self._broker_call(
                            self.broker.presence_set(
                                channel, connection.id, connection.info, namespace.presence_ttl
                            )
                        )
                except BrokerUnavailable as exc:
                    if not down:
                        logger.warning("presence refresh stopped for this round: %s", exc.reason)
                    down = True
                except HubbubError as exc:
                    logger.warning("presence refresh failed: %s", exc.reason)

        async with anyio.create_task_group() as tg:
            for _ in range(min(BACKGROUND_BROKER_CALLS, len(work))):
                tg.start_soon(worker)

    # -- server-side API ---------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any = None,
        *,
        json: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> Position | None:
        """Publish ``data`` into ``channel`` from the server, to every subscriber on every node.

        Args:
            channel: a valid channel name in a configured namespace (personal
                channels ``#<user>`` included).
            data: any value msgspec can encode as JSON; ignored when ``json`` is given.
            json: an already JSON-encoded payload, passed through untouched.
            idempotency_key: a retried publish with the same key within the
                namespace's ``idempotency_window`` is not delivered again.

        Returns:
            the publication's position where the channel keeps history, else ``None``.

        Raises:
            InvalidMessage: the channel name is invalid or the data cannot be encoded.
            InvalidData: the data does not match the namespace's schema.
            UnknownNamespace: no namespace is configured for the channel.
            BrokerUnavailable: the broker could not be reached.
        """
        self._require_running()
        validate_channel(channel)
        namespace = self.namespaces.resolve(channel)
        if json is None:
            try:
                json = msgspec.json.encode(data)
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                raise InvalidMessage(f"data cannot be encoded as JSON: {exc}") from None
        else:
            try:
                msgspec.json.decode(json)
            except (msgspec.DecodeError, RecursionError):
                raise InvalidMessage("json is not a valid JSON document") from None
        JSON.check_data(Raw(json))
        json = namespace.validate(json, JSON.name)
        publication = Publication(channel=channel, data=json, codec="json", ts=_now_ms())
        published = await self._publish(publication, namespace, idempotency_key)
        return _position(published)

    async def notify(self, user: str, notification: Notification) -> Position | None:
        """Push ``notification`` to every connection of ``user``, on every node.

        It travels as a ``message`` on the user's personal channel ``#<user>``,
        which keeps history: a user who is offline gets it on reconnect by
        recovering that channel.
        """
        if not isinstance(notification, Notification):
            raise TypeError("notification must be a hubbub.Notification")
        if not user:
            raise InvalidMessage("notify needs a user id")
        return await self.publish(personal_channel(user), json=msgspec.json.encode(notification))

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = 100,
        since: Position | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        """Read a channel's kept publications (``data`` is JSON or MessagePack per ``codec``).

        Without ``since``: the newest ``limit``; with it: the first ``limit``
        after it. Oldest first unless ``reverse``.

        Raises:
            StreamGone: ``since`` names an epoch that is not the stream's.
        """
        self._require_running()
        validate_channel(channel)
        namespace = self.namespaces.resolve(channel)
        if not namespace.history_size:
            return HistoryPage([], Position(offset=0, epoch=""))
        page: HistoryPage = await self._broker_call(
            self.broker.history(channel, since=since, limit=limit, reverse=reverse)
        )
        return page

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The clients present in ``channel`` on every node (client id → who)."""
        self._require_running()
        validate_channel(channel)
        if not self.namespaces.resolve(channel).presence:
            raise PermissionDenied("presence is not enabled for this namespace")
        clients: Mapping[str, ClientInfo] = await self._broker_call(self.broker.presence(channel))
        return dict(clients)

    async def disconnect(
        self, user: str, reason: str = "disconnected by the server", *, code: int = KICKED
    ) -> int:
        """Close every connection of ``user`` on every node.

        Each gets ``disconnect`` (``reconnect: false`` for the default 4403) and
        the close code. This node's connections close at once; other nodes'
        receive the command through the broker's control channel.

        Returns:
            how many connections were closed on this node.

        Raises:
            BrokerUnavailable: the other nodes could not be told (this node's
                connections are closed regardless).
        """
        closed = self._disconnect_here(user, reason, code)
        command = msgspec.json.encode(
            {"op": "disconnect", "user": user, "reason": reason, "code": code, "node": self.node}
        )
        control = Publication(
            channel=CONTROL_CHANNEL, data=command, codec=JSON.name, ts=_now_ms(), kind="control"
        )
        await self._broker_call(self.broker.publish(control, None))
        return closed

    def _disconnect_here(self, user: str, reason: str, code: int) -> int:
        connections = list(self._users.get(user, ()))
        for connection in connections:
            connection.close(Close(code, reason, flush=True))
        return len(connections)

    async def subscribe_user(self, user: str, channel: str) -> None:
        """Subscribe every connection of ``user``, on every node, to ``channel``.

        A server-side subscription: no permission check, but the channels-per-client
        limit holds. Each connection that does not hold the channel yet gets
        ``subscribed`` without ``id``. This node's connections are subscribed
        before returning; other nodes' receive the command through the broker's
        control channel (and skip, with a warning, a connection already at the limit).

        Raises:
            InvalidMessage: ``user`` is empty or the channel name is invalid.
            UnknownNamespace: no namespace is configured for the channel.
            RateLimited: a connection of the user on this node already holds
                ``Limits.max_channels`` channels; nothing was subscribed.
            BrokerUnavailable: the broker could not be reached.
        """
        self._require_running()
        if not user:
            raise InvalidMessage("subscribe needs a user id")
        validate_channel(channel)
        namespace = self.namespaces.resolve(channel)
        if any(self._at_channel_limit(c, channel) for c in self._users.get(user, ())):
            raise RateLimited(
                f"at most {self.limits.max_channels} channels per connection: a connection "
                f"of {user!r} on this node is full"
            )
        await self._subscribe_here(user, channel, namespace)
        await self._send_control({"op": "subscribe", "user": user, "channel": channel})

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        """Remove ``channel`` from every connection of ``user``, on every node.

        Each connection that held it gets ``unsubscribed`` without ``id``.

        Raises:
            InvalidMessage: ``user`` is empty or the channel name is invalid.
            BrokerUnavailable: the other nodes could not be told (this node's
                connections are unsubscribed regardless).
        """
        self._require_running()
        if not user:
            raise InvalidMessage("unsubscribe needs a user id")
        validate_channel(channel)
        self._unsubscribe_here(user, channel)
        await self._send_control({"op": "unsubscribe", "user": user, "channel": channel})

    async def _send_control(self, fields: dict[str, Any]) -> None:
        command = msgspec.json.encode({**fields, "node": self.node})
        control = Publication(
            channel=CONTROL_CHANNEL, data=command, codec=JSON.name, ts=_now_ms(), kind="control"
        )
        await self._broker_call(self.broker.publish(control, None))

    def _at_channel_limit(self, connection: Connection, channel: str) -> bool:
        """Whether ``channel`` would take ``connection`` over ``max_channels`` (§6)."""
        protocol = connection.protocol
        if channel in protocol.channels or channel == personal_channel(connection.identity.user):
            return False
        return protocol._counted() >= protocol.limits.max_channels

    async def _subscribe_here(self, user: str, channel: str, namespace: Namespace) -> None:
        for connection in list(self._users.get(user, ())):
            if connection.protocol.closed or channel in connection.protocol.channels:
                continue
            if self._at_channel_limit(connection, channel):
                logger.warning(
                    "server-side subscription to %r skipped: the connection holds the most "
                    "channels allowed",
                    channel,
                    extra={"client": connection.id},
                )
                continue
            entry = await self._ensure(channel, namespace)
            leased = False
            entry.recovering[connection] = []
            try:
                top: Position | None = None
                if namespace.history_size:
                    top = await self._top(channel)
                # Leased before ``subscribed`` is sent (presence is read-after-subscribe),
                # while live publications are still buffered for the merge.
                leased = await self._lease(connection, channel, namespace, strict=False)
            except BaseException:
                entry.recovering.pop(connection, None)
                self._release_if_unused(channel, entry)
                raise
            buffered = entry.recovering.pop(connection, [])
            if (
                connection.protocol.closed
                or channel in connection.protocol.channels
                or self._at_channel_limit(connection, channel)
            ):
                self._release_if_unused(channel, entry)
                if leased and channel not in connection.protocol.channels:
                    self._drop_lease(connection, channel)  # the same key as a lease it holds
                continue
            # Nothing awaits from the merge to the delivery: no publication falls between.
            self._attach(connection, channel, namespace, entry, server_side=True)
            if top is None:
                connection.send_message(Subscribed(channel=channel, publications=[]))
            else:
                joined = join_stream(None, top, buffered, recover=None, last=None)
                _set_floor(entry, connection, joined)
                connection.send_message(
                    Subscribed(channel=channel, publications=[], offset=top.offset, epoch=top.epoch)
                )
                self._deliver_to(connection, joined.live, namespace)
            if namespace.presence:
                await self._announce_arrival(connection, channel, namespace)

    def _unsubscribe_here(self, user: str, channel: str) -> None:
        for connection in list(self._users.get(user, ())):
            if channel in connection.protocol.channels:
                self._detach(connection, channel)
                connection.send_message(Unsubscribed(channel=channel))

    async def _control_subscribe(self, user: str, channel: str) -> None:
        try:
            validate_channel(channel)
            async with self._limiter():
                await self._subscribe_here(user, channel, self.namespaces.resolve(channel))
        except HubbubError as exc:
            logger.warning("control subscribe to %r failed: %s", channel, exc.reason)

    def _limiter(self) -> anyio.CapacityLimiter:
        """The bound on background broker calls (``BACKGROUND_BROKER_CALLS``)."""
        limiter = self._background
        if limiter is None:
            limiter = self._background = anyio.CapacityLimiter(BACKGROUND_BROKER_CALLS)
        return limiter

    def _control(self, publication: Publication) -> None:
        """A command from another node (or junk, which is logged and dropped)."""
        try:
            command = msgspec.json.decode(publication.data, type=_ControlCommand)
        except (msgspec.MsgspecError, ValueError):
            logger.warning("dropped a malformed control command")
            return
        if command.node == self.node:
            return
        if command.op == "disconnect":
            self._disconnect_here(command.user, command.reason, command.code)
        elif command.op == "subscribe" and self._tg is not None:
            self._tg.start_soon(self._control_subscribe, command.user, command.channel)
        elif command.op == "unsubscribe":
            self._unsubscribe_here(command.user, command.channel)

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers on this node, and how many each has."""
        return {
            name: len(entry.subscribers)
            for name, entry in self._channels.items()
            if entry.subscribers
        }

    @property
    def connection_count(self) -> int:
        """Open connections on this node (WebSockets and SSE streams)."""
        return len(self._connections)

    @property
    def sse_count(self) -> int:
        """Open Server-Sent Events streams on this node (counted in ``connection_count`` too)."""
        return sum(1 for connection in self._connections if connection.transport == "sse")

    def queued_messages(self) -> int:
        """Messages waiting in this node's send queues (a slow-consumer signal)."""
        return sum(connection.queued for connection in self._connections)

    # -- connections -------------------------------------------------------------------------

    async def _authenticate(self, scope: Any) -> Identity:
        # An AuthMiddleware in front already verified the request: use its identity.
        found = getattr(scope.get("user"), "hubbub_identity", None)
        if isinstance(found, Identity) and found.user:
            return found
        identity = await self.authenticator(scope) if self.authenticator is not None else None
        if identity is None:
            if not self.anonymous:
                raise AuthenticationFailed("credentials required")
            identity = Identity(name=_anonymous_name(scope))
        return identity

    def _open(
        self,
        identity: Identity,
        codec: Codec,
        batch: bool,
        *,
        kind: type[Connection] = Connection,
    ) -> Connection:
        connection = kind(
            self,
            client_id=f"{self.node}.{next(self._ids)}",
            identity=identity,
            codec=codec,
            batch=batch,
        )
        self._connections[connection] = None
        if identity.user:
            self._users.setdefault(identity.user, {})[connection] = None
        self.stats.connections_total += 1
        return connection

    def _forget(self, connection: Connection) -> None:
        self._connections.pop(connection, None)
        user = connection.identity.user
        if user:
            mine = self._users.get(user)
            if mine is not None:
                mine.pop(connection, None)
                if not mine:
                    del self._users[user]
        self._detach_all(connection)
        if not self._connections and self._all_gone is not None:
            self._all_gone.set()

    async def _welcome(self, connection: Connection) -> None:
        """Make the server-side subscriptions, then queue ``welcome`` as the first message."""
        identity = connection.identity
        wanted: list[tuple[str, Namespace]] = []
        if identity.user:
            wanted.append((personal_channel(identity.user), self.namespaces.personal))
        for channel in identity.channels:
            try:
                validate_channel(channel)
                wanted.append((channel, self.namespaces.resolve(channel)))
            except HubbubError as exc:
                logger.warning(
                    "skipping server-side subscription %r: %s",
                    channel,
                    exc.reason,
                    extra={"client": connection.id},
                )
        entries: list[_Channel] = []
        leased: list[str] = []
        try:
            for channel, namespace in wanted:
                entries.append(await self._ensure(channel, namespace))
            # Buffer every channel's live publications until all positions are read,
            # then attach them all at once, so nothing slips between two reads.
            for entry in entries:
                entry.recovering[connection] = []
            try:
                tops = [
                    await self._top(channel) if namespace.history_size else None
                    for channel, namespace in wanted
                ]
                # Leased before ``welcome`` lists them (presence is read-after-subscribe).
                for channel, namespace in wanted:
                    if await self._lease(connection, channel, namespace, strict=False):
                        leased.append(channel)
            finally:
                buffers = [entry.recovering.pop(connection, []) for entry in entries]
        except BaseException:
            for (channel, _), entry in zip(wanted, entries, strict=False):
                self._release_if_unused(channel, entry)
            for channel in leased:
                self._drop_lease(connection, channel)
            raise
        subscribed = []
        follow: list[tuple[Namespace, list[Publication]]] = []
        for (channel, namespace), entry, top, buffered in zip(
            wanted, entries, tops, buffers, strict=True
        ):
            self._attach(connection, channel, namespace, entry, server_side=True)
            if top is None:
                subscribed.append(Subscribed(channel=channel, publications=[]))
                continue
            joined = join_stream(None, top, buffered, recover=None, last=None)
            subscribed.append(
                Subscribed(channel=channel, publications=[], offset=top.offset, epoch=top.epoch)
            )
            _set_floor(entry, connection, joined)
            follow.append((namespace, joined.live))
        connection.send_message(
            Welcome(
                client=connection.id,
                user=identity.user,
                node=self.node,
                ping=self.limits.ping_interval,
                pong_timeout=self.limits.pong_timeout,
                expires=identity.expires,
                subscribed=subscribed,
            )
        )
        for namespace, live in follow:
            self._deliver_to(connection, live, namespace)
        for channel, namespace in wanted:
            if namespace.presence:
                await self._announce_arrival(connection, channel, namespace)

    # -- commands ----------------------------------------------------------------------------

    async def _execute(self, connection: Connection, event: Execute) -> None:
        command = event.command
        try:
            if isinstance(command, Publish):
                await self._client_publish(connection, command, event.namespace)
            elif isinstance(command, Subscribe):
                if event.channel_token:
                    await self._check_channel_token(connection, command)
                await self._client_subscribe(connection, command, event.namespace)
            elif isinstance(command, Unsubscribe):
                self._detach(connection, command.channel)
                connection.send_message(Unsubscribed(channel=command.channel, id=command.id))
            elif isinstance(command, GetHistory):
                await self._client_history(connection, command, event.namespace)
            elif isinstance(command, GetPresence):
                await self._client_presence(connection, command)
            elif isinstance(command, Refresh):
                await self._client_refresh(connection, command)
        except HubbubError as exc:
            connection.send_message(Error(code=exc.code, reason=exc.reason, id=command.id))

    async def _client_refresh(self, connection: Connection, command: Refresh) -> None:
        """Take a new connection token for the same user; answer ``ack`` with its ``expires``."""
        try:
            await self._refresh(connection, command)
        except HubbubError as exc:
            auth_failure(self.stats, "refresh", exc, **connection._extra())
            raise

    async def _refresh(self, connection: Connection, command: Refresh) -> None:
        if connection.identity.anonymous:
            raise PermissionDenied("an anonymous connection has no token to refresh")
        verify = getattr(self.authenticator, "verify", None)
        if callable(verify):
            identity = await verify(command.token)
        elif self.authenticator is not None:
            # Any authenticator reading the Authorization header can verify a bare token.
            scope = {
                "type": "websocket",
                "headers": [(b"authorization", b"Bearer " + command.token.encode())],
            }
            identity = await self.authenticator(scope)
        else:
            identity = None
        if not isinstance(identity, Identity) or not identity.user:
            raise AuthenticationFailed("the new token is not valid")
        check_identity(identity)  # what the handshake checks (an expiry beyond 64 bits)
        if identity.user != connection.identity.user:
            raise PermissionDenied("the new token is for another user")
        connection.refresh(identity)
        connection.send_message(Ack(id=command.id, expires=identity.expires))

    async def _check_channel_token(self, connection: Connection, command: Subscribe) -> None:
        """Verify a channel token granting a subscription the namespace forbids (§4)."""
        verify = getattr(self.authenticator, "verify_channel_token", None)
        if command.token is None or not callable(verify) or connection.identity.anonymous:
            raise PermissionDenied(f"not allowed to subscribe to {command.channel!r}")
        try:
            await verify(command.token, user=connection.identity.user, channel=command.channel)
        except HubbubError as exc:
            extra = connection._extra()
            auth_failure(self.stats, "channel_token", exc, channel=command.channel, **extra)
            raise

    async def _client_publish(
        self, connection: Connection, command: Publish, namespace: Namespace | None
    ) -> None:
        assert namespace is not None
        echo = namespace.echo if command.echo is None else command.echo
        publication = Publication(
            channel=command.channel,
            data=bytes(command.data),
            codec=connection.codec.name,
            ts=_now_ms(),
            sender=connection.info,
            exclude=None if echo else connection.id,
        )
        published = await self._publish(publication, namespace, command.idempotency_key)
        connection.send_message(Ack(id=command.id, offset=published.offset, epoch=published.epoch))

    async def _client_subscribe(
        self, connection: Connection, command: Subscribe, namespace: Namespace | None
    ) -> None:
        assert namespace is not None
        channel = command.channel
        codec = connection.codec
        if channel in connection.protocol.channels:
            # A server-side subscription asked for recovery: answer while live delivery
            # goes on; the client drops any message whose offset it already has.
            assert command.recover is not None
            found, now = await self._read_for_recovery(channel, command.recover)
            joined = join_stream(found, now, [], recover=command.recover, last=None)
            # One frame, not split: live messages are flowing, and the client merges the
            # recovered ones by offset only from inside ``subscribed``.
            joined, _ = self._fit_join(connection, joined, frame=True)
            self._send_reply(connection, self._subscribed(command, joined, codec))
            return
        entry = await self._ensure(channel, namespace)
        if connection.protocol.closed:
            self._release_if_unused(channel, entry)
            return
        # Live publications are buffered from here to the merge, so the reads and the
        # presence lease may await; if anything fails, the channel and the lease go.
        entry.recovering[connection] = []
        leased = False
        last = command.history if command.history is not None else namespace.replay
        try:
            page: HistoryPage | None = None
            top: Position | None = None
            if namespace.history_size and command.recover is not None:
                page, top = await self._read_for_recovery(channel, command.recover)
            elif namespace.history_size:
                page = await self._broker_call(
                    self.broker.history(channel, limit=min(last, namespace.history_size))
                )
                top = page.position
            # Before ``subscribed``: a ``presence`` read on any node after it lists the client.
            leased = await self._lease(connection, channel, namespace, strict=True)
        except BaseException:
            entry.recovering.pop(connection, None)
            self._release_if_unused(channel, entry)
            raise
        buffered = entry.recovering.pop(connection, [])
        if connection.protocol.closed:
            self._release_if_unused(channel, entry)
            if leased:
                self._drop_lease(connection, channel)
            return
        if top is None:
            self._attach(connection, channel, namespace, entry)
            recovered = False if command.recover is not None else None
            connection.send_message(
                Subscribed(channel=channel, publications=[], id=command.id, recovered=recovered)
            )
        else:
            joined = join_stream(page, top, buffered, recover=command.recover, last=last)
            joined, encoded = self._fit_join(connection, joined)
            if joined.recovered is not None:
                if joined.recovered:
                    self.stats.recovered += 1
                else:
                    self.stats.not_recovered += 1
            # From here to the end of the delivery nothing awaits: no publication can
            # fall between the merge and the attach.
            self._attach(connection, channel, namespace, entry)
            _set_floor(entry, connection, joined)
            self._send_joined(connection, command, joined, encoded)
            self._deliver_to(connection, joined.live, namespace)
            if joined.gap:
                connection.close(Close(TRY_AGAIN_LATER, "publications were lost; recover"))
                return
        if namespace.presence:
            await self._announce_arrival(connection, channel, namespace)

    async def _read_for_recovery(
        self, channel: str, recover: Position
    ) -> tuple[HistoryPage | None, Position]:
        try:
            page: HistoryPage = await self._broker_call(self.broker.history(channel, since=recover))
        except StreamGone:
            return None, await self._top(channel)
        return page, page.position

    async def _top(self, channel: str) -> Position:
        page: HistoryPage = await self._broker_call(self.broker.history(channel, limit=0))
        return page.position

    def _send_reply(self, connection: Connection, message: Subscribed | History) -> None:
        """Queue a reply sized by history, exempt from the send queue's limits."""
        frame = connection.codec.encode(message)
        self._count_sent(message.__struct_config__.tag, 1, len(frame))  # type: ignore[arg-type]
        connection.enqueue_reply([(frame, len(frame))])

    def _count_sent(self, kind: str, count: int, size: int) -> None:
        stats = self.stats
        stats.sent[kind] = stats.sent.get(kind, 0) + count
        stats.bytes_out += size

    def _fit_join(
        self, connection: Connection, joined: Joined, *, frame: bool = False
    ) -> tuple[Joined, list[bytes]]:
        """Encode what a join replays, within what the connection's unsent replies may hold.

        Replies are exempt from the queue's limits, but not unbounded: a
        connection's unsent replies may hold ``REPLY_BACKLOG`` times
        ``Limits.queue_bytes``. A WebSocket never comes near (its next command
        waits for the queue to drain); an SSE stream joins all its channels
        before its first write. Past it, a replay keeps its newest publications
        that fit, and a recovery that does not fit is answered
        ``recovered: false`` (the client reloads) rather than in part. With
        ``frame``, the reply must also fit one frame of ``REPLY_FRAME_BYTES``.
        """
        codec = connection.codec
        encoded = [_encode_bytes(p, _CODECS[p.codec], codec) for p in joined.publications]
        room = REPLY_BACKLOG * self.limits.queue_bytes - connection.reply_backlog()
        if frame:
            room = min(room, REPLY_FRAME_BYTES)
        if sum(map(len, encoded)) <= room:
            return joined, encoded
        if joined.recovered:
            logger.info(
                "recovery larger than the connection's reply allowance: not recovered",
                extra={**connection._extra(), "publications": len(encoded)},
            )
            return replace(joined, publications=[], recovered=False), []
        kept = used = 0
        for raw in reversed(encoded):
            if used + len(raw) > room:
                break
            used += len(raw)
            kept += 1
        cut = len(encoded) - kept
        return replace(joined, publications=joined.publications[cut:]), encoded[cut:]

    def _send_joined(
        self, connection: Connection, command: Subscribe, joined: Joined, encoded: list[bytes]
    ) -> None:
        """Queue ``subscribed`` and the publications it replays, exempt from the queue's limits.

        Publications that would take ``subscribed`` over ``REPLY_FRAME_BYTES``
        follow it as ``message`` frames (its ``offset`` then says where it stops).
        ``encoded``: the publications of ``joined`` in the connection's codec.
        """
        codec = connection.codec
        publications = joined.publications
        inline = used = 0
        while inline < len(encoded) and used + len(encoded[inline]) <= REPLY_FRAME_BYTES:
            used += len(encoded[inline])
            inline += 1
        offset = joined.position.offset
        if inline < len(encoded):
            first = publications[inline].offset
            assert first is not None  # replayed publications come from a stream
            offset = first - 1
        reply = Subscribed(
            channel=command.channel,
            # Already-encoded messages are passed through as they are (msgspec Raw).
            publications=cast("list[Message]", [Raw(raw) for raw in encoded[:inline]]),
            id=command.id,
            offset=offset,
            epoch=joined.position.epoch,
            recovered=joined.recovered,
        )
        head = codec.encode(reply)
        frames: list[tuple[str | bytes, int]] = [(head, len(head))]
        frames.extend((raw if codec.binary else raw.decode(), len(raw)) for raw in encoded[inline:])
        self._count_sent("subscribed", 1, len(head))
        if len(frames) > 1:
            self._count_sent("message", len(frames) - 1, sum(size for _, size in frames[1:]))
        connection.enqueue_reply(frames)

    def _subscribed(self, command: Subscribe, joined: Joined, codec: Codec) -> Subscribed:
        return Subscribed(
            channel=command.channel,
            publications=[_message(p, codec) for p in joined.publications],
            id=command.id,
            offset=joined.position.offset,
            epoch=joined.position.epoch,
            recovered=joined.recovered,
        )

    def _deliver_to(
        self, connection: Connection, publications: list[Publication], namespace: Namespace
    ) -> None:
        codec = connection.codec
        stats = self.stats
        for publication in publications:
            if publication.exclude != connection.id:
                frame, size = _encode(publication, _CODECS[publication.codec], codec)
                connection.enqueue(frame, size, namespace.droppable)
                stats.sent[publication.kind] = stats.sent.get(publication.kind, 0) + 1
                stats.bytes_out += size

    async def _client_history(
        self, connection: Connection, command: GetHistory, namespace: Namespace | None
    ) -> None:
        assert namespace is not None
        if not namespace.history_size:
            reply = History(channel=command.channel, publications=[], id=command.id)
        else:
            limit = min(command.limit or MAX_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
            page: HistoryPage = await self._broker_call(
                self.broker.history(
                    command.channel, since=command.since, limit=limit, reverse=command.reverse
                )
            )
            codec = connection.codec
            encoded = [_encode_bytes(p, _CODECS[p.codec], codec) for p in page.publications]
            # Over REPLY_FRAME_BYTES, keep those nearest where the page starts: after
            # ``since`` (the oldest), else at the top (the newest); the client reads on
            # from there. ``reverse`` flips which end of the list that is.
            newest = (command.since is None) != command.reverse
            if newest:
                encoded.reverse()
            kept, used = 0, 0
            while kept < len(encoded) and (
                not kept or used + len(encoded[kept]) <= REPLY_FRAME_BYTES
            ):
                used += len(encoded[kept])
                kept += 1
            encoded = encoded[:kept]
            if newest:
                encoded.reverse()
            reply = History(
                channel=command.channel,
                publications=cast("list[Message]", [Raw(raw) for raw in encoded]),
                id=command.id,
                offset=page.position.offset,
                epoch=page.position.epoch,
            )
        self._send_reply(connection, reply)

    async def _client_presence(self, connection: Connection, command: GetPresence) -> None:
        clients: Mapping[str, ClientInfo] = await self._broker_call(
            self.broker.presence(command.channel)
        )
        users = {info.user or client for client, info in clients.items()}
        connection.send_message(
            Presence(
                channel=command.channel, clients=dict(clients), users=len(users), id=command.id
            )
        )

    # -- presence ----------------------------------------------------------------------------

    async def _lease(
        self, connection: Connection, channel: str, namespace: Namespace, *, strict: bool
    ) -> bool:
        """Take a new subscriber's presence lease, before ``subscribed`` is sent.

        So presence is read-after-subscribe: once a client has ``subscribed``
        (or ``welcome``), a ``presence`` query on any node lists it. Returns
        whether a lease was taken (``False`` where the namespace has no presence).

        Raises:
            HubbubError: ``strict`` (a client's ``subscribe``, which is then
                refused 503 and may be retried) and the broker failed. Server-made
                subscriptions are not strict: the failure is logged and the lease
                task retries within a third of the TTL.
        """
        if not namespace.presence:
            return False
        try:
            await self._broker_call(
                self.broker.presence_set(
                    channel, connection.id, connection.info, namespace.presence_ttl
                )
            )
        except HubbubError as exc:
            if strict:
                raise
            logger.warning("presence for %r failed: %s", channel, exc.reason)
        return True

    def _drop_lease(self, connection: Connection, channel: str) -> None:
        """Drop, in the background, a lease taken for a subscription that did not happen."""
        if self._tg is not None:
            self._tg.start_soon(self._unlease, connection.id, channel)

    async def _unlease(self, client: str, channel: str) -> None:
        try:
            async with self._limiter():
                await self._broker_call(self.broker.presence_remove(channel, client))
        except HubbubError as exc:
            logger.warning("presence removal for %r failed: %s", channel, exc.reason)

    async def _announce_arrival(
        self, connection: Connection, channel: str, namespace: Namespace
    ) -> None:
        """Announce a new subscriber (leased already) with ``join`` where enabled.

        A failure here is logged, not answered: the subscription itself holds.
        """
        info = connection.info
        try:
            if not namespace.join_leave:
                return
            if namespace.join_leave_per_user and info.user:
                present = await self._broker_call(self.broker.presence(channel))
                if any(c != connection.id and i.user == info.user for c, i in present.items()):
                    return
            await self._announce("join", channel, info)
        except HubbubError as exc:
            logger.warning("presence for %r failed: %s", channel, exc.reason)

    async def _depart(self, channel: str, namespace: Namespace, info: ClientInfo) -> None:
        """Drop a leaving subscriber's presence lease and announce it where enabled.

        One runs per presence channel the client held, all started at once when
        it leaves: they take turns (``BACKGROUND_BROKER_CALLS``) so that each
        completes instead of exhausting the broker's connections.
        """
        try:
            async with self._limiter():
                await self._broker_call(self.broker.presence_remove(channel, info.client))
                if not namespace.join_leave:
                    return
                if namespace.join_leave_per_user and info.user:
                    present = await self._broker_call(self.broker.presence(channel))
                    if any(i.user == info.user for i in present.values()):
                        return
                await self._announce("leave", channel, info)
        except HubbubError as exc:
            logger.warning("presence removal for %r failed: %s", channel, exc.reason)
        finally:
            self._departing -= 1
            if not self._departing and self._departed is not None:
                self._departed.set()

    async def _announce(self, kind: PublicationKind, channel: str, info: ClientInfo) -> None:
        event = Publication(
            channel=channel,
            data=b"",
            codec=JSON.name,
            ts=_now_ms(),
            sender=info,
            exclude=info.client,  # a client does not receive its own join
            kind=kind,
        )
        await self._broker_call(self.broker.publish(event, None))

    # -- registry ----------------------------------------------------------------------------

    async def _ensure(self, channel: str, namespace: Namespace) -> _Channel:
        """The channel's entry, with this node subscribed to it at the broker."""
        while True:
            entry = self._channels.get(channel)
            if entry is None:
                entry = self._channels[channel] = _Channel(namespace)
            entry.pending += 1
            try:
                async with entry.lock:
                    if not entry.on_node:
                        await self._broker_call(self.broker.subscribe(channel))
                        entry.on_node = True
            finally:
                entry.pending -= 1
                self._release_if_unused(channel, entry)
            if self._channels.get(channel) is entry:
                return entry

    def _attach(
        self,
        connection: Connection,
        channel: str,
        namespace: Namespace,
        entry: _Channel,
        *,
        server_side: bool = False,
    ) -> None:
        entry.subscribers[connection] = None
        connection.protocol.add_channel(channel, namespace, server_side=server_side)

    def _detach_all(self, connection: Connection) -> None:
        for channel in list(connection.protocol.channels):
            self._detach(connection, channel)

    def _detach(self, connection: Connection, channel: str) -> None:
        namespace = connection.protocol.channels.get(channel)
        connection.protocol.remove_channel(channel)
        if namespace is not None and namespace.presence and self._tg is not None:
            self._departing += 1
            self._tg.start_soon(self._depart, channel, namespace, connection.info)
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.subscribers.pop(connection, None)
        entry.floors.pop(connection, None)
        self._release_if_unused(channel, entry)

    def _release_if_unused(self, channel: str, entry: _Channel) -> None:
        if entry.subscribers or entry.pending or entry.recovering:
            return
        if not entry.on_node:
            if self._channels.get(channel) is entry and not entry.lock.locked():
                del self._channels[channel]
            return
        if self._tg is not None:
            entry.pending += 1
            self._tg.start_soon(self._node_unsubscribe, channel, entry)

    async def _node_unsubscribe(self, channel: str, entry: _Channel) -> None:
        try:
            # The limiter before the lock, as everywhere: the lock is never held waiting.
            async with self._limiter(), entry.lock:
                entry.pending -= 1
                if entry.subscribers or entry.pending or entry.recovering or not entry.on_node:
                    return
                entry.on_node = False
                try:
                    await self._broker_call(self.broker.unsubscribe(channel))
                except HubbubError as exc:
                    logger.warning("broker unsubscribe of %r failed: %s", channel, exc.reason)
        finally:
            if not (entry.subscribers or entry.pending or entry.recovering or entry.on_node):
                if self._channels.get(channel) is entry:
                    del self._channels[channel]

    # -- publishing and fan-out --------------------------------------------------------------

    async def _publish(
        self, publication: Publication, namespace: Namespace, idempotency_key: str | None = None
    ) -> Publication:
        history = (
            HistoryOptions(namespace.history_size, namespace.history_ttl)
            if namespace.history_size
            else None
        )
        idempotency = (
            Idempotency(idempotency_key, namespace.idempotency_window)
            if idempotency_key is not None
            else None
        )
        if idempotency is not None and Capability.IDEMPOTENCY not in self.broker.capabilities:
            raise InvalidMessage("idempotency_key is not supported by this hub's broker")
        self.stats.publications += 1
        tracing = self._tracing
        if tracing is not None:
            return await self._traced_publish(tracing, publication, namespace, history, idempotency)
        published: Publication = await self._broker_call(
            self.broker.publish(publication, history, idempotency)
        )
        return published

    async def _traced_publish(
        self,
        tracing: Tracing,
        publication: Publication,
        namespace: Namespace,
        history: HistoryOptions | None,
        idempotency: Idempotency | None,
    ) -> Publication:
        channel = publication.channel
        with tracing.publish(channel, namespace.name) as span:
            with tracing.broker_publish(channel, type(self.broker).__name__):
                published: Publication = await self._broker_call(
                    self.broker.publish(publication, history, idempotency)
                )
            if published.offset is not None and published.epoch is not None:
                span.set_attribute("hubbub.offset", published.offset)
                span.set_attribute("hubbub.epoch", published.epoch)
        return published

    async def _broker_call(self, call: Any) -> Any:
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.broker_timeout):
                return await call
        except TimeoutError:
            reason = f"broker did not answer within {self.broker_timeout} s"
            raise BrokerUnavailable(reason) from None
        except HubbubError:
            raise
        except Exception as exc:
            logger.exception("broker call failed")
            raise InternalError("broker error") from exc
        finally:
            # Timed whatever the outcome: a timeout is the latency an outage shows.
            op = getattr(call, "__name__", "")
            if op not in _BROKER_OPS:
                op = "other"
            histograms = self.stats.broker_latency
            histogram = histograms.get(op)
            if histogram is None:
                histogram = histograms[op] = LatencyHistogram()
            histogram.observe(time.perf_counter() - started)

    def _dispatch(self, publication: Publication) -> None:
        """Take one publication from the broker: check its offset, then fan it out.

        Publications of a stream must arrive in offset order without holes. A
        duplicate is dropped; a hole (the broker's link lost some) is repaired
        from history before anything newer is delivered (``_repair``).
        """
        entry = self._channels.get(publication.channel)
        if entry is None:
            if publication.kind == "control":
                self._control(publication)
            return
        offset = publication.offset
        if offset is not None and publication.kind == "message":
            if entry.held is not None:
                entry.held.append(publication)
                return
            if publication.epoch == entry.last_epoch and offset != entry.last_offset + 1:
                if offset <= entry.last_offset:
                    return
                self._start_repair(publication.channel, entry, [publication])
                return
            entry.last_offset, entry.last_epoch = offset, publication.epoch
        tracing = self._tracing
        if tracing is None:
            self._fan_out(entry, publication)
            return
        attributes: dict[str, Any] = {"hubbub.kind": publication.kind}
        if offset is not None:
            attributes["hubbub.offset"] = offset
        with tracing.fan_out(publication.channel, entry.namespace.name, attributes) as span:
            before = self.stats.deliveries
            self._fan_out(entry, publication)
            span.set_attribute("hubbub.subscribers", self.stats.deliveries - before)

    def _fan_out(self, entry: _Channel, publication: Publication) -> None:
        """Hand one publication to every local subscriber of its channel."""
        if entry.recovering and publication.kind == "message":
            for buffered in entry.recovering.values():
                buffered.append(publication)
        if not entry.subscribers:
            return
        source = _CODECS[publication.codec]
        droppable = entry.namespace.droppable
        exclude = publication.exclude
        frames: dict[Codec, tuple[str | bytes, int]] = {}
        delivered = 0
        skip = _below_floor(entry.floors, publication) if entry.floors else None
        # A copy: a full queue closes its connection, which detaches it from this dict.
        targets = tuple(entry.subscribers)
        for connection in targets:
            if exclude is not None and connection.id == exclude:
                continue
            if skip and connection in skip:
                continue
            codec = connection.codec
            encoded = frames.get(codec)
            if encoded is None:
                encoded = frames[codec] = _encode(publication, source, codec)
            connection.enqueue(encoded[0], encoded[1], droppable)
            delivered += 1
        # Counted once per publication, not per delivery: the sizes are known per codec.
        stats = self.stats
        stats.deliveries += delivered
        sent = stats.sent
        sent[publication.kind] = sent.get(publication.kind, 0) + delivered
        if len(frames) == 1:
            stats.bytes_out += next(iter(frames.values()))[1] * delivered
        elif frames:  # clients of both codecs on one channel: the rare case
            stats.bytes_out += sum(
                frames[c.codec][1] for c in targets if c.id != exclude and not (skip and c in skip)
            )

    def _lost(self, channels: Collection[str] | None) -> None:
        """The broker may have lost publications (its link dropped): repair from history.

        For every channel with history this node compares the stream with the
        last offset it delivered and delivers what it missed itself, in order;
        clients it cannot keep whole are closed with 1013 so they recover.
        Channels without history are at-most-once: nothing to do.
        """
        self.stats.broker_losses += 1
        logger.warning(
            "the broker may have lost publications (its link dropped)",
            extra={
                "event": "broker_lost",
                "node": self.node,
                "channels": None if channels is None else len(channels),
            },
        )
        names = self._channels.keys() if channels is None else channels
        for name in list(names):
            entry = self._channels.get(name)
            if entry is None or not entry.namespace.history_size or entry.held is not None:
                continue
            if entry.last_epoch is None:
                continue  # nothing delivered yet: joiners read their own positions
            self._start_repair(name, entry, [])

    def _start_repair(self, channel: str, entry: _Channel, held: list[Publication]) -> None:
        entry.held = held
        if self._tg is None:
            return
        self._tg.start_soon(self._repair, channel, entry)

    async def _repair(self, channel: str, entry: _Channel) -> None:
        """Fill this node's hole in a stream from history, then release what was held.

        A dropped link starts one repair per channel with history; they take
        turns (``BACKGROUND_BROKER_CALLS``), holding live publications meanwhile.
        """
        async with self._limiter():
            await self._repair_now(channel, entry)

    async def _repair_now(self, channel: str, entry: _Channel) -> None:
        for _ in range(3):
            since = Position(offset=entry.last_offset, epoch=entry.last_epoch or "")
            try:
                page: HistoryPage = await self._broker_call(
                    self.broker.history(channel, since=since)
                )
            except HubbubError as exc:
                self._give_up(channel, entry, f"stream unreadable ({exc.reason})")
                return
            expected = since.offset + 1
            for publication in page.publications:
                if publication.offset != expected:
                    self._give_up(channel, entry, "history no longer covers the gap")
                    return
                entry.last_offset = expected
                self._fan_out(entry, publication)
                expected += 1
            held, entry.held = entry.held or [], []
            for publication in sorted(held, key=lambda p: p.offset or 0):
                if publication.epoch != entry.last_epoch:
                    entry.last_offset, entry.last_epoch = publication.offset or 0, publication.epoch
                    self._fan_out(entry, publication)
                elif (publication.offset or 0) == entry.last_offset + 1:
                    entry.last_offset += 1
                    self._fan_out(entry, publication)
                elif (publication.offset or 0) > entry.last_offset:
                    entry.held.append(publication)  # still a hole before it: read again
            if not entry.held:
                entry.held = None
                self.stats.gaps_repaired += 1
                logger.info("repaired a gap in %r from history", channel)
                return
        self._give_up(channel, entry, "the gap did not close")

    def _give_up(self, channel: str, entry: _Channel, why: str) -> None:
        """Close the channel's local subscribers with 1013 so they recover by themselves."""
        logger.warning("closing subscribers of %r: %s", channel, why)
        for connection in tuple(entry.subscribers):
            connection.close(Close(TRY_AGAIN_LATER, "publications were lost; recover"))
        held = entry.held or []
        entry.held = None
        if held:
            newest = max(held, key=lambda p: p.offset or 0)
            entry.last_offset, entry.last_epoch = newest.offset or 0, newest.epoch


def _set_floor(entry: _Channel, connection: Connection, joined: Joined) -> None:
    epoch = joined.position.epoch
    offsets = [p.offset for p in joined.live if p.epoch == epoch and p.offset is not None]
    entry.floors[connection] = Position(offset=max([joined.position.offset, *offsets]), epoch=epoch)


def _below_floor(floors: dict[Connection, Position], publication: Publication) -> set[Connection]:
    """Connections that already have ``publication``; floors it passes are cleared."""
    if publication.kind != "message":
        return set()
    skip = set()
    for connection, floor in list(floors.items()):
        if publication.epoch == floor.epoch and (publication.offset or 0) <= floor.offset:
            skip.add(connection)
        else:
            del floors[connection]
    return skip


_BROKER_OPS: Final = frozenset(
    {
        "publish",
        "subscribe",
        "unsubscribe",
        "history",
        "presence_set",
        "presence_remove",
        "presence",
    }
)
"""Broker methods timed by name in ``HubStats.broker_latency``; anything else is ``other``."""

CONTROL_CHANNEL: Final = "$control"
"""The channel nodes use to command each other (never a valid client channel name)."""


class _ControlCommand(msgspec.Struct):
    op: str
    node: str
    user: str = ""
    reason: str = ""
    code: int = KICKED
    channel: str = ""


REPLY_FRAME_BYTES: Final = 512 * 1024
"""The most replayed publications, in encoded bytes, that one ``subscribed`` carries.

Those beyond follow it at once as ``message`` frames, in offset order and
before anything live, and ``subscribed.offset`` is then the last one it
carries itself; so however full a channel's history, no frame of a join
outgrows the 1 MiB frame limit of common clients (the ``websockets``
library's default, hubbub's own client).
"""

REPLY_BACKLOG: Final = 8
"""Unsent replies a connection may hold, in multiples of ``Limits.queue_bytes`` (8 MiB)."""

MAX_HISTORY_LIMIT: Final = 100
"""The default and largest ``limit`` of the ``history`` command."""


def _message(publication: Publication, codec: Codec) -> Message:
    source = _CODECS[publication.codec]
    data = publication.data if codec is source else source.convert(publication.data, codec)
    return Message(
        channel=publication.channel,
        data=Raw(data),
        ts=publication.ts,
        offset=publication.offset,
        epoch=publication.epoch,
        sender=publication.sender,
    )


def _encode(publication: Publication, source: Codec, codec: Codec) -> tuple[str | bytes, int]:
    raw = _encode_bytes(publication, source, codec)
    return (raw if codec.binary else raw.decode(), len(raw))


def _encode_bytes(publication: Publication, source: Codec, codec: Codec) -> bytes:
    kind = publication.kind
    if kind == "message":
        data = publication.data if codec is source else source.convert(publication.data, codec)
        message: Message | Join | Leave = Message(
            channel=publication.channel,
            data=Raw(data),
            ts=publication.ts,
            offset=publication.offset,
            epoch=publication.epoch,
            sender=publication.sender,
        )
    else:
        who = publication.sender
        assert who is not None
        event = Join if kind == "join" else Leave
        message = event(
            channel=publication.channel,
            user=who.user,
            client=who.client,
            name=who.name,
            info=who.info,
        )
    return codec.encode_bytes(message)


def _position(publication: Publication) -> Position | None:
    if publication.offset is None or publication.epoch is None:
        return None
    return Position(offset=publication.offset, epoch=publication.epoch)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _anonymous_name(scope: Any) -> str | None:
    """The display name an anonymous client asked for with ``?name=``, cleaned up."""
    value = query_param(scope, "name")
    if value is None:
        return None
    name = "".join(ch for ch in value if ch.isprintable()).strip()[:64]
    return name or None


def _check_capabilities(broker: Broker, namespaces: NamespaceRegistry) -> None:
    """Refuse to start with a namespace that needs what the broker cannot do.

    Raises:
        UnsupportedCapability: naming the first such namespace and capability.
    """
    for namespace in (*namespaces, namespaces.personal):
        personal = " (personal channels)" if namespace is namespaces.personal else ""
        needs = []
        if namespace.history_size:
            why = f"{personal} keeps history (history_size={namespace.history_size})"
            needs.append((Capability.HISTORY, why))
        if namespace.presence:
            needs.append((Capability.PRESENCE, f"{personal} tracks presence (presence=True)"))
        for capability, why in needs:
            if capability not in broker.capabilities:
                raise UnsupportedCapability(broker, namespace.name, capability, why.lstrip())


def running_hubs() -> list[Hub]:
    """Every hub currently running in this process (used by ``hubbub serve`` to drain)."""
    return list(_RUNNING_HUBS)
