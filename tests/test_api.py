"""The server HTTP API (``HubAPI`` under ``<prefix>/api/``): endpoints, errors, keys, limits.

Driven through Starlette's ``TestClient`` on asyncio (WebSocket clients see
what the API does to them), and through ``hubbub serve --api-key`` (uvicorn).
"""

from __future__ import annotations

import hmac
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from hubbub import (
    BrokerUnavailable,
    Hub,
    HubAPI,
    HubApp,
    Identity,
    Limits,
    Namespace,
    Publication,
)
from hubbub._demo import demo_user_id
from hubbub._http import query_param

from .apps.wsclient import Client, open_client
from .dripped import dripped_request
from .servers import Server, run_server

KEY = "k-0123456789abcdef"
OLD_KEY = "k-old-fedcba9876543210"
AUTH = {"Authorization": f"apikey {KEY}"}


async def _user_from_query(scope: Mapping[str, Any]) -> Identity | None:
    user = query_param(scope, "user")  # type: ignore[arg-type]
    return Identity(user=user) if user else None


def _hub() -> Hub:
    return Hub(
        anonymous=True,
        authenticator=_user_from_query,
        namespaces=[
            Namespace(),
            Namespace(name="room", history_size=10, presence=True),
            Namespace.chat("chat"),
        ],
    )


@pytest.fixture
def hub() -> Hub:
    """A hub with a plain default namespace, ``room:`` (history, presence) and ``chat:``."""
    return _hub()


@pytest.fixture
def client(hub: Hub) -> Iterator[TestClient]:
    """A TestClient around ``HubApp`` with two API keys, its lifespan running."""
    app = HubApp(hub, api_keys=[KEY, OLD_KEY], api_max_body=1024)
    with TestClient(app, backend="asyncio") as test_client:
        yield test_client


def _post(client: TestClient, endpoint: str, body: Any, **kwargs: Any) -> Any:
    return client.post(f"/api/{endpoint}", json=body, headers=AUTH, **kwargs)


# -- configuration ----------------------------------------------------------------------------


def test_api_is_off_without_keys(hub: Hub) -> None:
    """Without any key every API path answers 404, even with an Authorization header."""
    with TestClient(HubApp(hub), backend="asyncio") as client:
        for path in ("/api/publish", "/api/stats", "/api/nope"):
            response = client.post(path, json={"channel": "a", "data": 1}, headers=AUTH)
            assert response.status_code == 404
            assert response.json()["code"] == 404
        assert client.get("/api/stats", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ("one-key", TypeError),
        ([b"bytes"], TypeError),
        ([""], ValueError),
        (["with space"], ValueError),
        (["caf\u00e9"], ValueError),
    ],
)
def test_bad_keys_raise_at_construction(hub: Hub, keys: Any, error: type[Exception]) -> None:
    """Keys that are not non-empty printable ASCII strings are refused when the API is built."""
    with pytest.raises(error):
        HubAPI(hub, keys=keys)


@pytest.mark.parametrize("max_body", [0, -1, True, 1.5])
def test_bad_max_body_raises(hub: Hub, max_body: Any) -> None:
    """``max_body`` must be a positive integer."""
    with pytest.raises(ValueError, match="max_body"):
        HubAPI(hub, keys=[KEY], max_body=max_body)


def test_hubapi_needs_a_hub() -> None:
    """``HubAPI`` refuses anything but a ``Hub``."""
    with pytest.raises(TypeError):
        HubAPI(object(), keys=[KEY])  # type: ignore[arg-type]


def test_hubapp_rejects_bad_api_keys(hub: Hub) -> None:
    """``HubApp(api_keys=...)`` validates the keys when it is built."""
    with pytest.raises(ValueError):
        HubApp(hub, api_keys=[""])


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "apikey"},
        {"Authorization": "apikey wrong"},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"apikey {KEY}x"},
    ],
)
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    """A request without a valid ``apikey`` is refused 401 with ``WWW-Authenticate``."""
    response = client.get("/api/stats", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == 401
    assert response.headers["www-authenticate"] == "apikey"


def test_every_configured_key_is_accepted(client: TestClient) -> None:
    """Both the new and the old key work (rotation); the scheme is case-insensitive."""
    for header in (f"apikey {KEY}", f"ApiKey {OLD_KEY}"):
        assert client.get("/api/stats", headers={"Authorization": header}).status_code == 200


def test_key_is_compared_in_constant_time_against_every_key(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check uses ``hmac.compare_digest`` and never stops at the first match."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert client.get("/api/stats", headers=AUTH).status_code == 200
    assert compared == [(KEY.encode(), KEY.encode()), (KEY.encode(), OLD_KEY.encode())]


# -- routing errors ---------------------------------------------------------------------------


def test_unknown_endpoint_is_404(client: TestClient) -> None:
    """An endpoint the API does not have answers 404."""
    response = client.get("/api/nothing", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["code"] == 404


@pytest.mark.parametrize(
    ("method", "endpoint", "allow"),
    [("GET", "publish", "POST"), ("POST", "stats", "GET"), ("DELETE", "channels", "GET")],
)
def test_wrong_method_is_405(client: TestClient, method: str, endpoint: str, allow: str) -> None:
    """The wrong method answers 405 with ``Allow``."""
    response = client.request(method, f"/api/{endpoint}", headers=AUTH)
    assert response.status_code == 405
    assert response.json()["code"] == 405
    assert response.headers["allow"] == allow


# -- publish and broadcast --------------------------------------------------------------------


def test_publish_with_history_returns_the_position(client: TestClient) -> None:
    """``publish`` into a history channel answers ``{offset, epoch}``."""
    first = _post(client, "publish", {"channel": "room:a", "data": {"n": 1}})
    second = _post(client, "publish", {"channel": "room:a", "data": {"n": 2}})
    assert first.status_code == second.status_code == 200
    assert first.json()["offset"] == 1
    assert second.json() == {"offset": 2, "epoch": first.json()["epoch"]}


def test_publish_without_history_returns_empty_object(client: TestClient) -> None:
    """Without history the position is absent."""
    response = _post(client, "publish", {"channel": "plain", "data": "x"})
    assert response.status_code == 200
    assert response.json() == {}


def test_publish_reaches_a_subscriber(client: TestClient) -> None:
    """A WebSocket subscriber receives the API's publication with no ``sender``."""
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()  # welcome
        ws.send_json({"type": "subscribe", "id": 1, "channel": "room:live"})
        assert ws.receive_json()["type"] == "subscribed"
        _post(client, "publish", {"channel": "room:live", "data": {"hello": [1, 2]}})
        message = ws.receive_json()
    assert message["type"] == "message"
    assert message["data"] == {"hello": [1, 2]}
    assert "sender" not in message


def test_publish_idempotency_key_is_accepted(client: TestClient) -> None:
    """A retried publish with the same ``idempotency_key`` is not stored twice."""
    body = {"channel": "room:idem", "data": 1, "idempotency_key": "abc"}
    assert _post(client, "publish", body).status_code == 200
    assert _post(client, "publish", body).status_code == 200
    history = client.get("/api/history", params={"channel": "room:idem"}, headers=AUTH).json()
    assert len(history["publications"]) == 1


def test_broadcast_reports_each_channel(client: TestClient) -> None:
    """``broadcast`` answers one result per channel, errors included, in order."""
    response = _post(
        client,
        "broadcast",
        {"channels": ["room:b", "plain", "nope:x", "bad channel"], "data": {"v": 1}},
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["channel"] == "room:b" and results[0]["offset"] == 1
    assert "epoch" in results[0]
    assert results[1] == {"channel": "plain"}
    assert results[2]["channel"] == "nope:x" and results[2]["error"]["code"] == 404
    assert results[3]["channel"] == "bad channel" and results[3]["error"]["code"] == 400


def test_broadcast_needs_channels(client: TestClient) -> None:
    """An empty ``channels`` list is 400."""
    assert _post(client, "broadcast", {"channels": [], "data": 1}).status_code == 400


# -- notify, disconnect, server-side subscriptions --------------------------------------------


def test_notify_reaches_the_user(client: TestClient) -> None:
    """``notify`` answers the position and the user's connection gets the notification."""
    with client.websocket_connect("/ws?user=alice") as ws:
        ws.receive_json()  # welcome
        response = _post(
            client,
            "notify",
            {"user": "alice", "notification": {"type": "mention", "title": "Hi"}},
        )
        message = ws.receive_json()
    assert response.status_code == 200
    assert response.json()["offset"] == 1
    assert message["channel"] == "#alice"
    assert message["data"]["type"] == "mention" and message["data"]["title"] == "Hi"
    assert message["data"]["read"] is False and message["data"]["id"]


def test_notify_needs_a_user(client: TestClient) -> None:
    """An empty user is 400."""
    assert _post(client, "notify", {"user": "", "notification": {}}).status_code == 400


def test_disconnect_closes_the_users_connections(client: TestClient) -> None:
    """``disconnect`` answers how many connections closed here; the client gets 4403."""
    with client.websocket_connect("/ws?user=bob") as ws:
        ws.receive_json()  # welcome
        response = _post(client, "disconnect", {"user": "bob", "reason": "banned"})
        message = ws.receive_json()
    assert response.json() == {"disconnected": 1}
    assert message == {"type": "disconnect", "code": 4403, "reason": "banned", "reconnect": False}
    assert _post(client, "disconnect", {"user": "nobody"}).json() == {"disconnected": 0}


@pytest.mark.parametrize(
    "body", [{"user": "bob", "code": 1006}, {"user": "bob", "reason": "x" * 121}, {"user": ""}]
)
def test_disconnect_refuses_bad_fields(client: TestClient, body: dict[str, Any]) -> None:
    """A reserved close code, a reason too long for a close frame, or no user is 400."""
    assert _post(client, "disconnect", body).status_code == 400


def test_subscribe_and_unsubscribe_a_user(client: TestClient) -> None:
    """The user's connection gets ``subscribed`` then ``unsubscribed``, both without ``id``."""
    with (
        client.websocket_connect("/ws?user=carol") as ws,
        client.websocket_connect("/ws?user=carol") as other,
    ):
        ws.receive_json()  # welcome
        other.receive_json()
        _post(client, "publish", {"channel": "room:s", "data": 0})
        assert _post(client, "subscribe", {"user": "carol", "channel": "room:s"}).json() == {}
        for connection in (ws, other):
            subscribed = connection.receive_json()
            assert subscribed["type"] == "subscribed" and "id" not in subscribed
            assert subscribed["channel"] == "room:s" and subscribed["offset"] == 1
        _post(client, "publish", {"channel": "room:s", "data": 1})
        assert ws.receive_json()["data"] == 1
        assert other.receive_json()["data"] == 1
        channels = client.get("/api/channels", headers=AUTH).json()["channels"]
        assert {"channel": "room:s", "subscribers": 2} in channels
        assert _post(client, "unsubscribe", {"user": "carol", "channel": "room:s"}).json() == {}
        assert ws.receive_json() == {"type": "unsubscribed", "channel": "room:s"}
        assert other.receive_json() == {"type": "unsubscribed", "channel": "room:s"}
        _post(client, "publish", {"channel": "plain", "data": "ignored"})
        ws.send_json({"type": "presence", "id": 5, "channel": "room:s"})
        reply = ws.receive_json()
    assert reply["id"] == 5 and reply["clients"] == {}


def test_subscribe_and_unsubscribe_tell_the_other_nodes(
    client: TestClient, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both send a command on the control channel, naming this node."""
    sent: list[Publication] = []
    publish = hub.broker.publish

    async def record(publication: Publication, *args: Any) -> Any:
        sent.append(publication)
        return await publish(publication, *args)

    monkeypatch.setattr(hub.broker, "publish", record)
    _post(client, "subscribe", {"user": "gil", "channel": "room:c"})
    _post(client, "unsubscribe", {"user": "gil", "channel": "room:c"})
    commands = [json.loads(p.data) for p in sent if p.kind == "control"]
    assert [p.channel for p in sent] == ["$control", "$control"]
    assert commands == [
        {"op": op, "user": "gil", "channel": "room:c", "node": hub.node}
        for op in ("subscribe", "unsubscribe")
    ]


def test_control_commands_from_another_node_act_here(client: TestClient, hub: Hub) -> None:
    """A subscribe/unsubscribe command from another node reaches this node's connections."""

    def command(op: str, node: str = "elsewhere") -> None:
        data = json.dumps({"op": op, "user": "hal", "channel": "room:n", "node": node})
        publication = Publication(
            channel="$control", data=data.encode(), codec="json", ts=0, kind="control"
        )
        assert client.portal is not None
        client.portal.call(hub._fanout.dispatch, publication)

    with client.websocket_connect("/ws?user=hal") as ws:
        ws.receive_json()  # welcome
        command("subscribe", node=hub.node)  # its own command: already done, ignored
        ws.send_json({"type": "presence", "id": 9, "channel": "room:n"})
        assert ws.receive_json()["id"] == 9
        command("subscribe")
        subscribed = ws.receive_json()
        assert subscribed["type"] == "subscribed" and subscribed["channel"] == "room:n"
        assert "id" not in subscribed
        command("unsubscribe")
        assert ws.receive_json() == {"type": "unsubscribed", "channel": "room:n"}


def test_a_full_connection_is_skipped_on_every_node() -> None:
    """At ``max_channels`` a connection is not subscribed: this node answers 429, and a
    command from another node is skipped (the next message is the reply to a command)."""
    hub = Hub(
        anonymous=True,
        authenticator=_user_from_query,
        limits=Limits(max_channels=1),
        namespaces=[Namespace(name="room", history_size=10)],
    )
    with TestClient(HubApp(hub, api_keys=[KEY]), backend="asyncio") as client:
        with client.websocket_connect("/ws?user=ivy") as ws:
            ws.receive_json()  # welcome
            ws.send_json({"type": "subscribe", "id": 1, "channel": "room:a"})
            assert ws.receive_json()["type"] == "subscribed"
            response = _post(client, "subscribe", {"user": "ivy", "channel": "room:b"})
            assert response.status_code == 429 and response.json()["code"] == 429
            # What a control command from another node runs, awaited to its end.
            assert client.portal is not None
            client.portal.call(hub._nodes.subscribe_commanded, "ivy", "room:c")
            assert hub.channels() == {"#ivy": 1, "room:a": 1}
            ws.send_json({"type": "history", "id": 2, "channel": "room:a"})
            assert ws.receive_json()["id"] == 2


def test_subscribe_user_needs_a_known_namespace(client: TestClient) -> None:
    """Subscribing a user to an unknown namespace is 404; an empty user 400."""
    assert _post(client, "subscribe", {"user": "u", "channel": "nope:x"}).status_code == 404
    assert _post(client, "subscribe", {"user": "", "channel": "room:x"}).status_code == 400
    assert _post(client, "unsubscribe", {"user": "u", "channel": "bad name"}).status_code == 400


# -- reads ------------------------------------------------------------------------------------


def test_channels_lists_local_subscribers(client: TestClient) -> None:
    """``channels`` lists this node's channels with their subscriber counts."""
    assert client.get("/api/channels", headers=AUTH).json() == {"channels": []}
    with client.websocket_connect("/ws?user=dan") as ws:
        ws.receive_json()
        body = client.get("/api/channels", headers=AUTH).json()
    assert body == {"channels": [{"channel": "#dan", "subscribers": 1}]}


def test_presence_is_the_websocket_reply_body(client: TestClient) -> None:
    """``presence`` answers ``{channel, clients, users}``."""
    with client.websocket_connect("/ws?user=erin") as ws:
        welcome = ws.receive_json()
        ws.send_json({"type": "subscribe", "id": 1, "channel": "room:p"})
        ws.receive_json()
        ws.send_json({"type": "presence", "id": 2, "channel": "room:p"})
        expected = ws.receive_json()
        response = client.get("/api/presence", params={"channel": "room:p"}, headers=AUTH)
    del expected["type"], expected["id"]
    assert response.status_code == 200
    assert response.json() == expected
    assert response.json()["clients"][welcome["client"]]["user"] == "erin"


def test_presence_errors(client: TestClient) -> None:
    """No channel is 400, a namespace without presence 403, an unknown one 404."""
    assert client.get("/api/presence", headers=AUTH).status_code == 400
    response = client.get("/api/presence", params={"channel": "plain"}, headers=AUTH)
    assert response.status_code == 403
    response = client.get("/api/presence", params={"channel": "nope:x"}, headers=AUTH)
    assert response.status_code == 404


def test_history_is_the_websocket_reply_body(client: TestClient) -> None:
    """``history`` answers what the WebSocket ``history`` reply carries, ``limit`` applied."""
    for n in range(3):
        _post(client, "publish", {"channel": "room:h", "data": n})
    with client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_json({"type": "history", "id": 1, "channel": "room:h", "limit": 2})
        expected = ws.receive_json()
    response = client.get("/api/history", params={"channel": "room:h", "limit": 2}, headers=AUTH)
    del expected["type"], expected["id"]
    body = response.json()
    assert [p["data"] for p in body["publications"]] == [1, 2]
    for got, want in zip(body["publications"], expected["publications"], strict=True):
        del got["ts"], want["ts"]
    del expected["publications"], body["publications"]
    assert body == expected


def test_history_without_history_has_no_position(client: TestClient) -> None:
    """A channel without history answers no publications and no position."""
    response = client.get("/api/history", params={"channel": "plain"}, headers=AUTH)
    assert response.json() == {"channel": "plain", "publications": []}


@pytest.mark.parametrize(
    "params", [{}, {"channel": "room:h", "limit": "x"}, {"channel": "room:h", "limit": "101"}]
)
def test_history_bad_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    """A missing channel or a limit outside 1..100 is 400."""
    assert client.get("/api/history", params=params, headers=AUTH).status_code == 400


def test_stats_counts(client: TestClient) -> None:
    """``stats`` reports connections, channels, publications and deliveries."""
    with client.websocket_connect("/ws?user=fay") as ws:
        ws.receive_json()
        _post(client, "notify", {"user": "fay", "notification": {}})
        ws.receive_json()
        stats = client.get("/api/stats", headers=AUTH).json()
    assert stats["connections"] == 1 and stats["channels"] == 1
    assert stats["connections_total"] == 1
    assert stats["publications"] == 1 and stats["deliveries"] == 1
    assert {"node", "dropped", "slow_consumer_closes"} <= stats.keys()


# -- body errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"channel": 1, "data": 2}', b'{"data": 1}', b'{"channel": "a"}'],
)
def test_bad_json_or_fields_is_400(client: TestClient, content: bytes) -> None:
    """Invalid JSON, a wrong type or a missing field is 400 ``{code, reason}``."""
    response = client.post("/api/publish", content=content, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["code"] == 400 and response.json()["reason"]


def test_unknown_namespace_is_404(client: TestClient) -> None:
    """Publishing into an unconfigured namespace is 404."""
    response = _post(client, "publish", {"channel": "nope:x", "data": 1})
    assert response.status_code == 404


def test_schema_failure_is_422(client: TestClient) -> None:
    """Data that fails the namespace's schema is 422."""
    response = _post(client, "publish", {"channel": "chat:r", "data": {"text": ""}})
    assert response.status_code == 422
    assert response.json()["code"] == 422


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    """A body over ``max_body`` is 413, declared or streamed."""
    big = {"channel": "plain", "data": "x" * 2000}
    assert _post(client, "publish", big).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b'{"channel": "plain", "data": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    response = client.post("/api/publish", content=chunks(), headers=AUTH)
    assert response.status_code == 413
    assert response.json()["code"] == 413


def test_broker_failure_is_503(
    client: TestClient, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that cannot be reached is 503."""

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable("broker down")

    monkeypatch.setattr(hub.broker, "publish", down)
    response = _post(client, "publish", {"channel": "plain", "data": 1})
    assert response.status_code == 503
    assert response.json() == {"code": 503, "reason": "broker down"}


def test_stopped_hub_is_503(hub: Hub) -> None:
    """A hub that is not running answers 503."""
    app = Starlette(routes=[Mount("/api", app=HubAPI(hub, keys=[KEY]))])
    with TestClient(app, backend="asyncio") as client:
        response = client.get("/api/stats", headers=AUTH)
    assert response.status_code == 503


def test_mounted_hubapi_under_a_prefix(hub: Hub) -> None:
    """``HubAPI`` works on its own under a mount, with the hub run by the parent lifespan."""
    app = Starlette(routes=[Mount("/x/api", app=HubAPI(hub, keys=[KEY]))], lifespan=hub.lifespan)
    with TestClient(app, backend="asyncio") as client:
        response = client.post(
            "/x/api/publish", json={"channel": "room:m", "data": 1}, headers=AUTH
        )
        assert response.status_code == 200 and response.json()["offset"] == 1
        assert client.get("/x/api/nope", headers=AUTH).status_code == 404


def test_openapi_document_names_where_the_api_is_mounted(hub: Hub) -> None:
    """The document's server URL is the API's own mount point, under any prefix."""
    app = Starlette(routes=[Mount("/x/api", app=HubAPI(hub, keys=[KEY]))], lifespan=hub.lifespan)
    with TestClient(app, backend="asyncio") as client:
        document = client.get("/x/api/openapi.json").json()
        assert document["servers"] == [{"url": "/x/api"}]
        assert "/publish" in document["paths"]
    with TestClient(HubApp(_hub(), api_keys=[KEY]), root_path="/hub", backend="asyncio") as client:
        assert client.get("/hub/api/openapi.json").json()["servers"] == [{"url": "/hub/api"}]


def test_openapi_documents_cached_per_mount_point_are_bounded(hub: Hub) -> None:
    """A mount whose prefix holds a parameter makes a document per value; at most 16 are kept."""
    from hubbub.api import _document

    app = Starlette(routes=[Mount("/{tenant}/api", app=HubAPI(hub, keys=[KEY]))])
    with TestClient(app, backend="asyncio") as client:
        for n in range(40):
            document = client.get(f"/t{n}/api/openapi.json").json()
            assert document["servers"] == [{"url": f"/t{n}/api"}]
    assert _document.cache_info().currsize <= 16


# -- through uvicorn --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve --api-key`` (the demo hub), a second key from ``HUBBUB_API_KEY``."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--api-key", KEY]
    with run_server(argv, tmp_path_factory.mktemp("api"), env={"HUBBUB_API_KEY": OLD_KEY}) as s:
        yield s


def _call(server: Server, path: str, body: bytes | None = None, key: str = KEY) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + path, data=body)
    request.add_header("Authorization", f"apikey {key}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_uvicorn_publish_and_keys(server: Server) -> None:
    """Through uvicorn: both keys (flag and environment) work, a wrong one is 401."""
    status, body = _call(server, "/api/publish", b'{"channel": "chat:api", "data": {"text": "hi"}}')
    assert status == 200 and body["offset"] >= 1
    status, body = _call(server, "/api/stats", key=OLD_KEY)
    assert status == 200 and body["publications"] >= 1
    assert _call(server, "/api/stats", key="wrong")[0] == 401


def test_uvicorn_body_over_the_limit_is_413(server: Server) -> None:
    """Through uvicorn: a body over 64 KiB is refused 413."""
    big = b'{"channel": "plain", "data": "' + b"x" * (70 * 1024) + b'"}'
    status, body = _call(server, "/api/publish", big)
    assert status == 413 and body["code"] == 413


def test_uvicorn_notify_reaches_a_websocket(server: Server) -> None:
    """Through uvicorn: ``notify`` lands on the personal channel's history."""
    user = demo_user_id("Gus")
    payload = {"user": user, "notification": {"title": "t"}}
    status, body = _call(server, "/api/notify", json.dumps(payload).encode())
    assert status == 200
    status, page = _call(server, f"/api/history?channel=%23{user}")
    assert status == 200 and page["offset"] == body["offset"]
    assert page["publications"][-1]["data"]["title"] == "t"


def test_serve_without_api_key_turns_the_api_off(tmp_path: Path) -> None:
    """``hubbub serve`` without any key answers 404 under ``/api/``."""
    with run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path) as plain:
        assert _call(plain, "/api/stats")[0] == 404


# -- hubbub serve flags -----------------------------------------------------------------------


def test_serve_api_key_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--api-key`` is repeatable and adds to ``HUBBUB_API_KEY`` (comma-separated)."""
    from hubbub.cli import _build_app, _parser

    monkeypatch.setenv("HUBBUB_API_KEY", "env-1-0123456789ab, env-2-0123456789ab")
    args = _parser().parse_args(["serve", "--api-key", "flag-1-0123456789ab"])
    assert args.api_key == ["env-1-0123456789ab", "env-2-0123456789ab", "flag-1-0123456789ab"]
    app = _build_app(args)
    assert isinstance(app, HubApp) and app.api.enabled


def test_serve_refuses_a_bad_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key with a space, or under 16 characters, stops ``hubbub serve`` naming the flag."""
    from hubbub.cli import _build_app, _parser

    monkeypatch.delenv("HUBBUB_API_KEY", raising=False)
    with pytest.raises(SystemExit, match="--api-key"):
        _build_app(_parser().parse_args(["serve", "--api-key", "bad key-0123456789"]))
    with pytest.raises(SystemExit, match="--api-key: an API key must be at least 16 characters"):
        _build_app(_parser().parse_args(["serve", "--api-key", "short-key-15chr"]))


# -- through uvicorn: every endpoint, permissions, the channel limit, history paging ----------
#
# ``hubbub serve api_app:app`` (tests/apps/api_app.py): users named by ``?user=``, two
# channels per connection, a 4 KiB body limit, ``vip:`` only for ``vip-`` users.

ENDPOINTS = [
    ("POST", "publish"),
    ("POST", "broadcast"),
    ("POST", "notify"),
    ("POST", "disconnect"),
    ("POST", "subscribe"),
    ("POST", "unsubscribe"),
    ("GET", "channels"),
    ("GET", "presence"),
    ("GET", "history"),
    ("GET", "stats"),
]
POSTS = [name for method, name in ENDPOINTS if method == "POST"]


@pytest.fixture
def anyio_backend() -> str:
    """The websockets test client is asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve api_app:app --api-key KEY`` in a real uvicorn process."""
    argv = ["-m", "hubbub", "serve", "api_app:app", "--port", "{port}", "--api-key", KEY]
    with run_server(argv, tmp_path_factory.mktemp("api_app")) as s:
        yield s


@pytest.fixture
def http(app_server: Server) -> Iterator[httpx.Client]:
    """An httpx client for the API of ``app_server`` (no key: each test sends its own)."""
    with httpx.Client(base_url=app_server.url + "/api/", timeout=10) as session:
        yield session


_ADDRESSES: list[str] = []


@pytest.mark.parametrize(("method", "endpoint"), ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "apikey wrong-key", f"Bearer {KEY}", "apikey"])
def test_uvicorn_every_endpoint_refuses_a_missing_or_wrong_key(
    http: httpx.Client, method: str, endpoint: str, authorization: str | None
) -> None:
    """Every endpoint answers 401 ``{code, reason}`` with ``WWW-Authenticate`` without the key."""
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"channel": "room:a", "data": 1, "user": "u"} if method == "POST" else None
    # Each case from its own loopback address: ten wrong keys from one address lock it out.
    address = f"127.0.{len(_ADDRESSES) // 250 + 1}.{len(_ADDRESSES) % 250 + 2}"
    _ADDRESSES.append(address)
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=http.base_url, timeout=10, transport=transport) as own:
        response = own.request(method, endpoint, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == 401 and response.json()["reason"]
    assert response.headers["www-authenticate"] == "apikey"


@pytest.mark.parametrize("endpoint", POSTS)
def test_uvicorn_every_body_over_the_limit_is_413(http: httpx.Client, endpoint: str) -> None:
    """A body over the app's 4 KiB limit is 413 on every POST endpoint, nothing done."""
    from .apps.api_app import MAX_BODY

    body = {"channel": "room:big", "user": "u", "data": "x" * MAX_BODY, "channels": ["a"]}
    response = http.post(endpoint, json=body, headers=AUTH)
    assert response.status_code == 413
    assert response.json()["code"] == 413
    history = http.get("history", params={"channel": "room:big"}, headers=AUTH).json()
    assert history["publications"] == []


@pytest.mark.parametrize("endpoint", POSTS)
@pytest.mark.parametrize(
    "content", [b"{not json", b"[]", b"{}", b'{"user": 1, "channel": 2}', b"[" * 100 + b"]" * 100]
)
def test_uvicorn_every_malformed_body_is_400(
    http: httpx.Client, endpoint: str, content: bytes
) -> None:
    """Invalid JSON, the wrong shape, missing or mistyped fields, or too deep: 400."""
    response = http.post(endpoint, content=content, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["code"] == 400 and response.json()["reason"]


def test_uvicorn_nesting_deeper_than_64_levels_is_400(http: httpx.Client) -> None:
    """``data`` nested deeper than 64 levels is refused as on the WebSocket."""
    deep = b'{"channel": "room:deep", "data": ' + b"[" * 65 + b"]" * 65 + b"}"
    response = http.post("publish", content=deep, headers=AUTH)
    assert response.status_code == 400 and "64" in response.json()["reason"]
    fine = b'{"channel": "room:deep", "data": ' + b"[" * 60 + b"]" * 60 + b"}"
    assert http.post("publish", content=fine, headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("method", "endpoint", "payload"),
    [
        ("POST", "publish", {"channel": "nope:x", "data": 1}),
        ("POST", "subscribe", {"user": "u", "channel": "nope:x"}),
        ("GET", "presence", {"channel": "nope:x"}),
        ("GET", "history", {"channel": "nope:x"}),
    ],
)
def test_uvicorn_unknown_namespace_is_404(
    http: httpx.Client, method: str, endpoint: str, payload: dict[str, Any]
) -> None:
    """A channel in a namespace the hub does not have is 404."""
    if method == "POST":
        response = http.post(endpoint, json=payload, headers=AUTH)
    else:
        response = http.get(endpoint, params=payload, headers=AUTH)
    assert response.status_code == 404
    assert response.json()["code"] == 404


def test_uvicorn_schema_failure_is_422_and_whole_floats_are_integers(http: httpx.Client) -> None:
    """``data`` failing the chat schema is 422; ``4403.0`` reads as the integer 4403."""
    response = http.post("publish", json={"channel": "chat:r", "data": {"text": ""}}, headers=AUTH)
    assert response.status_code == 422 and response.json()["code"] == 422
    body = {"user": "nobody-here", "code": 4403.0, "reason": "x"}
    response = http.post("disconnect", json=body, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"disconnected": 0}
    body = {"user": "nobody-here", "code": 4403.5}
    assert http.post("disconnect", json=body, headers=AUTH).status_code == 400


def test_uvicorn_unknown_query_parameters_are_400(http: httpx.Client) -> None:
    """A misspelt query parameter is refused instead of silently ignored."""
    response = http.get("history", params={"channel": "room:q", "limt": 5}, headers=AUTH)
    assert response.status_code == 400 and "limt" in response.json()["reason"]
    assert http.get("stats", params={"x": 1}, headers=AUTH).status_code == 400


def test_uvicorn_openapi_document_needs_no_key(http: httpx.Client) -> None:
    """``openapi.json`` is served without a key; POST is 405 there."""
    response = http.get("openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"] == "3.1.0"
    assert response.headers["content-type"] == "application/json"
    response = http.post("openapi.json")
    assert response.status_code == 405 and response.headers["allow"] == "GET"


async def _history_by_websocket(server: Server, **command: Any) -> dict[str, Any]:
    async with open_client(server.ws_url) as client:
        reply = await client.request({"type": "history", **command})
    del reply["type"], reply["id"]
    return reply


def _without_ts(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "publications": [{**p, "ts": 0} for p in body["publications"]]}


@pytest.mark.anyio
async def test_uvicorn_history_since_and_reverse_match_the_websocket(
    app_server: Server,
) -> None:
    """``since=<offset>:<epoch>``, ``limit`` and ``reverse`` answer what the WebSocket does."""
    async with httpx.AsyncClient(base_url=app_server.url + "/api/", timeout=10) as http:
        first = (
            await http.post("publish", json={"channel": "room:page", "data": 0}, headers=AUTH)
        ).json()
        for n in range(1, 6):
            await http.post("publish", json={"channel": "room:page", "data": n}, headers=AUTH)
        base = first["offset"]
        epoch = first["epoch"]
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            (
                {"since": f"{base + 1}:{epoch}", "limit": 2},
                {"since": {"offset": base + 1, "epoch": epoch}, "limit": 2},
            ),
            (
                {"since": f"{base}:{epoch}", "reverse": "true"},
                {"since": {"offset": base, "epoch": epoch}, "reverse": True},
            ),
            ({"limit": 3, "reverse": "true"}, {"limit": 3, "reverse": True}),
        ]
        for params, command in cases:
            response = await http.get(
                "history", params={"channel": "room:page", **params}, headers=AUTH
            )
            expected = await _history_by_websocket(app_server, channel="room:page", **command)
            assert response.status_code == 200
            assert _without_ts(response.json()) == _without_ts(expected)
        page = (
            await http.get(
                "history",
                params={"channel": "room:page", "since": f"{base + 1}:{epoch}", "limit": 2},
                headers=AUTH,
            )
        ).json()
        assert [p["data"] for p in page["publications"]] == [2, 3]
        newest = (
            await http.get(
                "history",
                params={"channel": "room:page", "limit": 3, "reverse": "true"},
                headers=AUTH,
            )
        ).json()
        assert [p["data"] for p in newest["publications"]] == [5, 4, 3]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"since": "1:not-the-epoch"}, 410),
        ({"since": "1"}, 400),
        ({"since": "-1:abc"}, 400),
        ({"since": "x:abc"}, 400),
        ({"reverse": "maybe"}, 400),
        ({"limit": "0"}, 400),
    ],
)
def test_uvicorn_history_bad_since_or_reverse(
    http: httpx.Client, params: dict[str, str], status: int
) -> None:
    """An epoch that is not the stream's is 410; a malformed ``since``/``reverse``/``limit`` 400."""
    http.post("publish", json={"channel": "room:gone", "data": 1}, headers=AUTH)
    response = http.get("history", params={"channel": "room:gone", **params}, headers=AUTH)
    assert response.status_code == status
    assert response.json()["code"] == status


async def _no_more_messages(client: Client) -> None:
    """Nothing is queued before the reply to a fresh request (the server sent nothing else)."""
    reply = await client.request({"type": "presence", "channel": "room:probe"})
    assert reply["type"] == "presence"
    assert not client.pending


@pytest.mark.anyio
async def test_uvicorn_subscribe_respects_the_namespace_hook(app_server: Server) -> None:
    """``vip:`` lets only ``vip-`` users in: 403 for others; the server may subscribe where
    clients may not subscribe themselves; a personal channel only holds its own user."""
    async with (
        httpx.AsyncClient(base_url=app_server.url + "/api/", timeout=10) as http,
        open_client(app_server.ws_url + "/ws?user=vip-ann", path="") as ann,
        open_client(app_server.ws_url + "/ws?user=bob", path="") as bob,
    ):
        refused = await http.post(
            "subscribe", json={"user": "bob", "channel": "vip:lounge"}, headers=AUTH
        )
        assert refused.status_code == 403 and refused.json()["code"] == 403
        await _no_more_messages(bob)
        allowed = await http.post(
            "subscribe", json={"user": "vip-ann", "channel": "vip:lounge"}, headers=AUTH
        )
        assert allowed.status_code == 200 and allowed.json() == {}
        subscribed = await ann.recv()
        assert subscribed["type"] == "subscribed" and subscribed["channel"] == "vip:lounge"
        reply = await ann.request({"type": "subscribe", "channel": "vip:other"})
        assert reply["type"] == "error" and reply["code"] == 403
        other = await http.post(
            "subscribe", json={"user": "bob", "channel": "#vip-ann"}, headers=AUTH
        )
        assert other.status_code == 403
        own = await http.post("subscribe", json={"user": "bob", "channel": "#bob"}, headers=AUTH)
        assert own.status_code == 200
        await _no_more_messages(bob)


@pytest.mark.anyio
async def test_uvicorn_a_failing_hook_is_500_json(app_server: Server) -> None:
    """A ``can_subscribe`` hook that raises answers 500 ``{code, reason}`` and logs it."""
    async with httpx.AsyncClient(base_url=app_server.url + "/api/", timeout=10) as http:
        response = await http.post(
            "subscribe", json={"user": "u", "channel": "broken:x"}, headers=AUTH
        )
        assert response.status_code == 500
        assert response.json() == {"code": 500, "reason": "internal error"}
        assert (await http.get("stats", headers=AUTH)).status_code == 200
    assert "a hook with a bug" in app_server.log()


@pytest.mark.anyio
async def test_uvicorn_subscribe_over_the_channel_limit_is_429(app_server: Server) -> None:
    """A connection holding the most channels (the personal one not counted) makes the
    subscribe 429, and none of the user's connections is subscribed; once one channel
    is released the same request works."""
    from .apps.api_app import MAX_CHANNELS

    async with (
        httpx.AsyncClient(base_url=app_server.url + "/api/", timeout=10) as http,
        open_client(app_server.ws_url + "/ws?user=lim", path="") as full,
        open_client(app_server.ws_url + "/ws?user=lim", path="") as spare,
    ):
        assert [s["channel"] for s in full.welcome["subscribed"]] == ["#lim"]
        for n in range(MAX_CHANNELS):
            await full.subscribe(f"room:held{n}")
        request = {"user": "lim", "channel": "room:more"}
        response = await http.post("subscribe", json=request, headers=AUTH)
        assert response.status_code == 429
        assert response.json()["code"] == 429 and "channels" in response.json()["reason"]
        await _no_more_messages(full)
        await _no_more_messages(spare)
        # A channel the full connection already holds needs no room there.
        held = await http.post(
            "subscribe", json={"user": "lim", "channel": "room:held0"}, headers=AUTH
        )
        assert held.status_code == 200
        assert (await spare.recv())["channel"] == "room:held0"
        await _no_more_messages(full)
        await http.post("unsubscribe", json={"user": "lim", "channel": "room:held1"}, headers=AUTH)
        assert (await full.recv())["type"] == "unsubscribed"
        response = await http.post("subscribe", json=request, headers=AUTH)
        assert response.status_code == 200
        for client in (full, spare):
            subscribed = await client.recv()
            assert subscribed["type"] == "subscribed" and subscribed["channel"] == "room:more"


@pytest.mark.anyio
async def test_a_body_that_stops_arriving_is_408() -> None:
    """A body dripped (or stalled) past ``body_timeout`` is refused 408, not held for ever."""
    import anyio

    hub = Hub(anonymous=True)
    api = HubAPI(hub, keys=[KEY], body_timeout=0.2)
    receive, send, sent = dripped_request(b'{"channel": "a", ')
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/publish",
        "headers": [(b"authorization", b"apikey " + KEY.encode())],
    }
    async with hub:
        with anyio.fail_after(5):
            await api.handle("publish", scope, receive, send)
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["code"] == 408
    assert hub.stats.publications == 0


def test_body_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="body_timeout"):
        HubAPI(Hub(), keys=[KEY], body_timeout=0)
    with pytest.raises(TypeError, match="body_timeout"):
        HubAPI(Hub(), keys=[KEY], body_timeout="1")  # type: ignore[arg-type]
