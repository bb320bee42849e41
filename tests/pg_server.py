"""A real PostgreSQL cluster for tests: ``initdb`` in a temporary directory, one
``postgres`` process on a free loopback port, stopped by its PID.

The cluster is built for speed (``fsync=off``, no synchronous commit, trust
authentication on 127.0.0.1 only, no Unix socket) and is thrown away after the
tests. PostgreSQL refuses to run as root, and the tests run as root in CI: then
``initdb`` and ``postgres`` run as the unprivileged user ``nobody`` (through
``subprocess``'s ``user=``/``group=``), in a directory under ``/tmp`` owned by it
(pytest's own temporary directories are private to root). Without the binaries
the tests that need them are skipped, except when ``CI=true``: then a missing
PostgreSQL is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .servers import free_port

IN_CI = os.environ.get("CI") == "true"
UNPRIVILEGED = "nobody"


def pg_bin_dir() -> Path:
    """The directory of ``initdb`` and ``postgres``; skips (fails in CI) when there is none."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    message = "PostgreSQL is not installed (apt-get install postgresql)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def _run_as() -> dict[str, Any]:
    """``subprocess`` arguments that drop root to ``nobody`` (nothing when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        message = f"running as root and there is no user {UNPRIVILEGED!r} to run PostgreSQL as"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    group = grp.getgrgid(user.pw_gid).gr_name
    return {"user": user.pw_uid, "group": group, "extra_groups": []}


@dataclass
class PgServer:
    """A PostgreSQL cluster this test session created; its server controlled by its PID."""

    bin_dir: Path
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def url(self) -> str:
        """A libpq URL (``postgresql://``) for the ``postgres`` superuser and database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def init(self) -> None:
        """``initdb`` the cluster (trust authentication, UTF-8, C locale)."""
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.directory,
            **_run_as(),
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server on its port and wait until it accepts connections."""
        assert self.process is None or self.process.poll() is not None
        log = open(self.directory / "postgres.log", "ab")
        with log:
            self.process = subprocess.Popen(
                [
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                **_run_as(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log()[-3000:]}")
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres not ready within {timeout} s: {self.log()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT) by PID; SIGKILL if it overstays."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port and data: every connection drops."""
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ping(self) -> bool:
        """Whether the server answers a query right now."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own committed transaction; the rows it returned."""
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description is not None else []


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    """A new cluster, started; stopped by its PID and deleted when the block ends."""
    bin_dir = pg_bin_dir()
    pytest.importorskip("psycopg")
    run_as = _run_as()
    directory = Path(tempfile.mkdtemp(prefix="hubbub-pg-"))
    try:
        if run_as:
            os.chown(directory, run_as["user"], grp.getgrnam(run_as["group"]).gr_gid)
        server = PgServer(bin_dir, directory)
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
