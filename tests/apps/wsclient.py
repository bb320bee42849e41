"""A small hubbub client for end-to-end tests, on the ``websockets`` asyncio client.

It speaks both codecs, splits batched frames, answers the hub's app-level
``ping`` with ``pong`` (unless told not to), and waits only on conditions with
bounded deadlines. The library's own keepalive is off: hubbub's liveness is the
app-level ``ping``/``pong``, which the library knows nothing about.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

JSON = "hubbub.v1.json"
MSGPACK = "hubbub.v1.msgpack"

# What every reply to a command looks like (the messages that carry the command's ``id``).
REPLIES = frozenset(
    {"subscribed", "unsubscribed", "ack", "history", "presence", "error"},
)


@dataclass
class Ending:
    """How a connection ended: what came before the close, and the close itself."""

    messages: list[dict[str, Any]]
    code: int | None
    reason: str

    @property
    def disconnect(self) -> dict[str, Any] | None:
        """The ``disconnect`` message, if one came."""
        found = [m for m in self.messages if m["type"] == "disconnect"]
        return found[-1] if found else None


class Client:
    """One hubbub client over a real WebSocket."""

    def __init__(self, ws: ClientConnection, *, answer_pings: bool) -> None:
        self.ws = ws
        self.binary = ws.subprotocol == MSGPACK
        self.answer_pings = answer_pings
        self.pending: deque[dict[str, Any]] = deque()
        self.frames = 0
        self.multi_frames = 0
        self.frame_kinds: set[type] = set()
        self.pings = 0
        self.welcome: dict[str, Any] = {}
        self._ids = count(1)

    # -- sending ---------------------------------------------------------------------------

    def encode(self, message: dict[str, Any]) -> str | bytes:
        """One message as a frame of this client's codec."""
        if self.binary:
            return msgspec.msgpack.encode(message)
        return json.dumps(message)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        await self.ws.send(self.encode(message))

    async def send_raw(self, frame: str | bytes) -> None:
        """Send one frame as it is."""
        await self.ws.send(frame)

    def next_id(self) -> int:
        """A fresh command id."""
        return next(self._ids)

    # -- receiving -------------------------------------------------------------------------

    def _parse(self, frame: str | bytes) -> None:
        self.frames += 1
        self.frame_kinds.add(type(frame))
        if isinstance(frame, bytes):
            self.pending.append(msgspec.msgpack.decode(frame))
            return
        parts = frame.split("\n")
        if len(parts) > 1:
            self.multi_frames += 1
        self.pending.extend(json.loads(part) for part in parts)

    async def recv(self, within: float = 5.0, *, pings: bool = False) -> dict[str, Any]:
        """The next message within ``within`` seconds.

        Pings are answered (when ``answer_pings``) and skipped unless ``pings``.
        Raises ``TimeoutError`` or ``ConnectionClosed``.
        """
        async with asyncio.timeout(within):
            while True:
                if not self.pending:
                    self._parse(await self.ws.recv())
                message = self.pending.popleft()
                if message.get("type") == "ping":
                    self.pings += 1
                    if self.answer_pings:
                        await self.send({"type": "pong"})
                    if not pings:
                        continue
                return message

    async def request(self, command: dict[str, Any], within: float = 5.0) -> dict[str, Any]:
        """Send ``command`` with a fresh ``id`` and return its reply.

        Messages that arrive before the reply stay queued for :meth:`recv`, in order.
        """
        command = {**command, "id": command.get("id") or self.next_id()}
        await self.send(command)
        held: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(within):
                while True:
                    message = await self.recv(within)
                    if message["type"] in REPLIES and message.get("id") == command["id"]:
                        return message
                    held.append(message)
        finally:
            self.pending.extendleft(reversed(held))

    async def subscribe(self, channel: str, **options: Any) -> dict[str, Any]:
        """Subscribe and check the reply is ``subscribed``."""
        reply = await self.request({"type": "subscribe", "channel": channel, **options})
        assert reply["type"] == "subscribed", reply
        assert reply["channel"] == channel
        return reply

    async def publish(self, channel: str, data: Any, **options: Any) -> dict[str, Any]:
        """Publish and check the reply is ``ack``."""
        reply = await self.request({"type": "publish", "channel": channel, "data": data, **options})
        assert reply["type"] == "ack", reply
        return reply

    async def publish_pipelined(
        self, channel: str, items: Sequence[Any], within: float = 20.0
    ) -> list[dict[str, Any]]:
        """Send one ``publish`` per item without waiting, then read every ``ack``, in order.

        Messages that arrive meanwhile stay queued for :meth:`recv`.
        """
        ids = []
        for data in items:
            ids.append(self.next_id())
            await self.send({"type": "publish", "channel": channel, "data": data, "id": ids[-1]})
        acks: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(within):
                while len(acks) < len(ids):
                    message = await self.recv(within)
                    if message["type"] in REPLIES and message.get("id") in ids:
                        acks.append(message)
                    else:
                        held.append(message)
        finally:
            self.pending.extendleft(reversed(held))
        assert [a["type"] for a in acks] == ["ack"] * len(ids), acks
        assert [a["id"] for a in acks] == ids
        return acks

    async def messages(
        self,
        n: int,
        within: float = 10.0,
        *,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """The next ``n`` ``message``s (that ``accept`` takes), all within ``within`` seconds.

        Other message types are skipped.
        """
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            while len(found) < n:
                message = await self.recv(within)
                if message["type"] == "message" and (accept is None or accept(message)):
                    found.append(message)
        return found

    async def until_closed(self, within: float = 5.0, *, max_messages: int = 100_000) -> Ending:
        """Read until the server closes the connection; the messages seen and the close."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            for _ in range(max_messages):
                try:
                    seen.append(await self.recv(within, pings=True))
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                    reason = exc.rcvd.reason if exc.rcvd is not None else ""
                    return Ending(seen, code, reason)
        raise AssertionError(f"still open after {max_messages} messages")


@asynccontextmanager
async def open_client(
    base: str,
    *,
    path: str = "/ws",
    subprotocols: Sequence[str] | None = None,
    answer_pings: bool = True,
    welcome: bool = True,
    max_size: int = 4 * 1024 * 1024,
    compression: str | None = None,
) -> AsyncIterator[Client]:
    """Connect a client to ``base + path``; read and check its ``welcome`` first."""
    async with connect(
        base + path,
        subprotocols=[Subprotocol(p) for p in subprotocols] if subprotocols is not None else None,
        ping_interval=None,
        compression=compression,
        proxy=None,
        open_timeout=10,
        close_timeout=2,
        max_size=max_size,
    ) as ws:
        client = Client(ws, answer_pings=answer_pings)
        if welcome:
            first = await client.recv(10.0)
            assert first["type"] == "welcome", first
            client.welcome = first
        yield client


async def open_clients(base: str, n: int, **options: Any) -> tuple[list[Client], AsyncExitStack]:
    """Open ``n`` clients concurrently; returns them and the exit stack that closes them."""
    stack = AsyncExitStack()
    semaphore = asyncio.Semaphore(50)

    async def one() -> Client:
        async with semaphore:
            return await stack.enter_async_context(open_client(base, **options))

    try:
        clients = await asyncio.gather(*(one() for _ in range(n)))
    except BaseException:
        await stack.aclose()
        raise
    return list(clients), stack
