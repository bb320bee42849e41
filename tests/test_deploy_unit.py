"""``examples/deploy/hubbub.service`` and ``hubbub.toml``: systemd accepts the unit, its
command line serves the shipped file, and its ExecReload reloads it.

``systemd-analyze verify`` checks the unit offline (no running systemd needed)
on a copy whose paths point at this checkout: the recipe's ``/opt/hubbub`` and
``/etc/hubbub`` do not exist here. It reports unknown keys and bad values as
warnings with exit status 0, so any output about the unit fails the test.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from hubbub.config import load
from hubbub.limits import client_ip

from .proxy_servers import (
    DEPLOY,
    IN_CI,
    RECIPE_CONFIG,
    environment_file,
    render_config,
    unit_command,
    unit_settings,
)
from .servers import Server, free_port, run_server

SECRET = "unit-test-secret-" + "y" * 32
API_KEY = "unit-test-api-key-0123456789"
NEW_API_KEY = "unit-test-new-api-key-9876543210"


def hubbub_script() -> str:
    """The ``hubbub`` console script of the environment running the tests."""
    beside = Path(sys.executable).parent / "hubbub"
    found = str(beside) if beside.exists() else shutil.which("hubbub")
    if found is None:
        pytest.fail("no `hubbub` script installed next to the test interpreter")
    return found


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds nothing to say about the unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze is not installed (apt-get install systemd)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    unit = (DEPLOY / "hubbub.service").read_text()
    for old, new in (
        ("/opt/hubbub/venv/bin/hubbub", hubbub_script()),
        ("/etc/hubbub/hubbub.env", str(DEPLOY / "hubbub.env")),
        (RECIPE_CONFIG, str(DEPLOY / "hubbub.toml")),
    ):
        assert old in unit, old
        unit = unit.replace(old, new)
    copy = tmp_path / "hubbub.service"
    copy.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = [line for line in (result.stdout + result.stderr).splitlines() if str(copy) in line]
    assert result.returncode == 0 and not said, result.stdout + result.stderr


def test_the_unit_stops_after_the_drain_not_during_it() -> None:
    """TimeoutStopSec outlasts the drain plus uvicorn's shutdown; the stop is a SIGTERM."""
    config = load(DEPLOY / "hubbub.toml")
    settings = unit_settings()
    drain = config.hub.drain_timeout + config.limits.close_timeout
    stop = float(settings["TimeoutStopSec"][0])
    assert stop > drain + config.server.shutdown_timeout
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings["User"][0] not in ("", "root")
    assert settings["EnvironmentFile"] == ["-/etc/hubbub/hubbub.env"]
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert settings[hardening] == ["yes"], hardening
    assert settings["ProtectSystem"] == ["strict"]


def test_the_shipped_file_trusts_the_local_proxy_and_listens_on_loopback() -> None:
    """``hubbub.toml`` takes client addresses from a proxy on loopback, from nobody else."""
    config = load(DEPLOY / "hubbub.toml")
    assert config.server.host == "127.0.0.1"
    trusted = config.limits.trusted_proxies
    forwarded = [(b"x-forwarded-for", b"203.0.113.9")]
    assert client_ip("127.0.0.1", forwarded, trusted) == "203.0.113.9"
    assert client_ip("::1", forwarded, trusted) == "203.0.113.9"
    assert client_ip("198.51.100.7", forwarded, trusted) == "198.51.100.7"


def test_the_environment_file_sets_nothing_by_default() -> None:
    """Every line of ``hubbub.env`` is a comment: the secrets are the files beside hubbub.toml."""
    assert environment_file() == {}


def _token(user: str, **claims: object) -> str:
    body = {"sub": user, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def _api_status(server: Server, key: str) -> int:
    """``GET /api/channels`` with ``key``: 200, or the refusal's status."""
    request = urllib.request.Request(
        server.url + "/api/channels", headers={"Authorization": f"apikey {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _request(ws: ClientConnection, command: dict[str, object]) -> dict[str, object]:
    """Send ``command`` and return the reply to it (pings and events skipped)."""
    ws.send(json.dumps(command))
    for _ in range(20):
        reply: dict[str, object] = json.loads(ws.recv(timeout=10))
        if reply.get("id") == command["id"]:
            return reply
    raise AssertionError(f"no reply to {command}")


def test_exec_start_serves_the_shipped_file(tmp_path: Path) -> None:
    """The unit's ExecStart serves hubbub.toml: JWT, the API key, both namespaces, origins."""
    port = free_port()
    config = render_config(tmp_path / "etc", port, secret=SECRET, api_key=API_KEY)
    with run_server(unit_command(config), tmp_path, env=environment_file(), port=port) as server:
        with pytest.raises(InvalidStatus) as anonymous, _connect(server, None):
            pass  # pragma: no cover - refused
        assert anonymous.value.response.status_code == 401
        with _connect(server, _token("alice", rooms=["chat:lobby"])) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            news = _request(ws, {"type": "subscribe", "channel": "news", "id": 1})
            assert news["type"] == "subscribed", news
            room = _request(ws, {"type": "subscribe", "channel": "chat:lobby", "id": 2})
            assert room["type"] == "subscribed", room
            other = _request(ws, {"type": "subscribe", "channel": "chat:other", "id": 3})
            assert other["type"] == "error" and other["code"] == 403, other
            # Clients may not publish on the backend's channels (publish = "nobody").
            no = _request(ws, {"type": "publish", "channel": "news", "data": 1, "id": 4})
            assert no["type"] == "error" and no["code"] == 403, no
            request = urllib.request.Request(
                server.url + "/api/publish",
                data=json.dumps({"channel": "news", "data": {"n": 1}}).encode(),
                headers={"Authorization": f"apikey {API_KEY}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            for _ in range(20):
                message = json.loads(ws.recv(timeout=10))
                if message["type"] == "message":
                    break
            assert message["channel"] == "news" and message["data"] == {"n": 1}, message
        # auth.allowed_origins: another site's page is refused.
        with (
            pytest.raises(InvalidStatus) as refused,
            _connect(server, _token("alice"), origin="https://evil.example"),
        ):
            pass  # pragma: no cover - refused
        assert refused.value.response.status_code == 403
        with _connect(server, _token("alice"), origin="https://app.example.com") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


def _connect(server: Server, token: str | None, origin: str | None = None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(
        server.ws_url + "/ws",
        origin=Origin(origin) if origin else None,
        additional_headers=headers,
        open_timeout=10,
        close_timeout=2,
        proxy=None,
    )


def test_exec_reload_applies_a_rotated_api_key_and_says_so(tmp_path: Path) -> None:
    """The unit's ExecReload, run against ExecStart's server, swaps the API key; the log says so."""
    port = free_port()
    config = render_config(tmp_path / "etc", port, secret=SECRET, api_key=API_KEY)
    (exec_reload,) = unit_settings()["ExecReload"]
    with run_server(unit_command(config), tmp_path, env=environment_file(), port=port) as server:
        assert _api_status(server, API_KEY) == 200
        assert _api_status(server, NEW_API_KEY) == 401
        (config.parent / "api-keys").write_text(NEW_API_KEY + "\n")
        # What systemd runs for `systemctl reload hubbub`, $MAINPID being ExecStart's process.
        argv = [str(server.pid) if a == "$MAINPID" else a for a in shlex.split(exec_reload)]
        assert str(server.pid) in argv, exec_reload
        subprocess.run(argv, check=True, timeout=10)
        log = server.wait_log("config reload: api keys replaced (1 key(s))")
        assert "needs a restart" not in log, log
        assert _api_status(server, NEW_API_KEY) == 200
        assert _api_status(server, API_KEY) == 401
        # A reload that only the restart can apply is said, and changes nothing else.
        text = config.read_text()
        config.write_text(text.replace("history_size = 100", "history_size = 50", 1))
        subprocess.run(argv, check=True, timeout=10)
        log = server.wait_log("config reload: changed but needs a restart: namespaces")
        assert _api_status(server, NEW_API_KEY) == 200
        assert "Traceback" not in log
        assert server.process.poll() is None


def test_an_api_key_variable_replaces_the_files_key_file(tmp_path: Path) -> None:
    """HUBBUB_API_KEY (e.g. from hubbub.env) overrides the shipped file's api.keys_file."""
    config = render_config(tmp_path / "etc", 8000, secret=SECRET, api_key=API_KEY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    env["HUBBUB_API_KEY"] = NEW_API_KEY
    result = subprocess.run(
        [sys.executable, "-m", "hubbub", "config", "check", "--format", "json", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["api"]["keys"] == ["***"]
