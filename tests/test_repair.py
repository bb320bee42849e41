"""A node repairs holes in a stream from history before delivering anything newer."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import anyio
import pytest

from hubbub import Hub, Namespace
from hubbub.brokers import (
    LossHandler,
    MemoryBroker,
    Publication,
    PublicationHandler,
)

from .asgi_driver import serving

pytestmark = pytest.mark.anyio


class LossyBroker(MemoryBroker):
    """Stores every publication but drops the delivery of the ones it is told to.

    What a pub/sub link does when it breaks: the stream has the publication,
    the node never hears of it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.drop: set[int] = set()
        self.lost: LossHandler | None = None

    async def start(
        self, handler: PublicationHandler, lost: LossHandler, task_group: Any = None
    ) -> None:
        self.lost = lost

        def maybe(publication: Publication) -> None:
            if publication.offset not in self.drop:
                handler(publication)

        await super().start(maybe, lost)

    def report_loss(self, channels: Collection[str] | None) -> None:
        assert self.lost is not None
        self.lost(channels)


async def offsets(ws: Any, count: int) -> list[int]:
    """The offsets of the next ``count`` messages a client receives."""
    seen = []
    while len(seen) < count:
        message = await ws.receive_json()
        if message["type"] == "message":
            seen.append(message["offset"])
    return seen


async def test_a_hole_is_filled_from_history_in_order() -> None:
    """Publications whose delivery was lost reach subscribers in order, once, before newer ones."""
    broker = LossyBroker()
    hub = Hub(broker=broker, anonymous=True, namespaces=[Namespace(name="h", history_size=50)])
    async with serving(hub) as clients:
        a, _ = await clients.connect()
        b, _ = await clients.connect()
        for ws in (a, b):
            assert (await ws.command({"type": "subscribe", "channel": "h:x", "id": 1}))[
                "type"
            ] == "subscribed"
        broker.drop = {3, 4}
        for i in range(8):
            await hub.publish("h:x", i)
        assert await offsets(a, 8) == list(range(1, 9))
        assert await offsets(b, 8) == list(range(1, 9))


async def test_reported_loss_is_repaired_without_a_newer_publication() -> None:
    """After the broker reports a loss, the node delivers the missed publications itself."""
    broker = LossyBroker()
    hub = Hub(broker=broker, anonymous=True, namespaces=[Namespace(name="h", history_size=50)])
    async with serving(hub) as clients:
        a, _ = await clients.connect()
        await a.command({"type": "subscribe", "channel": "h:x", "id": 1})
        await hub.publish("h:x", 0)
        assert await offsets(a, 1) == [1]
        broker.drop = {2, 3}
        await hub.publish("h:x", 1)
        await hub.publish("h:x", 2)
        broker.report_loss(None)
        assert await offsets(a, 2) == [2, 3]


async def test_a_hole_history_no_longer_covers_closes_1013() -> None:
    """When history no longer reaches back over the hole, subscribers are closed 1013."""
    broker = LossyBroker()
    hub = Hub(broker=broker, anonymous=True, namespaces=[Namespace(name="h", history_size=2)])
    async with serving(hub) as clients:
        a, _ = await clients.connect()
        await a.command({"type": "subscribe", "channel": "h:x", "id": 1})
        await hub.publish("h:x", 0)
        assert await offsets(a, 1) == [1]
        broker.drop = {2, 3, 4, 5}
        for i in range(5):
            await hub.publish("h:x", i)
        with anyio.fail_after(5):
            while True:
                message = await a.receive_json()
                if message["type"] == "disconnect":
                    break
                assert message["type"] != "message" or message["offset"] == 6
        assert message["code"] == 1013
        assert message["reconnect"] is True


async def test_a_loss_before_the_first_delivery_is_repaired() -> None:
    """A loss reported before the node delivered anything on a channel is still repaired.

    The node's starting point is the position its first joiner read, so a
    publication lost right after the first subscribe is filled from history
    instead of going unnoticed until (or unless) a newer one arrives.
    """
    broker = LossyBroker()
    hub = Hub(broker=broker, anonymous=True, namespaces=[Namespace(name="h", history_size=50)])
    async with serving(hub) as clients:
        await hub.publish("h:x", "before")  # the stream is at offset 1
        a, _ = await clients.connect()
        reply = await a.command({"type": "subscribe", "channel": "h:x", "id": 1})
        assert reply["type"] == "subscribed" and reply["offset"] == 1
        broker.drop = {2}
        await hub.publish("h:x", "lost")  # stored, never delivered to the node
        broker.report_loss(["h:x"])
        with anyio.fail_after(5):
            message = await a.receive_json()
        assert (message["type"], message["offset"], message["data"]) == ("message", 2, "lost")
