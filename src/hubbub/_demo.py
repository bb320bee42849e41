"""What only the demo (``hubbub serve`` without a target) needs.

The demo has no accounts: a visitor's display name *is* their identity, so
that notifications can be addressed to a name. This trusts the client
completely and is for the demo on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from ._errors import HubbubError, InvalidMessage
from ._http import (
    DEFAULT_BODY_TIMEOUT,
    JSON_TYPE,
    Receive,
    SendCallable,
    query_param,
    read_body,
    respond,
    send_error,
)
from .auth import Identity
from .chat import Notification
from .hub import Hub

__all__ = ["DemoAuthenticator", "demo_user_id", "handle_notify"]

_SLUG = re.compile(r"[^a-z0-9]+")
MAX_BODY = 16 * 1024
BODY_TIMEOUT = DEFAULT_BODY_TIMEOUT
"""Seconds the notify body may take to arrive (408 after): no request is held for ever."""


def demo_user_id(name: str) -> str:
    """A channel-safe user id for a display name: a readable slug plus a short hash."""
    slug = _SLUG.sub("-", name.lower()).strip("-")[:24] or "user"
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{slug}-{digest}"


def _clean(name: str) -> str:
    return "".join(ch for ch in name if ch.isprintable()).strip()[:64]


class DemoAuthenticator:
    """Takes ``?name=`` as the identity; no name means an anonymous client."""

    async def __call__(self, scope: Mapping[str, Any]) -> Identity | None:
        name = _clean(query_param(scope, "name") or "")  # type: ignore[arg-type]
        if not name:
            return None
        return Identity(user=demo_user_id(name), name=name)


class _NotifyRequest(msgspec.Struct):
    to: str
    title: str = ""
    message: str = ""


_decoder = msgspec.json.Decoder(_NotifyRequest)


async def handle_notify(hub: Hub, receive: Receive, send: SendCallable) -> None:
    """``POST /demo/notify {to, title, message}``: notify the visitor named ``to``."""
    try:
        body = await read_body({}, receive, MAX_BODY, BODY_TIMEOUT)
    except HubbubError as exc:
        await send_error(send, exc)
        return
    try:
        try:
            request = _decoder.decode(body)
        except msgspec.MsgspecError as exc:
            raise InvalidMessage(f"invalid request: {exc}") from None
        name = _clean(request.to)
        if not name:
            raise InvalidMessage("'to' must name someone")
        notification = Notification(
            type="demo", title=request.title[:200], message=request.message[:2000]
        )
        position = await hub.notify(demo_user_id(name), notification)
    except HubbubError as exc:
        await send_error(send, exc)
        return
    result: dict[str, Any] = {"id": notification.id}
    if position is not None:
        result.update(offset=position.offset, epoch=position.epoch)
    await respond(send, 200, msgspec.json.encode(result), JSON_TYPE)
