"""``docs/server.md``, the standalone server from zero to production, followed for real.

The steps are the fenced blocks that follow a ``<!-- server: NAME -->`` line,
read from the page itself, so the page cannot drift from what works. The shell
steps run with bash in a fresh directory, with the ``hubbub`` command of the
environment running the tests (the install step is not run: PyPI has the last
release, not this checkout; its extras are checked to exist). The edits are
``diff`` blocks applied to the file ``hubbub config example`` wrote, each
failing when the example no longer contains what it replaces.

The rest runs as the guide's production path does, on loopback: a real
``redis-server`` behind the guide's Redis URL, ``hubbub serve --config`` behind
Debian's nginx configured from ``examples/deploy/nginx.conf``, a token from
``hubbub token --config``, a WebSocket client through nginx (the token in the
subprotocol, from the allowed origin) subscribed to both namespaces, a
publication from ``hubbub publish --config`` arriving, and a token without the
``rooms`` claim refused in the chat namespace. Two things are replaced, each
asserted to be in the file first: the Redis URL (the test's server) and the
port (a free one).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol

from .proxy_servers import Proxy, make_certificates, run_nginx
from .redis_server import RedisServer, redis_server
from .servers import ROOT, Server, free_port, wait_ready

GUIDE = ROOT / "docs" / "server.md"
STEP = re.compile(r"^<!-- server: ([a-z-]+) -->\n```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
STEPS = [
    "install",
    "example",
    "edit-jwt",
    "edit-broker",
    "edit-origins",
    "edit-api",
    "edit-rooms",
    "secrets",
    "check",
    "serve",
    "token",
    "publish",
]
GUIDE_REDIS = "redis://127.0.0.1:6379/0"
ORIGIN = "https://app.example.com"
WITHIN = 10.0


def steps() -> dict[str, tuple[str, str]]:
    """The guide's marked blocks by step name: (language, text)."""
    found = STEP.findall(GUIDE.read_text(encoding="utf-8"))
    return {name: (language, text) for name, language, text in found}


def block(name: str, language: str) -> str:
    """The text of the step ``name``, which must be a ``language`` block."""
    found_language, text = steps()[name]
    assert found_language == language, (name, found_language)
    return text


def test_the_guide_marks_exactly_the_steps_this_test_runs() -> None:
    """Every marked block is used below, in the guide's order; none is left out."""
    text = GUIDE.read_text(encoding="utf-8")
    marked = re.findall(r"^<!-- server: ([a-z-]+) -->$", text, re.MULTILINE)
    assert marked == STEPS
    assert list(steps()) == STEPS, "a marker must be followed directly by its code block"


def test_the_install_step_names_extras_that_exist() -> None:
    """The extras the guide installs are the package's: uvicorn, Redis, the client."""
    install = block("install", "sh")
    match = re.search(r"pip install 'hubbub\[([a-z,]+)\]'", install)
    assert match is not None, install
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    assert set(match.group(1).split(",")) == {"standard", "redis", "client"}
    assert set(match.group(1).split(",")) <= extras.keys()


def apply_edit(text: str, diff: str, name: str) -> str:
    """``text`` with the guide's ``diff`` applied: its old lines (context and ``-``) replaced
    by its new ones (context and ``+``); the old lines must be in ``text`` exactly once."""
    old: list[str] = []
    new: list[str] = []
    for line in diff.splitlines():
        mark, rest = line[:1], line[1:]
        assert mark in (" ", "-", "+"), f"{name}: not a diff line: {line!r}"
        if mark != "+":
            old.append(rest)
        if mark != "-":
            new.append(rest)
    before, after = "\n".join(old) + "\n", "\n".join(new) + "\n"
    count = text.count(before)
    assert count == 1, f"{name}: the example holds {before!r} {count} times, not once"
    return text.replace(before, after)


def environment() -> dict[str, str]:
    """A reader's shell with this checkout's ``hubbub`` first on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")] if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def shell(command: str, cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a step with bash in ``cwd``, as the reader would."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        check=False,
    )
    if check:
        assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr}"
    return result


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the guide's file no longer holds {old!r} once"
    return text.replace(old, new)


@contextmanager
def serve(command: str, cwd: Path, port: int, tmp_path: Path) -> Iterator[Server]:
    """The guide's ``hubbub serve`` line, running until the block ends (stopped by its PID)."""
    log_path = tmp_path / "hubbub.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(),
        )
    server = Server(process, port, log_path)
    try:
        wait_ready(server, "/ready")
        yield server
    finally:
        code = server.terminate()
        assert code == -signal.SIGTERM, server.log()
        assert "Traceback" not in server.log(), server.log()


def ws(proxy: Proxy, token: str, context: Any, origin: str = ORIGIN) -> ClientConnection:
    """A WebSocket through nginx, the token in the subprotocol as a browser sends it."""
    return connect(
        proxy.ws_url + "/ws",
        ssl=context,
        origin=Origin(origin),
        subprotocols=[Subprotocol("hubbub.v1.json"), Subprotocol("bearer." + token)],
        open_timeout=WITHIN,
        close_timeout=2,
        ping_interval=None,
        proxy=None,
    )


_EARLY: weakref.WeakKeyDictionary[ClientConnection, list[dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)
"""Messages read while waiting for another (by client): no order is promised between
a publisher's ``ack`` and its own copy of the ``message`` (protocol §5)."""


def _next(client: ClientConnection) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(client.recv(timeout=WITHIN))
        if message["type"] != "ping":
            return message
        client.send(json.dumps({"type": "pong"}))


def receive(client: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of type ``kind`` (pings answered, other events skipped)."""
    early = _EARLY.setdefault(client, [])
    for index, message in enumerate(early):
        if message["type"] == kind:
            return early.pop(index)
    for _ in range(50):
        message = _next(client)
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} among 50 messages")


def request(client: ClientConnection, command: dict[str, Any]) -> dict[str, Any]:
    """Send ``command`` and return the reply carrying its id (others kept for receive)."""
    client.send(json.dumps(command))
    for _ in range(50):
        message = _next(client)
        if message.get("id") == command["id"]:
            return message
        _EARLY.setdefault(client, []).append(message)
    raise AssertionError(f"no reply to {command}")


def test_the_production_path_of_the_guide_runs_as_written(tmp_path: Path) -> None:
    """Example, edits, check, Redis, serve behind nginx, token, both namespaces, publish."""
    # 2. The configuration file, where the guide makes it.
    shell(block("example", "sh"), tmp_path)
    work = tmp_path / "hubbub"
    config = work / "hubbub.toml"
    assert config.exists(), "the example step must leave hubbub.toml in ./hubbub"

    # 3. The edits, then the secrets.
    text = config.read_text(encoding="utf-8")
    for name in ("edit-jwt", "edit-broker", "edit-origins", "edit-api", "edit-rooms"):
        text = apply_edit(text, block(name, "diff"), name)
    assert GUIDE_REDIS in text and ORIGIN in text
    shell(block("secrets", "sh"), work)
    secret = (work / "jwt-secret").read_text().strip()
    api_key = (work / "api-keys").read_text().strip()
    assert len(secret) >= 32 and len(api_key) >= 16

    with _redis(tmp_path) as redis:
        # The test's own Redis and a free port: the only changes a reader would not make.
        port = free_port()
        text = replace_once(text, GUIDE_REDIS, redis.url)
        text = replace_once(text, "\nport = 8000\n", f"\nport = {port}\n")
        config.write_text(text, encoding="utf-8")

        # 4. Check: the effective configuration, secrets masked.
        checked = shell(block("check", "sh"), work)
        assert "secret_file" in checked.stdout and redis.url in checked.stdout
        assert secret not in checked.stdout and api_key not in checked.stdout

        # 5. Serve, behind nginx from the recipe (step 9).
        certs = make_certificates(tmp_path)
        with (
            serve(block("serve", "sh").strip(), work, port, tmp_path) as hubbub,
            run_nginx(hubbub.port, tmp_path / "nginx", certs) as nginx,
        ):
            tls = certs.client_context()
            # 6. A token with the rooms claim, minted from the server's file.
            minted = shell(block("token", "sh"), work).stdout.strip()
            assert minted.count(".") == 2, minted
            with ws(nginx, minted, tls) as alice:
                welcome = receive(alice, "welcome")
                assert welcome["user"] == "alice", welcome
                for n, channel in enumerate(("news", "chat:lobby"), 1):
                    reply = request(alice, {"type": "subscribe", "channel": channel, "id": n})
                    assert reply["type"] == "subscribed", reply

                # 8. A publication from the operator command reaches the client.
                published = shell(block("publish", "sh"), work)
                ack = json.loads(published.stdout)
                assert ack["channel"] == "news" and ack["offset"] == 1, ack
                message = receive(alice, "message")
                assert message["channel"] == "news", message
                assert message["data"] == {"text": "deploy finished"}, message

                said = request(
                    alice,
                    {"type": "publish", "channel": "chat:lobby", "data": {"text": "hi"}, "id": 3},
                )
                assert said["type"] == "ack", said
                assert receive(alice, "message")["data"]["text"] == "hi"

            # A token without the claim: welcome, news, but not the chat room.
            claimless = shell(
                replace_once(block("token", "sh"), " --claim 'rooms=[\"chat:lobby\"]'", ""),
                work,
            ).stdout.strip()
            with ws(nginx, claimless, tls) as bob:
                receive(bob, "welcome")
                news = request(bob, {"type": "subscribe", "channel": "news", "id": 1})
                assert news["type"] == "subscribed", news
                room = request(bob, {"type": "subscribe", "channel": "chat:lobby", "id": 2})
                assert room["type"] == "error" and room["code"] == 403, room

            # The edits hold: no token is 401, another site's page 403 (through nginx).
            with pytest.raises(InvalidStatus) as anonymous, ws(nginx, "not-a-token", tls):
                pass  # pragma: no cover - refused
            assert anonymous.value.response.status_code == 401
            with (
                pytest.raises(InvalidStatus) as elsewhere,
                ws(nginx, minted, tls, origin="https://evil.example"),
            ):
                pass  # pragma: no cover - refused
            assert elsewhere.value.response.status_code == 403

            # The publications went through Redis: their stream is kept there.
            keys = redis.command("KEYS", "hubbub:*")
            assert keys, "nothing in Redis: the broker URL was not used"


@contextmanager
def _redis(tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    with redis_server(directory) as server:
        yield server
