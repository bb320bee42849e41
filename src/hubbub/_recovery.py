"""Joining a channel's stream without a gap or a duplicate: the pure merge step.

While a subscriber's history is being read, live publications keep arriving;
the hub buffers them for that subscriber and, once the read returns, merges
the two here. Recovery is all or nothing (docs/protocol.md §5): either every
publication after the client's position is still there, in one epoch, or the
client is told ``recovered: false`` and reloads its state. The merge costs time
in proportion to what was read (at most the history), never to the offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from .brokers import HistoryPage, Publication
from .messages import Position

__all__ = ["Joined", "join_stream"]


@dataclass(frozen=True, slots=True)
class Joined:
    """What a subscriber gets when it joins a stream.

    Attributes:
        publications: sent inside ``subscribed`` (oldest first).
        recovered: ``subscribed.recovered``; ``None`` when recovery was not asked.
        position: ``subscribed.offset``/``epoch``: the newest position covered by
            ``subscribed`` (what the client has after reading it).
        live: buffered live publications to deliver right after ``subscribed``.
        gap: the buffered live publications do not continue the stream without
            a hole (the broker lost some): the client must be closed to recover.
    """

    publications: list[Publication]
    recovered: bool | None
    position: Position
    live: list[Publication]
    gap: bool = False


def join_stream(
    page: HistoryPage | None,
    top: Position,
    buffered: list[Publication],
    *,
    recover: Position | None,
    last: int | None,
) -> Joined:
    """Merge a history read with the live publications buffered meanwhile.

    Args:
        page: what was read: everything after ``recover`` (when recovering), the
            newest ``last`` publications (when ``history: n`` was asked), or
            ``None`` when only the position was read or ``recover`` named a
            stream that is gone.
        top: the stream's position when it was read.
        buffered: live publications that arrived for this subscriber while the
            read was in flight, in arrival (offset) order.
        recover: the position the client asked to recover from.
        last: ``history: n``, when asked and not recovering.
    """
    publications: list[Publication] = []
    recovered: bool | None = None
    if recover is not None:
        recovered = False
        # An offset beyond the top cannot have been seen under this epoch.
        if page is not None and recover.epoch == top.epoch and recover.offset <= top.offset:
            candidates = [p for p in page.publications if (p.offset or 0) > recover.offset]
            # Counted, then checked one by one: the work is bounded by the page (at most
            # the history size), never by the offsets, which a client chooses.
            if len(candidates) == top.offset - recover.offset and all(
                p.offset == recover.offset + n for n, p in enumerate(candidates, 1)
            ):
                recovered = True
                publications = candidates
    elif last and page is not None:
        publications = page.publications[-last:]
    # Live publications already covered by the read are dropped; the rest follow
    # ``subscribed``. A different epoch among them means the stream was recreated.
    live = [p for p in buffered if p.epoch != top.epoch or (p.offset or 0) > top.offset]
    gap = False
    expected_next = top.offset + 1
    for publication in live:
        if publication.epoch != top.epoch:
            break  # an epoch change is visible to the client; it resubscribes
        if publication.offset != expected_next:
            gap = True
            break
        expected_next += 1
    return Joined(publications, recovered, top, live, gap)
