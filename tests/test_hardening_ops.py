"""Operational hardening (issue #13): what a hostile client can make ``hubbub serve`` log or cost.

Every test runs a real ``hubbub serve`` process on a loopback port and reads
its whole log afterwards: a token in a URL or a frame never appears in it, and
no client input (a malformed frame, a truncated handshake, a wrong key) writes
a traceback into it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from starlette.testclient import TestClient
from websockets.asyncio.client import connect
from websockets.typing import Origin, Subprotocol

from hubbub import HubApp
from hubbub._keys import KeyCheck, KeyGuard, check_key
from hubbub.cli import _build_app, _parser

from .apps.auth_app import ORIGIN, mint
from .servers import Server, run_server

TIMEOUT = 10.0


def _no_traceback(log: str) -> None:
    """The log holds no traceback, no logging error and no ERROR line."""
    assert "Traceback" not in log, log
    assert "--- Logging error ---" not in log, log
    assert "ERROR" not in log, log


# -- a raw WebSocket client: frames exactly as a hostile client writes them --------------------


def _handshake(port: int, path: str = "/ws") -> socket.socket:
    """A TCP connection that completed the opening handshake (101) on ``path``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: hubbub.v1.json\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    """One frame; ``length`` may lie about the payload that follows."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        header = struct.pack("!BB", first, bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, bit | 127, size)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _close_code(sock: socket.socket) -> int | None:
    """The code of the server's close frame (frames before it skipped); None at EOF first."""
    buffer = b""

    def read(n: int) -> bytes:
        nonlocal buffer
        while len(buffer) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buffer += chunk
        data, buffer = buffer[:n], buffer[n:]
        return data

    try:
        while True:
            first, second = read(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", read(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", read(8))
            payload = read(size)
            if first & 0x0F == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
    except (EOFError, ConnectionResetError):
        return None
    finally:
        sock.close()


# -- item 8: the access log of a request with ?token= ------------------------------------------


def test_access_log_of_a_token_url_is_one_redacted_line(tmp_path: Path) -> None:
    """``/sse?token=<jwt>`` under ``hubbub serve``: one access line, redacted, no traceback."""
    token = mint("alice")
    argv = ["-m", "hubbub", "serve", "auth_app:app", "--port", "{port}"]
    with run_server(argv, tmp_path) as server:
        url = f"{server.url}/sse?token={token}&channel=room"
        with httpx.stream("GET", url, headers={"Origin": ORIGIN}, timeout=TIMEOUT) as response:
            assert response.status_code == 200
            assert next(response.iter_lines()) is not None
        assert httpx.get(f"{server.url}/health?access_token={token}").status_code == 200
        server.terminate()
        log = server.log()
    _no_traceback(log)
    assert token not in log and token.rsplit(".", 1)[-1][-12:] not in log, log
    [sse] = [line for line in log.splitlines() if '"GET /sse' in line]
    assert '"GET /sse?token=[redacted]&channel=room HTTP/1.1" 200' in sse, sse
    [health] = [line for line in log.splitlines() if '"GET /health?' in line]
    assert '"GET /health?access_token=[redacted] HTTP/1.1" 200' in health, health


# -- item 9: malformed frames and handshakes ---------------------------------------------------


@pytest.fixture(scope="module", params=["auto", "wsproto", "websockets"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One ``hubbub serve`` (the demo hub) per uvicorn WebSocket implementation (auto: sansio)."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--ws", request.param]
    with run_server(argv, tmp_path_factory.mktemp("frames")) as server:
        yield server


MALFORMED = {
    "invalid UTF-8 text": (_frame(0x1, b'{"type":"\xff\xfe"}'), 1007),
    "reserved opcode": (_frame(0x3, b"x"), 1002),
    "reserved bit": (bytes([0xC1]) + _frame(0x1, b"{}")[1:], 1002),
    "unmasked frame": (_frame(0x1, b"{}", mask=False), 1002),
    "oversized frame": (struct.pack("!BBQ", 0x82, 0xFF, 64 << 20) + os.urandom(4), 1009),
    "bad close code": (_frame(0x8, struct.pack("!H", 1005)), 1002),
    "close reason not UTF-8": (_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
    "one-byte close payload": (_frame(0x8, b"\x03"), 1002),
    "long ping": (_frame(0x9, b"p" * 126), 1002),
    "fragmented ping": (_frame(0x9, b"p", fin=False), 1002),
    "orphan continuation": (_frame(0x0, b"x"), 1002),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_are_closed_without_a_traceback(served: Server, case: str) -> None:
    """Each malformed frame gets its close code; the server logs no traceback or ERROR for it."""
    data, code = MALFORMED[case]
    wsproto = served.process.args[-1] == "wsproto"  # type: ignore[index]
    if wsproto and case == "oversized frame":
        pytest.skip(
            "uvicorn's wsproto sizes a frame by the payload received, not its declared length"
        )
    before = len(served.log())
    sock = _handshake(served.port)
    sock.sendall(data)
    # uvicorn's wsproto implementation drops the connection without a close frame.
    assert _close_code(sock) in ((code, None) if wsproto else (code,))
    # A well-formed request after it: the log is flushed up to here.
    assert httpx.get(served.url + "/health", timeout=TIMEOUT).status_code == 200
    _no_traceback(served.log()[before:])


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 99\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
        b"GET /ws?" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["truncated", "bad key", "bad version", "TLS to plain port", "huge request line"],
)
def test_malformed_handshakes_leave_no_traceback(served: Server, request_bytes: bytes) -> None:
    """A truncated or broken opening handshake is refused or dropped; the log has no traceback."""
    before = len(served.log())
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
        sock.sendall(request_bytes)
        sock.shutdown(socket.SHUT_WR)
        while True:
            try:
                if not sock.recv(65536):
                    break
            except ConnectionResetError:
                break
    assert httpx.get(served.url + "/health", timeout=TIMEOUT).status_code == 200
    _no_traceback(served.log()[before:])


# -- tokens in frames and handshake headers at DEBUG -------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the websockets client is asyncio-only
async def test_debug_frame_logging_keeps_no_part_of_a_token(
    anyio_backend: str, tmp_path: Path
) -> None:
    """``--log-level debug`` logs handshake headers and frames; no part of any token survives."""
    tokens = {
        "header": mint("alice"),
        "cookie": mint("alice", jti="cookie"),
        "refresh": mint("alice", jti="refresh"),
        "channel": mint("alice", channel="private:room"),
        "msgpack refresh": mint("alice", jti="msgpack"),
        "subprotocol": mint("alice", jti="subprotocol"),
    }
    argv = ["-m", "hubbub", "serve", "auth_app:app", "--port", "{port}", "--log-level", "debug"]
    with run_server(argv, tmp_path) as server:
        headers = {
            "Authorization": f"Bearer {tokens['header']}",
            "Cookie": f"theme=dark; hubbub_token={tokens['cookie']}",
        }
        async with connect(
            server.ws_url + "/ws",
            additional_headers=headers,
            origin=Origin(ORIGIN),
            subprotocols=[Subprotocol("hubbub.v1.json")],
            ping_interval=None,
            proxy=None,
            open_timeout=TIMEOUT,
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "refresh", "token": tokens["refresh"], "id": 1}))
            subscribe = {"type": "subscribe", "channel": "private:room", "id": 2}
            await ws.send(json.dumps({**subscribe, "token": tokens["channel"]}))
            replies = {json.loads(await ws.recv()).get("id") for _ in range(2)}
            assert replies >= {1, 2}
        async with connect(
            server.ws_url + "/ws",
            origin=Origin(ORIGIN),
            subprotocols=[
                Subprotocol("hubbub.v1.msgpack"),
                Subprotocol(f"bearer.{tokens['subprotocol']}"),
            ],
            ping_interval=None,
            proxy=None,
            open_timeout=TIMEOUT,
        ) as ws:
            assert msgspec.msgpack.decode(await ws.recv())["type"] == "welcome"
            refresh = {"type": "refresh", "token": tokens["msgpack refresh"], "id": 1}
            await ws.send(msgspec.msgpack.encode(refresh))
            assert msgspec.msgpack.decode(await ws.recv())["id"] == 1
        server.terminate()
        log = server.log()
    assert '< TEXT \'{"type": "refresh"' in log, "frames are not logged at DEBUG"
    _no_traceback(log)
    for name, token in tokens.items():
        jose_header, claims, signature = token.split(".")
        for part in (jose_header, claims[:12], claims[-12:], signature[:12], signature[-12:]):
            assert part not in log, f"{name} token: {part!r} is in the log"


# -- keys: /metrics behind --metrics-key, minimum length, lockout after wrong keys -------------

API_KEY = "ops-api-key-0123456789"
ADMIN_KEY = "ops-admin-key-0123456789"
METRICS_KEY = "ops-metrics-key-0123456789"
KEYED = {"/api/stats": API_KEY, "/admin/stats": ADMIN_KEY, "/metrics": METRICS_KEY}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve`` with an API key (flag), an admin key and a metrics key (environment)."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--api-key", API_KEY]
    env = {"HUBBUB_ADMIN_KEY": ADMIN_KEY, "HUBBUB_METRICS_KEY": METRICS_KEY}
    with run_server(argv, tmp_path_factory.mktemp("keyed"), env=env) as server:
        yield server


def _get(server: Server, path: str, key: str | None, source: str) -> httpx.Response:
    """GET ``path`` with ``Authorization: apikey <key>`` from the loopback address ``source``."""
    headers = {"Authorization": f"apikey {key}"} if key is not None else {}
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        return client.get(server.url + path, headers=headers)


def test_metrics_key_from_the_environment_guards_metrics(keyed: Server) -> None:
    """``HUBBUB_METRICS_KEY``: /metrics is 401 without the key or with another, 200 with it."""
    assert _get(keyed, "/metrics", None, "127.0.0.2").status_code == 401
    assert _get(keyed, "/metrics", API_KEY, "127.0.0.2").status_code == 401
    response = _get(keyed, "/metrics", METRICS_KEY, "127.0.0.2")
    assert response.status_code == 200 and "hubbub_running" in response.text


@pytest.mark.parametrize("path", sorted(KEYED))
def test_too_many_wrong_keys_from_one_address_are_refused_429(keyed: Server, path: str) -> None:
    """Ten wrong keys are 401; then that address gets 429 with Retry-After, even with the
    right key, while another address (and missing keys, which do not count) are unaffected."""
    attacker, other = {
        "/api/stats": ("127.0.1.1", "127.0.1.2"),
        "/admin/stats": ("127.0.2.1", "127.0.2.2"),
        "/metrics": ("127.0.3.1", "127.0.3.2"),
    }[path]
    for _ in range(20):
        assert _get(keyed, path, None, other).status_code == 401  # missing: not counted
    for n in range(10):
        assert _get(keyed, path, f"guess-{n:012d}", attacker).status_code == 401
    refused = _get(keyed, path, "guess-again-0000", attacker)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["code"] == 429
    assert _get(keyed, path, KEYED[path], attacker).status_code == 429
    assert _get(keyed, path, KEYED[path], other).status_code == 200
    log = keyed.log()
    _no_traceback(log)
    keyed_name = path.split("/")[1]
    warned = [line for line in log.splitlines() if f"keys from {attacker}:" in line]
    assert len(warned) == 1 and f"10 wrong {keyed_name} keys" in warned[0], warned
    assert "guess-" not in log


def test_short_keys_stop_hubbub_serve_with_a_message(tmp_path: Path) -> None:
    """A key under 16 characters: ``hubbub serve`` exits at start-up naming the flag."""
    for flag in ("--api-key", "--admin-key", "--metrics-key"):
        done = subprocess.run(
            [sys.executable, "-m", "hubbub", "serve", "--port", "1", flag, "fifteen-chars15"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert done.returncode != 0
        assert f"hubbub serve: error: {flag}:" in done.stderr and "at least 16" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr


def test_metrics_are_off_without_a_key_on_a_non_loopback_host(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bound beyond loopback, /metrics is 404 unless keyed or --public-metrics (no socket bound:
    the tests listen on loopback only)."""
    for name in ("METRICS_KEY", "PUBLIC_METRICS"):
        monkeypatch.delenv(f"HUBBUB_{name}", raising=False)

    def built(*argv: str) -> HubApp:
        app = _build_app(_parser().parse_args(["serve", *argv]))
        assert isinstance(app, HubApp)
        return app

    def status(app: HubApp, key: str | None = None) -> int:
        headers = {"authorization": f"apikey {key}"} if key else {}
        with TestClient(app) as client:
            return client.get("/metrics", headers=headers).status_code

    exposed = built("--host", "0.0.0.0")
    assert exposed.metrics is False and status(exposed) == 404
    assert "/metrics is off (404) on 0.0.0.0" in caplog.text
    assert status(built("--host", "::")) == 404
    assert status(built("--host", "hub.example.com", "tests.apps.small_limits:hub")) == 404
    assert status(built("--host", "0.0.0.0", "--public-metrics")) == 200
    keyed_app = built("--host", "0.0.0.0", "--metrics-key", METRICS_KEY)
    assert status(keyed_app) == 401 and status(keyed_app, METRICS_KEY) == 200
    assert status(built("--host", "::ffff:10.0.0.1")) == 404
    for loopback in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "localhost"):
        assert status(built("--host", loopback)) == 200
    with pytest.raises(SystemExit, match="--metrics-key needs a target naming a Hub or a HubApp"):
        built("tests.apps.auth_app:app", "--metrics-key", METRICS_KEY)


class _Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _scope(peer: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "client": (peer, 5000), "headers": list(headers)}


def test_key_guard_window_ends_and_memory_stays_bounded() -> None:
    """The lockout lasts until the window that started with the first wrong key ends; the
    guard remembers at most ``max_addresses`` addresses, forgetting the oldest first."""
    clock = _Clock()
    guard = KeyGuard("api", max_failures=3, window=60.0, max_addresses=2, clock=clock)
    keys = (b"right-key-0123456789",)
    wrong = _scope("10.0.0.1", (b"authorization", b"apikey wrong"))
    right = _scope("10.0.0.1", (b"authorization", b"apikey right-key-0123456789"))
    assert [check_key(wrong, keys, guard).outcome for _ in range(3)] == ["wrong"] * 3
    clock.now += 20.5
    assert check_key(right, keys, guard) == KeyCheck("locked", 40)
    clock.now += 39.5
    assert check_key(right, keys, guard).ok and len(guard) == 0
    for n in range(5):
        check_key(_scope(f"10.0.1.{n}", (b"authorization", b"apikey x")), keys, guard)
    assert len(guard) == 2


def test_key_guard_counts_the_client_behind_a_trusted_proxy() -> None:
    """Behind a trusted proxy the forwarded client is locked out, not the proxy itself."""
    guard = KeyGuard("api", max_failures=1, trusted_proxies=["10.0.0.9"], clock=_Clock())
    keys = (b"right-key-0123456789",)
    auth = (b"authorization", b"apikey wrong")
    forwarded = _scope("10.0.0.9", (b"x-forwarded-for", b"203.0.113.7"), auth)
    assert check_key(forwarded, keys, guard).outcome == "wrong"
    assert check_key(forwarded, keys, guard).outcome == "locked"
    other = check_key(_scope("10.0.0.9", (b"x-forwarded-for", b"203.0.113.8"), auth), keys, guard)
    assert other.outcome == "wrong"
    # An untrusted peer's header is ignored: it is counted as itself.
    spoofed = _scope("198.51.100.1", (b"x-forwarded-for", b"203.0.113.7"), auth)
    assert check_key(spoofed, keys, guard).outcome == "wrong"
