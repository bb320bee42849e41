"""``HubTester``: a hub running in-process for a test, with scripted clients and faults."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import anyio
from anyio.abc import TaskGroup

from ..app import HubApp
from ..auth import Authenticator, Identity
from ..hub import Hub
from ._asgi import TIMEOUT, Event, websocket_scope
from ._client import CodecName, ScriptedClient
from ._faults import FaultyBroker

__all__ = ["HubTester"]

_IDENTITY = "hubbub.testing.identity"
"""Scope key through which :meth:`HubTester.connect` hands the hub a ready identity."""


class _TesterAuthenticator:
    """Takes the identity the tester put in the scope; otherwise asks the hub's own."""

    def __init__(self, inner: Authenticator | None) -> None:
        self.inner = inner

    async def __call__(self, scope: Mapping[str, Any]) -> Identity | None:
        identity = scope.get(_IDENTITY)
        if isinstance(identity, Identity):
            return identity
        if self.inner is None:
            return None
        return await self.inner(scope)

    def __getattr__(self, name: str) -> Any:
        # ``verify`` and ``verify_channel_token`` of the real authenticator (refresh,
        # channel tokens) stay reachable.
        return getattr(self.inner, name)


class HubTester:
    """Runs a hub in-process for one test: ``async with HubTester(...) as tester:``.

    Clients connect through the real :class:`hubbub.HubApp` over in-memory ASGI
    streams, so every byte takes the production path (handshake, auth, protocol,
    queues, fan-out) without a server, a socket or a port; it runs on asyncio
    and trio alike. The broker is wrapped in a :class:`FaultyBroker` for fault
    injection.

    Args:
        hub: a hub of the application under test, not running yet. Without it,
            one is built from ``options`` (``Hub(**options)``) with
            ``anonymous=True`` unless said otherwise.
        timeout: seconds any step waits for what it expects before failing.
        app: the ASGI app serving ``hub`` (``HubApp(hub)`` by default), e.g.
            one with ``api_keys`` or behind :class:`hubbub.AuthMiddleware`;
            its WebSocket endpoint is ``path`` of :meth:`connect`.
        **options: keyword arguments of :class:`hubbub.Hub` when ``hub`` is not given.

    While the tester runs, the hub's broker is wrapped and its authenticator
    lets :meth:`connect` hand over identities directly; both are put back
    when it stops.
    """

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        timeout: float = TIMEOUT,
        app: Any = None,
        **options: Any,
    ) -> None:
        if hub is not None and options:
            raise TypeError("pass either a hub or Hub options, not both")
        if hub is None:
            options.setdefault("anonymous", True)
            hub = Hub(**options)
        if isinstance(app, HubApp) and app.hub is not hub:
            raise ValueError("app must serve the tester's hub")
        self.hub = hub
        self.app: Any = app if app is not None else HubApp(hub)
        """The ASGI app the clients connect to."""
        self.timeout = timeout
        self.broker = FaultyBroker(hub.broker)
        """The hub's broker, wrapped: :meth:`FaultyBroker.fail`, ``deafen``, ``reset_epoch``..."""
        self.clients: list[ScriptedClient] = []
        self._tg: TaskGroup | None = None
        self._original: tuple[Any, Any] | None = None
        self._ports = iter(range(50000, 65536))

    async def __aenter__(self) -> HubTester:
        hub = self.hub
        self._original = (hub.broker, hub.authenticator)
        hub.broker = self.broker
        hub.authenticator = _TesterAuthenticator(hub.authenticator)
        try:
            await hub.__aenter__()
        except BaseException:
            self._restore()
            raise
        try:
            self._tg = await anyio.create_task_group().__aenter__()
        except BaseException:  # pragma: no cover - creating a task group does not fail
            await hub.__aexit__(None, None, None)
            self._restore()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        assert tg is not None
        try:
            for client in self.clients:
                client.drop()
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        finally:
            try:
                await self.hub.__aexit__(exc_type, exc, tb)
            finally:
                self._restore()

    def _restore(self) -> None:
        if self._original is not None:
            self.hub.broker, self.hub.authenticator = self._original
            self._original = None

    async def connect(
        self,
        user: str | None = None,
        *,
        name: str | None = None,
        info: Mapping[str, Any] | None = None,
        channels: Iterable[str] = (),
        identity: Identity | None = None,
        token: str | None = None,
        codec: CodecName = "json",
        batch: bool = False,
        headers: Iterable[tuple[str, str]] = (),
        query: Mapping[str, str] | None = None,
        subprotocols: Iterable[str] | None = None,
        path: str = "/ws",
        ip: str = "127.0.0.1",
        auto_pong: bool = True,
    ) -> ScriptedClient:
        """Connect a client and return it once its ``welcome`` arrived (in ``client.welcome``).

        Args:
            user: connect as this user, bypassing authentication (with ``name``,
                ``info``, ``channels`` as in :class:`hubbub.Identity`).
            identity: connect with exactly this identity, bypassing authentication.
            token: send ``Authorization: Bearer <token>``: the hub's
                authenticator verifies it, as in production.
            codec: ``"json"`` or ``"msgpack"`` (the ``hubbub.v1.*`` subprotocol).
            batch: ask for batched frames (``?batch=1``, JSON only).
            headers: the handshake's headers, as sent.
            query: the handshake's query parameters, as sent.
            subprotocols: the subprotocols offered, as sent; they replace the one
                ``codec`` picks.
            path: the WebSocket path, as sent.
            ip: the client's address, as the hub sees it.
            auto_pong: answer ``ping`` and hide it (``False``: receive pings).

        Without ``user``, ``identity`` or ``token``, the hub's authenticator
        sees the bare handshake (anonymous where the hub admits it).

        Raises:
            HandshakeRefused: the hub refused the connection (its HTTP status and body).
        """
        if self._tg is None:
            raise RuntimeError("use `async with HubTester(...) as tester:` before connecting")
        if user is not None:
            if identity is not None:
                raise TypeError("pass either user or identity, not both")
            identity = Identity(user=user, name=name, info=info, channels=tuple(channels))
        raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers]
        if token is not None:
            raw_headers.append((b"authorization", f"Bearer {token}".encode()))
        params = dict(query or {})
        if batch:
            params["batch"] = "1"
        offered = list(subprotocols) if subprotocols is not None else [f"hubbub.v1.{codec}"]
        scope = websocket_scope(
            path=path,
            query=urlencode(params).encode(),
            headers=raw_headers,
            subprotocols=offered,
            client=(ip, next(self._ports)),
        )
        if identity is not None:
            scope[_IDENTITY] = identity
        to_app, app_receive = anyio.create_memory_object_stream[Event](16)
        app_send, from_app = anyio.create_memory_object_stream[Event](0)
        client = ScriptedClient(
            codec=codec,
            timeout=self.timeout,
            auto_pong=auto_pong,
            to_app=to_app,
            from_app=from_app,
        )
        self.clients.append(client)
        await client._open(self._tg, self.app, scope, (app_receive, app_send))
        return client

    async def settle(self) -> None:
        """Wait until every task is blocked: what the hub was doing has reached the clients."""
        with anyio.fail_after(self.timeout):
            await anyio.wait_all_tasks_blocked()

    def reset_epoch(self, channel: str) -> None:
        """Lose ``channel``'s stream: its next publication starts a new epoch (see FaultyBroker)."""
        self.broker.reset_epoch(channel)
