"""The WebSocket transport: ``<prefix>/ws`` from the handshake to the close frame.

What differs from an SSE stream, for :func:`hubbub._session.serve_session`:
the ``websocket.connect`` message, the subprotocol (codec) negotiation and
``?batch=1``, a refusal as a denial response (HTTP status and JSON body where
the server supports it), ``websocket.accept``, and the ``welcome`` first.
The connection's reader and writer are :class:`~hubbub._connection.Connection`'s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._connection import Connection
from ._errors import HubbubError, HubNotRunning, InvalidMessage
from ._http import Receive, Scope, SendCallable, deny, query_param
from ._session import serve_session
from .messages import JSON, Codec, Error, codec_for_subprotocol
from .protocol import Close

if TYPE_CHECKING:
    from ._host import SessionHost
    from .auth import Identity

__all__ = ["serve_websocket"]

logger = logging.getLogger("hubbub.connection")


async def serve_websocket(
    host: SessionHost, scope: Scope, receive: Receive, send: SendCallable
) -> None:
    """Run one WebSocket from handshake to close: refuse it with an HTTP status, or serve it."""
    await serve_session(host, _WebSocket(scope, receive, send), scope, receive, send)


class _WebSocket:
    """The WebSocket's part of a session (a :class:`hubbub._session.Transport`)."""

    logger = logger

    def __init__(self, scope: Scope, receive: Receive, send: SendCallable) -> None:
        self.disconnect_fields: dict[str, Any] = {}
        self.scope = scope
        self.receive = receive
        self.send = send
        self.codec: Codec = JSON
        self.subprotocol: str | None = None
        self.connect_fields: dict[str, Any] = {}

    async def check(self, host: SessionHost) -> bool:
        message = await self.receive()
        if message["type"] != "websocket.connect":
            return False
        if not host.running:
            if host.state in ("draining", "stopping"):
                logger.info("refused a WebSocket (503): the hub is %s", host.state)
            else:
                logger.error(
                    "refused a WebSocket (503): the hub is %s. Start it with `async with hub:`, "
                    "`lifespan=hub.lifespan` in the parent app, or serve HubApp(hub) as the "
                    "top-level app",
                    host.state,
                )
            raise HubNotRunning(f"hub is {host.state}")
        codec, chosen = _negotiate(list(self.scope.get("subprotocols") or ()))
        if codec is None:
            raise InvalidMessage(
                "no supported subprotocol offered: use hubbub.v1.json or hubbub.v1.msgpack"
            )
        self.codec, self.subprotocol = codec, chosen
        self.connect_fields = {"codec": codec.name, "transport": "websocket"}
        return True

    def authorize(self, host: SessionHost, identity: Identity) -> None:
        pass  # a WebSocket's channels are checked command by command (ClientProtocol)

    async def refuse(self, exc: HubbubError, retry_after: int | None, ip: str | None) -> None:
        await deny(self.scope, self.send, exc, retry_after=retry_after)

    def connection(self, host: SessionHost, identity: Identity) -> Connection:
        codec = self.codec
        return Connection(
            host,
            client_id=host.client_id(),
            identity=identity,
            codec=codec,
            batch=codec is JSON and _query_flag(self.scope, "batch"),
        )

    async def begin(self, host: SessionHost, connection: Connection) -> bool:
        await self.send({"type": "websocket.accept", "subprotocol": self.subprotocol})
        return True

    async def welcome(self, host: SessionHost, connection: Connection) -> None:
        try:
            await host.welcome(connection)
        except HubbubError as exc:
            connection.send_message(Error(code=exc.code, reason=exc.reason))
            connection.close(Close(exc.close_code, exc.reason))


def _negotiate(subprotocols: list[str]) -> tuple[Codec | None, str | None]:
    """The codec and the subprotocol to echo; ``(None, None)`` when nothing offered is usable.

    ``bearer.<jwt>`` entries carry a token, never a codec, and are never echoed.
    """
    if not subprotocols:
        return JSON, None
    for name in subprotocols:
        if not name.startswith("bearer."):
            codec = codec_for_subprotocol(name)
            if codec is not None:
                return codec, name
    return None, None


def _query_flag(scope: Scope, name: str) -> bool:
    value = query_param(scope, name)
    return value is not None and value.lower() in ("1", "true", "yes")
