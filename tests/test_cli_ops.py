"""The operator commands (``hubbub token``, ``publish``, ``notify``, ``tail``, ``stats``).

Each runs against a real ``hubbub serve`` in a uvicorn process: the demo hub
started as an operator would (``--jwt-secret``, ``--api-key``), or the client
tests' hub (``client_app``: a ``feed:`` namespace keeping history) on the
memory broker or on a real ``redis-server`` for the restart cases. ``tail``
runs as a subprocess, so signals and exit statuses are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hubbub import JWTAuthenticator
from hubbub.cli import main
from hubbub.client import Client, ConnectFailed, HubbubAPI

from .apps.client_app import API_KEY as CLIENT_APP_KEY
from .redis_server import redis_server
from .servers import ROOT, Server, free_port, run_server

SECRET = "operator-secret-0123456789abcdef-0123"  # 37 bytes: HS256 needs 32+
API_KEY = "operator-api-key-0123456789"
DEADLINE = 30.0
"""Seconds any wait in these tests may take before it fails."""


# -- helpers --------------------------------------------------------------------------------------


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HUBBUB_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_hubbub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's environment leaks into a test."""
    _clean_env(monkeypatch)


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``hubbub <argv>`` in this process: exit status, stdout, stderr."""
    try:
        main(list(argv))
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    else:
        code = 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def hubbub(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    """``python -m hubbub <argv>`` in a subprocess (bounded in time)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), full.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "hubbub", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**full, **(env or {})},
        input=stdin,
        cwd=ROOT,
    )


def one_error_line(err: str, command: str) -> str:
    """The stderr of a failed command: one line, ``hubbub <command>: error: ...``."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"hubbub {command}: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")  # as `echo` writes it
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo hub as an operator runs it: JWT (anonymous off) and the HTTP API on."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}"]
    env = {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_API_KEY": API_KEY}
    with run_server(argv, tmp_path_factory.mktemp("demo"), env=env) as server:
        yield server


class Tail:
    """``hubbub tail`` in a subprocess; its stdout and stderr lines read as they come."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str] | None = None, *, read_stdout: bool = True
    ) -> None:
        full = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
        full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), full.get("PYTHONPATH", "")])
        full["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hubbub", "tail", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**full, **(env or {})},
            cwd=ROOT,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed: queue.Queue[None] = queue.Queue()
        streams = [(self.process.stderr, self.err)]
        if read_stdout:
            streams.append((self.process.stdout, self.out))
        else:
            assert self.process.stdout is not None
            self.process.stdout.close()  # the reader went away, as `| head` does
        self._threads = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in streams
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            self._changed.put(None)
        self._changed.put(None)

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            left = deadline - time.monotonic()
            if left <= 0 or (self.process.poll() is not None and self._changed.empty()):
                if check():
                    return
                raise AssertionError(f"{what}: not within {timeout} s\n{self.report()}")
            with contextlib.suppress(queue.Empty):
                self._changed.get(timeout=min(left, 0.5))

    def wait_err(self, text: str, count: int = 1) -> None:
        self.wait_for(lambda: sum(text in line for line in self.err) >= count, repr(text))

    def publications(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.out)]

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig`` to this tail (by its PID); its exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        try:
            return self.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            raise AssertionError(f"tail ignored signal {sig}\n{self.report()}") from None

    def close(self) -> None:
        """After the process ended: the readers finish, the pipes close."""
        for thread in self._threads:
            thread.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def report(self) -> str:
        return "stdout:\n" + "\n".join(self.out) + "\nstderr:\n" + "\n".join(self.err)


@contextlib.contextmanager
def tail(
    argv: Sequence[str], env: dict[str, str] | None = None, *, read_stdout: bool = True
) -> Iterator[Tail]:
    started = Tail(argv, env, read_stdout=read_stdout)
    try:
        yield started
    finally:
        if started.process.poll() is None:
            os.kill(started.process.pid, signal.SIGKILL)
            started.process.wait(5)
        started.close()


async def connect(url: str, token: str | None) -> tuple[str, list[str]]:
    """Connect with ``token``: the user and the server-made subscriptions of its welcome."""
    async with Client(url + "/ws", token=token, backoff=None, connect_timeout=10) as client:
        assert client.welcome is not None
        return client.welcome.user, [s.channel for s in client.welcome.subscribed]


# -- hubbub token ----------------------------------------------------------------------------------


def test_a_minted_token_opens_a_connection_with_its_channels(
    demo: Server, secret_file: Path
) -> None:
    """The token connects to the server; --channel is subscribed server-side on connect."""
    done = hubbub(
        "token",
        "--user",
        "alice",
        "--secret-file",
        str(secret_file),
        "--channel",
        "news",
        "--name",
        "Alice",
        "--info",
        '{"team": "ops"}',
        "--claim",
        'role="admin"',
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout.count("\n") == 1  # $(hubbub token ...) works
    token = done.stdout.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["name"] == "Alice"
    assert claims["info"] == {"team": "ops"} and claims["role"] == "admin"
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600  # --ttl defaults to 1 h
    user, subscribed = anyio.run(connect, demo.url, token)
    assert user == "alice"
    assert "news" in subscribed


def test_a_token_from_another_secret_is_refused_by_the_server(demo: Server, tmp_path: Path) -> None:
    """A token minted with a wrong (well-formed) secret gets 401 at the handshake."""
    wrong = tmp_path / "wrong"
    wrong.write_text("another-secret-0123456789abcdef-01234")
    done = hubbub("token", "--user", "mallory", "--secret-file", str(wrong))
    assert done.returncode == 0, done.stderr
    with pytest.raises(ConnectFailed) as refused:
        anyio.run(connect, demo.url, done.stdout.strip())
    assert refused.value.status == 401


def test_the_environment_gives_secret_audience_and_issuer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """HUBBUB_JWT_SECRET/AUDIENCE/ISSUER are minted; flags win over them."""
    monkeypatch.setenv("HUBBUB_JWT_SECRET", SECRET)
    monkeypatch.setenv("HUBBUB_JWT_AUDIENCE", "hub")
    monkeypatch.setenv("HUBBUB_JWT_ISSUER", "https://backend.example")
    code, out, err = run(["token", "--user", "bob", "--ttl", "90s"], capsys)
    assert (code, err) == (0, "")
    strict = JWTAuthenticator(secret=SECRET, audience="hub", issuer="https://backend.example")
    identity = anyio.run(strict.verify, out.strip())
    assert identity.user == "bob"
    assert identity.expires is not None and identity.expires - time.time() <= 90
    code, out, err = run(["token", "--user", "bob", "--audience", "other"], capsys)
    assert code == 0
    assert jwt.decode(out.strip(), options={"verify_signature": False})["aud"] == "other"


@pytest.mark.parametrize(
    ("kind", "algorithm"),
    [("rsa", "RS256"), ("p256", "ES256"), ("p384", "ES384"), ("ed25519", "EdDSA")],
)
def test_a_private_key_mints_with_the_algorithm_of_its_type(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    algorithm: str,
) -> None:
    """--private-key (or HUBBUB_JWT_PRIVATE_KEY) signs what the public key's authenticator takes."""
    key: Any = {
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    monkeypatch.setenv("HUBBUB_JWT_PRIVATE_KEY", str(pem))
    code, out, err = run(["token", "--user", "carol", "--ttl", "30m"], capsys)
    assert (code, err) == (0, "")
    assert jwt.get_unverified_header(out.strip())["alg"] == algorithm
    identity = anyio.run(JWTAuthenticator(public_key=public).verify, out.strip())
    assert identity.user == "carol"


def test_an_eddsa_token_is_accepted_by_a_server_with_the_public_key(tmp_path: Path) -> None:
    """End to end with a key pair: ``serve --jwt-public-key`` takes ``token --private-key``."""
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--jwt-public-key", str(public)]
    with run_server(argv, tmp_path) as server:
        done = hubbub("token", "--user", "dave", "--private-key", str(private))
        assert done.returncode == 0, done.stderr
        assert anyio.run(connect, server.url, done.stdout.strip())[0] == "dave"


def test_a_channel_token_is_for_subscribe_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--channel-token mints what subscribe's token takes and no connection accepts."""
    monkeypatch.setenv("HUBBUB_JWT_SECRET", SECRET)
    code, out, _ = run(["token", "--user", "erin", "--channel-token", "vip:lounge"], capsys)
    assert code == 0
    authenticator = JWTAuthenticator(secret=SECRET)
    anyio.run(
        lambda: authenticator.verify_channel_token(out.strip(), user="erin", channel="vip:lounge")
    )
    with pytest.raises(Exception, match="channel token cannot open"):
        anyio.run(authenticator.verify, out.strip())


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--ttl", "1x"], {}, "'1x' is not a duration"),
        (["--ttl", "0"], {}, "is not a duration"),
        (["--ttl=-5m"], {}, "is not a duration"),
        (["--ttl", "1.5h"], {}, "is not a duration"),
        (["--ttl", "99999999d"], {}, "after the year 9999"),
        (["--info", "{bad"], {}, "not valid JSON"),
        (["--info", "[1, 2]"], {}, "is not a JSON object"),
        (["--info", "[" * 5000], {}, "--info"),
        (["--claim", "role=admin"], {}, "JSON quotes"),
        (["--claim", 'sub="x"'], {}, "set by --user"),
        (["--claim", "noequals"], {}, "is not KEY=JSON"),
        (["--channel", "bad channel"], {}, "invalid channel name"),
        (["--channel-token", "c", "--channel", "d"], {}, "carries only the user"),
        ([], {"HUBBUB_JWT_SECRET": "short"}, "HS256 needs at least 32"),
        ([], {"HUBBUB_JWT_SECRET": ""}, "no signing key"),
        (
            [],
            {"HUBBUB_JWT_SECRET": "-----BEGIN PRIVATE KEY----- and enough bytes to pass"},
            "not an HMAC secret",
        ),
        (
            [],
            {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_PRIVATE_KEY": "/k.pem"},
            "both set",
        ),
        (["--secret-file", "/nonexistent/secret"], {}, "No such file"),
        (["--secret-file", "/etc/hostname", "--private-key", "k.pem"], {}, "not both"),
        (["--private-key", "/nonexistent.pem"], {}, "--private-key '/nonexistent.pem'"),
        (["--private-key", "/etc/hostname"], {}, "not a PEM private key"),
    ],
)
def test_bad_token_input_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    needle: str,
) -> None:
    """A bad TTL, JSON, claim, channel, or key: one line naming it, exit status 2."""
    if not env:
        monkeypatch.setenv("HUBBUB_JWT_SECRET", SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(["token", "--user", "frank", *argv], capsys)
    assert code == 2 and out == ""
    assert needle in one_error_line(err, "token")


def test_an_encrypted_private_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A passphrase-protected key is named, not prompted for."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "locked.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    code, _, err = run(["token", "--user", "g", "--private-key", str(pem)], capsys)
    assert code == 2
    assert "encrypted" in one_error_line(err, "token")


def test_a_user_the_server_would_refuse_is_refused_at_minting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The minted token is checked with the server's rules: an over-long sub never leaves."""
    monkeypatch.setenv("HUBBUB_JWT_SECRET", SECRET)
    code, out, err = run(["token", "--user", "u" * 201], capsys)
    assert code == 2 and out == ""
    assert "the hub would refuse this token" in one_error_line(err, "token")


# -- hubbub publish, notify, stats -----------------------------------------------------------------


def test_publish_then_tail_sees_it(demo: Server) -> None:
    """tail (token minted from HUBBUB_JWT_SECRET) prints what publish sent, as one JSON line."""
    env = {"HUBBUB_URL": demo.url, "HUBBUB_JWT_SECRET": SECRET, "HUBBUB_API_KEY": API_KEY}
    with tail(["news", "chat:ops", "--user", "watcher"], env) as watching:
        watching.wait_err("subscribed to news, chat:ops")
        assert "as watcher" in watching.err[0]
        published = hubbub("publish", "news", '{"headline": "up", "n": 1}', env=env)
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout) == {"channel": "news", "offset": None, "epoch": None}
        chat = hubbub("publish", "chat:ops", "-", env=env, stdin='{"text": "deployed"}')
        assert chat.returncode == 0, chat.stderr
        ack = json.loads(chat.stdout)
        assert ack["channel"] == "chat:ops" and ack["offset"] >= 1 and ack["epoch"]
        watching.wait_for(lambda: len(watching.out) >= 2, "two publications")
        lines = watching.publications()
        assert lines[0] == {
            "channel": "news",
            "offset": None,
            "epoch": None,
            "data": {"headline": "up", "n": 1},
            "info": None,
        }
        assert lines[1]["channel"] == "chat:ops" and lines[1]["data"]["text"] == "deployed"
        assert (lines[1]["offset"], lines[1]["epoch"]) == (ack["offset"], ack["epoch"])
        assert watching.stop(signal.SIGINT) == 0
    assert not any("Traceback" in line or "warning" in line for line in watching.err)


def test_publish_with_an_idempotency_key_publishes_once(
    demo: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same --idempotency-key twice: one publication, the same ack."""
    monkeypatch.setenv("HUBBUB_URL", demo.url)
    monkeypatch.setenv("HUBBUB_API_KEY", f"{API_KEY},an-older-key-0123456789")  # as the server's
    argv = ["publish", "chat:idem", '{"text": "once"}', "--idempotency-key", "deploy-42"]
    first, second = run(argv, capsys), run(argv, capsys)
    assert first[0] == second[0] == 0
    assert json.loads(first[1]) == json.loads(second[1])
    with HubbubAPI(demo.url, API_KEY) as api:
        assert len(api.history("chat:idem").publications) == 1


def test_notify_prints_the_personal_channel_ack(
    demo: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """notify pushes a notification and prints its position in the user's channel."""
    monkeypatch.setenv("HUBBUB_API_KEY", API_KEY)
    code, out, err = run(
        ["notify", "alice", '{"type": "deploy", "title": "v2 is live"}', "--url", demo.url],
        capsys,
    )
    assert (code, err) == (0, "")
    ack = json.loads(out)
    assert ack["user"] == "alice" and ack["channel"] == "#alice" and ack["offset"] >= 1
    code, _, err = run(["notify", "alice", '"just text"', "--url", demo.url], capsys)
    assert code == 2 and "JSON object" in one_error_line(err, "notify")


def test_stats_as_json_and_as_a_table(
    demo: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """stats prints the node's figures as JSON, or as a two-column table."""
    monkeypatch.setenv("HUBBUB_URL", demo.url + "/")
    monkeypatch.setenv("HUBBUB_API_KEY", API_KEY)
    code, out, err = run(["stats"], capsys)
    assert (code, err) == (0, "")
    figures = json.loads(out)
    assert figures["node"] and isinstance(figures["publications"], int)
    code, out, _ = run(["stats", "--format", "table"], capsys)
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["node"] == figures["node"] and "connections" in rows


# -- failures of the HTTP API commands ----------------------------------------------------------


def test_an_unreachable_server_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: one line naming the address, exit status 3."""
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["stats"], ["publish", "c", "1"], ["notify", "u", "{}"]):
        code, out, err = run([*argv, "--url", url, "--api-key", API_KEY], capsys)
        assert code == 3 and out == ""
        assert f"cannot reach the hub at {url}" in one_error_line(err, argv[0])


def test_a_wrong_api_key_is_exit_4(demo: Server, capsys: pytest.CaptureFixture[str]) -> None:
    """A key the server does not hold: 401 named, exit status 4."""
    code, _, err = run(["stats", "--url", demo.url, "--api-key", "not-the-key-0123456789"], capsys)
    assert code == 4
    assert "401" in one_error_line(err, "stats") and "API key was refused" in err


def test_an_api_that_is_off_is_exit_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server without --api-key answers 404: the line says the API is off, exit status 5."""
    with run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path) as server:
        code, _, err = run(["publish", "c", "1", "--url", server.url, "--api-key", API_KEY], capsys)
    assert code == 5
    assert "HTTP API is off" in one_error_line(err, "publish")


def test_an_unknown_namespace_is_exit_5_and_named(
    demo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 404 for the channel's namespace names it rather than blaming the API or the URL."""
    argv = ["publish", "nosuch:x", "1", "--url", demo.url, "--api-key", API_KEY]
    code, _, err = run(argv, capsys)
    assert code == 5
    assert "unknown namespace 'nosuch'" in one_error_line(err, "publish")
    assert "API is off" not in err


def test_too_many_wrong_keys_is_exit_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After ten wrong keys the server answers 429: retry later, exit status 6."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--api-key", API_KEY]
    with run_server(argv, tmp_path) as server:
        codes = []
        for _ in range(12):  # bounded: the server's limit is 10 a minute
            code, _, err = run(["stats", "--url", server.url, "--api-key", "x" * 20], capsys)
            codes.append(code)
            if code == 6:
                break
    assert codes[0] == 4 and codes[-1] == 6
    assert "429" in one_error_line(err, "stats")


def test_a_server_refusal_of_the_data_is_exit_7(
    demo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """Data the channel's schema refuses: the server's reason, exit status 7."""
    argv = ["publish", "chat:ops", '{"no_text": 1}', "--url", demo.url, "--api-key", API_KEY]
    code, _, err = run(argv, capsys)
    assert code == 7
    assert "from " + demo.url in one_error_line(err, "publish")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["publish", "c", "{bad", "--api-key", API_KEY], "the data is not valid JSON"),
        (["publish", "c", "[" * 5000, "--api-key", API_KEY], "nested too deeply"),
        (["publish", "c", "1"], "needs the server's API key"),
        (["publish", "c", "1", "--api-key", "has space"], "--api-key"),
        (["stats", "--url", "ftp://x", "--api-key", API_KEY], "is not the hub's address"),
        (["stats", "--url", "http://x:99999", "--api-key", API_KEY], "--url"),
        (["stats", "--url", "http://x/?a=1", "--api-key", API_KEY], "no query"),
    ],
)
def test_bad_api_command_input_is_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    """Bad JSON, no key, a malformed key or URL: refused before anything is sent."""
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert needle in one_error_line(err, argv[0])


def test_a_bad_hubbub_url_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """HUBBUB_URL is named as the source when it is the malformed one."""
    monkeypatch.setenv("HUBBUB_URL", "127.0.0.1:8000")
    code, _, err = run(["stats", "--api-key", API_KEY], capsys)
    assert code == 2 and "HUBBUB_URL='127.0.0.1:8000'" in one_error_line(err, "stats")


def test_a_missing_client_extra_says_what_to_install() -> None:
    """Without httpx-ws the commands say `pip install 'hubbub[client]'`, exit status 1."""
    code = (
        "import sys; sys.modules['httpx_ws'] = None; from hubbub.cli import main; "
        "main(['stats', '--api-key', 'k'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 1
    assert "pip install 'hubbub[client]'" in one_error_line(done.stderr, "stats")


# -- hubbub tail: failures ------------------------------------------------------------------------


def test_tail_of_an_unreachable_server_is_exit_3() -> None:
    """Nothing listening: tail gives up after --connect-timeout, one line, exit status 3."""
    url = f"http://127.0.0.1:{free_port()}"
    done = hubbub("tail", "news", "--url", url, "--connect-timeout", "1")
    assert done.returncode == 3
    assert "cannot connect to ws://" in one_error_line(done.stderr, "tail")


def test_tail_with_a_bad_token_or_none_is_exit_4(demo: Server) -> None:
    """A refused token, or no token where anonymous is off: 401 named, exit status 4."""
    bad = hubbub("tail", "news", "--url", demo.url, env={"HUBBUB_TOKEN": "not.a.jwt"})
    assert bad.returncode == 4
    assert "401" in one_error_line(bad.stderr, "tail")
    none = hubbub("tail", "news", "--url", demo.url)
    assert none.returncode == 4 and "token was refused or is missing" in none.stderr


def test_tail_of_a_channel_it_may_not_read_is_exit_4(demo: Server) -> None:
    """Another user's personal channel is refused (403) on subscribe: exit status 4."""
    env = {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_URL": demo.url}
    done = hubbub("tail", "#someone-else", "--quiet", env=env)
    assert done.returncode == 4
    assert "subscribe #someone-else: 403" in one_error_line(done.stderr, "tail")


# -- hubbub tail: restarts ------------------------------------------------------------------------


def client_app(tmp_path: Path, port: int, redis_url: str | None = None) -> Any:
    """``hubbub serve client_app:app`` (``feed:`` keeps history) on ``port``."""
    env = {"HUBBUB_TEST_REDIS_URL": redis_url} if redis_url else {}
    argv = ["-m", "hubbub", "serve", "client_app:app", "--port", "{port}"]
    return run_server(argv, tmp_path, env=env, port=port)


def test_tail_across_a_memory_broker_restart_warns_of_the_new_epoch(tmp_path: Path) -> None:
    """Memory broker: the restarted hub has a new epoch, so tail warns once and goes on."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tail(["feed:a", "plain", "--url", url]) as watching:
        with client_app(tmp_path, port), HubbubAPI(url, CLIENT_APP_KEY) as api:
            watching.wait_err("subscribed to feed:a, plain")
            api.publish("feed:a", {"n": 1})
            api.publish("feed:a", {"n": 2})
            watching.wait_for(lambda: len(watching.out) == 2, "two publications")
        watching.wait_err("connection lost: reconnecting")
        with client_app(tmp_path, port), HubbubAPI(url, CLIENT_APP_KEY) as api:
            watching.wait_err("stream was replaced")
            watching.wait_err("plain keeps no history")
            after = api.publish("feed:a", {"n": 3})
            watching.wait_for(lambda: len(watching.out) == 3, "the publication after")
            assert watching.stop(signal.SIGTERM) == 0
    lines = watching.publications()
    assert [line["data"]["n"] for line in lines] == [1, 2, 3]
    assert [line["offset"] for line in lines] == [1, 2, 1]
    assert lines[0]["epoch"] == lines[1]["epoch"] != lines[2]["epoch"]
    assert after is not None and lines[2]["epoch"] == after.epoch
    warnings = [line for line in watching.err if "warning" in line]
    assert len(warnings) == 2, watching.report()
    replaced = next(line for line in warnings if "feed:a" in line)
    assert f"epoch {lines[0]['epoch']} -> {lines[2]['epoch']}" in replaced
    assert "after offset 2" in replaced
    assert not any("Traceback" in line for line in watching.err)


def test_tail_across_a_restart_on_redis_recovers_every_publication_once(tmp_path: Path) -> None:
    """Redis: a numbered publisher on another node runs through the restart; tail prints
    every number once, in order, with no warning."""
    total = 80
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with redis_server(tmp_path) as redis, client_app(tmp_path, free_port(), redis.url) as other:
        sent: list[int] = []
        stop = threading.Event()

        def publisher() -> None:
            with HubbubAPI(other.url, CLIENT_APP_KEY) as api:
                for n in range(1, total + 1):
                    if stop.is_set():
                        return
                    api.publish("feed:numbers", {"n": n})
                    sent.append(n)
                    time.sleep(0.05)  # about 3 s in all: the restart falls inside

        with tail(["feed:numbers", "--url", url]) as watching:
            thread = threading.Thread(target=publisher, daemon=True)
            try:
                with client_app(tmp_path, port, redis.url):
                    watching.wait_err("subscribed to feed:numbers")
                    thread.start()
                    watching.wait_for(lambda: len(watching.out) >= 5, "the first numbers")
                # The node tail is on is gone; the publisher goes on through the other one.
                watching.wait_err("connection lost")
                printed = len(watching.out)
                deadline = time.monotonic() + DEADLINE
                while len(sent) < printed + 5 and time.monotonic() < deadline:
                    time.sleep(0.05)  # at least five numbers go by while tail is away
                assert len(sent) >= printed + 5 and len(watching.out) == printed
                with client_app(tmp_path, port, redis.url):
                    thread.join(DEADLINE)
                    assert sent == list(range(1, total + 1))
                    watching.wait_for(lambda: len(watching.out) >= total, "every number")
                    time.sleep(0.5)  # a duplicate, if any, would come now
                    assert watching.stop(signal.SIGINT) == 0
            finally:
                stop.set()
                thread.join(DEADLINE) if thread.is_alive() else None
    lines = watching.publications()
    assert [line["data"]["n"] for line in lines] == list(range(1, total + 1)), watching.report()
    assert [line["offset"] for line in lines] == list(range(1, total + 1))
    assert len({line["epoch"] for line in lines}) == 1
    assert "reconnected: recovering what was missed" in "\n".join(watching.err)
    assert not any("warning" in line or "Traceback" in line for line in watching.err)


def test_tail_piped_into_head_ends_quietly(demo: Server) -> None:
    """A reader that goes away (| head -1) ends tail with status 0 and no complaint."""
    env = {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_URL": demo.url}
    with tail(["pipe"], env, read_stdout=False) as watching:
        watching.wait_err("subscribed to pipe")
        with HubbubAPI(demo.url, API_KEY) as api:
            for n in range(50):  # bounded: the first write after the close fails
                api.publish("pipe", n)
                if watching.process.poll() is not None:
                    break
                time.sleep(0.1)
        assert watching.process.wait(DEADLINE) == 0
    assert not any("Traceback" in line or "Exception" in line for line in watching.err)


def test_tail_with_history_prints_the_last_kept_publications_first(demo: Server) -> None:
    """--history N: the newest N kept publications come first, then live ones."""
    env = {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_URL": demo.url}
    with HubbubAPI(demo.url, API_KEY) as api:
        for n in range(1, 4):
            api.publish("chat:backlog", {"text": f"old {n}"})
        with tail(["chat:backlog", "--history", "2"], env) as watching:
            watching.wait_err("subscribed to chat:backlog")
            api.publish("chat:backlog", {"text": "live"})
            watching.wait_for(lambda: len(watching.out) >= 3, "two kept and one live")
            assert watching.stop() == 0
    texts = [line["data"]["text"] for line in watching.publications()]
    assert texts == ["old 2", "old 3", "live"]
    assert [line["offset"] for line in watching.publications()] == [2, 3, 4]


def test_tail_of_a_wrong_path_or_namespace_is_exit_5(demo: Server) -> None:
    """No WebSocket endpoint under the URL's prefix, or an unknown namespace: exit status 5."""
    env = {"HUBBUB_JWT_SECRET": SECRET}
    wrong_path = hubbub("tail", "news", "--url", demo.url + "/prefix", env=env)
    assert wrong_path.returncode == 5
    assert "404 from ws://" in one_error_line(wrong_path.stderr, "tail")
    unknown = hubbub("tail", "nosuch:x", "--quiet", "--url", demo.url, env=env)
    assert unknown.returncode == 5
    assert "unknown namespace 'nosuch'" in one_error_line(unknown.stderr, "tail")


def test_the_servers_config_file_gives_address_api_key_and_secret(tmp_path: Path) -> None:
    """``--config`` (or HUBBUB_CONFIG): the commands reach and sign for the server it configures;
    a flag or variable still wins, and a broken file is one line naming file, line and key."""
    port = free_port()
    config = tmp_path / "hubbub.toml"
    (tmp_path / "secret").write_text(SECRET + "\n")
    config.write_text(
        f'[server]\nhost = "0.0.0.0"\nport = {port}\n'
        f'[auth]\nsecret_file = "{tmp_path / "secret"}"\naudience = "ops"\n'
        f'[api]\nkeys = ["{API_KEY}"]\n'
        '[[namespaces]]\nname = ""\nsubscribe = "authenticated"\n'
    )
    argv = ["-m", "hubbub", "serve", "--config", str(config), "--host", "127.0.0.1"]
    with run_server([*argv, "--port", "{port}"], tmp_path, port=port) as server:
        minted = hubbub("token", "--user", "erin", "--config", str(config))
        assert minted.returncode == 0, minted.stderr
        assert (
            jwt.decode(minted.stdout.strip(), SECRET, algorithms=["HS256"], audience="ops")["sub"]
            == "erin"
        )
        assert anyio.run(connect, server.url, minted.stdout.strip())[0] == "erin"
        published = hubbub("publish", "news", "{}", env={"HUBBUB_CONFIG": str(config)})
        assert published.returncode == 0, published.stderr
        stats = hubbub("stats", "--config", str(config))
        assert stats.returncode == 0 and json.loads(stats.stdout)["publications"] >= 1
        # A flag beats the file: a wrong key given on the command line is refused.
        wrong = hubbub("stats", "--config", str(config), "--api-key", "not-the-key-0123456789")
        assert wrong.returncode == 4, wrong.stderr
    config.write_text('[api]\nkeys = ["short"]\n')
    broken = hubbub("publish", "news", "{}", "--config", str(config))
    line = one_error_line(broken.stderr, "publish")
    assert broken.returncode == 2 and f"{config}:2: api.keys" in line, line


def test_a_certificate_the_client_does_not_trust_fails_at_once(tmp_path: Path) -> None:
    """A TLS server whose CA is not trusted: ``tail`` stops at its first connection with the
    TLS error (exit 3), not after retrying for its whole ``--connect-timeout`` (120 s here,
    past the 60 s a command may take in this test); the CA in SSL_CERT_FILE makes it connect."""
    from .proxy_servers import make_certificates

    (tmp_path / "tls").mkdir()
    certs = make_certificates(tmp_path / "tls")
    argv = ["-m", "hubbub", "serve", "--port", "{port}"]
    argv += ["--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)]
    env = {"HUBBUB_JWT_SECRET": SECRET}
    with run_server(argv, tmp_path, env=env, tls_ca=certs.ca) as server:
        url = server.url
        command = ["tail", "news", "--url", url, "--connect-timeout", "120"]
        refused = hubbub(*command, env={"HUBBUB_JWT_SECRET": SECRET})
        assert refused.returncode == 3, refused.stderr
        line = one_error_line(refused.stderr, "tail")
        assert "certificate" in line.lower() and "SSL_CERT_FILE" in line, line
        trusted = {"HUBBUB_JWT_SECRET": SECRET, "SSL_CERT_FILE": str(certs.ca)}
        with tail(["news", "--url", url], trusted) as watching:
            watching.wait_err("subscribed to news")
            assert watching.stop(signal.SIGINT) == 0


def test_one_exit_status_table_for_every_refusal() -> None:
    """HTTP statuses, handshake refusals and command errors map to the documented statuses."""
    from hubbub._ops_io import exit_status

    assert [exit_status(c) for c in (401, 403, 4401, 4403)] == [4, 4, 4, 4]
    assert exit_status(404) == 5
    assert [exit_status(c) for c in (429, 500, 503, 1012, 1013)] == [6, 6, 6, 6, 6]
    assert (exit_status(422), exit_status(1006, otherwise=3)) == (7, 3)
