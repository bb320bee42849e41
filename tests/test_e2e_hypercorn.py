"""hubbub under hypercorn on trio: a top-level ``HubApp`` started from the ASGI lifespan.

``tests/apps/hyper_app.py`` builds ``app = HubApp(Hub(anonymous=True))``; hypercorn
runs it with ``--worker-class trio``. The clients are real ``websockets`` clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .apps.wsclient import JSON, MSGPACK, Client, open_client, open_clients
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

HYPERCORN = [
    "-m",
    "hypercorn",
    "--worker-class",
    "trio",
    "hyper_app:app",
    "--bind",
    "127.0.0.1:{port}",
]


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only (the server runs trio)."""
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """hypercorn (trio worker) serving ``hyper_app:app``, shared by this module."""
    with run_server(HYPERCORN, tmp_path_factory.mktemp("hypercorn")) as running:
        yield running


async def _refusal(url: str, **options: object) -> tuple[int, dict[str, object]]:
    """Try to open a WebSocket that must be refused; its HTTP status and JSON body."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, proxy=None, open_timeout=10, **options):  # type: ignore[arg-type]
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"null")


def test_health_is_200(server: Server) -> None:
    """``GET /health`` answers 200 under hypercorn."""
    with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}


async def test_welcome_first_and_hub_started_by_lifespan(server: Server) -> None:
    """The hub runs (started by the lifespan): a client is accepted and gets ``welcome`` first."""
    async with open_client(server.ws_url, welcome=False) as client:
        welcome = await client.recv()
    assert welcome["type"] == "welcome"
    assert welcome["version"] == 1
    assert welcome["user"] == ""
    assert welcome["subscribed"] == []


async def test_subscribe_publish_between_clients(server: Server) -> None:
    """Subscribe, publish, ``ack`` and ``message`` work between clients under trio."""
    url = server.ws_url
    async with open_client(url) as a, open_client(url) as b:
        await a.subscribe("trio-room")
        ack = await b.request({"type": "publish", "channel": "trio-room", "data": [1], "id": 3})
        assert ack == {"type": "ack", "id": 3}
        [message] = await a.messages(1)
        assert message["channel"] == "trio-room"
        assert message["data"] == [1]
        assert message["sender"] == {"user": "", "client": b.welcome["client"]}


async def test_echo_false_excludes_the_publisher(server: Server) -> None:
    """``echo: false`` leaves the publisher out under trio too."""
    async with open_client(server.ws_url) as a, open_client(server.ws_url) as b:
        await a.subscribe("trio-echo")
        await b.subscribe("trio-echo")
        await a.publish("trio-echo", 1, echo=False)
        await a.publish("trio-echo", 2)
        assert [m["data"] for m in await a.messages(1)] == [2]
        assert [m["data"] for m in await b.messages(2)] == [1, 2]


async def test_fan_out_to_100_clients(server: Server) -> None:
    """100 subscribers each receive every publication exactly once, in order."""
    n_clients, n_messages = 100, 20
    subscribers, stack = await open_clients(server.ws_url, n_clients)
    async with stack, open_client(server.ws_url) as publisher:
        await asyncio.gather(*(s.subscribe("trio-fan") for s in subscribers))
        await publisher.publish_pipelined("trio-fan", [*range(n_messages), "end"])

        async def until_end(subscriber: Client) -> list[object]:
            seen: list[object] = []
            async with asyncio.timeout(30):
                while not seen or seen[-1] != "end":
                    [message] = await subscriber.messages(1, 30)
                    seen.append(message["data"])
            return seen

        results = await asyncio.gather(*(until_end(s) for s in subscribers))
    assert results == [[*range(n_messages), "end"]] * n_clients


async def test_json_and_msgpack_clients_share_a_channel(server: Server) -> None:
    """JSON and MessagePack clients see each other's publications under trio."""
    url = server.ws_url
    async with (
        open_client(url, subprotocols=[JSON]) as text,
        open_client(url, subprotocols=[MSGPACK]) as binary,
    ):
        assert text.ws.subprotocol == JSON
        assert binary.ws.subprotocol == MSGPACK
        await text.subscribe("trio-mixed")
        await binary.subscribe("trio-mixed")
        await binary.publish("trio-mixed", {"raw": b"\x01\x02", "n": 1})
        [seen] = await text.messages(1)
        assert seen["data"] == {"raw": base64.b64encode(b"\x01\x02").decode(), "n": 1}
        await text.publish("trio-mixed", {"s": "ok"})
        seen_by_binary = await binary.messages(2)
        assert [m["data"] for m in seen_by_binary] == [{"raw": b"\x01\x02", "n": 1}, {"s": "ok"}]


async def test_unknown_subprotocol_only_is_refused_400(server: Server) -> None:
    """hypercorn offers the denial-response extension: unknown subprotocols get HTTP 400."""
    status, body = await _refusal(server.ws_url + "/ws", subprotocols=["chat.v2"])
    assert status == 400
    assert body["code"] == 400
    assert isinstance(body["reason"], str) and body["reason"]


async def test_wrong_websocket_path_is_404(server: Server) -> None:
    """A WebSocket to a path other than ``/ws`` gets HTTP 404 under hypercorn."""
    status, body = await _refusal(server.ws_url + "/elsewhere")
    assert status == 404
    assert body["code"] == 404


async def test_sigterm_ends_clients_and_exits_0(tmp_path: Path) -> None:
    """On SIGTERM hypercorn ends every client within its grace period and exits 0.

    hypercorn closes connections itself before the lifespan shutdown lets the hub
    drain, so a ``disconnect`` may be missing (§9); any close frame that does come
    follows a ``disconnect`` with the same code and ``reconnect: true``.
    """
    with run_server(HYPERCORN, tmp_path) as own:
        async with open_client(own.ws_url) as a, open_client(own.ws_url) as b:
            await a.subscribe("bye")
            await b.subscribe("bye")
            own.process.send_signal(signal.SIGTERM)
            endings = await asyncio.gather(a.until_closed(15), b.until_closed(15))
        for ending in endings:
            if ending.code is not None:
                assert ending.disconnect is not None
                assert ending.disconnect["code"] == ending.code
                assert ending.disconnect["reconnect"] is True
        try:
            code = await asyncio.to_thread(own.process.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hypercorn still running 15 s after SIGTERM:\n{own.log()}")
        assert code == 0
