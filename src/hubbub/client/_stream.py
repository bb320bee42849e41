"""One channel's position and what a new publication means for it, free of I/O.

The client keeps, per subscribed channel with history, the last position
handed to the application. Each incoming publication is then exactly one of:
the next one (deliver it), one already delivered (drop it: possible right
after recovering a server-made subscription), or not the next one — a gap or
a new epoch — which the client answers by resubscribing with ``recover``.
Kept pure so that the rules are tested with plain calls, like the server's
``protocol`` module.
"""

from __future__ import annotations

from enum import Enum

from ..messages import Message, Position

__all__ = ["Verdict", "classify"]


class Verdict(Enum):
    """What to do with a publication, given the last position delivered."""

    DELIVER = "deliver"
    DUPLICATE = "duplicate"
    GAP = "gap"


def classify(position: Position | None, message: Message) -> Verdict:
    """Judge ``message`` against ``position``, the last one the application got.

    Publications without offset or epoch (channels without history) are always
    delivered: nothing can be checked or recovered there. Without a position
    yet (no ``subscribed`` seen), a publication cannot be placed: it is a gap.
    """
    if message.offset is None or message.epoch is None:
        return Verdict.DELIVER
    if position is None or message.epoch != position.epoch:
        return Verdict.GAP
    if message.offset <= position.offset:
        return Verdict.DUPLICATE
    if message.offset != position.offset + 1:
        return Verdict.GAP
    return Verdict.DELIVER
