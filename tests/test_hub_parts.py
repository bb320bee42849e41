"""The seams of the hub's parts: control commands on the wire, typed broker calls, 0.1 names.

The behaviour behind them (fan-out, joins, presence, repair) is tested through
the hub in ``test_hub.py``, ``test_recovery.py`` and ``test_repair.py``; this
file holds what the split into modules added or must keep.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
import msgspec
import pytest

from hubbub import BrokerUnavailable, Hub, MemoryBroker, Namespace
from hubbub._control import (
    CONTROL_CHANNEL,
    DisconnectUser,
    SubscribeUser,
    UnsubscribeUser,
    decode_control,
    encode_control,
)
from hubbub.brokers import HistoryOptions, HistoryPage, Idempotency, Publication
from hubbub.messages import Position

T = TypeVar("T")


def test_control_commands_read_what_0_1_nodes_send() -> None:
    """The JSON a 0.1 node publishes on ``$control`` decodes to the matching command."""
    disconnect = b'{"op":"disconnect","user":"u","reason":"bye","code":4403,"node":"n1"}'
    assert decode_control(disconnect) == DisconnectUser("n1", "u", "bye", 4403)
    subscribe = b'{"op":"subscribe","user":"u","channel":"room:a","node":"n1"}'
    assert decode_control(subscribe) == SubscribeUser("n1", "u", "room:a")
    unsubscribe = b'{"op":"unsubscribe","user":"u","channel":"room:a","node":"n1"}'
    assert decode_control(unsubscribe) == UnsubscribeUser("n1", "u", "room:a")


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b'{"op":"disconnect"}', b'{"op":"reboot","node":"n1"}', b"\xff"],
)
def test_junk_on_the_control_channel_is_not_a_command(data: bytes) -> None:
    """Malformed JSON, a missing ``node`` or an unknown ``op`` decode to ``None``, not a crash."""
    assert decode_control(data) is None


def test_control_commands_are_published_as_0_1_nodes_read_them() -> None:
    """A command travels as a ``control`` publication on ``$control`` with 0.1's JSON fields."""
    publication = encode_control(DisconnectUser("n2", "ann", "kicked", 4403))
    assert publication.channel == CONTROL_CHANNEL and publication.kind == "control"
    assert publication.codec == "json"
    assert msgspec.json.decode(publication.data) == {
        "op": "disconnect",
        "node": "n2",
        "user": "ann",
        "reason": "kicked",
        "code": 4403,
    }
    subscribe = msgspec.json.decode(encode_control(SubscribeUser("n2", "ann", "room:a")).data)
    assert subscribe == {"op": "subscribe", "node": "n2", "user": "ann", "channel": "room:a"}


async def _relay(call: Awaitable[T]) -> T:
    """Await ``call`` inside a coroutine named otherwise than the broker method."""
    return await call


class RelayingBroker(MemoryBroker):
    """A memory broker whose methods return a wrapping coroutine (as a decorator would)."""

    def publish(  # type: ignore[override]
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Awaitable[Publication]:
        return _relay(super().publish(publication, history, idempotency))

    def history(  # type: ignore[override]
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> Awaitable[HistoryPage]:
        return _relay(super().history(channel, since=since, limit=limit, reverse=reverse))


@pytest.mark.anyio
async def test_broker_latency_is_labelled_by_the_method_called(anyio_backend: str) -> None:
    """Each call is timed under the broker method's name, not its coroutine's."""
    hub = Hub(broker=RelayingBroker(), namespaces=[Namespace(history_size=5)])
    async with hub:
        await hub.publish("a", 1)
        await hub.history("a")
    latency = hub.stats.broker_latency
    assert sum(latency["publish"].counts) >= 1 and sum(latency["history"].counts) == 1
    assert "other" not in latency and "_relay" not in latency


class HangingHistory(MemoryBroker):
    """A memory broker whose history reads never answer."""

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.anyio
async def test_broker_timeout_set_after_construction_applies(anyio_backend: str) -> None:
    """``hub.broker_timeout = s`` (a 0.1 attribute) bounds the next broker call."""
    hub = Hub(broker=HangingHistory(), namespaces=[Namespace(history_size=5)])
    hub.broker_timeout = 0.05
    assert hub.broker_timeout == 0.05
    async with hub:
        with pytest.raises(BrokerUnavailable, match=r"within 0\.05 s"):
            await hub.history("a")


class HangingPublish(MemoryBroker):
    """A memory broker whose publish never answers (an override that awaits)."""

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.anyio
async def test_a_memory_broker_subclass_overriding_publish_keeps_the_timeout(
    anyio_backend: str,
) -> None:
    """Only MemoryBroker's own publish is called without a timeout; an override is bounded."""
    hub = Hub(broker=HangingPublish(), namespaces=[Namespace(history_size=5)])
    hub.broker_timeout = 0.05
    async with hub:
        with pytest.raises(BrokerUnavailable, match=r"within 0\.05 s"):
            await hub.publish("a", 1)
    assert sum(hub.stats.broker_latency["publish"].counts) == 1


class BrokenPublish(MemoryBroker):
    """MemoryBroker's own publish (the synchronous path) failing inside, as a bug would."""

    def publish_now(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        raise KeyError("a bug in the broker")


@pytest.mark.anyio
async def test_a_failing_synchronous_memory_publish_is_an_internal_error(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The synchronous path maps errors as every broker call does: 500, logged, timed."""
    from hubbub import InternalError

    hub = Hub(broker=BrokenPublish())
    async with hub:
        with pytest.raises(InternalError):
            await hub.publish("a", 1)
    assert "broker call failed" in caplog.text
    assert sum(hub.stats.broker_latency["publish"].counts) == 1


def test_hub_module_keeps_its_0_1_names() -> None:
    """Names other modules and users imported from ``hubbub.hub`` in 0.1 still import."""
    import hubbub.hub as hub_module

    names: dict[str, Any] = {
        name: getattr(hub_module, name)
        for name in (
            "BACKGROUND_BROKER_CALLS",
            "BROKER_BUCKETS",
            "CONTROL_CHANNEL",
            "MAX_HISTORY_LIMIT",
            "REPLY_BACKLOG",
            "REPLY_FRAME_BYTES",
            "Hub",
            "HubStats",
            "LatencyHistogram",
            "running_hubs",
            "_message",
        )
    }
    assert names["MAX_HISTORY_LIMIT"] == 100 and names["CONTROL_CHANNEL"] == "$control"
    publication = Publication(channel="a", data=b"[1]", codec="json", ts=1)
    from hubbub.messages import JSON

    assert names["_message"](publication, JSON).channel == "a"
