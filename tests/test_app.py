"""``HubApp``, the ASGI shell: routing, the handshake's refusals, the lifespan, mounting.

Driven through Starlette's ``TestClient`` (which offers the WebSocket
denial-response extension, so refusals arrive as HTTP statuses), and as a raw
ASGI callable for the lifespan protocol on asyncio and on trio.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Literal

import anyio
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from hubbub import AuthenticationFailed, Hub, HubApp, Identity, MemoryBroker
from hubbub.app import route_path

from .dripped import dripped_request

Event = MutableMapping[str, Any]
Backend = Literal["asyncio", "trio"]


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """TestClient runs the app on asyncio and on trio."""
    value: Backend = request.param
    return value


@pytest.fixture
def hub() -> Hub:
    """A hub that admits anonymous clients."""
    return Hub(anonymous=True)


@pytest.fixture
def client(hub: Hub, backend: Backend) -> Iterator[TestClient]:
    """A TestClient around a top-level ``HubApp`` with its lifespan running."""
    with TestClient(HubApp(hub), backend=backend) as test_client:
        yield test_client


def welcome_of(client: TestClient, path: str = "/ws", **kwargs: Any) -> dict[str, Any]:
    """Connect to ``path``, return the ``welcome`` message, and leave."""
    with client.websocket_connect(path, **kwargs) as ws:
        message: dict[str, Any] = ws.receive_json()
    assert message["type"] == "welcome"
    return message


def denial(client: TestClient, path: str = "/ws", **kwargs: Any) -> WebSocketDenialResponse:
    """The HTTP response refusing a WebSocket to ``path``."""
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect(path, **kwargs):
        pass  # pragma: no cover - the handshake is refused
    return info.value


# -- route_path -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/ws", "", "/ws"),
        ("/hub/ws", "/hub", "/ws"),
        ("/hub", "/hub", "/"),
        ("/hub/", "/hub", "/"),
        ("/hubx/ws", "/hub", "/hubx/ws"),
        ("/hubws", "/hub", "/hubws"),
        ("/ws", "/hub", "/ws"),
        ("/a/b/ws", "/a/b", "/ws"),
        ("", "", "/"),
    ],
)
def test_route_path(path: str, root_path: str, expected: str) -> None:
    """The app's own path is ``path`` minus ``root_path``, only at a segment boundary."""
    assert route_path({"type": "http", "path": path, "root_path": root_path}) == expected


def test_route_path_without_keys() -> None:
    """A scope without ``path`` or ``root_path`` routes to ``/``."""
    assert route_path({"type": "http"}) == "/"


# -- HTTP -------------------------------------------------------------------------------------


def test_health(client: TestClient) -> None:
    """``GET /health`` answers 200 with a JSON status."""
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"] == "application/json"
    assert client.head("/health").status_code == 200


@pytest.mark.parametrize("path", ["/", "/nope", "/health/x", "/wsx", "/api/publish"])
def test_unknown_http_paths_are_404(client: TestClient, path: str) -> None:
    """Paths the app does not serve answer 404 with a JSON error."""
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"code": 404, "reason": "not found"}


def test_post_health_is_not_served(client: TestClient) -> None:
    """Only GET and HEAD reach ``/health``."""
    assert client.post("/health").status_code == 404


def test_ws_over_http_is_426(client: TestClient) -> None:
    """Plain HTTP to ``/ws`` answers 426 Upgrade Required with ``Upgrade: websocket``."""
    response = client.get("/ws")
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert response.json()["code"] == 426


def test_demo_page_only_when_enabled(hub: Hub) -> None:
    """The demo page is served at ``/`` with ``demo=True`` and is a 404 otherwise."""
    with TestClient(HubApp(hub, demo=True)) as client:
        response = client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "<html" in response.text.lower()
    with TestClient(HubApp(hub)) as client:
        assert client.get("/").status_code == 404


def test_demo_page_under_a_mount(hub: Hub) -> None:
    """The demo page of a mounted app is at the mount's root."""
    app = Starlette(lifespan=hub.lifespan, routes=[Mount("/chat", app=HubApp(hub, demo=True))])
    with TestClient(app) as client:
        assert client.get("/chat/").status_code == 200
        assert client.get("/chat/health").status_code == 200


# -- WebSocket handshake ----------------------------------------------------------------------


def test_websocket_welcome(client: TestClient, hub: Hub) -> None:
    """A WebSocket to ``/ws`` is accepted and first receives ``welcome``."""
    welcome = welcome_of(client)
    assert welcome["user"] == "" and welcome["node"] == hub.node
    assert welcome["version"] == 1 and welcome["subscribed"] == []


def test_websocket_round_trip(client: TestClient) -> None:
    """A client subscribes, publishes and receives its own publication."""
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "subscribe", "channel": "news", "id": 1})
        assert ws.receive_json() == {
            "type": "subscribed",
            "channel": "news",
            "publications": [],
            "id": 1,
        }
        ws.send_json({"type": "publish", "channel": "news", "data": {"x": 1}, "id": 2})
        frames = [ws.receive_json(), ws.receive_json()]
    kinds = sorted(frame["type"] for frame in frames)
    assert kinds == ["ack", "message"]
    message = next(frame for frame in frames if frame["type"] == "message")
    assert message["data"] == {"x": 1} and message["sender"]["client"]


def test_subprotocol_is_echoed(client: TestClient) -> None:
    """The server echoes the subprotocol it chose."""
    with client.websocket_connect("/ws", subprotocols=["hubbub.v1.json"]) as ws:
        assert ws.accepted_subprotocol == "hubbub.v1.json"
        assert ws.receive_json()["type"] == "welcome"


def test_first_listed_codec_wins(client: TestClient) -> None:
    """Offered both codecs, the server picks the first listed: MessagePack frames here."""
    with client.websocket_connect(
        "/ws", subprotocols=["hubbub.v1.msgpack", "hubbub.v1.json"]
    ) as ws:
        assert ws.accepted_subprotocol == "hubbub.v1.msgpack"
        welcome = msgspec.msgpack.decode(ws.receive_bytes())
    assert welcome["type"] == "welcome"


@pytest.mark.parametrize("offered", [["chat.v2"], ["chat.v2", "bearer.abc"], ["bearer.abc"]])
def test_unknown_subprotocol_is_400(client: TestClient, offered: list[str]) -> None:
    """A client offering no hubbub subprotocol (a bearer entry alone included) gets 400."""
    response = denial(client, subprotocols=offered)
    assert response.status_code == 400
    assert response.json()["code"] == 400


def test_unknown_websocket_path_is_404(client: TestClient) -> None:
    """A WebSocket to a path other than ``/ws`` is refused 404."""
    for path in ("/", "/wsx", "/ws/x", "/health"):
        response = denial(client, path)
        assert response.status_code == 404
        assert response.json()["code"] == 404


def test_anonymous_off_without_authenticator_is_401(backend: Backend) -> None:
    """With anonymous access off and no credentials, the handshake is refused 401."""
    with TestClient(HubApp(Hub()), backend=backend) as client:
        response = denial(client)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "reason": "credentials required"}


def test_authenticator_failure_is_401() -> None:
    """An authenticator raising AuthenticationFailed refuses the handshake with 401."""

    async def refuse(scope: Mapping[str, Any]) -> Identity | None:
        raise AuthenticationFailed("token expired")

    with TestClient(HubApp(Hub(authenticator=refuse, anonymous=True))) as client:
        response = denial(client)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "reason": "token expired"}


def test_authenticator_identity_is_used() -> None:
    """The authenticator's identity becomes ``welcome.user`` and the personal channel."""

    async def from_header(scope: Mapping[str, Any]) -> Identity | None:
        headers = dict(scope["headers"])
        user = headers.get(b"x-user")
        return Identity(user=user.decode()) if user else None

    with TestClient(HubApp(Hub(authenticator=from_header))) as client:
        welcome = welcome_of(client, headers={"x-user": "alice"})
        assert welcome["user"] == "alice"
        assert [s["channel"] for s in welcome["subscribed"]] == ["#alice"]
        assert denial(client).status_code == 401


def test_hub_not_running_is_503_with_one_log_line(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    """A WebSocket while the hub is stopped gets 503 and one ERROR line on wiring the lifespan."""
    client = TestClient(HubApp(hub))  # not entered: the lifespan never runs
    with caplog.at_level(logging.INFO):
        response = denial(client)
    assert response.status_code == 503
    assert response.json() == {"code": 503, "reason": "hub is stopped"}
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "503" in message and "lifespan=hub.lifespan" in message
    assert "async with hub" in message
    assert hub.state == "stopped"


def test_mount_without_lifespan_is_503(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    """A mounted hub whose parent does not wire ``hub.lifespan`` is never started: 503."""
    app = Starlette(routes=[Mount("/hub", app=HubApp(hub))])
    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        assert denial(client, "/hub/ws").status_code == 503
        assert client.get("/hub/health").status_code == 200
    assert hub.state == "stopped"
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


# -- lifespan ---------------------------------------------------------------------------------


def test_top_level_lifespan_starts_and_stops(hub: Hub, backend: Backend) -> None:
    """As the top-level app, HubApp starts the hub at startup and stops it at shutdown."""
    assert hub.state == "stopped"
    with TestClient(HubApp(hub), backend=backend) as client:
        assert hub.running
        assert welcome_of(client)["node"] == hub.node
    assert hub.state == "stopped"


def test_parent_lifespan_starts_and_stops(hub: Hub, backend: Backend) -> None:
    """``Starlette(lifespan=hub.lifespan)`` runs a mounted hub for the app's lifetime."""
    app = Starlette(lifespan=hub.lifespan, routes=[Mount("/hub", app=HubApp(hub))])
    with TestClient(app, backend=backend) as client:
        assert hub.running
        welcome_of(client, "/hub/ws")
    assert hub.state == "stopped"


async def run_lifespan(app: HubApp, *, then: Any = None) -> list[str]:
    """Drive the ASGI lifespan protocol: startup, ``then()``, shutdown; the replies' types."""
    to_app, app_receive = anyio.create_memory_object_stream[Event](2)
    app_send, from_app = anyio.create_memory_object_stream[Event](2)
    replies: list[str] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, to_app, from_app, app_send, app_receive:
            tg.start_soon(
                app,
                {"type": "lifespan", "asgi": {"version": "3.0"}},
                app_receive.receive,
                app_send.send,
            )
            await to_app.send({"type": "lifespan.startup"})
            replies.append((await from_app.receive())["type"])
            if replies[-1] != "lifespan.startup.complete":
                return replies
            if then is not None:
                await then()
            await to_app.send({"type": "lifespan.shutdown"})
            replies.append((await from_app.receive())["type"])
    return replies


@pytest.mark.anyio
async def test_lifespan_leaves_a_running_hub_alone(anyio_backend: str) -> None:
    """HubApp's lifespan neither starts nor stops a hub that already runs (``async with``)."""
    hub = Hub(anonymous=True)
    app = HubApp(hub)
    async with hub:

        async def still_running() -> None:
            assert hub.running

        assert await run_lifespan(app, then=still_running) == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert hub.running
    assert hub.state == "stopped"


@pytest.mark.anyio
async def test_lifespan_starts_a_stopped_hub(anyio_backend: str) -> None:
    """HubApp's lifespan starts a stopped hub at startup and stops it at shutdown."""
    hub = Hub(anonymous=True)

    async def running() -> None:
        assert hub.running

    assert await run_lifespan(HubApp(hub), then=running) == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert hub.state == "stopped"


@pytest.mark.anyio
async def test_lifespan_startup_failure_is_reported(anyio_backend: str) -> None:
    """A hub that cannot start answers ``lifespan.startup.failed``."""
    broker = MemoryBroker()
    async with Hub(broker=broker, anonymous=True):
        # The broker already serves another hub, so this one cannot start.
        second = Hub(broker=broker, anonymous=True)
        assert await run_lifespan(HubApp(second)) == ["lifespan.startup.failed"]
        assert second.state == "stopped"


# -- mounting ---------------------------------------------------------------------------------


def test_mount_serves_under_the_prefix(hub: Hub) -> None:
    """Under ``Mount("/realtime")`` the socket is ``/realtime/ws``; ``/realtime/wsx`` is 404."""
    app = Starlette(lifespan=hub.lifespan, routes=[Mount("/realtime", app=HubApp(hub))])
    with TestClient(app) as client:
        welcome_of(client, "/realtime/ws")
        assert denial(client, "/realtime/wsx").status_code == 404
        assert client.get("/realtime/health").status_code == 200
        assert client.get("/realtime/ws").status_code == 426


def test_mount_at_ws_does_not_match_exact_ws(hub: Hub) -> None:
    """Starlette's ``Mount("/ws")`` does not route a WebSocket to exactly ``/ws``."""
    app = Starlette(lifespan=hub.lifespan, routes=[Mount("/ws", app=HubApp(hub))])
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws"):
            pass  # pragma: no cover - refused by Starlette's router
        # The hub's own endpoint is below the mount.
        welcome_of(client, "/ws/ws")


def test_websocket_route_serves_exact_path(hub: Hub) -> None:
    """``WebSocketRoute("/ws", HubApp(hub))`` serves the exact path ``/ws``."""
    app = Starlette(lifespan=hub.lifespan, routes=[WebSocketRoute("/ws", HubApp(hub))])
    with TestClient(app) as client:
        welcome_of(client, "/ws")
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws/"):
            pass  # pragma: no cover - no route matches


def test_root_path_of_the_server(hub: Hub) -> None:
    """With a server ``root_path``, the endpoint is ``<root_path>/ws``; ``<root>x/ws`` is not."""
    with TestClient(HubApp(hub), root_path="/hub") as client:
        welcome_of(client, "/hub/ws")
        assert client.get("/hub/health").status_code == 200
        assert denial(client, "/hubx/ws").status_code == 404


def test_query_strings_never_break_the_handshake() -> None:
    """Many, repeated, blank or odd query parameters are tolerated; the last ``name`` wins."""
    from hubbub._http import query_param

    many = "&".join(f"k{i}=v" for i in range(500)).encode()
    scope = {"query_string": many + b"&name=a&name=%C5%81ovelace&batch&=x&%zz=1"}
    assert query_param(scope, "name") == "Łovelace"
    assert query_param(scope, "batch") == ""
    assert query_param(scope, "missing") is None
    assert query_param({}, "name") is None
    hub = Hub(anonymous=True)
    with TestClient(HubApp(hub)) as client:
        with client.websocket_connect("/ws?" + many.decode() + "&name=ada&batch=1") as ws:
            assert ws.receive_json()["type"] == "welcome"


def test_ready_follows_the_hub_and_its_broker() -> None:
    """``/ready`` is 200 while the hub runs with a reachable broker, 503 otherwise."""
    hub = Hub(anonymous=True)
    app = HubApp(hub)
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        assert client.get("/ready").json() == {"status": "ready"}
    stopped = TestClient(HubApp(Hub(anonymous=True)))
    response = stopped.get("/ready")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}


class _FailingReadyBroker(MemoryBroker):
    """A custom broker whose readiness check raises (a bug or an unreachable backend)."""

    async def ready(self) -> bool:
        raise RuntimeError("the backend is gone")


class _StalledReadyBroker(MemoryBroker):
    """A custom broker whose readiness check never answers (a half-open link)."""

    async def ready(self) -> bool:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("broker_type", [_FailingReadyBroker, _StalledReadyBroker])
def test_ready_is_503_when_the_broker_check_fails_or_stalls(
    broker_type: type[MemoryBroker], caplog: pytest.LogCaptureFixture
) -> None:
    """A custom broker's ``ready()`` that raises or hangs is 503 within ``broker_timeout``."""
    hub = Hub(broker=broker_type(), anonymous=True, broker_timeout=0.2)
    with TestClient(HubApp(hub)) as client, caplog.at_level(logging.WARNING, "hubbub"):
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable"}
        assert client.get("/health").status_code == 200
    assert any("readiness check" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_a_dripped_demo_notify_body_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    """``POST /demo/notify`` whose body stops arriving is refused 408, not held for ever."""
    from hubbub import _demo

    monkeypatch.setattr(_demo, "BODY_TIMEOUT", 0.2)
    hub = Hub(anonymous=True)
    app = HubApp(hub, demo=True)
    receive, send, sent = dripped_request(b'{"to": "ada", ')
    scope = {"type": "http", "method": "POST", "path": "/demo/notify", "headers": []}
    async with hub:
        with anyio.fail_after(5):
            await app(scope, receive, send)
    assert sent[0]["status"] == 408
    assert msgspec.json.decode(sent[1]["body"])["code"] == 408
