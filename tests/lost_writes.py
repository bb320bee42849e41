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

import asyncio
from collections.abc import Iterable

import anyio

from hubbub import BrokerUnavailable
from hubbub.brokers import Broker, HistoryPage, Publication

from .broker_contract import KEEP, Recorder, publication
from .redis_server import RedisServer


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


async def publish_as_the_replica_falls_behind(
    broker: Broker,
    recorder: Recorder,
    channel: str,
    primary: RedisServer,
    replica: RedisServer,
) -> list[Publication]:
    """Publications 0-9 into ``channel``, all acknowledged; the replica has 0-4 only. The
    primary is then SIGKILLed, and the replica thawed for its promotion."""
    acked = [await broker.publish(publication(channel, f'"{n}"'.encode()), KEEP) for n in range(5)]
    # The replica has everything so far, then misses what follows.
    primary.replicated_to(replica)
    # Frozen, and cut off by the primary: what follows never reaches it (a frozen replica
    # alone would still read it from its socket's buffer once thawed). Kept short: a
    # Sentinel must still find the replica healthy enough to promote.
    replica.freeze()
    try:
        assert primary.command("CLIENT", "KILL", "TYPE", "replica") == 1
        acked += [
            await broker.publish(publication(channel, f'"{n}"'.encode()), KEEP)
            for n in range(5, 10)
        ]
        await recorder.wait_for(channel, 10)
        await asyncio.to_thread(primary.kill)
    finally:
        replica.thaw()
    return acked


async def publish_after_the_failover(
    broker: Broker, recorder: Recorder, channel: str
) -> tuple[list[Publication], HistoryPage]:
    """Publications 10-14 into ``channel`` on the promoted replica (each retried while the
    broker is unavailable, for 20 s at most), the stream's history read after them, once
    the last was delivered."""
    after: list[Publication] = []
    with anyio.fail_after(20):
        n = 10
        while len(after) < 5:
            try:
                after.append(await broker.publish(publication(channel, f'"{n}"'.encode()), KEEP))
                n += 1
            except BrokerUnavailable:
                await anyio.sleep(0.1)
    page = await broker.history(channel)
    with anyio.fail_after(10):
        while not any(p.data == after[-1].data for p in recorder.on(channel)):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return after, page


def lost_in_the_failover(
    acked: list[Publication],
    after: list[Publication],
    delivered: Iterable[Publication],
    page: HistoryPage,
) -> list[Publication]:
    """The acknowledged publications the failover lost (at least one, or the test did not
    reproduce the hazard), once no position names two publications anywhere and the stream
    went on under a new epoch."""
    kept = {p.data for p in page.publications}
    lost = [p for p in acked if p.data not in kept]
    print(f"acknowledged and lost in the failover: {[(p.epoch, p.offset) for p in lost]}")
    assert lost, "the failover lost nothing: the test did not reproduce the hazard"
    same_name_same_publication(acked, after, delivered, page.publications)
    assert {p.epoch for p in after} == {page.position.epoch} != {acked[0].epoch}
    return lost
