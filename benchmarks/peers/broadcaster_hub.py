"""encode/broadcaster with its memory backend under Starlette: its README's chat pattern.

One ``Broadcast("memory://")``; a ``WebSocketRoute`` whose handler accepts,
then runs the receiver (``async for message in websocket.iter_text():
await broadcast.publish(channel=..., message=message)``) in an anyio task
group beside the sender (``async with broadcast.subscribe(channel=...) as
subscriber: async for event in subscriber: await websocket.send_text(...)``),
exactly as the README's ``chatroom_ws`` does. ``/ws`` is the bench channel;
``/ws/{room}`` (the rooms scenario) uses the room name as the channel. Each subscriber has its own
unbounded ``asyncio.Queue`` filled by broadcaster's listener task.

The only departure from the README: it connects and disconnects the broadcast
with ``on_startup``/``on_shutdown``, which Starlette 1.x no longer has, so a
lifespan context manager does the same. Served by::

    python -m uvicorn broadcaster_hub:app --app-dir benchmarks/peers --ws websockets-sansio
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

CHANNEL = "bench"
broadcast = Broadcast("memory://")


async def chatroom_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    channel = websocket.path_params.get("room", CHANNEL)

    async with anyio.create_task_group() as task_group:
        # run until first is complete
        async def run_chatroom_ws_receiver() -> None:
            await chatroom_ws_receiver(websocket=websocket, channel=channel)
            task_group.cancel_scope.cancel()

        task_group.start_soon(run_chatroom_ws_receiver)
        await chatroom_ws_sender(websocket, channel)


async def chatroom_ws_receiver(websocket: WebSocket, channel: str) -> None:
    async for message in websocket.iter_text():
        await broadcast.publish(channel=channel, message=message)


async def chatroom_ws_sender(websocket: WebSocket, channel: str) -> None:
    async with broadcast.subscribe(channel=channel) as subscriber:
        async for event in subscriber:
            await websocket.send_text(event.message)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(
    routes=[WebSocketRoute("/ws", chatroom_ws), WebSocketRoute("/ws/{room}", chatroom_ws)],
    lifespan=lifespan,
)
