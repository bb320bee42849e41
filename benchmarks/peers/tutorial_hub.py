"""The Starlette hub written the way the Starlette/FastAPI tutorials show it.

It is the peer hubbub must not be slower than (see the project's QUALITY.md): one
room kept as a set of sockets, and every received text sent on to each member
with ``for ws in room: await ws.send_text(msg)``, the sender included. No
protocol, no queue, no slow-consumer policy: the cheapest thing a tutorial
reader would deploy. It is served by the same uvicorn as hubbub::

    python -m uvicorn tutorial_hub:app --app-dir benchmarks/peers --ws websockets-sansio

Kept deliberately naive (no copy of the set while iterating, no error handling
around a send): changing it would measure something other than the tutorial.

``/ws/{room}`` is the same with many rooms (the rooms scenario): a dict from
room name to its set of sockets, the pattern every multi-room chat tutorial
adds; ``/ws`` stays the single room of the fan-out scenarios, unchanged.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

room: set[WebSocket] = set()


async def hub(websocket: WebSocket) -> None:
    """Join the room, then relay every text frame to every member of the room."""
    await websocket.accept()
    room.add(websocket)
    try:
        while True:
            msg = await websocket.receive_text()
            for ws in room:
                await ws.send_text(msg)
    except WebSocketDisconnect:
        pass
    finally:
        room.discard(websocket)


rooms: dict[str, set[WebSocket]] = {}


async def room_hub(websocket: WebSocket) -> None:
    """The same for the room named in the path."""
    await websocket.accept()
    name = websocket.path_params["room"]
    members = rooms.setdefault(name, set())
    members.add(websocket)
    try:
        while True:
            msg = await websocket.receive_text()
            for ws in members:
                await ws.send_text(msg)
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(websocket)
        if not members:
            rooms.pop(name, None)


app = Starlette(routes=[WebSocketRoute("/ws", hub), WebSocketRoute("/ws/{room}", room_hub)])
