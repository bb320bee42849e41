"""hubbub inside a Litestar app.

Run it with::

    uvicorn examples.litestar_app:app

Clients connect to ``ws://127.0.0.1:8000/hub/ws``; ``POST /announce`` with
``{"channel": "news", "data": ...}`` publishes from the server. The hub is an
ASGI app mounted with ``@asgi(..., is_mount=True)``; mounted apps get no
lifespan events, so Litestar starts the hub with ``lifespan=[hub.lifespan]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Litestar, post
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.params import JSONBody
from litestar.types import Receive, Scope, Send

from hubbub import Hub, HubApp, HubbubError

hub = Hub(anonymous=True)
hub_app = HubApp(hub)


@asgi("/hub", is_mount=True, copy_scope=True)
async def realtime(scope: Scope, receive: Receive, send: Send) -> None:
    """Everything under ``/hub``: the WebSocket endpoint ``/hub/ws``, ``/hub/health``."""
    await hub_app(scope, receive, send)  # type: ignore[arg-type]


@dataclass
class Announcement:
    """A publication made by the server."""

    channel: str
    data: Any


@post("/announce", status_code=200)
async def announce(data: JSONBody[Announcement]) -> dict[str, Any]:
    """Publish the announcement's ``data`` into its ``channel`` to every subscriber."""
    try:
        position = await hub.publish(data.channel, data.data)
    except HubbubError as exc:
        raise HTTPException(status_code=exc.http_status, detail=exc.reason) from None
    return {} if position is None else {"offset": position.offset, "epoch": position.epoch}


app = Litestar(route_handlers=[realtime, announce], lifespan=[hub.lifespan])
