"""Raw in-memory ASGI WebSocket plumbing: a scope, two memory streams, the app in a task.

Anyio memory object streams stand in for ASGI ``receive``/``send``, so code
using them runs on asyncio and trio without a server or a socket. The app's
side has no buffer: a client that stops reading blocks the app's send, exactly
as a frozen TCP peer eventually does. :class:`MemoryWebSocket` hands out the raw
ASGI events (hubbub's own tests look at them); :class:`hubbub.testing.ScriptedClient`
builds the user-facing client on the same plumbing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..app import HubApp
from ..hub import Hub

__all__ = ["TIMEOUT", "Clients", "Event", "MemoryWebSocket", "serving", "websocket_scope"]

TIMEOUT = 5.0
"""Seconds a test helper waits for something it expects before failing."""

Event = MutableMapping[str, Any]
"""One ASGI event."""

_GONE = (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError)


def websocket_scope(
    *,
    path: str = "/ws",
    query: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    subprotocols: Iterable[str] = (),
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> dict[str, Any]:
    """The ASGI scope of a WebSocket handshake as uvicorn builds it (denial extension included)."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"testserver"), *headers],
        "subprotocols": list(subprotocols),
        "client": client,
        "server": ("127.0.0.1", 8000),
        "extensions": {"websocket.http.response": {}},
    }


def _expect(condition: bool, what: object) -> None:
    if not condition:
        raise AssertionError(what)


class MemoryWebSocket:
    """One in-memory WebSocket client of an ASGI app (the test's side of the streams)."""

    def __init__(
        self, to_app: MemoryObjectSendStream[Event], from_app: MemoryObjectReceiveStream[Event]
    ) -> None:
        self.to_app = to_app
        self.from_app = from_app

    async def receive(self) -> Event:
        """The next ASGI event the app sent, within the test deadline."""
        with anyio.fail_after(TIMEOUT):
            return await self.from_app.receive()

    async def receive_json(self) -> dict[str, Any]:
        """The next ``websocket.send`` text frame, decoded."""
        event = await self.receive()
        _expect(event["type"] == "websocket.send", event)
        message: dict[str, Any] = json.loads(event["text"])
        return message

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send one text frame to the app."""
        await self.to_app.send({"type": "websocket.receive", "text": json.dumps(message)})

    async def command(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send a command and return the next frame (its reply, in these quiet tests)."""
        await self.send_json(message)
        return await self.receive_json()

    async def subscribe(self, channel: str, id: int = 1) -> None:
        """Subscribe to ``channel`` and check the reply."""
        reply = await self.command({"type": "subscribe", "channel": channel, "id": id})
        _expect(reply["type"] == "subscribed" and reply["channel"] == channel, reply)

    async def receive_close(self) -> tuple[dict[str, Any], int]:
        """The ``disconnect`` message and the close code that follows it."""
        goodbye = await self.receive_json()
        _expect(goodbye["type"] == "disconnect", goodbye)
        close = await self.receive()
        _expect(close["type"] == "websocket.close", close)
        return goodbye, int(close["code"])

    async def read_until_closed(self) -> list[Event]:
        """Every event until the app returns (the app-side stream ends)."""
        with anyio.fail_after(TIMEOUT):
            return [event async for event in self.from_app]

    def leave(self, code: int = 1000) -> None:
        """The client goes away: the app gets ``websocket.disconnect`` and sends fail."""
        try:
            self.to_app.send_nowait({"type": "websocket.disconnect", "code": code})
        except _GONE:
            pass
        self.to_app.close()
        self.from_app.close()


async def run_app(
    app: Any,
    scope: dict[str, Any],
    app_receive: MemoryObjectReceiveStream[Event],
    app_send: MemoryObjectSendStream[Event],
) -> None:
    """Run one ASGI WebSocket call on the app's ends of the streams, closing them after."""
    async with app_send, app_receive:
        await app(scope, app_receive.receive, app_send.send)


class Clients:
    """Opens in-memory WebSocket clients of one ``HubApp`` inside a task group."""

    def __init__(self, tg: TaskGroup, app: HubApp) -> None:
        self.tg = tg
        self.app = app
        self.opened: list[MemoryWebSocket] = []
        self.welcomes: list[dict[str, Any]] = []
        self.app_sides: list[
            tuple[MemoryObjectSendStream[Event], MemoryObjectReceiveStream[Event]]
        ] = []

    async def open(self, *, query: bytes = b"") -> MemoryWebSocket:
        """Connect a client and return it after reading nothing (``accept`` is next)."""
        to_app, app_receive = anyio.create_memory_object_stream[Event](16)
        app_send, from_app = anyio.create_memory_object_stream[Event](0)
        scope = websocket_scope(query=query, client=("127.0.0.1", 50000 + len(self.opened)))
        self.tg.start_soon(run_app, self.app, scope, app_receive, app_send)
        await to_app.send({"type": "websocket.connect"})
        ws = MemoryWebSocket(to_app, from_app)
        self.opened.append(ws)
        self.app_sides.append((app_send, app_receive))
        return ws

    async def connect(self, *, query: bytes = b"") -> tuple[MemoryWebSocket, dict[str, Any]]:
        """Connect a client, check the ``accept`` and return it with its ``welcome``."""
        ws = await self.open(query=query)
        accept = await ws.receive()
        _expect(accept["type"] == "websocket.accept", accept)
        welcome = await ws.receive_json()
        _expect(welcome["type"] == "welcome", welcome)
        self.welcomes.append(welcome)
        return ws, welcome

    def close_all(self) -> None:
        """Close every stream, including those of apps that never ran (a failed test)."""
        for ws in self.opened:
            ws.leave()
        for app_send, app_receive in self.app_sides:
            app_send.close()
            app_receive.close()


@asynccontextmanager
async def serving(hub: Hub) -> AsyncIterator[Clients]:
    """Run ``hub`` and yield a client factory; every client leaves before the hub stops."""
    clients: Clients | None = None
    try:
        async with hub, anyio.create_task_group() as tg:
            clients = Clients(tg, HubApp(hub))
            try:
                yield clients
            finally:
                for ws in clients.opened:
                    ws.leave()
    finally:
        if clients is not None:
            clients.close_all()
