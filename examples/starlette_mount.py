"""hubbub inside a Starlette app, next to ordinary HTTP endpoints.

Run it with::

    uvicorn examples.starlette_mount:app

- ``ws://127.0.0.1:8000/realtime/ws``: the hub mounted under a prefix with
  ``Mount("/realtime", ...)`` (``/realtime/health`` answers too);
- ``ws://127.0.0.1:8000/ws``: the same hub at an exact path with
  ``WebSocketRoute("/ws", ...)``; Starlette's ``Mount("/ws")`` would not match a
  WebSocket to exactly ``/ws``;
- ``POST /announce`` with ``{"channel": "news", "data": ...}``: a normal HTTP
  endpoint that publishes from the server with ``await hub.publish(...)``.

Mounted apps never receive lifespan events in Starlette, so the hub is started
by the parent app: ``Starlette(lifespan=hub.lifespan)``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute

from hubbub import Hub, HubApp, HubbubError

hub = Hub(anonymous=True)
hub_app = HubApp(hub)


async def announce(request: Request) -> JSONResponse:
    """Publish the request's ``data`` into its ``channel`` to every subscriber."""
    try:
        body = await request.json()
        channel, data = body["channel"], body["data"]
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"code": 400, "reason": "expected {channel, data}"}, status_code=400)
    try:
        position = await hub.publish(channel, data)
    except HubbubError as exc:
        return JSONResponse({"code": exc.code, "reason": exc.reason}, status_code=exc.http_status)
    result = {} if position is None else {"offset": position.offset, "epoch": position.epoch}
    return JSONResponse(result)


app = Starlette(
    lifespan=hub.lifespan,
    routes=[
        Route("/announce", announce, methods=["POST"]),
        WebSocketRoute("/ws", hub_app),
        Mount("/realtime", app=hub_app),
    ],
)
