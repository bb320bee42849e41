"""A hub for the history/recovery/presence/chat end-to-end tests (``tests/test_e2e_streams.py``).

Served by ``python -m hubbub serve streams_app:app``. Test-only: the user id is
taken from ``?user=`` (and the display name from ``?name=``) without any
check. Namespaces:

- ``hist:*``: history of 5, for recovery past the kept history;
- ``feed:*``: history of 100, for recovery under concurrent publishing;
- ``chat:*``: a chat namespace (text of at most 20 characters, history of 5
  replayed on join, presence with join/leave per connection);
- ``room:*``: presence with join/leave announced per user;
- the default namespace: no history.

``app`` is the hub's ``HubApp`` plus ``POST /notify {user, title, message}``,
which calls ``hub.notify`` so tests can reach a user who is offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from hubbub import Hub, HubApp, Identity, Limits, Namespace, Notification


async def authenticate(scope: Mapping[str, Any]) -> Identity | None:
    """``?user=`` is the user id, ``?name=`` the display name; neither means anonymous."""
    query = parse_qs(scope.get("query_string", b"").decode())
    user = query.get("user", [""])[-1]
    if not user:
        return None
    return Identity(user=user, name=query.get("name", [""])[-1] or None)


hub = Hub(
    anonymous=True,
    authenticator=authenticate,
    limits=Limits(command_rate=10_000.0, command_burst=10_000),
    namespaces=[
        Namespace(),
        Namespace(name="hist", history_size=5),
        Namespace(name="feed", history_size=100),
        Namespace.chat("chat", max_length=20, history_size=5),
        Namespace(name="room", presence=True, join_leave=True, join_leave_per_user=True),
    ],
)

_hub_app = HubApp(hub)


class _NotifyRequest(msgspec.Struct):
    user: str
    title: str = ""
    message: str = ""
    type: str = "test"
    data: Any = None


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The hub's app, plus ``POST /notify`` (test-only: no authentication at all)."""
    if scope["type"] == "http" and scope["path"] == "/notify" and scope["method"] == "POST":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = msgspec.json.decode(body, type=_NotifyRequest)
        notification = Notification(
            type=request.type, title=request.title, message=request.message, data=request.data
        )
        position = await hub.notify(request.user, notification)
        assert position is not None
        raw = msgspec.json.encode(
            {"id": notification.id, "offset": position.offset, "epoch": position.epoch}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})
        return
    await _hub_app(scope, receive, send)
