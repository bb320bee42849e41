"""The ``hubbub`` command: argument handling, target loading and ``hubbub schema``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hubbub import Hub, HubApp
from hubbub.cli import _build_app, _parser, _SpuriousHandshakeError, build_demo_hub, main

from .servers import run_server


def test_schema_prints_a_json_schema_of_both_directions(capsys: pytest.CaptureFixture[str]) -> None:
    """``hubbub schema`` prints one JSON document covering client and server messages."""
    main(["schema"])
    document = json.loads(capsys.readouterr().out)
    assert document["$schema"].startswith("https://json-schema.org/")
    definitions = document["$defs"]
    for name in ("Subscribe", "Publish", "Pong", "Welcome", "Message", "Error", "Disconnect"):
        assert name in definitions
    pattern = definitions["Subscribe"]["properties"]["channel"]["pattern"]
    assert "\\Z" not in pattern  # ECMA-262 regular expressions have no \Z


def test_schema_runs_as_a_module() -> None:
    """``python -m hubbub schema`` works without the console script."""
    out = subprocess.run(
        [sys.executable, "-m", "hubbub", "schema"], capture_output=True, check=True, timeout=60
    ).stdout
    assert json.loads(out)["title"].startswith("hubbub wire protocol")


def test_serve_without_target_builds_the_demo() -> None:
    """Without a target ``serve`` runs the demo hub with the demo page and the given limits."""
    args = _parser().parse_args(["serve", "--ping", "7", "--pong-timeout", "3"])
    app = _build_app(args)
    assert isinstance(app, HubApp)
    assert app.demo is True
    assert app.hub.anonymous is True
    assert app.hub.limits.ping_interval == 7
    assert app.hub.limits.pong_timeout == 3
    assert app.hub.namespaces.get("chat") is not None


def test_serve_wraps_a_hub_target_in_hubapp() -> None:
    """A ``module:attr`` naming a Hub is served through a HubApp; an ASGI app as it is."""
    hub_app = _build_app(_parser().parse_args(["serve", "tests.apps.small_limits:hub"]))
    assert isinstance(hub_app, HubApp)
    from .apps.hyper_app import app

    assert _build_app(_parser().parse_args(["serve", "tests.apps.hyper_app:app"])) is app


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon", "expected module:attribute"),
        ("tests.apps.hyper_app:missing", "has no attribute 'missing'"),
    ],
)
def test_bad_targets_exit_with_a_message(target: str, message: str) -> None:
    """A malformed or missing target ends the command with a clear message."""
    with pytest.raises(SystemExit, match=message):
        _build_app(_parser().parse_args(["serve", target]))


def test_unsupported_broker_url_exits_with_a_message() -> None:
    """A broker URL this version cannot serve is refused at start-up, not ignored."""
    with pytest.raises(SystemExit, match="unknown broker URL"):
        _build_app(_parser().parse_args(["serve", "--broker", "kafka://127.0.0.1:1"]))


def test_flags_fall_back_to_hubbub_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``serve`` flag can come from a ``HUBBUB_*`` variable."""
    monkeypatch.setenv("HUBBUB_PORT", "9123")
    monkeypatch.setenv("HUBBUB_PING", "11")
    monkeypatch.setenv("HUBBUB_MAX_MESSAGE_SIZE", "2048")
    args = _parser().parse_args(["serve"])
    assert (args.port, args.ping, args.max_message_size) == (9123, 11.0, 2048)


def test_demo_hub_accepts_hub_options() -> None:
    """``build_demo_hub`` passes options through to the Hub."""
    hub = build_demo_hub(node="demo-node")
    assert isinstance(hub, Hub)
    assert hub.node == "demo-node"


def test_spurious_uvicorn_handshake_error_is_filtered_and_nothing_else() -> None:
    """Only uvicorn's false "returned without completing handshake" line is dropped."""
    log_filter = _SpuriousHandshakeError()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, message, None, None)

    assert not log_filter.filter(record("ASGI callable returned without completing handshake."))
    assert log_filter.filter(record("Exception in ASGI application"))


def test_serve_runs_at_uvicorn_s_trace_level(tmp_path: Path) -> None:
    """``--log-level trace`` (uvicorn's level below debug) starts the server."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--log-level", "trace"]
    with run_server(argv, tmp_path) as server:
        assert server.process.poll() is None


def test_serve_stops_on_ctrl_c_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl+C (SIGINT) drains the hub, stops the server and exits 0, with no traceback."""
    with run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path) as server:
        os.kill(server.pid, signal.SIGINT)
        assert server.process.wait(20) == 0, server.log()
        log = server.log()
    assert "hub stopped" in log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``hubbub --version`` prints the package's version and exits 0."""
    from hubbub import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"hubbub {__version__}\n"
