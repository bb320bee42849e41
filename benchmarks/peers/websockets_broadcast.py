"""A bare ``websockets`` server using ``websockets.broadcast()``: the practical limit for Python.

Written as the websockets documentation's broadcast pattern shows it: a set
of connections; each handler adds its connection, and every received message
is pushed to all of them with ``broadcast(CONNECTIONS, message)`` (the sender
included), which writes each frame synchronously, encoding it once, without
waiting for any client. No ASGI, no framework, no queue, no slow-consumer
policy (a client that stops reading only grows its write buffer until the
keepalive ping times out).

The event loop is uvloop, like the uvicorn-served servers (``--loop asyncio``
for the stock loop); compression stays at the library default (clients that
do not offer it get none). Run as::

    python benchmarks/peers/websockets_broadcast.py --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve

ROOMS: dict[str, set[ServerConnection]] = {}
"""One set of connections per request path: ``/ws`` for the fan-out scenarios, ``/ws/<room>``
for the rooms scenario (the documentation's pattern, once per room)."""


async def handler(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request is not None else "/ws"
    connections = ROOMS.setdefault(path, set())
    connections.add(websocket)
    try:
        async for message in websocket:
            broadcast(connections, message)
    finally:
        connections.remove(websocket)
        if not connections:
            ROOMS.pop(path, None)


async def main(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, host, port):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args.host, args.port))
    else:
        asyncio.run(main(args.host, args.port))
