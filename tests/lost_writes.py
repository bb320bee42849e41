"""The lost-acknowledgement check shared by the Redis failover tests (Cluster, Sentinel).

Redis replicates asynchronously: a primary acknowledges a publication (and
publishes it to the subscribed nodes) before its replica has it. Kill that
primary, promote the replica, and the publication is gone. What hubbub must
never do then is hand its offset to another publication under the same epoch:
a subscriber that had received the lost one would silently hold a different
publication under the same ``(epoch, offset)`` than the stream. The tests make
the replica miss the last acknowledged publications on purpose (``SIGSTOP`` on
the replica while they are published, then ``SIGKILL`` on the primary) and
compare every position named anywhere — acks, deliveries, the stream after
the failover.
"""

from __future__ import annotations

from collections.abc import Iterable

from hubbub.brokers import Publication


def same_name_same_publication(*sources: Iterable[Publication]) -> dict[tuple[str, int], bytes]:
    """Assert that no ``(epoch, offset)`` names two different payloads across ``sources``;
    return what each position names."""
    named: dict[tuple[str, int], bytes] = {}
    for source in sources:
        for p in source:
            assert p.epoch is not None and p.offset is not None, p
            position = (p.epoch, p.offset)
            seen = named.setdefault(position, p.data)
            assert seen == p.data, (
                f"{position} names two publications: {seen!r} and {p.data!r} "
                "(an acknowledged publication was lost and its offset reused in the same epoch)"
            )
    return named
