"""Backends in other languages: ``examples/backends/node`` and ``examples/backends/go``.

Each example mints a connection token with its language's standard library
and publishes through hubbub's HTTP API. Against a real ``hubbub serve`` (the
shipped ``examples/deploy/hubbub.toml`` with the test's JWT secret and API key):
the token opens a WebSocket, the server subscribes the ``channels`` it names,
and the publication reaches that socket. A wrong key, a token signed with
another secret and data that is not JSON are refused. Without ``node`` or
``go`` the tests are skipped, except when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .proxy_servers import IN_CI, render_config
from .servers import ROOT, Server, free_port, run_server

SECRET = "backend-test-secret-" + "z" * 32
API_KEY = "backend-test-api-key-0123456789"
EXAMPLES = ROOT / "examples" / "backends"
RUN_TIMEOUT = 30


def missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def node() -> list[str]:
    """``node hubbub.mjs``; Node 18 or later (``fetch``)."""
    found = shutil.which("node")
    if found is None:
        missing("node is not installed (apt-get install nodejs)")
    assert found is not None
    version = subprocess.run(
        [found, "--version"], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True
    ).stdout
    matched = re.match(r"v(\d+)", version)
    assert matched is not None, version
    major = int(matched.group(1))
    if major < 18:
        missing(f"node {version.strip()} has no fetch: the example needs Node 18 or later")
    return [found, str(EXAMPLES / "node" / "hubbub.mjs")]


@pytest.fixture(scope="module")
def go(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Go example, built once with the standard library only (no module download)."""
    found = shutil.which("go")
    if found is None:
        missing("go is not installed (apt-get install golang-go)")
    assert found is not None
    out = tmp_path_factory.mktemp("go") / "hubbub-backend"
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "-buildvcs=false -mod=mod"}
    if "HOME" not in env and "GOCACHE" not in env:
        env["GOCACHE"] = str(out.parent / "cache")
    built = subprocess.run(
        [found, "build", "-o", str(out), "."],
        cwd=EXAMPLES / "go",
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return [str(out)]


@pytest.fixture(params=["node", "go"])
def backend(request: pytest.FixtureRequest) -> list[str]:
    """The example's command line, for each language."""
    return list(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def hubbub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve --config`` the shipped hubbub.toml, with the test's secret and API key."""
    directory = tmp_path_factory.mktemp("hubbub")
    port = free_port()
    config = render_config(directory / "etc", port, secret=SECRET, api_key=API_KEY)
    argv = ["-m", "hubbub", "serve", "--config", str(config)]
    with run_server(argv, directory, port=port) as server:
        yield server


def run(
    command: list[str], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the example with ``args``; its environment holds only what is given (and PATH)."""
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={"PATH": os.environ.get("PATH", ""), **(env or {})},
        check=False,
    )


def mint(command: list[str], *args: str, secret: str = SECRET) -> str:
    result = run(command, "token", *args, env={"HUBBUB_JWT_SECRET": secret})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def open_ws(server: Server, token: str) -> ClientConnection:
    return connect(
        server.ws_url + "/ws",
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
        close_timeout=2,
        proxy=None,
    )


def recv(ws: ClientConnection) -> dict[str, object]:
    """The next message that is not a ping."""
    for _ in range(10):
        message: dict[str, object] = json.loads(ws.recv(timeout=10))
        if message["type"] != "ping":
            return message
    raise AssertionError("only pings")


def test_token_opens_a_websocket_and_the_api_publishes_to_it(
    backend: list[str], hubbub: Server
) -> None:
    """The minted token is accepted; its channels are subscribed; the API's publication arrives."""
    token = mint(backend, "--channel", "news", "alice")
    with open_ws(hubbub, token) as ws:
        welcome = recv(ws)
        assert welcome["type"] == "welcome", welcome
        assert welcome["user"] == "alice"
        subscribed = welcome["subscribed"]
        assert isinstance(subscribed, list)
        assert "news" in [s["channel"] for s in subscribed], subscribed
        env = {"HUBBUB_URL": hubbub.url, "HUBBUB_API_KEY": API_KEY}
        published = run(backend, "publish", "news", '{"text": "from the backend"}', env=env)
        assert published.returncode == 0, published.stderr
        assert isinstance(json.loads(published.stdout), dict)
        message = recv(ws)
        assert message["type"] == "message", message
        assert message["channel"] == "news"
        assert message["data"] == {"text": "from the backend"}


def test_wrong_api_key_is_an_error_exit(backend: list[str], hubbub: Server) -> None:
    """A wrong key exits non-zero with hubbub's 401 reason on stderr, nothing published."""
    env = {"HUBBUB_URL": hubbub.url, "HUBBUB_API_KEY": "wrong-key-0123456789abcdef"}
    result = run(backend, "publish", "news", "{}", env=env)
    assert result.returncode == 1, result
    assert "401" in result.stderr
    assert result.stdout == ""


def test_data_that_is_not_json_is_refused_before_sending(
    backend: list[str], hubbub: Server
) -> None:
    """Publishing text that is not JSON is a usage error (exit 2), not a request."""
    env = {"HUBBUB_URL": hubbub.url, "HUBBUB_API_KEY": API_KEY}
    result = run(backend, "publish", "news", "{not json", env=env)
    assert result.returncode == 2, result
    assert "JSON" in result.stderr


def test_token_signed_with_another_secret_is_refused(backend: list[str], hubbub: Server) -> None:
    """hubbub refuses (401) a token the example signed with a different secret."""
    token = mint(backend, "mallory", secret="another-secret-" + "q" * 32)
    with pytest.raises(InvalidStatus) as refused, open_ws(hubbub, token):
        pass  # pragma: no cover - refused
    assert refused.value.response.status_code == 401


def test_missing_secret_is_a_clear_error(backend: list[str]) -> None:
    """Without HUBBUB_JWT_SECRET the example says what to set and exits 2."""
    result = run(backend, "token", "alice")
    assert result.returncode == 2
    assert "HUBBUB_JWT_SECRET" in result.stderr


def test_a_claim_of_your_own_opens_a_claim_namespace(backend: list[str], hubbub: Server) -> None:
    """``--claim 'rooms=[...]'``: the shipped file's chat rooms, entered by a ``rooms`` claim."""
    token = mint(backend, "--claim", 'rooms=["chat:lobby"]', "carol")
    with open_ws(hubbub, token) as ws:
        assert recv(ws)["type"] == "welcome"
        ws.send(json.dumps({"type": "subscribe", "channel": "chat:lobby", "id": 1}))
        assert recv(ws)["type"] == "subscribed"
        ws.send(json.dumps({"type": "subscribe", "channel": "chat:other", "id": 2}))
        refused = recv(ws)
        assert (refused["type"], refused["code"]) == ("error", 403), refused
    bad = run(backend, "token", "--claim", "rooms", "carol", env={"HUBBUB_JWT_SECRET": SECRET})
    assert bad.returncode == 2 and "KEY=JSON" in bad.stderr, bad
