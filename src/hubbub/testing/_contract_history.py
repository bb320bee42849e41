"""The broker contract, part two: history, expiry and size changes, idempotency."""

from __future__ import annotations

from typing import ClassVar

import pytest

from hubbub import StreamGone
from hubbub.brokers import Capability, HistoryOptions, Idempotency
from hubbub.messages import Position

from ._contract_support import (
    RunningBroker,
    data_of,
    offsets,
    requires,
)

__all__ = ["HistoryContract"]


class HistoryContract:
    """Contract tests of :attr:`Capability.HISTORY` and :attr:`Capability.IDEMPOTENCY`
    (part of :class:`~hubbub.testing.contract.BrokerContract`)."""

    TTL: ClassVar[float]
    LIFECYCLE_ERROR: ClassVar[type[BaseException]]

    # -- history -----------------------------------------------------------------------------

    @requires(Capability.HISTORY)
    async def test_history_without_since_gives_the_newest(self, broker: RunningBroker) -> None:
        """Without ``since``: the newest ``limit`` publications, oldest first."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 10)
        page = await broker.broker.history(channel, limit=3)
        assert offsets(page) == [8, 9, 10]
        assert [p.data for p in page.publications] == [b"7", b"8", b"9"]
        assert page.position.offset == 10

    @requires(Capability.HISTORY)
    async def test_history_without_limit_gives_everything_kept(self, broker: RunningBroker) -> None:
        """Without ``limit``: every kept publication, oldest first."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 7)
        page = await broker.broker.history(channel)
        assert page.publications == published

    @requires(Capability.HISTORY)
    async def test_history_limit_larger_than_the_stream(self, broker: RunningBroker) -> None:
        """A ``limit`` beyond what is kept returns what is kept."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 4)
        assert offsets(await broker.broker.history(channel, limit=50)) == [1, 2, 3, 4]

    @requires(Capability.HISTORY)
    async def test_history_since_gives_the_first_after_it(self, broker: RunningBroker) -> None:
        """With ``since``: the first ``limit`` publications after that offset."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 10)
        since = Position(offset=4, epoch=published[0].epoch or "")
        page = await broker.broker.history(channel, since=since, limit=3)
        assert offsets(page) == [5, 6, 7]
        assert page.position == Position(offset=10, epoch=since.epoch)
        assert offsets(await broker.broker.history(channel, since=since)) == [5, 6, 7, 8, 9, 10]

    @requires(Capability.HISTORY)
    async def test_history_since_zero_gives_from_the_start(self, broker: RunningBroker) -> None:
        """``since`` offset 0 of the stream's epoch reads from its first publication."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 3)
        since = Position(offset=0, epoch=published[0].epoch or "")
        assert offsets(await broker.broker.history(channel, since=since)) == [1, 2, 3]

    @requires(Capability.HISTORY)
    async def test_history_reverse(self, broker: RunningBroker) -> None:
        """``reverse`` returns the same selection newest first, with and without ``since``."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 10)
        epoch = published[0].epoch or ""
        assert offsets(await broker.broker.history(channel, limit=3, reverse=True)) == [10, 9, 8]
        since = Position(offset=4, epoch=epoch)
        page = await broker.broker.history(channel, since=since, limit=3, reverse=True)
        assert offsets(page) == [7, 6, 5]
        assert offsets(await broker.broker.history(channel, reverse=True)) == list(range(10, 0, -1))

    @requires(Capability.HISTORY)
    async def test_history_limit_zero_reads_only_the_position(self, broker: RunningBroker) -> None:
        """``limit=0`` returns no publications but the stream's current position."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 5)
        page = await broker.broker.history(channel, limit=0)
        assert page.publications == []
        assert page.position == Position(offset=5, epoch=published[0].epoch or "")
        since = Position(offset=1, epoch=page.position.epoch)
        assert (await broker.broker.history(channel, since=since, limit=0)).publications == []

    @requires(Capability.HISTORY)
    async def test_history_is_bounded_to_size(self, broker: RunningBroker) -> None:
        """A stream keeps its newest ``size`` publications; the oldest are dropped."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 10, history=HistoryOptions(size=3, ttl=3600.0))
        page = await broker.broker.history(channel)
        assert offsets(page) == [8, 9, 10]
        assert page.position.offset == 10

    @requires(Capability.HISTORY)
    async def test_history_since_before_what_is_kept(self, broker: RunningBroker) -> None:
        """``since`` older than the kept publications returns what is kept (a visible hole)."""
        channel = broker.channel("a")
        published = await broker.publish_many(
            channel, 10, history=HistoryOptions(size=3, ttl=3600.0)
        )
        since = Position(offset=2, epoch=published[0].epoch or "")
        assert offsets(await broker.broker.history(channel, since=since)) == [8, 9, 10]

    @requires(Capability.HISTORY)
    async def test_history_of_a_new_channel_is_an_empty_stream(self, broker: RunningBroker) -> None:
        """A channel never published to reads as an empty page at offset 0 under an epoch."""
        page = await broker.broker.history(broker.channel("new"))
        assert page.publications == []
        assert page.position.offset == 0 and page.position.epoch

    @requires(Capability.HISTORY)
    async def test_epoch_read_before_the_first_publish_continues(
        self, broker: RunningBroker
    ) -> None:
        """The epoch of an empty stream's read is kept: the first publish is offset 1 of it."""
        channel = broker.channel("new")
        first = await broker.broker.history(channel, limit=0)
        again = await broker.broker.history(channel, limit=0)
        assert again.position == first.position == Position(offset=0, epoch=first.position.epoch)
        published = await broker.publish(channel)
        assert published.offset == 1 and published.epoch == first.position.epoch
        page = await broker.broker.history(channel, since=first.position)
        assert page.publications == [published]

    @requires(Capability.HISTORY)
    async def test_history_since_a_foreign_epoch_raises_stream_gone(
        self, broker: RunningBroker
    ) -> None:
        """``since`` naming another epoch than the stream's raises ``StreamGone``."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 3)
        with pytest.raises(StreamGone):
            await broker.broker.history(channel, since=Position(offset=1, epoch="not-an-epoch"))
        with pytest.raises(StreamGone):
            await broker.broker.history(broker.channel("new"), since=Position(offset=0, epoch="x"))

    @requires(Capability.HISTORY)
    async def test_history_since_the_top_or_beyond_is_empty(self, broker: RunningBroker) -> None:
        """``since`` at or after the newest offset returns an empty page at the top."""
        channel = broker.channel("a")
        published = await broker.publish_many(channel, 3)
        epoch = published[0].epoch or ""
        for offset in (3, 4, 1_000):
            page = await broker.broker.history(channel, since=Position(offset=offset, epoch=epoch))
            assert page.publications == []
            assert page.position == Position(offset=3, epoch=epoch)

    @requires(Capability.HISTORY)
    async def test_history_does_not_change_the_stream(self, broker: RunningBroker) -> None:
        """Reading history twice gives the same page; reads assign no offsets."""
        channel = broker.channel("a")
        await broker.publish_many(channel, 5)
        first = await broker.broker.history(channel, limit=2)
        second = await broker.broker.history(channel, limit=2)
        assert first == second
        assert (await broker.publish(channel)).offset == 6

    # -- expiry and size changes -------------------------------------------------------------

    @requires(Capability.HISTORY)
    async def test_expired_stream_comes_back_under_a_new_epoch(self, broker: RunningBroker) -> None:
        """After ``ttl`` without publications the stream is gone: new epoch, offsets from 1."""
        channel = broker.channel("a")
        options = HistoryOptions(size=10, ttl=self.TTL)
        old = await broker.publish_many(channel, 3, history=options)
        await broker.advance(self.TTL * 1.5)
        fresh = await broker.publish(channel, history=options)
        assert fresh.offset == 1
        assert fresh.epoch and fresh.epoch != old[0].epoch
        page = await broker.broker.history(channel)
        assert page.publications == [fresh]

    @requires(Capability.HISTORY)
    async def test_expired_stream_reads_empty_and_refuses_its_old_epoch(
        self, broker: RunningBroker
    ) -> None:
        """An expired stream reads as empty under a new epoch; its old epoch is gone."""
        channel = broker.channel("a")
        old = await broker.publish_many(channel, 3, history=HistoryOptions(size=10, ttl=self.TTL))
        old_epoch = old[0].epoch or ""
        await broker.advance(self.TTL * 1.5)
        with pytest.raises(StreamGone):
            await broker.broker.history(channel, since=Position(offset=3, epoch=old_epoch))
        page = await broker.broker.history(channel)
        assert page.publications == [] and page.position.offset == 0
        assert page.position.epoch and page.position.epoch != old_epoch
        fresh = await broker.publish(channel, history=HistoryOptions(size=10, ttl=self.TTL))
        assert fresh.offset == 1 and fresh.epoch == page.position.epoch

    @requires(Capability.HISTORY)
    async def test_each_publish_extends_the_stream_ttl(self, broker: RunningBroker) -> None:
        """The TTL runs from the last publication, not the first."""
        channel = broker.channel("a")
        options = HistoryOptions(size=10, ttl=self.TTL)
        first = await broker.publish(channel, history=options)
        for _ in range(3):
            await broker.advance(self.TTL * 0.6)
            published = await broker.publish(channel, history=options)
            assert published.epoch == first.epoch
        assert published.offset == 4
        await broker.advance(self.TTL * 0.6)
        page = await broker.broker.history(channel)
        assert page.position == Position(offset=4, epoch=first.epoch or "")

    @requires(Capability.HISTORY)
    async def test_size_change_keeps_epoch_and_offset(self, broker: RunningBroker) -> None:
        """Publishing with another ``size`` keeps the stream: same epoch, offsets go on."""
        channel = broker.channel("a")
        before = await broker.publish_many(channel, 5, history=HistoryOptions(size=10, ttl=3600.0))
        shrunk = await broker.publish(channel, history=HistoryOptions(size=3, ttl=3600.0))
        assert shrunk.offset == 6 and shrunk.epoch == before[0].epoch
        assert offsets(await broker.broker.history(channel)) == [4, 5, 6]
        grown = await broker.publish(channel, history=HistoryOptions(size=10, ttl=3600.0))
        assert grown.offset == 7 and grown.epoch == before[0].epoch
        kept = offsets(await broker.broker.history(channel))
        assert kept[-4:] == [4, 5, 6, 7]
        assert kept == list(range(7 - len(kept) + 1, 8))

    # -- idempotency -------------------------------------------------------------------------

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotent_retry_is_not_delivered_again(self, broker: RunningBroker) -> None:
        """The same key within the window publishes nothing and answers the first position."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        key = Idempotency(key="k1", window=self.TTL)
        first = await broker.publish(channel, b'"first"', idempotency=key)
        await broker.advance(self.TTL * 0.5)
        retry = await broker.publish(channel, b'"retry"', idempotency=key)
        assert (retry.offset, retry.epoch) == (first.offset, first.epoch) == (1, first.epoch)
        other = await broker.publish(channel, b'"other"')
        assert other.offset == 2
        await broker.settle()
        assert [p.data for p in broker.recorder.on(channel)] == [b'"first"', b'"other"']
        assert offsets(await broker.broker.history(channel)) == [1, 2]

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotency_key_expires_after_its_window(self, broker: RunningBroker) -> None:
        """After the window, the same key publishes anew with a new offset."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        key = Idempotency(key="k1", window=self.TTL)
        first = await broker.publish(channel, b'"first"', idempotency=key)
        await broker.advance(self.TTL * 1.5)
        again = await broker.publish(channel, b'"again"', idempotency=key)
        assert again.offset == 2 and again.epoch == first.epoch and again.data == b'"again"'
        await broker.settle()
        assert [p.data for p in broker.recorder.on(channel)] == [b'"first"', b'"again"']

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotency_keys_are_per_channel(self, broker: RunningBroker) -> None:
        """The same key in two channels publishes in both."""
        a, b = broker.channel("a"), broker.channel("b")
        await broker.broker.subscribe(a)
        await broker.broker.subscribe(b)
        key = Idempotency(key="same", window=self.TTL)
        in_a = await broker.publish(a, b'"a"', idempotency=key)
        in_b = await broker.publish(b, b'"b"', idempotency=key)
        assert in_a.channel == a and in_b.channel == b
        assert in_a.offset == in_b.offset == 1 and in_b.data == b'"b"'
        await broker.settle()
        assert len(broker.recorder.on(a)) == len(broker.recorder.on(b)) == 1

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_idempotency_keys_do_not_collide_across_channels(
        self, broker: RunningBroker
    ) -> None:
        """Channel ``a`` with key ``b:c`` and channel ``a:b`` with key ``c`` are two keys."""
        a, ab = broker.channel("a"), broker.channel("a:b")
        await broker.broker.subscribe(ab)
        one = await broker.publish(a, b'"1"', idempotency=Idempotency(key="b:c", window=60.0))
        two = await broker.publish(ab, b'"2"', idempotency=Idempotency(key="c", window=60.0))
        assert (one.channel, one.offset) == (a, 1) and (two.channel, two.offset) == (ab, 1)
        # Waited for by name: on a sharded broker the settle marker's channel may live on
        # another shard, whose pub/sub link can deliver it first.
        await broker.recorder.wait_for(ab, 1)
        await broker.settle()
        assert data_of(broker.recorder.on(ab)) == [b'"2"']

    @requires(Capability.HISTORY, Capability.IDEMPOTENCY)
    async def test_different_keys_publish_separately(self, broker: RunningBroker) -> None:
        """Distinct keys in one channel are distinct publications."""
        channel = broker.channel("a")
        one = await broker.publish(channel, idempotency=Idempotency(key="1", window=self.TTL))
        two = await broker.publish(channel, idempotency=Idempotency(key="2", window=self.TTL))
        assert (one.offset, two.offset) == (1, 2)

    @requires(Capability.IDEMPOTENCY)
    async def test_idempotency_without_history(self, broker: RunningBroker) -> None:
        """Idempotency works for channels without history too: one delivery per key."""
        channel = broker.channel("a")
        await broker.broker.subscribe(channel)
        key = Idempotency(key="k", window=self.TTL)
        first = await broker.publish(channel, b'"first"', history=None, idempotency=key)
        retry = await broker.publish(channel, b'"retry"', history=None, idempotency=key)
        assert first.offset is None and retry.offset is None and retry.epoch is None
        await broker.settle()
        assert [p.data for p in broker.recorder.on(channel)] == [b'"first"']
