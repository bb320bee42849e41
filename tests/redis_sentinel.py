"""A real Redis Sentinel setup for tests: 1 primary, 1 replica and 3 sentinels on free
loopback ports.

The primary and the replica are :class:`~tests.redis_server.RedisServer`\\ s (no
persistence); the sentinels are Debian's ``redis-server`` in ``--sentinel`` mode
(the same binary), each with a config file of its own (Sentinel rewrites it),
quorum 2, ``down-after-milliseconds`` 1000, so a killed primary is replaced
within seconds. Ready once every sentinel names the primary and knows the
replica and the two other sentinels (bounded). Every process is stopped by its
PID when the block ends, even when the test failed; without ``redis-server``
the tests are skipped, except when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .redis_server import RedisServer, _pack, _parse, redis_server_binary
from .servers import free_port

SERVICE: Final = "hubbub-test"
DOWN_AFTER_MS: Final = 1000


@dataclass
class SentinelProcess:
    """One ``redis-server --sentinel`` this test started; controlled only by its PID."""

    binary: str
    directory: Path
    primary_port: int
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        config = self.directory / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        with open(self.directory / f"sentinel-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server --sentinel exited: {self.log()}")
            with contextlib.suppress(OSError, RuntimeError):
                if self.command("PING", timeout=0.5) == "PONG":
                    return
            time.sleep(0.02)
        raise RuntimeError(f"the sentinel is not ready within {timeout} s")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def log(self) -> str:
        path = self.directory / f"sentinel-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def command(self, *args: str | int, timeout: float = 5.0) -> Any:
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(_pack(args))
            with sock.makefile("rb") as reader:
                return _parse(reader)

    def primary_port_now(self) -> int | None:
        """The primary's port this sentinel names now (None: it does not answer)."""
        try:
            reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE, timeout=1.0)
        except (OSError, RuntimeError):
            return None
        return int(reply[1]) if reply else None


@dataclass
class RedisSentinel:
    """A primary, its replica and three sentinels this test session started."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelProcess]

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming every sentinel and the service."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def wait_primary(self, server: RedisServer, timeout: float = 30.0) -> float:
        """Wait (bounded) until every sentinel names ``server`` as the primary and it
        says so itself; the time it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            named = {s.primary_port_now() for s in self.sentinels}
            with contextlib.suppress(OSError, RuntimeError):
                if named == {server.port} and server.command("ROLE")[0] == b"master":
                    return time.monotonic() - start
            time.sleep(0.1)
        raise RuntimeError(f"{server.port} is not the primary within {timeout} s")

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        self.replica.stop()
        self.primary.stop()


@contextlib.contextmanager
def redis_sentinel(directory: Path) -> Iterator[RedisSentinel]:
    """A started primary, replica and 3 sentinels, every process stopped when the block ends."""
    binary = redis_server_binary()
    directory.mkdir(parents=True, exist_ok=True)
    primary = RedisServer(binary, directory)
    replica = RedisServer(binary, directory)
    setup = RedisSentinel(primary, replica, [])
    try:
        primary.start()
        replica.extra = ("--replicaof", "127.0.0.1", str(primary.port))
        replica.start()
        for _ in range(3):
            sentinel = SentinelProcess(binary, directory, primary.port)
            setup.sentinels.append(sentinel)
            sentinel.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                attached = replica.command("ROLE")[3] == b"connected"
                known = all(
                    int(_field(s.command("SENTINEL", "MASTER", SERVICE), "num-slaves")) == 1
                    and int(_field(s.command("SENTINEL", "MASTER", SERVICE), "num-other-sentinels"))
                    == 2
                    for s in setup.sentinels
                )
            except (OSError, RuntimeError):
                attached = known = False
            if attached and known:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not find the replica and each other in 30 s")
            time.sleep(0.1)
        yield setup
    finally:
        setup.stop()


def _field(flat: list[bytes], name: str) -> bytes:
    """The value of ``name`` in a flat ``[name, value, ...]`` reply."""
    i = flat.index(name.encode())
    return flat[i + 1]
