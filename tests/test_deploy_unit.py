"""``examples/deploy/hubbub.service``: systemd accepts it, and its command line serves the hub.

``systemd-analyze verify`` checks the unit offline (no running systemd needed)
on a copy whose paths point at this checkout: the recipe's ``/opt/hubbub`` and
``/etc/hubbub`` do not exist here. It reports unknown keys and bad values as
warnings with exit status 0, so any output about the unit fails the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from .proxy_servers import (
    DEPLOY,
    IN_CI,
    environment_file,
    python_path,
    unit_command,
    unit_settings,
)
from .servers import run_server

SECRET = "unit-test-secret-" + "y" * 32
API_KEY = "unit-test-api-key-0123456789"


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
        ("WorkingDirectory=/etc/hubbub", f"WorkingDirectory={DEPLOY}"),
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
    from examples.deploy.hubbub_app import hub

    settings = unit_settings()
    argv = unit_command("hubbub_app:hub", 8000)
    shutdown = float(argv[argv.index("--shutdown-timeout") + 1])
    stop = float(settings["TimeoutStopSec"][0])
    assert stop > hub.drain_timeout + hub.limits.close_timeout + shutdown
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert int(settings["LimitNOFILE"][0]) >= 65536
    assert settings["User"][0] not in ("", "root")
    assert settings["EnvironmentFile"] == ["/etc/hubbub/hubbub.env"]
    for hardening in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert settings[hardening] == ["yes"], hardening
    assert settings["ProtectSystem"] == ["strict"]


def test_the_shipped_hub_trusts_the_local_proxy() -> None:
    """``hubbub_app.py`` takes client addresses from a proxy on loopback, from nobody else."""
    from examples.deploy.hubbub_app import hub

    from hubbub.limits import client_ip

    forwarded = [(b"x-forwarded-for", b"203.0.113.9")]
    assert client_ip("127.0.0.1", forwarded, hub.limits.trusted_proxies) == "203.0.113.9"
    assert client_ip("::1", forwarded, hub.limits.trusted_proxies) == "203.0.113.9"
    assert client_ip("198.51.100.7", forwarded, hub.limits.trusted_proxies) == "198.51.100.7"


def test_exec_start_serves_the_shipped_hub_with_the_environment_file(tmp_path: Path) -> None:
    """The unit's ExecStart with hubbub.env serves hubbub_app:hub: tokens, API key, origins."""
    variables = environment_file()
    variables.update(HUBBUB_JWT_SECRET=SECRET, HUBBUB_API_KEY=API_KEY)
    # WorkingDirectory: where hubbub_app.py is (/etc/hubbub in the recipe).
    variables["PYTHONPATH"] = python_path(DEPLOY)
    with run_server(unit_command("hubbub_app:hub", "{port}"), tmp_path, env=variables) as server:
        minted = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256"
        )
        with connect(
            server.ws_url + "/ws",
            additional_headers={"Authorization": f"Bearer {minted}"},
            open_timeout=10,
            close_timeout=2,
            proxy=None,
        ) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            ws.send(json.dumps({"type": "subscribe", "channel": "news", "id": 1}))
            assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
            request = urllib.request.Request(
                server.url + "/api/publish",
                data=json.dumps({"channel": "news", "data": {"n": 1}}).encode(),
                headers={"Authorization": f"apikey {API_KEY}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "message" and message["data"] == {"n": 1}
            # Clients may not publish on channels without a namespace (publish="nobody").
            ws.send(json.dumps({"type": "publish", "channel": "news", "data": 1, "id": 2}))
            assert json.loads(ws.recv(timeout=10))["code"] == 403
        # HUBBUB_ALLOWED_ORIGINS from the file: another site's page is refused.
        with (
            pytest.raises(InvalidStatus) as refused,
            connect(
                server.ws_url + "/ws",
                origin=Origin("https://evil.example"),
                additional_headers={"Authorization": f"Bearer {minted}"},
                open_timeout=10,
                proxy=None,
            ),
        ):
            pass  # pragma: no cover - refused
        assert refused.value.response.status_code == 403
