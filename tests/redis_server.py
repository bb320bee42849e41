"""A real ``redis-server`` for tests: started on a free loopback port, stopped by its PID.

No persistence (``--save '' --appendonly no``), so a restart starts empty, as
after a crash. Without ``redis-server`` on the PATH the tests that need it are
skipped, except when ``CI=true``: then a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .servers import free_port

IN_CI = os.environ.get("CI") == "true"


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the test (fails it in CI) when there is none."""
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class RedisServer:
    """A ``redis-server`` process this test session started; controlled only by its PID."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    """More ``redis-server`` arguments (e.g. cluster mode)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        """Start the server on its port and wait until it accepts connections."""
        assert self.process is None or self.process.poll() is not None
        log = open(self.directory / f"redis-{self.port}.log", "ab")
        with log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--protected-mode",
                    "no",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server not ready within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server by its PID (SIGCONT first, in case it was frozen)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def kill(self) -> None:
        """SIGKILL the server by its PID: a crash, nothing saved."""
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        os.kill(self.pid, signal.SIGCONT)

    def log(self) -> str:
        path = self.directory / f"redis-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> Any:
        """Run one command over a fresh socket (RESP2) and return its parsed reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(_pack(args))
            reader = sock.makefile("rb")
            with reader:
                return _parse(reader)

    def replicated_to(self, replica: RedisServer, timeout: float = 10.0) -> None:
        """Block until ``replica`` has processed every write this primary took so far.

        Not ``WAIT``: it waits for the writes of the connection that sends it, and
        :meth:`command` opens a fresh one that wrote nothing, so ``WAIT 1`` answers 1 at once
        even with the replica frozen (a CI run promoted a replica that had none of the stream).
        """
        info = self.command("INFO", "replication")
        text = info.decode() if isinstance(info, bytes) else str(info)
        target = next(
            int(line.split(":", 1)[1])
            for line in text.splitlines()
            if line.startswith("master_repl_offset:")
        )
        deadline = time.monotonic() + timeout
        at: object = "silent"
        while True:
            try:
                role = replica.command("ROLE", timeout=0.5)
            except OSError:  # frozen or busy: not there yet
                at = "silent"
            else:
                at = int(role[4])
                if role[3] == b"connected" and int(role[4]) >= target:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica is at {at}, the primary at {target}")
            time.sleep(0.02)

    def ping(self) -> bool:
        """Whether the server answers ``PING`` right now."""
        try:
            return bool(self.command("PING", timeout=0.5) == "PONG")
        except OSError:
            return False


def _pack(args: tuple[str | bytes | int, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _parse(reader: Any) -> Any:
    line: bytes = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data: bytes = reader.read(size + 2)
        return data[:-2]
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_parse(reader) for _ in range(size)]
    raise RuntimeError(f"unexpected reply {line!r}")


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A started ``redis-server`` in ``directory``, stopped by its PID when the block ends."""
    server = RedisServer(redis_server_binary(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
