"""hubbub inside a FastAPI app.

Run it with::

    uvicorn examples.fastapi_app:app

Clients connect to ``ws://127.0.0.1:8000/hub/ws``; ``POST /announce`` with
``{"channel": "news", "data": ...}`` publishes from the server. FastAPI mounts
are Starlette mounts: they never receive lifespan events, so the hub is started
by the parent app with ``FastAPI(lifespan=hub.lifespan)``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from hubbub import Hub, HubApp, HubbubError

hub = Hub(anonymous=True)
app = FastAPI(lifespan=hub.lifespan)


class Announcement(BaseModel):
    """A publication made by the server."""

    channel: str
    data: Any


@app.post("/announce")
async def announce(announcement: Announcement) -> dict[str, Any]:
    """Publish ``data`` into ``channel`` to every subscriber."""
    try:
        position = await hub.publish(announcement.channel, announcement.data)
    except HubbubError as exc:
        raise HTTPException(status_code=exc.http_status, detail=exc.reason) from None
    return {} if position is None else {"offset": position.offset, "epoch": position.epoch}


app.mount("/hub", HubApp(hub))
