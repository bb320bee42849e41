"""hubbub from plain Python: ``async with hub:`` around your own server code.

Run it with::

    python examples/python_api.py [--host 127.0.0.1] [--port 8000] [--interval 1]

A background producer publishes a tick into the ``ticks`` channel every
``--interval`` seconds while uvicorn serves the hub at ``ws://HOST:PORT/ws``;
subscribe to ``ticks`` to watch them arrive. The hub is started by
``async with hub:`` (it could equally be a worker or a test), so ``HubApp``
sees a running hub at startup and leaves its lifecycle alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import anyio
import uvicorn

from hubbub import Hub, HubApp

hub = Hub(anonymous=True)
app = HubApp(hub)


async def produce_ticks(
    hub: Hub, channel: str = "ticks", *, interval: float = 1.0, count: int | None = None
) -> int:
    """Publish ``{"tick": n}`` into ``channel`` every ``interval`` seconds; returns how many.

    Stops after ``count`` ticks, or runs until cancelled when ``count`` is None.
    """
    n = 0
    while count is None or n < count:
        n += 1
        await hub.publish(channel, {"tick": n})
        if count is None or n < count:
            await anyio.sleep(interval)
    return n


async def serve(host: str, port: int, interval: float) -> None:
    """Run the hub, the producer and uvicorn together until uvicorn stops (Ctrl+C)."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info"))
    async with hub, anyio.create_task_group() as tg:
        tg.start_soon(lambda: produce_ticks(hub, interval=interval))
        await server.serve()
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between ticks")
    args = parser.parse_args(argv)
    anyio.run(serve, args.host, args.port, args.interval)


if __name__ == "__main__":
    main()
