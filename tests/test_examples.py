"""Every file under ``examples/`` is imported and driven, so none of them goes stale.

Each example is exercised in process through Starlette's ``TestClient`` (which
runs the app's lifespan), and the standalone, Starlette, FastAPI, Litestar and
plain-Python ones also as real servers on a free loopback port with a real
``websockets`` client.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from examples import fastapi_app, litestar_app, python_api, standalone, starlette_mount
from starlette.testclient import TestClient, WebSocketDenialResponse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from hubbub import Hub

from .servers import Server, run_server

TIMEOUT = 5.0


# -- helpers ----------------------------------------------------------------------------------


def subscribe_tc(ws: Any, channel: str = "news") -> None:
    """Read ``welcome`` on a TestClient WebSocket, then subscribe to ``channel``."""
    assert ws.receive_json()["type"] == "welcome"
    ws.send_json({"type": "subscribe", "channel": channel, "id": 1})
    reply = ws.receive_json()
    assert reply["type"] == "subscribed" and reply["channel"] == channel


def refused_status(client: TestClient, path: str) -> int:
    """The HTTP status refusing a WebSocket to ``path``."""
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect(path):
        pass  # pragma: no cover - the handshake is refused
    return info.value.status_code


def recv_json(ws: ClientConnection) -> dict[str, Any]:
    """The next frame from a real WebSocket, decoded, within the deadline."""
    message: dict[str, Any] = json.loads(ws.recv(timeout=TIMEOUT))
    return message


def subscribe_real(ws: ClientConnection, channel: str = "news") -> dict[str, Any]:
    """Read ``welcome`` on a real WebSocket, subscribe to ``channel``; return the welcome."""
    welcome = recv_json(ws)
    assert welcome["type"] == "welcome", welcome
    ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
    reply = recv_json(ws)
    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply
    return welcome


def post_json(url: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` as JSON; the status and the decoded JSON answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def ws_status(url: str) -> int:
    """The HTTP status a real server refuses a WebSocket handshake with."""
    with pytest.raises(InvalidStatus) as info, connect(url, open_timeout=TIMEOUT):
        pass  # pragma: no cover - the handshake is refused
    return info.value.response.status_code


def uvicorn_server(target: str, tmp_path: Path, ready_path: str) -> Any:
    """A real uvicorn process serving ``target`` on a free loopback port."""
    argv = ["-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "{port}"]
    return run_server(argv, tmp_path, ready_path=ready_path)


def publish_reaches_subscriber(server: Server, ws_path: str, announce_path: str) -> None:
    """Subscribe over a real WebSocket, publish over HTTP, receive the message."""
    with connect(server.ws_url + ws_path, open_timeout=TIMEOUT) as ws:
        subscribe_real(ws)
        status, body = post_json(server.url + announce_path, {"channel": "news", "data": [1, 2]})
        assert status == 200, body
        message = recv_json(ws)
    assert message["type"] == "message" and message["channel"] == "news"
    assert message["data"] == [1, 2] and "sender" not in message


# -- standalone -------------------------------------------------------------------------------


def test_standalone_is_a_hub_app() -> None:
    """The standalone example serves a HubApp of an anonymous hub."""
    assert standalone.app.hub is standalone.hub
    assert standalone.hub.anonymous


def test_standalone_in_process() -> None:
    """The standalone app starts its own hub; one client's publication reaches another."""
    assert standalone.hub.state == "stopped"
    with TestClient(standalone.app) as client:
        assert standalone.hub.running
        assert client.get("/health").json() == {"status": "ok"}
        with client.websocket_connect("/ws") as listener, client.websocket_connect("/ws") as talker:
            subscribe_tc(listener)
            assert talker.receive_json()["type"] == "welcome"
            talker.send_json({"type": "publish", "channel": "news", "data": "hi", "id": 7})
            assert talker.receive_json() == {"type": "ack", "id": 7}
            message = listener.receive_json()
            assert message["data"] == "hi" and message["sender"]["user"] == ""
    assert standalone.hub.state == "stopped"


def test_standalone_under_uvicorn(tmp_path: Path) -> None:
    """``uvicorn examples.standalone:app``: welcome, subscribe, a client's publication arrives."""
    with uvicorn_server("examples.standalone:app", tmp_path, "/health") as server:
        with (
            connect(server.ws_url + "/ws", open_timeout=TIMEOUT) as listener,
            connect(server.ws_url + "/ws", open_timeout=TIMEOUT) as talker,
        ):
            welcome = subscribe_real(listener)
            assert welcome["user"] == "" and welcome["version"] == 1
            talker_welcome = recv_json(talker)
            talker.send(json.dumps({"type": "publish", "channel": "news", "data": {"n": 1}}))
            message = recv_json(listener)
            assert message["data"] == {"n": 1}
            assert message["sender"]["client"] == talker_welcome["client"]
        assert ws_status(server.ws_url + "/wsx") == 404


def test_standalone_under_uvicorn_root_path(tmp_path: Path) -> None:
    """Behind ``--root-path /hub`` the standalone app still serves its socket."""
    argv = ["-m", "uvicorn", "examples.standalone:app", "--port", "{port}", "--root-path", "/hub"]
    with run_server(argv, tmp_path) as server:
        with connect(server.ws_url + "/ws", open_timeout=TIMEOUT) as ws:
            assert recv_json(ws)["type"] == "welcome"
        assert ws_status(server.ws_url + "/x/ws") == 404


# -- Starlette --------------------------------------------------------------------------------


def test_starlette_in_process() -> None:
    """Both the mounted ``/realtime/ws`` and the exact ``/ws`` get ``/announce``'s publication."""
    with TestClient(starlette_mount.app) as client:
        assert starlette_mount.hub.running
        assert client.get("/realtime/health").status_code == 200
        with (
            client.websocket_connect("/realtime/ws") as mounted,
            client.websocket_connect("/ws") as exact,
        ):
            subscribe_tc(mounted)
            subscribe_tc(exact)
            response = client.post("/announce", json={"channel": "news", "data": {"a": 1}})
            assert response.status_code == 200 and response.json() == {}
            for ws in (mounted, exact):
                message = ws.receive_json()
                assert message["channel"] == "news" and message["data"] == {"a": 1}
        assert refused_status(client, "/realtime/wsx") == 404
        assert refused_status(client, "/realtime/") == 404
    assert starlette_mount.hub.state == "stopped"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"channel": "nope:x", "data": 1}, 404),
        ({"channel": "bad channel", "data": 1}, 400),
        ({"data": 1}, 400),
        ([1, 2], 400),
    ],
)
def test_starlette_announce_errors(body: Any, status: int) -> None:
    """The Starlette example answers bad publications with the hub's HTTP status."""
    with TestClient(starlette_mount.app) as client:
        response = client.post("/announce", json=body)
    assert response.status_code == status
    assert response.json()["code"] == status


def test_starlette_announce_before_start() -> None:
    """Without the lifespan the hub is stopped and the WebSocket is refused 503."""
    client = TestClient(starlette_mount.app)  # not entered: no lifespan
    assert refused_status(client, "/realtime/ws") == 503


def test_starlette_under_uvicorn(tmp_path: Path) -> None:
    """The Starlette example under uvicorn: mounted and exact paths, server-side publish."""
    target = "examples.starlette_mount:app"
    with uvicorn_server(target, tmp_path, "/realtime/health") as server:
        publish_reaches_subscriber(server, "/realtime/ws", "/announce")
        publish_reaches_subscriber(server, "/ws", "/announce")
        assert ws_status(server.ws_url + "/realtime/wsx") == 404
        assert ws_status(server.ws_url + "/realtimex/ws") == 403


# -- FastAPI ----------------------------------------------------------------------------------


def test_fastapi_in_process() -> None:
    """The FastAPI example: ``/hub/ws`` receives what ``POST /announce`` publishes."""
    with TestClient(fastapi_app.app) as client:
        assert fastapi_app.hub.running
        assert client.get("/hub/health").status_code == 200
        with client.websocket_connect("/hub/ws") as ws:
            subscribe_tc(ws)
            response = client.post("/announce", json={"channel": "news", "data": "breaking"})
            assert response.status_code == 200 and response.json() == {}
            assert ws.receive_json()["data"] == "breaking"
        assert client.post("/announce", json={"channel": "nope:x", "data": 1}).status_code == 404
        assert client.post("/announce", json={"data": 1}).status_code == 422
        assert refused_status(client, "/hub/wsx") == 404
    assert fastapi_app.hub.state == "stopped"


def test_fastapi_under_uvicorn(tmp_path: Path) -> None:
    """The FastAPI example under uvicorn: subscribe over ``/hub/ws``, publish over HTTP."""
    with uvicorn_server("examples.fastapi_app:app", tmp_path, "/hub/health") as server:
        publish_reaches_subscriber(server, "/hub/ws", "/announce")
        assert ws_status(server.ws_url + "/hub/wsx") == 404


# -- Litestar ---------------------------------------------------------------------------------


def test_litestar_in_process() -> None:
    """The Litestar example: ``/hub/ws`` receives what ``POST /announce`` publishes."""
    with TestClient(litestar_app.app) as client:  # type: ignore[arg-type]
        assert litestar_app.hub.running
        assert client.post("/announce", json={"channel": "nope:x", "data": 1}).status_code == 404
        assert client.get("/hub/health").status_code == 200
        with client.websocket_connect("/hub/ws") as ws:
            subscribe_tc(ws)
            response = client.post("/announce", json={"channel": "news", "data": "breaking"})
            assert response.status_code == 200 and response.json() == {}
            assert ws.receive_json()["data"] == "breaking"
    assert litestar_app.hub.state == "stopped"


def test_litestar_under_uvicorn(tmp_path: Path) -> None:
    """The Litestar example under uvicorn: subscribe over ``/hub/ws``, publish over HTTP."""
    with uvicorn_server("examples.litestar_app:app", tmp_path, "/hub/health") as server:
        publish_reaches_subscriber(server, "/hub/ws", "/announce")


# -- plain Python -----------------------------------------------------------------------------


def test_python_api_imports_without_serving() -> None:
    """Importing the plain-Python example builds its hub and app but starts nothing."""
    assert isinstance(python_api.hub, Hub)
    assert python_api.app.hub is python_api.hub
    assert python_api.hub.state == "stopped"
    assert callable(python_api.main)


def test_python_api_producer_in_process() -> None:
    """The example's producer publishes numbered ticks that a subscriber receives in order."""
    with TestClient(python_api.app) as client, client.websocket_connect("/ws") as ws:
        subscribe_tc(ws, "ticks")
        produce = partial(python_api.produce_ticks, python_api.hub, interval=0.001, count=3)
        assert client.portal is not None
        assert client.portal.call(produce) == 3
        assert [ws.receive_json()["data"] for _ in range(3)] == [
            {"tick": 1},
            {"tick": 2},
            {"tick": 3},
        ]
    assert python_api.hub.state == "stopped"


@pytest.fixture
def python_api_server(tmp_path: Path) -> Iterator[Server]:
    """``python examples/python_api.py`` on a free port, ticking fast."""
    argv = ["examples/python_api.py", "--port", "{port}", "--interval", "0.05"]
    with run_server(argv, tmp_path) as server:
        yield server


def test_python_api_as_a_script(python_api_server: Server) -> None:
    """``python examples/python_api.py`` serves the hub and its ticks reach a subscriber."""
    with connect(python_api_server.ws_url + "/ws", open_timeout=TIMEOUT) as ws:
        subscribe_real(ws, "ticks")
        ticks = [recv_json(ws)["data"]["tick"] for _ in range(3)]
    assert ticks == list(range(ticks[0], ticks[0] + 3))
