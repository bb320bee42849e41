"""Every limit of protocol §6, crossed by real clients against a real ``hubbub serve``.

Two hubs from ``tests/apps/small_limits.py``: ``hub`` (0.5 s pings, 1 KiB frames,
3 channels per client) and ``queue_hub`` (long pings, a small send queue) where
a frozen subscriber meets the slow-consumer policy and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from .apps.small_limits import hub as small_hub
from .apps.small_limits import queue_hub
from .apps.wsclient import Client, open_client
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

SMALL = small_hub.limits
QUEUE = queue_hub.limits


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``small_limits:hub`` served by ``hubbub serve``."""
    argv = ["-m", "hubbub", "serve", "small_limits:hub", "--port", "{port}"]
    with run_server(argv, tmp_path_factory.mktemp("small")) as server:
        yield server


@pytest.fixture(scope="module")
def queued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``small_limits:queue_hub`` served by ``hubbub serve``."""
    argv = ["-m", "hubbub", "serve", "small_limits:queue_hub", "--port", "{port}"]
    with run_server(argv, tmp_path_factory.mktemp("queued")) as server:
        yield server


def _invalid_frames(n: int) -> list[tuple[str, int | None]]:
    """``n`` different invalid messages, each with the ``id`` its ``error`` must carry."""
    kinds: list[tuple[str, int | None]] = [
        ("this is not json", None),
        ('{"type": "subscribe", "channel": "no spaces allowed", "id": 7}', 7),
        ('{"type": "no-such-type", "id": 8}', 8),
        ('{"type": "publish", "channel": "a"}', None),
        ("[1, 2, 3]", None),
        ('{"type": "subscribe", "channel": "ok", "id": -1}', None),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


async def _send_invalid(client: Client, n: int) -> None:
    """Send ``n`` invalid messages and check each gets ``error`` 400 with the readable ``id``."""
    for frame, command_id in _invalid_frames(n):
        await client.send_raw(frame)
        reply = await client.recv()
        assert reply["type"] == "error", reply
        assert reply["code"] == 400
        assert isinstance(reply["reason"], str) and reply["reason"]
        assert reply.get("id") == command_id, (frame, reply)


def _payload(size: int) -> str:
    """An incompressible string of ``size`` characters."""
    return base64.b64encode(os.urandom(size)).decode()[:size]


async def _publish_windowed(
    publisher: Client, channel: str, n: int, payload: str, *, window: int = 4
) -> list[dict[str, Any]]:
    """Publish ``n`` numbered messages with at most ``window`` unacknowledged; return the acks."""
    acks: list[dict[str, Any]] = []
    sent = 0
    async with asyncio.timeout(30):
        while len(acks) < n:
            while sent < n and sent - len(acks) < window:
                sent += 1
                await publisher.send(
                    {
                        "type": "publish",
                        "channel": channel,
                        "data": {"seq": sent - 1, "p": payload},
                        "id": sent,
                        "echo": False,
                    }
                )
            reply = await publisher.recv(10)
            assert reply["type"] == "ack", reply
            assert reply["id"] == len(acks) + 1
            acks.append(reply)
    return acks


async def _check_healthy(server: Server) -> None:
    """A fresh pair of clients can still subscribe, publish and receive."""
    async with open_client(server.ws_url) as a, open_client(server.ws_url) as b:
        await a.subscribe("after")
        await b.publish("after", {"still": "working"})
        [message] = await a.messages(1)
        assert message["data"] == {"still": "working"}


# -- frame size ------------------------------------------------------------------------------


async def test_frame_over_max_message_size_closes_1009(small: Server) -> None:
    """A frame over ``max_message_size`` gets ``disconnect`` 1009 and a close 1009."""
    async with open_client(small.ws_url) as client:
        big = '{"type": "publish", "channel": "a", "data": "' + "x" * SMALL.max_message_size + '"}'
        await client.send_raw(big)
        ending = await client.until_closed()
    assert [m["type"] for m in ending.messages if m["type"] != "ping"] == ["disconnect"]
    disconnect = ending.disconnect
    assert disconnect is not None
    assert disconnect["code"] == 1009
    assert disconnect["reconnect"] is False
    assert isinstance(disconnect["reason"], str)
    assert ending.code == 1009


async def test_frame_at_max_message_size_is_accepted(small: Server) -> None:
    """A frame of exactly ``max_message_size`` bytes is handled normally."""
    async with open_client(small.ws_url) as client:
        head = '{"type": "publish", "channel": "a", "id": 1, "data": "'
        filler = "y" * (SMALL.max_message_size - len(head) - 2)
        frame = head + filler + '"}'
        assert len(frame.encode()) == SMALL.max_message_size
        await client.send_raw(frame)
        reply = await client.recv()
        assert reply == {"type": "ack", "id": 1}


async def test_frame_over_the_server_limit_closes_1009(small: Server) -> None:
    """A frame over uvicorn's own size limit (1 MiB here) is closed 1009 by the server."""
    async with open_client(small.ws_url) as client:
        try:
            await client.send_raw("x" * (2 * 1024 * 1024))
        except ConnectionClosed as exc:
            # The server closed while the frame was still being written.
            assert exc.rcvd is not None
            code = exc.rcvd.code
        else:
            ending = await client.until_closed()
            code = ending.code
            if ending.disconnect is not None:
                assert ending.disconnect["code"] == 1009
    assert code == 1009


# -- invalid messages ------------------------------------------------------------------------


async def test_ten_invalid_messages_in_a_row_close_1008(small: Server) -> None:
    """Ten invalid messages in a row: ten ``error`` 400, then ``disconnect`` 1008, close 1008."""
    # No pongs: a pong is a valid command and would reset the count.
    async with open_client(small.ws_url, answer_pings=False) as client:
        await _send_invalid(client, SMALL.max_invalid - 1)
        frame, command_id = _invalid_frames(SMALL.max_invalid)[-1]
        await client.send_raw(frame)
        ending = await client.until_closed()
    error, disconnect = [m for m in ending.messages if m["type"] != "ping"]
    assert error["type"] == "error"
    assert error["code"] == 400
    assert error.get("id") == command_id
    assert disconnect["type"] == "disconnect"
    assert disconnect["code"] == 1008
    assert disconnect["reconnect"] is False
    assert isinstance(disconnect["reason"], str)
    assert ending.code == 1008


async def test_a_valid_command_resets_the_invalid_count(small: Server) -> None:
    """A valid command between invalid ones restarts the count towards 1008."""
    async with open_client(small.ws_url, answer_pings=False) as client:
        await _send_invalid(client, SMALL.max_invalid - 1)
        await client.subscribe("reset")
        await _send_invalid(client, SMALL.max_invalid - 1)
        # Still open after 18 invalid messages: the next command is answered.
        await client.publish("reset", "still here", echo=False)
        await _send_invalid(client, SMALL.max_invalid - 1)
        await client.send_raw("one too many")
        ending = await client.until_closed()
    assert [m["type"] for m in ending.messages if m["type"] not in ("ping", "message")] == [
        "error",
        "disconnect",
    ]
    assert ending.disconnect is not None
    assert ending.disconnect["code"] == 1008
    assert ending.code == 1008


# -- liveness --------------------------------------------------------------------------------


async def test_silent_client_gets_pings_then_4408(small: Server) -> None:
    """A client that never answers gets ``ping``s, then ``disconnect`` 4408 and close 4408."""
    loop = asyncio.get_running_loop()
    idle = SMALL.ping_interval + SMALL.pong_timeout
    async with open_client(small.ws_url, answer_pings=False) as client:
        started = loop.time()
        assert client.welcome["ping"] == SMALL.ping_interval
        assert client.welcome["pong_timeout"] == SMALL.pong_timeout
        ending = await client.until_closed(idle + 5)
        elapsed = loop.time() - started
    kinds = [m["type"] for m in ending.messages]
    assert kinds[-1] == "disconnect"
    assert set(kinds[:-1]) == {"ping"}
    assert ending.disconnect is not None
    assert ending.disconnect["code"] == 4408
    assert ending.disconnect["reconnect"] is True
    assert ending.code == 4408
    # Not before the idle deadline (with a little clock slack), and not long after it.
    assert idle - 0.2 <= elapsed <= idle + 3.0


async def test_client_answering_pongs_stays_connected(small: Server) -> None:
    """A client that answers every ``ping`` with ``pong`` outlives the idle deadline."""
    loop = asyncio.get_running_loop()
    idle = SMALL.ping_interval + SMALL.pong_timeout
    async with open_client(small.ws_url) as client:
        until = loop.time() + 2.5 * idle
        while loop.time() < until:
            try:
                message = await client.recv(max(0.01, until - loop.time()))
            except TimeoutError:
                break
            assert message["type"] != "disconnect", message
        assert client.pings >= 3
        await client.subscribe("alive")
        await client.publish("alive", 1)


async def test_pipelined_burst_gets_every_reply(small: Server) -> None:
    """A reading client that pipelines 99 commands (within the rate burst) gets every reply.

    Its socket is writable throughout, so it is no slow consumer, even though
    the burst is larger than the send queue (20 messages here); the 100th
    command, a subscribe, still fits the burst of 100.
    """
    n = 99
    async with open_client(small.ws_url) as client:
        acks = await client.publish_pipelined("burst", list(range(n)), 10)
        assert [a["id"] for a in acks] == list(range(1, n + 1))
        await client.subscribe("after-burst")


# -- command rate ----------------------------------------------------------------------------


async def test_flooding_gets_429_then_closes_4429(small: Server) -> None:
    """Commands beyond the rate (50/s, burst 100) get ``error`` 429; 50 of them close 4429."""
    n = 300
    async with open_client(small.ws_url) as client:
        with contextlib.suppress(ConnectionClosed):
            for i in range(n):
                await client.send({"type": "publish", "channel": "flood", "data": i, "id": i + 1})
        ending = await client.until_closed(5)
    replies = [m for m in ending.messages if m["type"] in ("ack", "error")]
    refused = [m for m in replies if m["type"] == "error"]
    assert refused, "no command was refused"
    assert {m["code"] for m in refused} == {429}
    # Replies come in command order, refused or not.
    assert [m["id"] for m in replies] == list(range(1, len(replies) + 1))
    assert len(replies) - len(refused) < n
    assert 50 <= len(refused) <= 51
    assert ending.disconnect is not None
    assert ending.disconnect["code"] == 4429
    assert ending.disconnect["reconnect"] is True
    assert ending.code == 4429


# -- channels per client ---------------------------------------------------------------------


async def test_channels_per_client_limit_gets_429(small: Server) -> None:
    """Subscribing beyond ``max_channels`` gets ``error`` 429; freeing one makes room."""
    async with open_client(small.ws_url) as client:
        for i in range(SMALL.max_channels):
            await client.subscribe(f"c{i}")
        reply = await client.request({"type": "subscribe", "channel": "one-too-many", "id": 99})
        assert reply["type"] == "error"
        assert reply["code"] == 429
        assert reply["id"] == 99
        unsubscribed = await client.request({"type": "unsubscribe", "channel": "c0"})
        assert unsubscribed["type"] == "unsubscribed"
        assert unsubscribed["channel"] == "c0"
        await client.subscribe("one-too-many")


# -- slow consumers --------------------------------------------------------------------------


async def test_frozen_subscriber_is_closed_and_nobody_else_stalls(queued: Server) -> None:
    """A subscriber that stops reading is closed 1013; publisher and other subscribers go on."""
    n = 300
    payload = _payload(24 * 1024)
    url = queued.ws_url
    async with (
        open_client(url) as frozen,
        open_client(url) as first,
        open_client(url) as second,
        open_client(url) as publisher,
    ):
        for client in (frozen, first, second):
            await client.subscribe("firehose")
        frozen.ws.transport.pause_reading()

        async def receive_all(client: Client) -> list[int]:
            return [m["data"]["seq"] for m in await client.messages(n, 60)]

        async with asyncio.timeout(60):
            got_first, got_second, acks = await asyncio.gather(
                receive_all(first),
                receive_all(second),
                _publish_windowed(publisher, "firehose", n, payload),
            )
        assert got_first == list(range(n))
        assert got_second == list(range(n))
        assert [a["id"] for a in acks] == list(range(1, n + 1))

        frozen.ws.transport.resume_reading()
        ending = await frozen.until_closed(20)
    seqs = [m["data"]["seq"] for m in ending.messages if m["type"] == "message"]
    # It lost messages (it was ended, not waited for), and what it got has no gap.
    assert len(seqs) < n
    assert seqs == list(range(len(seqs)))
    if ending.code is not None:
        # The close frame got through before the close timeout: 1013 with `disconnect`.
        assert ending.code == 1013
        assert ending.disconnect is not None
        assert ending.disconnect["code"] == 1013
        assert ending.disconnect["reconnect"] is True
    else:
        # The server gave up after its close timeout and dropped the connection.
        assert ending.disconnect is None
    await _check_healthy(queued)


async def test_slow_consumer_on_a_lossy_channel_stays_connected(queued: Server) -> None:
    """On a ``drop_oldest`` channel a frozen subscriber loses messages but stays connected."""
    n = 300
    payload = _payload(24 * 1024)
    url = queued.ws_url
    async with (
        open_client(url) as frozen,
        open_client(url) as reader,
        open_client(url) as publisher,
    ):
        for client in (frozen, reader):
            await client.subscribe("lossy:cursor")
        frozen.ws.transport.pause_reading()
        async with asyncio.timeout(60):
            received, _ = await asyncio.gather(
                reader.messages(n, 60),
                _publish_windowed(publisher, "lossy:cursor", n, payload),
            )
        assert [m["data"]["seq"] for m in received] == list(range(n))

        frozen.ws.transport.resume_reading()
        seqs: list[int] = []
        async with asyncio.timeout(20):
            while not seqs or seqs[-1] != n - 1:
                message = await frozen.recv(10)
                assert message["type"] == "message", message
                seqs.append(message["data"]["seq"])
        # It lost some (the oldest), kept the order, and got the newest.
        assert len(seqs) < n
        assert seqs == sorted(set(seqs))
        # Still connected: commands are answered.
        await frozen.subscribe("after-loss")
        await frozen.publish("after-loss", "ok")
    await _check_healthy(queued)
