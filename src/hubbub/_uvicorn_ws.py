"""uvicorn's websockets-sansio protocol, plus one write path for frames built once.

``hubbub serve`` hands this class to ``uvicorn.Config(ws=...)``. It is
uvicorn's own implementation with two additions:

- the ``hubbub.frames`` ASGI scope extension (:data:`hubbub._frames.EXTENSION`):
  a synchronous ``write(frame) -> bool`` that puts an already-built frame on the
  transport, so fan-out frames a publication once instead of once per
  subscriber. It refuses (``False``) whenever the frame could not go out now and
  in order: handshake not complete, close sent or received, peer gone, transport
  closing, the transport's write buffer above its high-water mark (uvicorn's
  ``writable`` event clear), or a standard ``send`` waiting for room. The caller
  then falls back to its queue and ``websocket.send``, so flow control and the
  slow-consumer policy are unchanged.
- permessage-deflate negotiated with ``server_no_context_takeover`` (RFC 7692
  lets a server require it): every message is then compressed alone, so one
  compressed frame is right for every such connection, and no connection keeps
  a compressor between messages.

Everything else is uvicorn's; the attributes relied on are checked by
tests/test_preframed.py against the installed uvicorn. Imported only by
``hubbub serve``.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.http11 import Request
from websockets.protocol import State

from ._frames import EXTENSION, WINDOW_BITS

__all__ = ["DEFLATE", "SUPPORTED", "FramesProtocol", "has_flow_control"]


def has_flow_control(protocol: type) -> bool:
    """Whether uvicorn's class defines its own ``pause_writing`` (uvicorn >= 0.52.1).

    It came with the ``writable`` event and the ``disconnected`` flag the fast
    path reads. Every asyncio protocol inherits a no-op ``pause_writing`` from
    ``asyncio.BaseProtocol``, so only the class's own definition counts: an
    inherited one (uvicorn 0.40 to 0.52.0) would pass a ``getattr`` check and
    then fail every fan-out on the missing ``disconnected``.
    """
    return "pause_writing" in vars(protocol)


SUPPORTED = has_flow_control(WebSocketsSansIOProtocol)
"""Whether the installed uvicorn's class has write flow control (uvicorn >= 0.52.1).

Before it, ``send`` never waited for the socket's buffer and the protocol had no
``disconnected`` flag: frames written directly could not be refused when a
client stops reading. ``hubbub serve`` then keeps uvicorn's own class.
"""

DEFLATE = ServerPerMessageDeflateFactory(
    server_no_context_takeover=True,
    # uvicorn's own settings otherwise: a 4 KiB window each way, memLevel 5.
    server_max_window_bits=WINDOW_BITS,
    client_max_window_bits=WINDOW_BITS,
    compress_settings={"memLevel": 5},
)
"""What ``hubbub serve`` negotiates: uvicorn's permessage-deflate, without server context."""

_OPEN = State.OPEN


class FramesProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol offering the ``hubbub.frames`` extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Standard sends waiting for write room: a frame written meanwhile would pass them.
        self.waiting_sends = 0
        if self.conn.available_extensions:  # --ws-per-message-deflate (uvicorn's default)
            self.conn.available_extensions = [DEFLATE]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The app's task is created but has not run yet: the scope can still gain a key.
        if self.response.status_code != 101 or self.close_sent:
            return
        deflate: tuple[bool, int] | None = None
        for extension in self.conn.extensions:
            if not isinstance(extension, PerMessageDeflate):
                return  # an extension we cannot frame for: the standard path only
            deflate = (extension.local_no_context_takeover, extension.local_max_window_bits)
        self.scope["extensions"][EXTENSION] = {"write": self.write_frame, "deflate": deflate}

    def write_frame(self, frame: bytes) -> bool:
        """Write one complete frame now, or refuse so the caller uses ``websocket.send``."""
        if (
            self.close_sent
            or self.waiting_sends
            or self.disconnected
            or not self.handshake_complete
            or self.initial_response is not None
            or not self.writable.is_set()
            or self.conn.state is not _OPEN
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(frame)
        return True

    async def send(self, message: Any) -> None:
        if not self.writable.is_set():
            self.waiting_sends += 1
            try:
                await self.writable.wait()
            finally:
                self.waiting_sends -= 1
        await super().send(message)
