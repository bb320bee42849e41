"""The session path and its seams: one-way connections, one admission, one set of permission rules.

Driven through ``HubApp`` with Starlette's ``TestClient`` (WebSocket, SSE refusals, HTTP API)
and by reading the connection modules' source for what they import and call.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import hubbub
from hubbub import HubApp, Identity, Limits, Namespace
from hubbub.hub import Hub
from hubbub.limits import Admission

KEY = "k-0123456789abcdef"
SESSION_MODULES = ("_connection", "_session", "_sse", "_websocket")


async def _user_from_query(scope: Mapping[str, Any]) -> Identity | None:
    for part in scope.get("query_string", b"").decode().split("&"):
        key, _, value = part.partition("=")
        if key == "user" and value:
            return Identity(user=value)
    return None


@pytest.fixture
def client() -> Iterator[TestClient]:
    """A HubApp whose ``vip:`` namespace admits only ``ada`` (its ``can_subscribe`` hook)."""
    hub = Hub(
        authenticator=_user_from_query,
        namespaces=[
            Namespace(),
            Namespace(
                name="vip",
                history_size=10,
                can_subscribe=lambda identity, channel: identity.user == "ada",
            ),
        ],
    )
    with TestClient(HubApp(hub, api_keys=[KEY]), backend="asyncio") as test_client:
        yield test_client


def _imports_and_private_calls(path: Path) -> tuple[set[str], list[str]]:
    """Every module imported (``TYPE_CHECKING`` blocks too), and ``hub._x``/``host._x`` uses."""
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    private: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            imported.add(base)
            imported.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in ("hub", "host", "_hub"):
                private.append(f"{name}.{node.attr}")
    return imported, private


@pytest.mark.parametrize("module", SESSION_MODULES)
def test_connection_modules_never_reach_into_the_hub(module: str) -> None:
    """Connections, the session path and the transports import no hub and call nothing private."""
    path = Path(hubbub.__file__).parent / f"{module}.py"
    imported, private = _imports_and_private_calls(path)
    assert not {name for name in imported if name in (".hub", "hubbub.hub", ".")} | {
        name for name in imported if name.startswith((".hub.", "hubbub.hub."))
    }
    assert private == []


def test_the_hub_hands_its_connections_a_session_host() -> None:
    """``Hub.session_host`` offers every member of the SessionHost protocol."""
    from hubbub._connection import SessionHost

    members = {
        name
        for name in vars(SessionHost)
        if not name.startswith("_") and name not in ("stats", "node")
    } | set(SessionHost.__annotations__)
    host = Hub().session_host
    assert members and all(hasattr(host, name) for name in members), members


@pytest.mark.parametrize(
    ("user", "channel", "reason"),
    [
        ("bob", "vip:x", "not allowed to subscribe to 'vip:x'"),
        ("bob", "#ada", "a personal channel is only for its own user"),
    ],
)
def test_websocket_and_sse_refuse_a_subscription_alike(
    client: TestClient, user: str, channel: str, reason: str
) -> None:
    """The same rule refuses the same channel with the same 403 on a WebSocket and an SSE stream."""
    with client.websocket_connect(f"/ws?user={user}") as ws:
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "subscribe", "channel": channel, "id": 1})
        refused = ws.receive_json()
        assert (refused["type"], refused["code"], refused["reason"]) == ("error", 403, reason)
    quoted = channel.replace("#", "%23")
    response = client.get(f"/sse?channel={quoted}&user={user}")
    assert response.status_code == 403
    assert response.json() == {"code": 403, "reason": reason}
    with client.websocket_connect("/ws?user=ada") as ws:
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "subscribe", "channel": "vip:x", "id": 1})
        assert ws.receive_json()["type"] == "subscribed"


def test_reading_follows_the_subscribe_rule(client: TestClient) -> None:
    """``history`` of a channel the client may not subscribe to is 403, with the read reason."""
    with client.websocket_connect("/ws?user=bob") as ws:
        assert ws.receive_json()["type"] == "welcome"
        ws.send_json({"type": "history", "channel": "vip:x", "id": 1})
        refused = ws.receive_json()
        assert (refused["code"], refused["reason"]) == (403, "not allowed to read 'vip:x'")
        ws.send_json({"type": "history", "channel": "#ada", "id": 2})
        refused = ws.receive_json()
        assert refused["reason"] == "a personal channel is only for its own user"


@pytest.mark.parametrize(
    ("user", "channel", "status", "reason"),
    [
        ("bob", "vip:x", 403, "the namespace does not allow 'bob' in 'vip:x'"),
        ("bob", "#ada", 403, "a personal channel is only for its own user"),
        ("ada", "vip:x", 200, None),
        ("ada", "#ada", 200, None),
    ],
)
def test_the_api_subscribes_a_user_by_the_same_rules(
    client: TestClient, user: str, channel: str, status: int, reason: str | None
) -> None:
    """A server-side subscribe asks the namespace's hook for the user; personal ones stay own."""
    response = client.post(
        "/api/subscribe",
        json={"user": user, "channel": channel},
        headers={"Authorization": f"apikey {KEY}"},
    )
    assert response.status_code == status
    if reason is not None:
        assert response.json() == {"code": status, "reason": reason}


@pytest.mark.anyio
async def test_admission_counts_a_scope_once() -> None:
    """``Admission.admit`` holds one place per scope, however many layers admit it."""
    admission = Admission(Limits(max_connections_per_ip=1))
    first: dict[str, Any] = {"client": ("10.0.0.1", 1), "headers": []}
    assert await admission.admit(first) == ("10.0.0.1", True, None)
    assert await admission.admit(first) == ("10.0.0.1", False, None)  # the hub behind a middleware
    second: dict[str, Any] = {"client": ("10.0.0.1", 2), "headers": []}
    ip, took, refused = await admission.admit(second)
    assert (ip, took) == ("10.0.0.1", False) and refused is not None and refused[1] == 5
    admission.closed("10.0.0.1")
    assert await admission.admit(second) == ("10.0.0.1", True, None)
    other = Admission(Limits(max_connections_per_ip=1))
    assert (await other.admit(second))[1]  # another hub's admission counts for itself
