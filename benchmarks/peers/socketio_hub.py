"""python-socketio's ASGI app with rooms, written the way its documentation shows it.

``socketio.AsyncServer(async_mode="asgi")`` wrapped in ``socketio.ASGIApp`` and
served by uvicorn (the documented ASGI deployment). A client joins the bench
room with a ``join`` event, whose handler calls ``sio.enter_room(sid, room)``
and returns an acknowledgement; a ``msg`` event is re-emitted to the room with
``await sio.emit("msg", data, room=room)``; in the rooms scenario a ``say``
event names its room (``42["say","r7",{...}]``). The sender is in the room, so it
gets its own message back like every other member (N + 1 deliveries).

Defaults are kept (JSON via the standard library, Engine.IO pings every 25 s,
``async_handlers=True``): changing them would measure something other than
what a python-socketio user deploys. Served by::

    python -m uvicorn socketio_hub:app --app-dir benchmarks/peers --ws websockets-sansio
"""

from __future__ import annotations

from typing import Any

import socketio

sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio)


@sio.event
async def join(sid: str, room: str) -> str:
    """Enter ``room``; the return value is the acknowledgement the client waits for."""
    await sio.enter_room(sid, room)
    return "ok"


@sio.event
async def msg(sid: str, data: Any) -> None:
    """Relay to everyone in the bench room, the sender included."""
    await sio.emit("msg", data, room="bench")


@sio.event
async def say(sid: str, room: str, data: Any) -> None:
    """The rooms scenario: relay to everyone in ``room`` (the sender included)."""
    await sio.emit("msg", data, room=room)
