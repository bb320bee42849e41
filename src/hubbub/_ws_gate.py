"""The write gate and the per-turn coalescer of ``hubbub serve``'s WebSocket class.

:class:`Gate` is what the pre-framed write (``hubbub.frames["write"]``) reads
for every frame: one small object per connection whose ``open`` flag the
protocol class (:class:`hubbub._uvicorn_ws.FramesProtocol`) recomputes when a
condition it stands for changes (:class:`Tracked`, :func:`watched`), rather
than the eight reads across uvicorn's objects a frame used to cost.
:class:`Coalescer` ends an event loop's turn: a socket's second and later
frames of a turn are held by its gate and written together then (docs/design.md,
"At most two writes per socket per loop turn", "The write gate").
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Final

from websockets.protocol import Protocol

__all__ = ["HOLD_BYTES", "Coalescer", "Gate", "Tracked", "coalescer_for", "watched"]

logger = logging.getLogger("hubbub.connection")

HOLD_BYTES: Final = 65536
"""Bytes held for one socket before they are written at once rather than at the loop's next turn."""


class Coalescer:
    """The turn of one event loop, and the sockets holding frames until it ends.

    One per loop (``_coalescer``), not per connection: ``call_soon`` once per
    turn however many sockets hold frames.
    """

    __slots__ = ("__weakref__", "dirty", "loop", "scheduled", "turn")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[Gate] = []
        self.scheduled = False
        # Advanced by each flush: a socket that wrote in this turn has its number.
        self.turn = 0

    def add(self, gate: Gate) -> None:
        """``gate``'s socket holds frames: write them when the turn ends."""
        self.dirty.append(gate)
        self.end_turn()

    def end_turn(self) -> None:
        """Make sure the turn ends with a flush (which also advances :attr:`turn`)."""
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        self.turn += 1
        dirty, self.dirty = self.dirty, []
        for gate in dirty:
            try:
                gate.flush()
            except Exception:  # one socket's failure must not keep the others' frames
                logger.exception("writing held frames failed")
                gate.shut_down()
                if gate.transport is not None:
                    gate.transport.close()


class Gate:
    """What the pre-framed write reads for every frame, in one small object.

    A fan-out to tens of thousands of sockets is bound by memory, not by
    instructions: checking uvicorn's flags on the protocol itself (its
    instance dict of some sixty entries, websockets' connection object, the
    flow-control event) cost 2.4 µs of user time per delivery at N = 19,500
    against 0.35 at N = 1,000 (cache misses; benchmarks/README.md, "The
    write gate"). So the protocol keeps the answer here instead: ``open`` is
    recomputed whenever one of the flags it depends on is assigned
    (:class:`Tracked`, the flow-control flag, websockets' ``state`` setter),
    and a frame touches only this object and the transport. Not even
    ``transport.is_closing()``, which alone cost 2 µs per delivery at N =
    19,500: every path that closes the transport closes the gate first
    (``shut``: the peer's EOF, the app's end, hubbub's own closes) or has
    already (a close frame sent or received changes websockets' state; a lost
    connection sets ``disconnected``).
    """

    __slots__ = ("coalescer", "gone", "held", "held_bytes", "open", "shut", "transport", "turn")

    def __init__(self) -> None:
        self.open = False  # frames may be written now (FramesProtocol.recheck)
        self.gone = False  # uvicorn's ``disconnected``: held frames are dropped
        self.shut = False  # the transport is closing: nothing more is written
        self.transport: asyncio.Transport | None = None
        self.coalescer: Coalescer | None = None
        # Frames accepted and not yet written (the second and later of a turn).
        self.held: list[bytes] | None = None
        self.held_bytes = 0
        self.turn = -1  # the coalescer's turn in which this socket last wrote a frame

    def shut_down(self) -> None:
        """The transport is closing: refuse frames and drop held ones from now on."""
        self.shut = True
        self.open = False

    def write(self, frame: bytes) -> bool:
        """Take one complete frame for this turn's write, or refuse so the caller uses ``send``."""
        if not self.open:
            return False
        transport = self.transport
        assert transport is not None  # open only once the handshake is done
        held = self.held
        if held is None:
            coalescer = self.coalescer
            assert coalescer is not None
            if self.turn != coalescer.turn:
                # The socket's first frame this turn: written now, so one publication per
                # turn costs what it did (one pass, no added latency); only a second frame
                # in the same turn is held, and the rest join it.
                self.turn = coalescer.turn
                if not coalescer.scheduled:  # checked here: no call per delivery once set
                    coalescer.end_turn()
                transport.write(frame)
                return True
            self.held = [frame]
            self.held_bytes = len(frame)
            coalescer.add(self)
            return True
        held.append(frame)
        self.held_bytes += len(frame)
        if self.held_bytes >= HOLD_BYTES:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the frames held (in one call), unless the socket can no longer take them.

        A socket closed meanwhile by uvicorn's own paths has already had them
        written (those paths flush first); one that is gone drops them.
        """
        held = self.held
        if held is None:
            return
        self.held = None
        self.held_bytes = 0
        transport = self.transport
        if not held or self.gone or self.shut or transport is None:
            return
        transport.write(held[0] if len(held) == 1 else b"".join(held))


class Tracked:
    """An attribute of uvicorn's protocol whose every assignment re-checks the gate.

    A data descriptor on :class:`~hubbub._uvicorn_ws.FramesProtocol` takes the assignments uvicorn
    makes wherever it makes them (``self.close_sent = True`` in any of its
    paths, in any version), so the gate cannot miss one.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = "_tracked_" + name

    def __get__(self, protocol: Any, owner: type | None = None) -> Any:
        if protocol is None:
            return self
        return protocol.__dict__[self.key]

    def __set__(self, protocol: Any, value: Any) -> None:
        protocol.__dict__[self.key] = value
        if protocol.__dict__.get("tracking"):
            protocol.recheck()


def watched(cls: type[Protocol]) -> type[Protocol] | None:
    """``cls`` with its ``state`` setter also re-checking the gate (``None``: cannot be done).

    websockets changes its state only through the ``state`` property's setter;
    a version without one cannot be watched, and then hubbub offers no
    pre-framed writes on it.
    """
    found = _WATCHED.get(cls)
    if found is not None or cls in _WATCHED:
        return found
    state = getattr(cls, "state", None)
    if not isinstance(state, property) or state.fget is None or state.fset is None:
        _WATCHED[cls] = None
        return None
    getter, setter = state.fget, state.fset

    def set_state(conn: Any, value: Any) -> None:
        setter(conn, value)
        protocol = conn.__dict__.get("hubbub_protocol")
        if protocol is not None:
            protocol.recheck()

    watched = type(cls.__name__, (cls,), {"state": property(getter, set_state)})
    _WATCHED[cls] = watched
    return watched


_WATCHED: dict[type[Protocol], type[Protocol] | None] = {}


_COALESCERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer] = (
    weakref.WeakKeyDictionary()
)


def coalescer_for(loop: asyncio.AbstractEventLoop) -> Coalescer:
    found = _COALESCERS.get(loop)
    if found is None:
        found = _COALESCERS[loop] = Coalescer(loop)
    return found
