"""Real servers for end-to-end tests: uvicorn/hypercorn subprocesses on free loopback ports.

Each server is started by the test that needs it and ended by its own PID; a
server that does not become ready within its deadline fails the test with its
output attached.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    tls_ca: Path | None = None
    """The CA of the server's certificate when it serves TLS itself."""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls_ca else 'ws'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 15.0) -> str:
        """The log, once ``needle`` is in it; fails with the log after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if needle in log:
                return log
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} not logged:\n{self.log()}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM this server (by its PID), wait for it, SIGKILL if it overstays."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return int(self.process.returncode)


def wait_ready(server: Server, path: str = "/health", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        context = ssl.create_default_context(cafile=str(server.tls_ca)) if server.tls_ca else None
        try:
            with urllib.request.urlopen(server.url + path, timeout=1, context=context) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server not ready within {timeout} s:\n{server.log()}")


@contextlib.contextmanager
def run_server(
    argv: Sequence[str],
    tmp_path: Path,
    *,
    ready_path: str = "/health",
    env: dict[str, str] | None = None,
    port: int | None = None,
    tls_ca: Path | None = None,
) -> Iterator[Server]:
    """Run ``python <argv with {port} filled in>`` until the block ends.

    Example: ``run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path)``.
    Give ``port`` to start again where clients reconnect (a restart); a free one otherwise,
    and ``tls_ca`` when the server serves TLS with a certificate that CA signed.
    """
    port = free_port() if port is None else port
    log_path = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
    args = [sys.executable, *(a.replace("{port}", str(port)) for a in argv)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "tests" / "apps"), str(ROOT), full_env.get("PYTHONPATH", "")]
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env
        )
    server = Server(process, port, log_path, tls_ca)
    try:
        wait_ready(server, ready_path)
        yield server
    finally:
        server.terminate()
