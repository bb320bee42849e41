"""Fan-out batches a read's publications: one visit and one write per subscriber, order kept.

:meth:`hubbub._fanout.Fanout.flush` delivers what a client's read published
once that read is done (or at the loop's next turn), consecutive publications
of one channel as one run. These tests attack what batching could break,
against a real ``hubbub serve`` with hand-written frames so that a whole burst
arrives in one read: order across channels, a subscriber leaving in the middle
of the burst, ``echo: false``, both codecs and a deflate client in one run, a
frozen subscriber closed while the run is written, and the counters.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from hubbub._frames import OWN_DEFLATE, PLAIN, SHARED_DEFLATE, SharedFrame, SharedRun

from .servers import Server
from .test_direct_reader import RawClient, text
from .test_preframed import _no_errors

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _publish(channel: str, n: int, **extra: Any) -> bytes:
    return text({"type": "publish", "channel": channel, "data": {"n": n}, "id": n, **extra})


def _messages(client: RawClient, channel: str | None = None) -> list[Any]:
    return [
        m["data"]["n"]
        for m in client.messages
        if m["type"] == "message" and (channel is None or m["channel"] == channel)
    ]


async def _subscribe(client: RawClient, *channels: str) -> None:
    before = sum(m["type"] == "subscribed" for m in client.messages)
    await client.write(
        b"".join(
            text({"type": "subscribe", "channel": c, "id": 1000 + i})
            for i, c in enumerate(channels)
        )
    )
    await client.until(
        lambda: sum(m["type"] == "subscribed" for m in client.messages) >= before + len(channels)
    )


async def test_a_burst_across_channels_arrives_in_publish_order(server: Server) -> None:
    """Publications of two channels interleaved in one read reach a subscriber of both in the
    order they were published, not grouped by channel."""
    subscriber = await RawClient.open(server.port)
    publisher = await RawClient.open(server.port)
    try:
        await _subscribe(subscriber, "mixa", "mixb")
        burst = [_publish("mixa" if n % 3 else "mixb", n) for n in range(1, 61)]
        await publisher.write(b"".join(burst))
        await subscriber.until(lambda: len(_messages(subscriber)) >= 60)
        assert _messages(subscriber) == list(range(1, 61))
        await publisher.until(lambda: sum(m["type"] == "ack" for m in publisher.messages) >= 60)
    finally:
        await subscriber.close()
        await publisher.close()
    _no_errors(server)


async def test_leaving_in_the_middle_of_a_burst_cuts_it_exactly(server: Server) -> None:
    """A subscriber whose own read publishes, unsubscribes, then publishes again gets what was
    published before it left (before ``unsubscribed``) and nothing after; another subscriber
    gets everything."""
    leaver = await RawClient.open(server.port)
    other = await RawClient.open(server.port)
    try:
        await _subscribe(leaver, "cut")
        await _subscribe(other, "cut")
        data = b"".join(_publish("cut", n) for n in (1, 2, 3))
        data += text({"type": "unsubscribe", "channel": "cut", "id": 50})
        data += b"".join(_publish("cut", n) for n in (4, 5))
        await leaver.write(data)
        await other.until(lambda: len(_messages(other)) >= 5)
        assert _messages(other) == [1, 2, 3, 4, 5]
        await leaver.until(lambda: sum(m["type"] == "ack" for m in leaver.messages) >= 5)
        kinds = [
            (m["type"], m["data"]["n"] if m["type"] == "message" else m.get("id"))
            for m in leaver.messages[1:]
            if m["type"] in ("message", "unsubscribed")
        ]
        assert kinds == [
            ("message", 1),
            ("message", 2),
            ("message", 3),
            ("unsubscribed", 50),
        ]
        await asyncio.sleep(0.2)  # nothing more arrives
        assert _messages(leaver) == [1, 2, 3]
    finally:
        await leaver.close()
        await other.close()
    _no_errors(server)


async def test_echo_false_in_a_burst_skips_only_the_sender(server: Server) -> None:
    """``echo: false`` publications in a burst of ordinary ones: the sender misses exactly
    those, every other subscriber gets all of them, in order."""
    sender = await RawClient.open(server.port)
    other = await RawClient.open(server.port)
    try:
        await _subscribe(sender, "quiet")
        await _subscribe(other, "quiet")
        burst = [_publish("quiet", n, echo=n % 4 != 0) for n in range(1, 41)]
        await sender.write(b"".join(burst))
        await other.until(lambda: len(_messages(other)) >= 40)
        assert _messages(other) == list(range(1, 41))
        await sender.until(lambda: sum(m["type"] == "ack" for m in sender.messages) >= 40)
        await asyncio.sleep(0.2)
        assert _messages(sender) == [n for n in range(1, 41) if n % 4 != 0]
    finally:
        await sender.close()
        await other.close()
    _no_errors(server)


async def test_one_run_reaches_json_msgpack_and_deflate_subscribers_alike(server: Server) -> None:
    """One burst, small and large payloads alternating, to a JSON subscriber, a MessagePack
    one and one whose deflate has context takeover (large payloads compressed its own way,
    small ones shared): each decodes every message, in order."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    publisher = await RawClient.open(server.port)
    async with (
        connect(url, compression=None) as plain,
        connect(url, compression=None, subprotocols=["hubbub.v1.msgpack"]) as packed,
        connect(url, compression="deflate") as deflated,
    ):
        assert packed.subprotocol == "hubbub.v1.msgpack"
        for ws, codec in ((plain, "json"), (packed, "msgpack"), (deflated, "json")):
            assert _decode(await ws.recv(), codec)["type"] == "welcome"
            subscribe = {"type": "subscribe", "channel": "codecs", "id": 1}
            if codec == "msgpack":
                await ws.send(msgspec.msgpack.encode(subscribe))
            else:
                await ws.send(json.dumps(subscribe))
        for ws, codec in ((plain, "json"), (packed, "msgpack"), (deflated, "json")):
            reply = await _until(ws, codec, "subscribed")
            assert reply["channel"] == "codecs"
        burst = []
        for n in range(1, 31):
            data: dict[str, Any] = {"n": n, "pad": "p" * (2000 if n % 2 else 10)}
            burst.append(text({"type": "publish", "channel": "codecs", "data": data, "id": n}))
        await publisher.write(b"".join(burst))
        for ws, codec in ((plain, "json"), (packed, "msgpack"), (deflated, "json")):
            got = []
            while len(got) < 30:
                message = await _until(ws, codec, "message")
                got.append(message["data"]["n"])
                assert len(message["data"]["pad"]) == (2000 if message["data"]["n"] % 2 else 10)
            assert got == list(range(1, 31)), codec
    await publisher.close()
    _no_errors(server)


def _decode(frame: str | bytes, codec: str) -> Any:
    if codec == "msgpack":
        assert isinstance(frame, bytes)
        return msgspec.msgpack.decode(frame)
    return json.loads(frame)


async def _until(ws: Any, codec: str, kind: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            message = _decode(await ws.recv(), codec)
            if message["type"] == kind:
                return message


async def test_a_frozen_subscriber_closed_mid_run_costs_the_others_nothing(
    server: Server,
) -> None:
    """A subscriber that never reads fills up and is closed 1013 while runs are written; the
    subscriber that reads gets every publication in order, and the server logs no error."""
    sleeper = await RawClient.open(server.port)
    reader = await RawClient.open(server.port)
    publisher = await RawClient.open(server.port)
    reading: asyncio.Task[None] | None = None
    try:
        await _subscribe(sleeper, "freeze")
        await _subscribe(reader, "freeze")
        payload = "f" * 30_000
        # The reader reads all along, as a live client does.
        reading = asyncio.create_task(reader.until(lambda: False, within=60))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        sent, batch = 0, 90  # the demo hub allows a burst of 100 commands, then 50 a second
        while "closing a slow consumer" not in server.log():
            data = b"".join(
                text(
                    {
                        "type": "publish",
                        "channel": "freeze",
                        "data": {"n": sent + i, "pad": payload},
                        "id": sent + i + 1,
                    }
                )
                for i in range(batch)
            )
            sent += batch
            await publisher.write(data)
            await publisher.until(
                lambda n=sent: sum(m["type"] == "ack" for m in publisher.messages) >= n
            )
            assert loop.time() < deadline, "the sleeper was never closed"
            batch = 10
            await asyncio.sleep(0.25)
        while len(_messages(reader)) < sent and loop.time() < deadline:
            assert not reading.done(), reading
            await asyncio.sleep(0.05)
        assert _messages(reader) == list(range(sent))
    finally:
        if reading is not None:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
        await sleeper.close()
        await reader.close()
        await publisher.close()
    _no_errors(server)


def test_a_run_joins_each_kind_of_frame_once() -> None:
    """A run is its frames joined, per connection kind; a connection that compresses large
    payloads with its own context gets ``None`` (one by one instead) only when one is large."""
    small, large = SharedFrame(b"s" * 10, False), SharedFrame(b"L" * 1000, False)
    run = SharedRun([small, large, small])
    assert run.size == 1020
    plain = run.frame(PLAIN)
    assert plain == small.frame(PLAIN) + large.frame(PLAIN) + small.frame(PLAIN)
    assert run.frame(PLAIN) is plain  # joined once
    shared = run.frame(SHARED_DEFLATE)
    assert shared is not None and shared[10 + 2 :].startswith(bytes([0x81 | 0x40]))
    assert run.frame(OWN_DEFLATE) is None
    assert SharedRun([small, small]).frame(OWN_DEFLATE) == small.frame(PLAIN) * 2
