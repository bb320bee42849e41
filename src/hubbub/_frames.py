"""WebSocket frames built once per publication and written to many sockets (RFC 6455, 7692).

The per-subscriber cost of an ASGI ``websocket.send`` is mostly the server's
framing: a frame object, its serialisation, a buffer join, then the write.
When the server offers the ``hubbub.frames`` ASGI extension
(:mod:`hubbub._uvicorn_ws` under ``hubbub serve``), fan-out builds the frame
once per publication and codec and writes the same bytes to every subscriber
whose socket can take them now. This module is that frame, with no I/O.

Server frames are never masked and never fragmented here: FIN, opcode, a
7/16/64-bit length, the payload. On a connection that negotiated
permessage-deflate an uncompressed message (RSV1 clear) is still valid and
leaves both compression contexts alone (RFC 7692 §6); a compressed one (RSV1
set) built without context is the same for every connection that negotiated
``server_no_context_takeover`` with a window at least as large as ours, so it
too is built once. Small payloads are shared uncompressed (deflate without
context barely shrinks them); larger ones compressed (docs/design.md,
"Pre-framed fan-out").
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final

__all__ = [
    "COMPRESS_MIN",
    "EXTENSION",
    "OWN_DEFLATE",
    "PLAIN",
    "SHARED_DEFLATE",
    "WINDOW_BITS",
    "SharedFrame",
    "SharedRun",
    "build_frame",
    "deflate",
    "wire_kind",
]

EXTENSION: Final = "hubbub.frames"
"""The ASGI scope extension: ``{"write": (bytes) -> bool, "deflate": None | (bool, int)}``.

``write`` writes one complete frame now, or refuses (``False``) when the
server cannot take it at once; ``deflate`` is ``None`` without
permessage-deflate, else ``(server_no_context_takeover, server_max_window_bits)``.
``write`` also takes several complete frames joined (a :class:`SharedRun`).
Under ``hubbub serve`` a ``"receive"`` entry, ``(receiver, after) -> None``,
hands the app each client message as it is read, then calls ``after()`` once
the messages of one read are all handed over (``_uvicorn_ws.FramesProtocol``).
"""

WINDOW_BITS: Final = 12
"""The LZ77 window of shared compressed frames: uvicorn's own ``server_max_window_bits``."""

COMPRESS_MIN: Final = 256
"""Payloads from this size up are shared compressed with deflate clients; smaller ones plain."""

# What a connection can take (:func:`wire_kind`).
PLAIN: Final = 0  # no deflate: uncompressed frames
SHARED_DEFLATE: Final = 1  # deflate without context takeover, window >= WINDOW_BITS
OWN_DEFLATE: Final = 2  # deflate its own way: small payloads shared plain, larger ones its own

_TEXT: Final = 0x81  # FIN | text
_BINARY: Final = 0x82  # FIN | binary
_RSV1: Final = 0x40
_SHORT = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def build_frame(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """One unmasked final frame carrying ``payload`` (already compressed if ``compressed``)."""
    first = (_BINARY if binary else _TEXT) | (_RSV1 if compressed else 0)
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return _SHORT.pack(first, 126, size) + payload
    return _LONG.pack(first, 127, size) + payload


def deflate(payload: bytes) -> bytes:
    """``payload`` compressed as one permessage-deflate message without context."""
    encoder = zlib.compressobj(wbits=-WINDOW_BITS, memLevel=5)
    data = encoder.compress(payload) + encoder.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]  # the sync flush's empty block 00 00 ff ff is implied (RFC 7692 §7.2.1)


def wire_kind(extension: Any) -> int | None:
    """What shared frames a connection takes, from its ``hubbub.frames`` extension.

    ``None`` when the extension is absent or not understood: the standard
    ``websocket.send`` path only.
    """
    if not isinstance(extension, dict) or not callable(extension.get("write")):
        return None
    negotiated = extension.get("deflate")
    if negotiated is None:
        return PLAIN
    no_context, bits = negotiated
    return SHARED_DEFLATE if no_context and bits >= WINDOW_BITS else OWN_DEFLATE


class SharedFrame:
    """One publication in one codec: the ASGI message and, lazily, its frames.

    Frames are built only when a subscriber can take them, so fan-out under
    a server without the extension costs nothing more.
    """

    __slots__ = ("_compressed", "_message", "_plain", "binary", "payload", "size")

    def __init__(self, payload: bytes, binary: bool) -> None:
        self.payload = payload
        self.binary = binary
        self.size = len(payload)
        self._message: str | bytes | None = payload if binary else None
        self._plain: bytes | None = None
        self._compressed: bytes | None = None

    @property
    def message(self) -> str | bytes:
        """What the standard path sends: ``bytes`` for a binary codec, ``str`` for a text one.

        Decoded on first use: where every subscriber takes frames, never.
        """
        message = self._message
        if message is None:
            message = self._message = self.payload.decode()
        return message

    def frame(self, kind: int) -> bytes | None:
        """The frame for a connection of ``kind`` (:func:`wire_kind`); ``None``: send its own.

        A connection that compresses with its own context keeps doing so for
        payloads worth compressing: sharing them plain would cost it bandwidth.
        """
        if kind and self.size >= COMPRESS_MIN:
            if kind == OWN_DEFLATE:
                return None
            compressed = self._compressed
            if compressed is None:
                compressed = self._compressed = build_frame(
                    deflate(self.payload), self.binary, compressed=True
                )
            return compressed
        plain = self._plain
        if plain is None:
            plain = self._plain = build_frame(self.payload, self.binary)
        return plain


class SharedRun:
    """Consecutive publications of one channel in one codec, written to a subscriber at once.

    What fan-out batched until the end of a read or of the loop's turn
    (:class:`hubbub._fanout.Fanout`; docs/design.md, "One pass per batch"): a
    subscriber whose socket takes frames gets all of them in one write, the
    bytes joined once for every such subscriber.
    """

    __slots__ = ("_joined", "_plain", "frames", "size")

    def __init__(self, frames: list[SharedFrame]) -> None:
        self.frames = frames
        self.size = sum(shared.size for shared in frames)
        self._plain: bytes | None = None
        self._joined: dict[int, bytes | None] | None = None

    def frame(self, kind: int) -> bytes | None:
        """All the frames for a connection of ``kind``, joined; ``None``: one by one instead."""
        if kind == PLAIN:
            plain = self._plain
            if plain is None:
                frames = [shared.frame(PLAIN) or b"" for shared in self.frames]
                plain = self._plain = b"".join(frames)
            return plain
        joined = self._joined
        if joined is None:
            joined = self._joined = {}
        elif kind in joined:
            return joined[kind]
        parts = []
        for shared in self.frames:
            part = shared.frame(kind)
            if part is None:  # one of them is compressed with the connection's own context
                joined[kind] = None
                return None
            parts.append(part)
        found = joined[kind] = b"".join(parts)
        return found
