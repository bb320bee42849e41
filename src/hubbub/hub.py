"""The hub: a façade over the modules that each own one part of the data path.

The :class:`Hub` keeps the lifecycle (the one task group that owns every
background task), the server-side Python API (``publish``, ``notify``,
``history``, ``presence``, ``disconnect``, ``subscribe_user``, …), the
:class:`~hubbub._connection.SessionHost` it hands its connections
(``Hub.session_host``: authenticate, open, welcome, join, execute a command,
forget) and the dispatch of commands and node control commands with
``match``. What it dispatches to lives one module each:

- :mod:`hubbub._registry`: connections, users, channel → local subscribers,
  and the node's reference-counted broker subscriptions;
- :mod:`hubbub._fanout`: the broker's publications to every local subscriber,
  in stream order (offsets, floors, gap repair);
- :mod:`hubbub._join`: joining a stream (read, buffer, merge, attach);
- :mod:`hubbub._presence`: leases and join/leave events;
- :mod:`hubbub._commands`: a client's publish, history, presence and refresh;
- :mod:`hubbub._control`: what nodes ask each other, as a tagged union;
- :mod:`hubbub._brokercall`: every broker call, timed and bounded.

It starts and stops in three equal ways: ``async with hub:``,
``lifespan=hub.lifespan`` in a parent app, or automatically when
:class:`hubbub.HubApp` is the top-level ASGI app.
"""

from __future__ import annotations

import logging
import secrets
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
from anyio.abc import TaskGroup

from ._brokercall import BACKGROUND_BROKER_CALLS, BrokerCalls, check_capabilities
from ._commands import MAX_HISTORY_LIMIT as MAX_HISTORY_LIMIT
from ._commands import Commands, server_publication
from ._connection import Connection, SessionHost, Signal, new_signal, outside_task
from ._control import CONTROL_CHANNEL, Control
from ._errors import HubbubError, InvalidMessage, PermissionDenied, RateLimited
from ._fanout import Fanout, message
from ._host import HubHost
from ._join import REPLY_BACKLOG as REPLY_BACKLOG
from ._join import REPLY_FRAME_BYTES as REPLY_FRAME_BYTES
from ._join import Joins, at_channel_limit
from ._presence import Presence
from ._registry import Registry
from ._stats import BROKER_BUCKETS, HubStats, LatencyHistogram
from ._sync import LoopGate, SyncHub
from ._tracing import Tracing
from .auth import Authenticator
from .brokers import Broker, HistoryPage, MemoryBroker
from .chat import Notification
from .limits import Admission, Limits
from .messages import (
    ClientInfo,
    Error,
    GetHistory,
    GetPresence,
    Position,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
    Unsubscribed,
)
from .namespaces import Namespace, NamespaceRegistry, personal_channel, validate_channel
from .protocol import GOING_AWAY, KICKED, Close, Execute

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["BACKGROUND_BROKER_CALLS", "BROKER_BUCKETS", "Hub", "HubStats", "LatencyHistogram"]

_message = message  # importable from here as in 0.1 (``hubbub.api`` reads it)

logger = logging.getLogger("hubbub")

_RUNNING_HUBS: weakref.WeakSet[Hub] = weakref.WeakSet()

State = Literal["stopped", "starting", "running", "draining", "stopping"]


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
        self.namespaces = NamespaceRegistry(
            namespaces if namespaces is not None else [Namespace()],
            personal
            if personal is not None
            else Namespace(name="personal", history_size=100, history_ttl=7 * 24 * 3600.0),
        )
        self.limits = limits if limits is not None else Limits()
        self.admission = Admission(self.limits)
        """Handshake rate and connection caps per IP/user; its ``limiter`` may be replaced."""
        self.node = node or secrets.token_hex(4)
        self.drain_timeout = drain_timeout
        self.stats = HubStats()
        self.anonymous = anonymous
        self._tracing: Tracing | None = None
        if tracing is not False:
            self._tracing = Tracing(None if tracing is True else tracing)
        self._state: State = "stopped"
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        # Tasks _spawn was asked for outside any task, for _start_deferred to start.
        self._deferred: deque[Callable[[], Coroutine[Any, Any, None]]] = deque()
        self._deferred_wake: Signal = Signal()
        self._all_gone: anyio.Event | None = None
        calls = BrokerCalls(
            broker if broker is not None else MemoryBroker(), broker_timeout, self.stats
        )
        self._calls = calls
        self._presence = Presence(calls, self.namespaces, self._spawn)
        self._registry = Registry(calls, self._spawn, self._presence.depart_soon)
        self._fanout = Fanout(
            self._registry.channels,
            self.stats,
            calls,
            self._spawn,
            lambda publication: self._nodes.receive(publication),
            self._tracing,
            self.node,
        )
        calls.batching = self._fanout
        self._commands = Commands(calls, self.stats, self._tracing, authenticator)
        self._joins = Joins(
            self._registry,
            self._presence,
            self._fanout,
            calls,
            self.namespaces,
            self.limits,
            self.stats,
        )
        self._nodes = Control(
            self.node, self._registry, self._joins, calls, self.namespaces, self._spawn
        )
        self.session_host: SessionHost = HubHost(self)
        """What the hub's connections may ask of it (``serve_websocket``, ``serve_sse``)."""
        self._gate = LoopGate()
        self.sync = SyncHub(self, self._gate)
        """The same API for synchronous code in other threads (a Django or Flask view, a
        worker thread): ``hub.sync.publish(...)`` blocks until the hub answered
        (``docs/sync.md``)."""

    def __repr__(self) -> str:
        return f"<Hub node={self.node} state={self._state}>"

    @property
    def broker(self) -> Broker:
        """The broker; replaceable while the hub is stopped."""
        return self._calls.broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        self._calls.broker = broker

    @property
    def broker_timeout(self) -> float:
        """Seconds a broker call may take before the command is answered ``error`` 503."""
        return self._calls.timeout

    @broker_timeout.setter
    def broker_timeout(self, seconds: float) -> None:
        self._calls.timeout = seconds

    def set_limits(self, limits: Limits) -> None:
        """Apply new limits to connections opened from now on (``hubbub serve``'s SIGHUP reload).

        A connection keeps the limits it opened with (its ping interval was told
        to the client in ``welcome``); handshakes, per-IP and per-user caps and
        the handshake rate follow the new limits at once. Call it from the
        event loop's thread: it only swaps references, never awaits.
        """
        if not isinstance(limits, Limits):
            raise TypeError("limits must be a hubbub.Limits")
        self.limits = limits
        self.admission.set_limits(limits)
        self._joins.set_limits(limits)

    @property
    def authenticator(self) -> Authenticator | None:
        """Turns a connection's scope into an :class:`Identity`."""
        return self._commands.authenticator

    @authenticator.setter
    def authenticator(self, authenticator: Authenticator | None) -> None:
        self._commands.authenticator = authenticator

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
        return await self._calls.ready()

    async def __aenter__(self) -> Hub:
        if self._state != "stopped":
            raise RuntimeError(f"the hub is {self._state}; a hub runs once at a time")
        check_capabilities(self.broker, self.namespaces)
        self._state = "starting"
        self._calls.reset()
        self._presence.reset()
        stack = AsyncExitStack()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            # Other threads reach the hub (``hub.sync``) through this gate while it runs.
            await self._tg.start(self._gate.serve)
            await self.broker.start(self._fanout.dispatch, self._fanout.lost, self._tg)
            self._tg.start_soon(self._registry.heartbeats, self.limits)
            self._deferred_wake = new_signal()
            self._tg.start_soon(self._start_deferred)
            self._tg.start_soon(self._presence.renew_forever, self._registry.connections)
            try:
                await self._calls.subscribe(CONTROL_CHANNEL)
            except HubbubError as exc:
                # The broker may come up later (Redis down at start); until then
                # cross-node commands reach only this node.
                logger.warning("control channel not subscribed yet: %s", exc.reason)
        except BaseException:
            self._state = "stopped"
            if self._tg is not None:
                # The gate's task (and any the broker started) would keep the group open.
                self._tg.cancel_scope.cancel()
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
                # Synchronous callers first: none may still be on its way to the broker
                # when it stops.
                await self._gate.close(self.broker_timeout)
                await self.drain()
                self._state = "stopping"
                await self._presence.settle(self.drain_timeout)
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
            self._deferred.clear()  # not started: the hub stopped first
            self._registry.channels.clear()
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
        connections = self._registry.connections
        if not connections:
            return
        self._all_gone = anyio.Event()
        for connection in list(connections):
            connection.close(Close(code, reason, flush=True))
        with anyio.move_on_after(self.drain_timeout):
            await self._all_gone.wait()
        if connections:
            logger.warning(
                "%d connection(s) still open after the drain timeout",
                len(connections),
                extra={"node": self.node},
            )

    def _require_running(self) -> None:
        if self._state not in ("running", "draining"):
            raise RuntimeError(
                "the hub is not running: use `async with hub:`, pass "
                "`lifespan=hub.lifespan` to the parent app, or serve HubApp(hub) top-level"
            )

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
        publication = server_publication(channel, namespace, data, json)
        published = await self._commands.publish(publication, namespace, idempotency_key)
        if published.offset is None or published.epoch is None:
            return None
        return Position(offset=published.offset, epoch=published.epoch)

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
        return await self._calls.history(channel, since=since, limit=limit, reverse=reverse)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """The clients present in ``channel`` on every node (client id → who)."""
        self._require_running()
        validate_channel(channel)
        if not self.namespaces.resolve(channel).presence:
            raise PermissionDenied("presence is not enabled for this namespace")
        return dict(await self._calls.presence(channel))

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
        return await self._nodes.disconnect(user, reason, code)

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
        if any(at_channel_limit(c, channel) for c in self._registry.users.get(user, ())):
            raise RateLimited(
                f"at most {self.limits.max_channels} channels per connection: a connection "
                f"of {user!r} on this node is full"
            )
        await self._nodes.subscribe(user, channel, namespace)

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
        await self._nodes.unsubscribe(user, channel)

    def channels(self) -> dict[str, int]:
        """Channels with local subscribers on this node, and how many each has."""
        return {
            name: len(entry.subscribers)
            for name, entry in self._registry.channels.items()
            if entry.subscribers
        }

    @property
    def connection_count(self) -> int:
        """Open connections on this node (WebSockets and SSE streams)."""
        return len(self._registry.connections)

    @property
    def sse_count(self) -> int:
        """Open Server-Sent Events streams on this node (counted in ``connection_count`` too)."""
        return sum(1 for c in self._registry.connections if c.transport == "sse")

    def queued_messages(self) -> int:
        """Messages waiting in this node's send queues (a slow-consumer signal)."""
        return sum(connection.queued for connection in self._registry.connections)

    # -- command dispatch (a connection reaches it through ``session_host.execute``) ---------

    async def _execute(self, connection: Connection, event: Execute) -> None:
        """Run one validated client command; a refusal is answered ``error`` with its id."""
        command = event.command
        namespace = event.namespace
        commands = self._commands
        try:
            match command:
                case Publish():
                    assert namespace is not None
                    await commands.client_publish(connection, command, namespace)
                case Subscribe():
                    assert namespace is not None
                    if event.channel_token:
                        await commands.check_channel_token(connection, command)
                    await self._joins.subscribe(
                        connection,
                        command.channel,
                        namespace,
                        recover=command.recover,
                        history=command.history,
                        id=command.id,
                    )
                case Unsubscribe():
                    self._registry.detach(connection, command.channel)
                    connection.send_message(Unsubscribed(channel=command.channel, id=command.id))
                case GetHistory():
                    assert namespace is not None
                    await commands.history(connection, command, namespace)
                case GetPresence():
                    await commands.presence(connection, command)
                case Refresh():
                    await commands.refresh(connection, command)
        except HubbubError as exc:
            connection.send_message(Error(code=exc.code, reason=exc.reason, id=command.id))

    def _execute_now(self, connection: Connection, event: Execute) -> bool:
        """:meth:`_execute` for the commands that can run without awaiting (``False``: not run).

        A connection's direct receiver calls it from the server's
        ``data_received``: a ``publish`` to the embedded broker, the most
        frequent command, then costs no task switch and no coroutine.
        """
        command = event.command
        try:
            if type(command) is Publish:
                namespace = event.namespace
                assert namespace is not None
                return self._commands.client_publish_now(connection, command, namespace)
            if type(command) is Unsubscribe:
                self._registry.detach(connection, command.channel)
                connection.send_message(Unsubscribed(channel=command.channel, id=command.id))
                return True
        except HubbubError as exc:
            connection.send_message(Error(code=exc.code, reason=exc.reason, id=command.id))
            return True
        return False

    # -- background tasks --------------------------------------------------------------------

    def _spawn(self, task: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start ``task`` in the hub's task group; ``False`` (nothing started) when stopped.

        anyio starts tasks from a task only. A connection's direct receiver
        runs in the server's ``data_received`` callback (a fan-out that closes
        a slow consumer, which leaves its channels, say): there ``task`` is
        queued for :meth:`_start_deferred`, a task of the hub's own group, which
        starts it at the loop's next turn.
        """
        tg = self._tg
        if tg is None:
            return False
        if outside_task():
            self._deferred.append(task)
            self._deferred_wake.set()
            return True
        tg.start_soon(task)
        return True

    async def _start_deferred(self) -> None:
        """Start, from within the hub's task group, what :meth:`_spawn` queued outside a task."""
        deferred = self._deferred
        while True:
            while deferred and self._tg is not None:
                self._tg.start_soon(deferred.popleft())
            await self._deferred_wake.wait()


def running_hubs() -> list[Hub]:
    """Every hub currently running in this process (used by ``hubbub serve`` to drain)."""
    return list(_RUNNING_HUBS)
