"""``server.ws_compression``: shared deflate, each connection's own, or none, on a real server.

Each mode runs as a real ``hubbub serve`` process, chosen by the flag, the file
key or the variable, and is judged by what a client sees: the
``Sec-WebSocket-Extensions`` answer to Chromium's offer
(``permessage-deflate; client_max_window_bits``), each frame's RSV1 bit, the
decoded messages, and the bytes on the wire for a stream of similar small
publications.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, get_args

import pytest

from hubbub._cli_checks import WS_COMPRESSIONS
from hubbub._uvicorn_ws import PROTOCOLS, FramesProtocol, PerConnectionProtocol
from hubbub.cli import _parser, _served
from hubbub.config import OPTIONS, ServerConfig, WebSocketCompression, loads

from .apps.wsclient import open_client
from .servers import Server, run_server
from .test_config import hubbub, refused
from .test_preframed import _RawClient

SERVE = ["-m", "hubbub", "serve", "--port", "{port}"]


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


class _Tap:
    """Wraps a client's stream reader: counts the bytes read and keeps the handshake answer."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.total = 0
        self.head = b""

    async def read(self, n: int) -> bytes:
        data = await self.reader.read(n)
        self.total += len(data)
        if b"\r\n\r\n" not in self.head:
            self.head += data
        return data

    def extensions(self) -> str | None:
        """The server's ``Sec-WebSocket-Extensions`` answer, or ``None`` when it gave none."""
        head = self.head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        found = [
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")[1:]
            if line.lower().startswith("sec-websocket-extensions:")
        ]
        assert len(found) <= 1, head
        return found[0] if found else None


async def _open(server: Server) -> tuple[_RawClient, _Tap]:
    """A raw client offering what Chromium offers, welcomed; its tap on the wire."""
    raw = await _RawClient.open(server.port)
    tap = _Tap(raw.reader)
    raw.reader = tap  # type: ignore[assignment]
    await raw.until(1)
    assert raw.messages[0]["type"] == "welcome"
    return raw, tap


def _shared(answer: str | None) -> None:
    assert answer is not None and answer.startswith("permessage-deflate"), answer
    assert "server_no_context_takeover" in answer, answer


def _per_connection(answer: str | None) -> None:
    assert answer is not None and answer.startswith("permessage-deflate"), answer
    assert "server_no_context_takeover" not in answer, answer


def _off(answer: str | None) -> None:
    assert answer is None, answer


EXPECTED = {"shared": _shared, "per-connection": _per_connection, "off": _off}


def _no_errors(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """One ``hubbub serve --ws-compression MODE`` per mode, for the module."""
    with ExitStack() as stack:
        running = {
            mode: stack.enter_context(
                run_server([*SERVE, "--ws-compression", mode], tmp_path_factory.mktemp(mode))
            )
            for mode in WS_COMPRESSIONS
        }
        yield running


# -- the names ---------------------------------------------------------------------------------


def test_the_names_agree_everywhere() -> None:
    """The flag's check, the file's type, the protocol classes and the default name one set."""
    assert set(get_args(WebSocketCompression)) == set(WS_COMPRESSIONS) == set(PROTOCOLS)
    assert ServerConfig().ws_compression == WS_COMPRESSIONS[0] == "shared"
    assert PROTOCOLS["shared"] is FramesProtocol and FramesProtocol.shared_deflate
    assert PROTOCOLS["per-connection"] is PerConnectionProtocol
    assert not PerConnectionProtocol.shared_deflate
    # The subclass changes nothing for the class other servers in the process use.
    assert FramesProtocol.shared_deflate is True
    [option] = [o for o in OPTIONS if o.key == "server.ws_compression"]
    assert (option.flag, option.env) == ("--ws-compression", "HUBBUB_WS_COMPRESSION")


def test_the_protocol_class_follows_the_mode_and_the_uvicorn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hubbub's class per mode on websockets-sansio; uvicorn's own name everywhere else.

    Without flow control in uvicorn's class (uvicorn < 0.52.1) the name is kept
    whatever the mode: "off" then rests on ``ws_per_message_deflate=False`` alone,
    which the ``--ws wsproto`` servers below show uvicorn's own classes honour.
    """
    from hubbub import _uvicorn_ws
    from hubbub.cli import _ws_protocol

    for ws in ("auto", "websockets-sansio"):
        assert _ws_protocol(ws, "shared") is FramesProtocol
        assert _ws_protocol(ws, "per-connection") is PerConnectionProtocol
        assert _ws_protocol(ws, "off") is FramesProtocol
    for mode in WS_COMPRESSIONS:
        assert _ws_protocol("wsproto", mode) == "wsproto"
        assert _ws_protocol("websockets", mode) == "websockets"
    monkeypatch.setattr(_uvicorn_ws, "SUPPORTED", False)
    for mode in WS_COMPRESSIONS:
        assert _ws_protocol("auto", mode) == "auto"


def test_flag_beats_variable_beats_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ws-compression over HUBBUB_WS_COMPRESSION over server.ws_compression over "shared"."""
    for option in OPTIONS:
        monkeypatch.delenv(option.env, raising=False)
    path = tmp_path / "hubbub.toml"
    path.write_text('[server]\nws_compression = "off"\n')

    def mode(*argv: str) -> str:
        return _served(_parser().parse_args(["serve", *argv]))[1].server.ws_compression

    assert mode() == "shared"
    assert mode("--config", str(path)) == "off"
    monkeypatch.setenv("HUBBUB_WS_COMPRESSION", "per-connection")
    assert mode("--config", str(path)) == "per-connection"
    assert mode("--config", str(path), "--ws-compression", "shared") == "shared"
    assert loads('[server]\nws_compression = "per-connection"\n').server.ws_compression == (
        "per-connection"
    )


# -- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_bad_value_in_the_file_is_one_line_with_its_line(tmp_path: Path, command: str) -> None:
    """``ws_compression = "per_connection"``: file:line, the key, the value, the three names."""
    (tmp_path / "hubbub.toml").write_text(
        '[server]\nport = 8001\nws_compression = "per_connection"\n'
    )
    argv = ["serve", "--config"] if command == "serve" else ["config", "check"]
    line = refused(
        hubbub(*argv, "hubbub.toml", cwd=tmp_path),
        "hubbub.toml:3: server.ws_compression: not an allowed value",
        '"per_connection"',
        "one of shared, per-connection, off",
    )
    assert line.startswith(f"hubbub {command if command == 'serve' else 'config check'}: error: ")


def test_a_misspelt_key_is_offered_the_right_one(tmp_path: Path) -> None:
    """``ws_compresion``: unknown key, with "did you mean 'ws_compression'?"."""
    (tmp_path / "hubbub.toml").write_text('[server]\nws_compresion = "off"\n')
    refused(
        hubbub("config", "check", "hubbub.toml", cwd=tmp_path),
        "hubbub.toml:2: server.ws_compresion: unknown key",
        "did you mean 'ws_compression'?",
    )


def test_a_bad_variable_under_check_names_the_variable(tmp_path: Path) -> None:
    """``HUBBUB_WS_COMPRESSION=none`` over a good file: refused by ``config check``, exit 2.

    ``hubbub serve``'s bad flag and variable are rows of tests/test_cli_errors.py.
    """
    (tmp_path / "hubbub.toml").write_text("[server]\nport = 8001\n")
    refused(
        hubbub(
            "config",
            "check",
            "hubbub.toml",
            cwd=tmp_path,
            env={"HUBBUB_WS_COMPRESSION": "none"},
        ),
        "HUBBUB_WS_COMPRESSION",
        "server.ws_compression",
        '"none"',
    )


# -- negotiation -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", WS_COMPRESSIONS)
async def test_the_flag_sets_what_is_negotiated(servers: dict[str, Server], mode: str) -> None:
    """Chromium's offer gets shared (no server context), uvicorn's own, or no extension."""
    raw, tap = await _open(servers[mode])
    try:
        EXPECTED[mode](tap.extensions())
        negotiated = raw.protocol.extensions
        if mode == "off":
            assert negotiated == []
            assert raw.rsv1 == [False]  # the welcome, plain
        else:
            [deflate] = negotiated
            assert deflate.remote_no_context_takeover is (mode == "shared")
    finally:
        await raw.close()
    _no_errors(servers[mode])


@pytest.mark.anyio
async def test_the_file_key_and_the_variable_set_it_too(tmp_path: Path) -> None:
    """``ws_compression = "per-connection"`` in the file; ``HUBBUB_WS_COMPRESSION=off``."""
    path = tmp_path / "hubbub.toml"
    path.write_text('[server]\nws_compression = "per-connection"\n')
    with run_server([*SERVE, "--config", str(path)], tmp_path) as server:
        raw, tap = await _open(server)
        await raw.close()
        _per_connection(tap.extensions())
    with run_server(SERVE, tmp_path, env={"HUBBUB_WS_COMPRESSION": "off"}) as server:
        raw, tap = await _open(server)
        await raw.close()
        _off(tap.extensions())


@pytest.mark.anyio
async def test_sighup_says_a_change_needs_a_restart_and_keeps_the_running_mode(
    tmp_path: Path,
) -> None:
    """A reload naming another mode logs ``needs a restart: server.ws_compression``; no change."""
    path = tmp_path / "hubbub.toml"
    path.write_text('[server]\nws_compression = "shared"\n')
    with run_server([*SERVE, "--config", str(path)], tmp_path) as server:
        path.write_text('[server]\nws_compression = "per-connection"\n')
        os.kill(server.pid, signal.SIGHUP)
        log = server.wait_log("needs a restart")
        assert "config reload: changed but needs a restart: server.ws_compression" in log, log
        raw, tap = await _open(server)
        await raw.close()
        _shared(tap.extensions())
        _no_errors(server)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", WS_COMPRESSIONS)
async def test_uvicorns_own_class_honours_off_and_keeps_its_deflate_otherwise(
    tmp_path: Path, mode: str
) -> None:
    """``--ws wsproto`` (uvicorn's own class, as under uvicorn < 0.52.1): off is off; the
    other two are uvicorn's deflate with context takeover."""
    argv = [*SERVE, "--ws", "wsproto", "--ws-compression", mode]
    with run_server(argv, tmp_path) as server:
        raw, tap = await _open(server)
        try:
            (_off if mode == "off" else _per_connection)(tap.extensions())
            await raw.send({"type": "subscribe", "channel": "wsproto", "id": 1})
            await raw.until(2)
            async with open_client(server.ws_url) as publisher:
                await publisher.publish("wsproto", {"text": "hello " * 60})
                await raw.until(3)
            assert raw.messages[2]["data"] == {"text": "hello " * 60}
            assert raw.rsv1 == [mode != "off"] * 3
        finally:
            await raw.close()
        _no_errors(server)


# -- the stream --------------------------------------------------------------------------------

N = 50


def _readings() -> list[dict[str, Any]]:
    """50 similar publications of ~150 bytes of data (~300 bytes in their envelope)."""
    return [
        {
            "sensor": f"north-wing-{i % 4}",
            "reading": {"temperature": 20 + i % 7, "humidity": 40 + i % 11, "seq": i},
            "note": "routine reading, all values within the configured thresholds",
        }
        for i in range(N)
    ]


async def _stream(server: Server, channel: str) -> tuple[_RawClient, int]:
    """The readings published to a deflate subscriber; its client and the bytes they took."""
    items = _readings()
    raw, tap = await _open(server)
    try:
        await raw.send({"type": "subscribe", "channel": channel, "id": 1})
        await raw.until(2)
        assert raw.messages[1]["type"] == "subscribed"
        before = tap.total
        async with open_client(server.ws_url) as publisher:
            for item in items:
                await publisher.publish(channel, item)
            await raw.until(2 + N, within=30)
        wire = tap.total - before
        received = raw.messages[2:]
        assert [m["type"] for m in received] == ["message"] * N
        assert [m["data"] for m in received] == items  # decoded, all, in order
    finally:
        await raw.close()
    return raw, wire


@pytest.mark.anyio
async def test_per_connection_sends_a_stream_in_a_fraction_of_the_shared_bytes(
    servers: dict[str, Server],
) -> None:
    """50 similar ~150-byte publications: compressed with context, well under half the bytes.

    With the envelope (channel, ts, sender) each message is above the 256-byte
    floor: under "shared" each is compressed alone, once for every client;
    under "per-connection" by the connection's own compressor, which refers
    back to the messages before it.
    """
    shared, shared_bytes = await _stream(servers["shared"], "readings")
    own, own_bytes = await _stream(servers["per-connection"], "readings")
    assert all(shared.rsv1[2:])  # compressed alone, shared
    assert all(own.rsv1)  # every frame through the connection's own compressor
    plain, plain_bytes = await _stream(servers["off"], "readings")
    assert not any(plain.rsv1)
    print(f"\n{N} publications: plain {plain_bytes} B, shared {shared_bytes} B, ", end="")
    print(f"per-connection {own_bytes} B ({own_bytes / shared_bytes:.2f} of shared)")
    # Measured: plain ~13,500, shared ~9,600, per-connection ~1,150 bytes (0.12 of shared).
    assert own_bytes < 0.5 * shared_bytes, (own_bytes, shared_bytes)
    assert shared_bytes < plain_bytes, (shared_bytes, plain_bytes)
    for mode in WS_COMPRESSIONS:
        _no_errors(servers[mode])


@pytest.mark.anyio
async def test_per_connection_keeps_plain_clients_and_standard_replies_working(
    servers: dict[str, Server],
) -> None:
    """A client without deflate beside deflate ones on a per-connection server gets everything."""
    server = servers["per-connection"]
    items = _readings()
    raw, _ = await _open(server)
    try:
        async with open_client(server.ws_url) as plain, open_client(server.ws_url) as publisher:
            await plain.subscribe("mixed")
            await raw.send({"type": "subscribe", "channel": "mixed", "id": 1})
            await raw.until(2)
            await publisher.publish_pipelined("mixed", items, within=30)
            got = await plain.messages(N, 30)
            await raw.until(2 + N, within=30)
        assert [m["data"] for m in got] == items
        assert [m["data"] for m in raw.messages[2:]] == items
        assert all(raw.rsv1)
    finally:
        await raw.close()
    _no_errors(server)


@pytest.mark.anyio
async def test_off_sends_a_deflate_client_plain_frames(servers: dict[str, Server]) -> None:
    """With deflate off, a client offering it gets every message, every frame plain."""
    server = servers["off"]
    items = _readings()
    large = {"text": "many repeated words " * 100}
    raw, _ = await _open(server)
    try:
        await raw.send({"type": "subscribe", "channel": "plain", "id": 1})
        await raw.until(2)
        async with open_client(server.ws_url) as publisher:
            await publisher.publish_pipelined("plain", [*items, large], within=30)
            await raw.until(3 + N, within=30)
        assert [m["data"] for m in raw.messages[2:]] == [*items, large]
        assert not any(raw.rsv1)
    finally:
        await raw.close()
    _no_errors(server)
