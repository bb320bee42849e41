"""hubbub's benchmark: hubbub against what a user would pick instead, in one command and one run.

Why: QUALITY.md holds hubbub to bars set against its Python peers (the
tutorial Starlette hub, python-socketio, encode/broadcaster and the practical
limit, a bare ``websockets.broadcast()`` server). The machine is 2 shared
cores, so wall-clock throughput is noise; what this script compares is
**server CPU per delivery** (utime + stime of the server process and its
descendants, from /proc/<pid>/stat) and ratios between servers measured
**interleaved in the same run**, each on a **fresh server process**.

Usage::

    .venv/bin/python benchmarks/run.py --quick
    .venv/bin/python benchmarks/run.py --n 1000,5000 --runs 3

Scenarios: ``fanout`` (N subscribers of one channel: latency at a fixed rate,
then closed-loop CPU per delivery), ``idle`` (KiB per subscribed connection),
``rtt`` (one client's publish -> own echo), ``frozen`` (fan-out with and
without one subscriber that stops reading); when named, ``deflate`` (the
fan-out with browser-like clients offering permessage-deflate), ``rooms``
(many small chat rooms, every member publishing about once a second: CPU per
publication, p99 to the other members) and ``large`` (the fan-out at
``--large-n``, 20,000, with the descriptor limit raised or the run refused).
Per measurement: start the server as its own subprocess on a free 127.0.0.1
port, connect the publisher and the
subscribers (worker processes), measure, stop everything this script started,
by PID. Writes JSON, Markdown and a PNG under benchmarks/results/. Installs
nothing (the peers come from the project's optional ``bench`` extra); every
loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import loadgen

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")
BASELINE = "tutorial"
HUBBUB = "hubbub"
HUBBUB_REDIS = "hubbub-redis"
HUBBUB_POSTGRES = "hubbub-postgres"
HUBBUB_STD = "hubbub-std"
"""hubbub without pre-framed fan-out: uvicorn's own websockets-sansio class (``python -m
uvicorn``), so every delivery is a standard ``websocket.send``, as under any other server."""
HUBBUB_CTX = "hubbub-ctx"
"""``hubbub serve --ws-compression per-connection``: deflate clients compressed each with
its own context (no pre-framing for them); the same as ``hubbub`` for plain clients. Run
only when named (it differs from ``hubbub`` only in the ``deflate`` scenario)."""

# -- hubbub under other ASGI servers (issue 15, item 5; benchmarks/servers.md) ------------
# The same hub as hubbub-std (hubbub_app:app, an ASGI app, standard ``websocket.send``)
# served by hypercorn or by granian instead of uvicorn. Run when named in --servers:
#   --servers hubbub,hubbub-std,hubbub-hypercorn,hubbub-granian
HUBBUB_HYPERCORN = "hubbub-hypercorn"
HUBBUB_GRANIAN = "hubbub-granian"
OTHER_ASGI_SERVERS = (HUBBUB_HYPERCORN, HUBBUB_GRANIAN)
OTHER_SERVER_BACKLOG = 2048
"""uvicorn's default listen backlog, given to the others too (hypercorn's is 100: the
subscribers' concurrent handshakes would overflow it)."""
GRANIAN_BACKPRESSURE = 1_000_000
"""granian handles at most ``--backpressure`` requests at once per worker (default backlog ÷
workers): raised so that it cannot be what limits a run. (Open WebSockets do not seem to
count: 1,500 connected and subscribed with the default 1,024 in a check.)"""


def other_server_argv(name: str, port: int) -> list[str]:
    """The command serving hubbub_app:app on hypercorn or granian, each on uvloop, one
    process serving (granian's one worker under its supervisor), logs at warning."""
    py = sys.executable
    if name == HUBBUB_HYPERCORN:
        # wsproto for WebSockets (hypercorn's only implementation); no pings of its own.
        argv = [py, "-m", "hypercorn", "hubbub_app:app", "--bind", f"127.0.0.1:{port}"]
        argv += ["--worker-class", "uvloop", "--workers", "1", "--log-level", "warning"]
        return [*argv, "--backlog", str(OTHER_SERVER_BACKLOG)]
    if name == HUBBUB_GRANIAN:
        # The ASGI interface (granian's Rust HTTP and WebSocket stack), one worker.
        argv = [py, "-m", "granian", "--interface", "asgi", "hubbub_app:app"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        argv += ["--loop", "uvloop", "--log-level", "warning", "--no-access-log"]
        argv += ["--backlog", str(OTHER_SERVER_BACKLOG)]
        return [*argv, "--backpressure", str(GRANIAN_BACKPRESSURE)]
    raise ValueError(name)


def wait_http_ready(port: int, deadline: float) -> bool:
    """``GET /health`` answers: the app is imported and its lifespan started (granian's
    supervisor listens before its worker has loaded the app)."""
    import urllib.request

    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{port}/health"
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        time.sleep(0.1)
    return False


def servers_section(summary: dict[str, Any]) -> list[str]:
    """hubbub on uvicorn (with and without pre-framing), hypercorn and granian, same run."""
    fan, rtt = summary.get("fanout", {}), summary.get("rtt", {})
    names = (HUBBUB, HUBBUB_STD, *OTHER_ASGI_SERVERS)
    if not any(s in rows for rows in (*fan.values(), *rtt.values()) for s in OTHER_ASGI_SERVERS):
        return []
    lines = [
        "",
        "## hubbub on each ASGI server (uvicorn, hypercorn, granian)",
        "",
        "The same hub: `hubbub` is `hubbub serve` (uvicorn + pre-framed fan-out), "
        "`hubbub-std` is uvicorn's own websockets-sansio class (standard `websocket.send`), "
        "`hubbub-hypercorn` and `hubbub-granian` serve the same ASGI app on those servers "
        "(uvloop each). Server CPU per delivery (closed loop); ratios per run, then median.",
        "",
        "| N | server | µs CPU / delivery | ÷ hubbub | ÷ hubbub-std | deliveries/s "
        "| fixed-rate p99 ms | KiB / connection | µs / connect+subscribe | lost | closes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in sorted(fan, key=int):
        for server in names:
            row = fan[n].get(server)
            if not row:
                continue
            ph = row.get(f"phase{PHASE_CLOSED}") or {}
            fixed = row.get(f"phase{PHASE_FIXED}") or {}
            lines.append(
                f"| {int(n):,} | {server} | {_fmt(ph.get('us_per_delivery'), 2)} "
                f"| {_ratio_cell(row, PHASE_CLOSED, HUBBUB)} "
                f"| {_ratio_cell(row, PHASE_CLOSED, HUBBUB_STD)} "
                f"| {_fmt(ph.get('deliveries_per_s'), 0)} | {_fmt(fixed.get('p99_ms'), 2)} "
                f"| {_fmt(row['kib_per_conn'], 1)} | {_fmt(row['setup_us_per_conn'], 0)} "
                f"| {ph.get('lost', 0) + fixed.get('lost', 0)} | {row['closes']} |"
            )
    for rows in rtt.values():
        lines += [
            "",
            "| round trip (one client) | p50 ms | p99 ms | server µs CPU / round trip "
            "| ÷ hubbub | ÷ hubbub-std | lost |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for server in names:
            row = rows.get(server)
            ph = row.get(f"phase{PHASE_RTT}") if row else None
            if ph:
                lines.append(
                    f"| {server} | {_fmt(ph['p50_ms'], 3)} | {_fmt(ph['p99_ms'], 3)} "
                    f"| {_fmt(ph['us_per_round_trip'], 0)} "
                    f"| {_ratio_cell(row, PHASE_RTT, HUBBUB)} "
                    f"| {_ratio_cell(row, PHASE_RTT, HUBBUB_STD)} | {ph['lost']} |"
                )
    return lines


# -- end of the other ASGI servers' block --------------------------------------------------

HUBBUB_VARIANTS = (
    "hubbub",
    "hubbub-batch",
    "hubbub-msgpack",
    HUBBUB_STD,
    HUBBUB_CTX,
    HUBBUB_REDIS,
    HUBBUB_POSTGRES,
    *OTHER_ASGI_SERVERS,
)
PEERS = ("tutorial", "socketio", "broadcaster", "websockets")
SERVERS = (*HUBBUB_VARIANTS, *PEERS)
DEFAULT_SERVERS = tuple(
    s for s in SERVERS if s not in (HUBBUB_REDIS, HUBBUB_POSTGRES, HUBBUB_CTX, *OTHER_ASGI_SERVERS)
)
"""Without ``--redis`` no redis-server is needed: hubbub-redis runs only when asked for
(and hubbub-postgres, which starts its own PostgreSQL cluster, only when named)."""
SCENARIOS = ("fanout", "idle", "rtt", "frozen", "deflate", "rooms", "rooms-deflate", "large")
ROOMS_SCENARIOS = ("rooms", "rooms-deflate")
DEFAULT_SCENARIOS = ("fanout", "idle", "rtt", "frozen")
"""The new workloads (issue 15) run when named: ``deflate`` (fan-out to browser-like clients
offering permessage-deflate), ``rooms`` (many small chat rooms), ``rooms-deflate`` (the same
rooms, every member offering permessage-deflate as a browser does), ``large`` (the fan-out at
``--large-n``, 20,000 by default, recorded as a ``fanout`` row)."""
FD_MARGIN = 200
"""Descriptors a server needs beyond one per client (listener, epoll, pipes, logs, imports)."""
PEER_MODULES = {
    "tutorial": "tutorial_hub",
    "socketio": "socketio_hub",
    "broadcaster": "broadcaster_hub",
}
PHASE_FIXED, PHASE_CLOSED, PHASE_RTT = 1, 2, 3
PHASE_ROOMS = PHASE_FIXED  # the rooms scenario's one phase: a fixed rate per member

# -- /proc readings -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


CPU_FIELDS = (11, 12)
"""Which of utime and stime count as CPU (``--cpu``): both unless asked otherwise."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (or one of them, ``--cpu``), in seconds (0 when gone).

    With ``--cpu writes``: the process's write system calls (``syscw`` in
    ``/proc/<pid>/io``) divided by a million, so every "µs CPU" figure of the
    report reads as write system calls per delivery (or per publication).
    """
    if CPU_FIELDS == ():
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("syscw:"):
                    return int(line.split()[1]) / 1e6
        except OSError:
            pass
        return 0.0
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return sum(int(fields[i]) for i in CPU_FIELDS) / TICK


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (a server started with workers or reloaders)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    for _ in range(10):  # bounded depth
        frontier = [child for child, parent in parents.items() if parent in frontier]
        if not frontier:
            break
        found.extend(frontier)
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def uses_uvloop(pid: int) -> bool:
    try:
        return "uvloop" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


# -- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server subprocess; stopped by its own PID only."""

    def __init__(
        self,
        name: str,
        ws: str,
        log_dir: Path,
        redis: RedisServer | None = None,
        postgres: PostgresServer | None = None,
    ) -> None:
        self.name = name
        # hubbub-redis: the same hub on the Redis broker; Redis's own CPU is read apart.
        self.redis = redis if name == HUBBUB_REDIS else None
        # hubbub-postgres: the same on the PostgreSQL broker; the cluster's CPU apart.
        self.postgres = postgres if name == HUBBUB_POSTGRES else None
        env = dict(os.environ)
        env.pop("HUBBUB_BENCH_BROKER", None)
        if name == HUBBUB_REDIS:
            if redis is None:
                raise RuntimeError("hubbub-redis needs the run's redis-server")
            env["HUBBUB_BENCH_BROKER"] = redis.url
        if name == HUBBUB_POSTGRES:
            if postgres is None:
                raise RuntimeError("hubbub-postgres needs the run's PostgreSQL")
            env["HUBBUB_BENCH_BROKER"] = postgres.url
        self.port = free_port()
        self.log_path = log_dir / f"{name}-{self.port}.log"
        py = sys.executable
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--ws", ws]
        if name == HUBBUB_STD:
            # The same hub as an ASGI app under uvicorn's own class: no hubbub.frames.
            argv = [py, "-m", "uvicorn", "hubbub_app:app", *common, "--ws-ping-interval", "0"]
            argv += ["--loop", "uvloop", "--http", "httptools"]
            argv += ["--log-level", "warning", "--no-access-log"]
        elif name in OTHER_ASGI_SERVERS:
            argv = other_server_argv(name, self.port)
        elif name.startswith("hubbub"):
            # The demo hub with the command rate limit lifted (see hubbub_app.py).
            argv = [py, "-m", "hubbub", "serve", "hubbub_app:hub", *common]
            argv += ["--log-level", "warning"]
            if name == HUBBUB_CTX:
                argv += ["--ws-compression", "per-connection"]
        elif name == "websockets":
            # Not ASGI: its own process on uvloop (see peers/websockets_broadcast.py).
            argv = [py, str(HERE / "peers" / "websockets_broadcast.py")]
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        else:
            argv = [
                py,
                "-m",
                "uvicorn",
                f"{PEER_MODULES[name]}:app",
                "--app-dir",
                str(HERE / "peers"),
                *common,
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        self.argv = argv
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=HERE if name.startswith("hubbub") else ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        self.pids = [self.proc.pid]

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                if self.name in OTHER_ASGI_SERVERS and not wait_http_ready(self.port, end):
                    break
                self.pids = [self.proc.pid, *descendants(self.proc.pid)]
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within {timeout} s:\n{self.log_tail()}")

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def redis_cpu(self) -> float:
        """CPU of the broker's backend: the run's redis-server or PostgreSQL cluster (separate
        processes), 0 for servers without one."""
        if self.postgres is not None:
            return self.postgres.cpu()
        return cpu_seconds(self.redis.pid) if self.redis is not None else 0.0

    @property
    def has_backend(self) -> bool:
        return self.redis is not None or self.postgres is not None

    def rss(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids)

    def log_tail(self, limit: int = 2000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class _Backend:
    """A broker backend process the run started: readiness polling and a stop by its PID."""

    what = "backend"
    stop_signal = signal.SIGTERM
    stop_grace = 10.0
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited early: {self.log_path.read_text()}")
            with contextlib.suppress(OSError):
                if self.ready():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.what} did not answer within {timeout} s")

    def stop(self) -> None:
        """``stop_signal`` by its own PID, SIGKILL after ``stop_grace`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class RedisServer(_Backend):
    """The run's own redis-server: a free 127.0.0.1 port, no persistence, stopped by its PID."""

    what = "redis-server"

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            raise RuntimeError("hubbub-redis needs redis-server (apt-get install redis-server)")
        self.port = free_port()
        self.log_path = directory / f"redis-{self.port}.log"
        self.argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--protected-mode",
            "no",
        ]
        self.version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str, timeout: float = 2.0) -> bytes:
        """One inline command on a fresh connection; the first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            return sock.makefile("rb").readline()

    def ready(self) -> bool:
        return self.command("PING", timeout=0.5).startswith(b"+PONG")


class PostgresServer(_Backend):
    """The run's own PostgreSQL cluster (``initdb`` in the run's temporary directory, a free
    127.0.0.1 port, fsync off), stopped by its PID. As root it runs as ``nobody``
    (PostgreSQL refuses root), like ``tests/pg_server.py``."""

    what = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown
    stop_grace = 15.0

    def __init__(self, directory: Path) -> None:
        import glob
        import pwd

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
        on_path = shutil.which("postgres")
        binary = Path(found[0] if found else on_path or "")
        if not binary.name or not (binary.parent / "initdb").exists():
            raise RuntimeError("hubbub-postgres needs PostgreSQL (apt-get install postgresql)")
        self.port = free_port()
        home = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.home = home
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(home, user.pw_uid, user.pw_gid)
        data = home / "data"
        initdb = [str(binary.parent / "initdb"), "-D", str(data), "-U", "postgres"]
        initdb += ["--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]
        subprocess.run(initdb, check=True, capture_output=True, timeout=120, cwd=home, **run_as)
        self.argv = [str(binary), "-D", str(data), "-p", str(self.port)]
        for setting in (
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ):
            self.argv += ["-c", setting]
        self.version = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
        self.log_path = directory / f"postgres-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=home,
            **run_as,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def cpu(self) -> float:
        """The postmaster's CPU and its backends' (the hub's connections are its children)."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        return sum(cpu_seconds(pid) for pid in pids)

    def ready(self) -> bool:
        return b"ready to accept" in self.log_path.read_bytes()

    def wait_ready(self, timeout: float = 30.0) -> None:
        super().wait_ready(timeout)

    def stop(self) -> None:
        """Fast shutdown by its own PID (then SIGKILL); the cluster is deleted."""
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


# -- one measurement ------------------------------------------------------------------------


class Snapshot:
    """CPU of the server, of the load generator, and of the whole host, at one instant."""

    def __init__(self, server: Server, client_pids: list[int]) -> None:
        self.wall = time.perf_counter()
        self.server = server.cpu()
        self.redis = server.redis_cpu()
        self.clients = sum(cpu_seconds(pid) for pid in client_pids)
        self.host_busy, self.host_total = host_jiffies()


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def run_phase(
    pub: loadgen.Publisher,
    server: Server,
    client_pids: list[int],
    progress: Any,
    n_subs: int,
    phase: int,
    count: int,
    rate: float | None,
    window: int | None,
    budget_s: float,
    stall_s: float,
) -> dict[str, Any]:
    """Publish ``count`` times (at ``rate``/s, or closed-loop with ``window`` in flight).

    A closed loop that sees no delivery for ``stall_s`` stops and is marked
    ``stalled`` (a server blocked behind a frozen client); so does the wait
    for the last deliveries.
    """
    base = sum(progress)
    before = Snapshot(server, client_pids)
    t0 = before.wall
    end = t0 + budget_s
    sent = 0
    stalled = False
    seen, seen_at = base, t0
    while sent < count and time.perf_counter() < end and not pub.closed and not stalled:
        if rate:
            delay = t0 + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if window:
            for _ in range(int(budget_s / 0.0005) + 1):
                now_total, now = sum(progress), time.perf_counter()
                if now_total != seen:
                    seen, seen_at = now_total, now
                elif now - seen_at > stall_s:
                    stalled = True
                    break
                if sent - (now_total - base) // n_subs < window or now > end:
                    break
                await asyncio.sleep(0.0005)
            if stalled:
                break
        try:
            await asyncio.wait_for(pub.send(phase, sent), stall_s)
        except TimeoutError:
            stalled = True
            break
        sent += 1
    grace_end = time.perf_counter() + 10.0
    seen, seen_at = sum(progress), time.perf_counter()
    while time.perf_counter() < grace_end:
        now_total, now = sum(progress), time.perf_counter()
        if now_total - base >= sent * n_subs and pub.tally.counts[phase] >= sent:
            break
        if now_total != seen:
            seen, seen_at = now_total, now
        elif now - seen_at > stall_s:
            stalled = True
            break
        await asyncio.sleep(0.001)
    after = Snapshot(server, client_pids)
    wall = after.wall - before.wall
    tick = 1 / TICK
    host_busy = (after.host_busy - before.host_busy) * tick
    return {
        "phase": phase,
        "sent": sent,
        "rate": rate,
        "window": window,
        "wall_s": wall,
        "stalled": stalled,
        "server_cpu_s": after.server - before.server,
        "redis_cpu_s": after.redis - before.redis if server.has_backend else None,
        "client_cpu_s": after.clients - before.clients,
        "host_busy_cores": host_busy / wall if wall > 0 else None,
        "progress_deliveries": sum(progress) - base,
    }


async def rtt_phase(pub: loadgen.Publisher, server: Server, cfg: argparse.Namespace) -> dict:
    """One client alone on the hub: publish, wait for the own echo, repeat."""
    before = Snapshot(server, [os.getpid()])
    done = await pub.round_trips(PHASE_RTT, cfg.rtt_count, cfg.rtt_budget_s)
    after = Snapshot(server, [os.getpid()])
    return {
        "phase": PHASE_RTT,
        "sent": done,
        "rate": None,
        "window": 1,
        "wall_s": after.wall - before.wall,
        "stalled": done < cfg.rtt_count,
        "server_cpu_s": after.server - before.server,
        "client_cpu_s": after.clients - before.clients,
        "host_busy_cores": None,
        "progress_deliveries": 0,
    }


async def rooms_phase(
    server: Server,
    client_pids: list[int],
    progress: Any,
    pipes: list[Any],
    connected: int,
    cfg: argparse.Namespace,
) -> dict[str, Any]:
    """Many small rooms: every member publishes to its room ``--room-rate`` times a second.

    The workers start together at a wall-clock instant 0.5 s ahead, each member at
    its own offset in the period, for ``--room-seconds``; each worker answers
    with how many publications it sent. Then the phase waits (bounded, with the
    stall rule) until every publication reached every member of its room, the
    sender included, and reads the server's CPU.
    """
    loop = asyncio.get_running_loop()
    base = sum(progress)
    before = Snapshot(server, client_pids)
    order = {
        "talk": time.time() + 0.5,
        "seconds": cfg.room_seconds,
        "rate": cfg.room_rate,
        "phase": PHASE_ROOMS,
    }
    for pipe in pipes:
        pipe.send(order)
    talk_end = time.monotonic() + 0.5 + cfg.room_seconds + 45
    answers: list[dict[str, Any]] = []
    for pipe in pipes:
        remaining = max(0.1, talk_end - time.monotonic())
        if await loop.run_in_executor(None, pipe.poll, remaining):
            answers.append(pipe.recv())
    sent = sum(a.get("published", 0) for a in answers)
    send_errors: dict[str, int] = {}
    for a in answers:
        for key, value in a.get("send_errors", {}).items():
            send_errors[key] = send_errors.get(key, 0) + value
    expected = sent * cfg.room_size
    stalled = len(answers) < len(pipes)
    grace_end = time.perf_counter() + 10.0
    seen, seen_at = sum(progress), time.perf_counter()
    while time.perf_counter() < grace_end and not stalled:
        now_total, now = sum(progress), time.perf_counter()
        if now_total - base >= expected:
            break
        if now_total != seen:
            seen, seen_at = now_total, now
        elif now - seen_at > cfg.stall_s:
            stalled = True
        await asyncio.sleep(0.005)
    after = Snapshot(server, client_pids)
    wall = after.wall - before.wall
    return {
        "phase": PHASE_ROOMS,
        "sent": sent,
        "rate": cfg.room_rate,
        "window": None,
        "wall_s": wall,
        "stalled": stalled,
        "send_errors": send_errors,
        "server_cpu_s": after.server - before.server,
        "redis_cpu_s": None,
        "client_cpu_s": after.clients - before.clients,
        "host_busy_cores": (after.host_busy - before.host_busy) / TICK / wall if wall else None,
        "progress_deliveries": sum(progress) - base,
        "room_size": cfg.room_size,
        "expected": expected,
        "talk_s": cfg.room_seconds,
    }


def finish_rooms_phase(ph: dict[str, Any], received: int, echoes: int, lats: list[int]) -> None:
    """The rooms phase's figures: per delivery (the sender's echo included: the server sends
    it too) and per publication; latency over the other members' deliveries only."""
    finish_phase(ph, received, 0, 0, lats)
    ph["lost"] = ph["expected"] - received
    ph["echoes"] = echoes
    ph["publications_per_s"] = ph["sent"] / ph["talk_s"] if ph["talk_s"] else None
    ph["us_per_publication"] = ph["server_cpu_s"] / ph["sent"] * 1e6 if ph["sent"] else None


def finish_phase(ph: dict[str, Any], received: int, echoes: int, n_subs: int, lats: list[int]):
    """Derived figures of one phase: deliveries, losses, CPU per delivery, percentiles."""
    deliveries = received + echoes
    expected = ph["sent"] * (n_subs + 1)
    lats.sort()
    ph["deliveries"] = deliveries
    ph["lost"] = expected - deliveries
    ph["us_per_delivery"] = ph["server_cpu_s"] / deliveries * 1e6 if deliveries else None
    # Redis's own CPU (hubbub-redis only), and the server's plus Redis's.
    redis_s = ph.get("redis_cpu_s")
    ph["redis_us_per_delivery"] = (
        redis_s / deliveries * 1e6 if deliveries and redis_s is not None else None
    )
    ph["us_per_delivery_total"] = (
        (ph["server_cpu_s"] + (redis_s or 0.0)) / deliveries * 1e6 if deliveries else None
    )
    ph["client_us_per_delivery"] = ph["client_cpu_s"] / deliveries * 1e6 if deliveries else None
    ph["deliveries_per_s"] = deliveries / ph["wall_s"] if ph["wall_s"] else None
    ph["server_util"] = ph["server_cpu_s"] / ph["wall_s"] if ph["wall_s"] else None
    ph["latency_samples"] = len(lats)
    ph["p50_ms"] = percentile(lats, 0.50) / 1e6 if lats else None
    ph["p99_ms"] = percentile(lats, 0.99) / 1e6 if lats else None
    ph["max_ms"] = (lats[-1] / 1e6) if lats else None


async def measure(
    name: str, n: int, cfg: argparse.Namespace, log_dir: Path, scenario: str
) -> dict[str, Any]:
    """Fresh server, publisher, N subscribers; RSS; then the scenario's phases."""
    server = Server(
        name,
        cfg.ws,
        log_dir,
        getattr(cfg, "redis_server", None),
        getattr(cfg, "postgres_server", None),
    )
    ctx = mp.get_context("spawn")
    workers: list[Any] = []
    pipes: list[Any] = []
    result: dict[str, Any] = {"server": name, "n": n, "argv": server.argv}
    pub: loadgen.Publisher | None = None
    frozen: Any = None
    fan_out = scenario in ("fanout", "deflate")
    with_phases = fan_out or scenario.startswith("frozen")
    # Every client offers permessage-deflate, like a browser.
    deflate = scenario in ("deflate", "rooms-deflate")
    rooms = scenario in ROOMS_SCENARIOS
    try:
        server.wait_ready()
        result["uvloop"] = uses_uvloop(server.proc.pid)
        loop = asyncio.get_running_loop()
        # The publisher connects first and publishes a few warm-up messages, so
        # the baseline RSS already includes everything a first connection loads.
        pub = loadgen.Publisher(name, server.base_url, deflate=deflate)
        await pub.open()
        for seq in range(3):
            await pub.send(0, seq)
        for _ in range(200):
            if pub.tally.counts[0] >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        if scenario == "rtt":
            ph = await rtt_phase(pub, server, cfg)
            finish_phase(ph, 0, pub.tally.counts[PHASE_RTT], 0, list(pub.tally.latencies[3]))
            ph["lost"] = cfg.rtt_count - ph["deliveries"]
            ph["us_per_round_trip"] = ph["server_cpu_s"] / ph["sent"] * 1e6 if ph["sent"] else None
            result["phases"] = [ph]
            result["closes"] = 0
            result["connected"] = 0
            result["publish_errors"] = pub.errors
            return result
        rss0 = server.rss()
        cpu0 = server.cpu()
        share = [n // cfg.workers + (1 if i < n % cfg.workers else 0) for i in range(cfg.workers)]
        share = [s for s in share if s]
        progress = ctx.RawArray("q", len(share))
        phase_budget = (cfg.latency_s * 3 + cfg.closed_loop_s + 60) if with_phases else 0
        if rooms:
            phase_budget = cfg.room_seconds + 90
        connect_budget = 30 + n / 50
        first = 0
        for slot, count in enumerate(share):
            options = {"deflate": deflate, "room_size": cfg.room_size if rooms else 0}
            options["first"] = first
            first += count
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=loadgen.worker_main,
                args=(
                    slot,
                    name,
                    server.base_url,
                    count,
                    progress,
                    child,
                    connect_budget + phase_budget + 30,
                    options,
                ),
                daemon=True,
            )
            proc.start()
            child.close()
            workers.append(proc)
            pipes.append(parent)
        ready: list[dict[str, Any]] = []
        ready_end = time.monotonic() + connect_budget + 20
        for pipe in pipes:
            remaining = max(0.1, ready_end - time.monotonic())
            if await loop.run_in_executor(None, pipe.poll, remaining):
                ready.append(pipe.recv())
            else:
                ready.append({"ready": 0, "failures": {"no ready message": 1}, "pid": None})
        connected = sum(r["ready"] for r in ready)
        failures: dict[str, int] = {}
        for r in ready:
            for key, value in r["failures"].items():
                failures[key] = failures.get(key, 0) + value
        result["connected"] = connected
        result["connect_failures"] = failures
        result["connect_wall_s"] = max(r.get("connect_s", 0) for r in ready)
        # What the servers answered to the clients' extension offers (deflate: the
        # negotiated permessage-deflate parameters), with how many clients got each.
        extensions: dict[str, int] = {}
        for r in ready:
            for key, value in r.get("extensions", {}).items():
                extensions[key] = extensions.get(key, 0) + value
        result["extensions"] = extensions
        result["publisher_extensions"] = loadgen.negotiated(pub.ws)
        cpu1 = server.cpu()
        await asyncio.sleep(cfg.settle_s)
        rss1 = server.rss()
        result["rss_base_kib"] = rss0
        result["rss_idle_kib"] = rss1
        result["kib_per_conn"] = (rss1 - rss0) / connected if connected else None
        result["setup_us_per_conn"] = (cpu1 - cpu0) / connected * 1e6 if connected else None
        client_pids = [r["pid"] for r in ready if r.get("pid")] + [os.getpid()]
        if scenario == "frozen-on":
            frozen = await loadgen.open_frozen(name, server.base_url)
            result["frozen"] = 1
        if scenario.startswith("frozen"):
            # Larger payloads, so that the frozen client's kernel buffers (the server's
            # send buffer autotunes up to net.ipv4.tcp_wmem's 4 MiB) fill within seconds.
            pub.adapter.payload_bytes = cfg.frozen_payload
        phases: list[dict[str, Any]] = []
        if with_phases and connected:
            rate = min(cfg.rate, cfg.max_latency_deliveries / connected)
            lat_count = max(10, round(rate * cfg.latency_s))
            fixed = {
                "phase": PHASE_FIXED,
                "count": lat_count,
                "rate": rate,
                "window": None,
                "budget_s": lat_count / rate * 2 + 10,
            }
            if fan_out:
                cl_count = max(20, min(5000, cfg.deliveries // connected))
            else:  # enough publications to fill a frozen client's buffers and queue
                cl_count = cfg.frozen_publications
            closed = {
                "phase": PHASE_CLOSED,
                "count": cl_count,
                "rate": None,
                "window": cfg.window,
                "budget_s": cfg.closed_loop_s,
            }
            # The frozen scenarios run the closed loop first: it fills the frozen
            # client's buffers, so the fixed-rate phase sees a hub with a stuck client.
            order = [fixed, closed] if fan_out else [closed, fixed]
            for spec in order:
                phases.append(  # noqa: PERF401 - awaited one after the other
                    await run_phase(
                        pub,
                        server,
                        client_pids,
                        progress,
                        connected,
                        stall_s=cfg.stall_s,
                        **spec,
                    )
                )
        if rooms and connected:
            phases.append(await rooms_phase(server, client_pids, progress, pipes, connected, cfg))
            result["rooms"] = connected // cfg.room_size
            result["room_size"] = cfg.room_size
        if frozen is not None:
            result["rss_frozen_end_kib"] = server.rss()
            result["frozen_close_code"] = await loadgen.thaw(frozen)
        # Collect what every worker received.
        reports: list[dict[str, Any]] = []
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("finish")
        for pipe in pipes:
            if await loop.run_in_executor(None, pipe.poll, 30):
                reports.append(pipe.recv())  # noqa: PERF401 - one awaited poll per worker
        result["workers_reported"] = len(reports)
        closed_early: dict[str, int] = {}
        exceptions: dict[str, int] = {}
        for rep in reports:
            for key, value in rep["closed_early"].items():
                closed_early[key] = closed_early.get(key, 0) + value
            for key, value in rep["exceptions"].items():
                exceptions[key] = exceptions.get(key, 0) + value
        result["closed_early"] = closed_early
        result["client_exceptions"] = exceptions
        result["closes"] = sum(closed_early.values())
        result["publish_errors"] = pub.errors
        for ph in phases:
            p = ph["phase"]
            received = sum(rep["counts"][p] for rep in reports)
            lats: list[int] = list(pub.tally.latencies[p])
            for rep in reports:
                lats.extend(loadgen.unpack_latencies(rep["latencies"])[p])
            if rooms:
                finish_rooms_phase(ph, received, sum(r.get("echoes", 0) for r in reports), lats)
            else:
                finish_phase(ph, received, pub.tally.counts[p], connected, lats)
        result["phases"] = phases
        result["rss_end_kib"] = server.rss()
    finally:
        if frozen is not None:
            frozen.transport.abort()
        if pub is not None:
            await pub.close()
        for proc in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()  # by its own PID
                proc.join(5)
        for pipe in pipes:
            pipe.close()
        tail = server.log_tail()
        server.stop()
        if tail.strip():
            result["server_log_tail"] = tail
    return result


# -- summary and report ---------------------------------------------------------------------


def machine_note(cfg: argparse.Namespace) -> dict[str, Any]:
    versions = {}
    for pkg in (
        "hubbub",
        "uvicorn",
        "websockets",
        "uvloop",
        "httptools",
        "starlette",
        "msgspec",
        "anyio",
        "wsproto",
        "python-socketio",
        "python-engineio",
        "broadcaster",
        "matplotlib",
        "hypercorn",
        "granian",
    ):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "uvicorn_ws": cfg.ws,
        "uvicorn_loop": "uvloop",
        "git_commit": commit,
        "note": f"{os.cpu_count()} cores shared with other work, the load generator on the "
        "same cores: absolute figures are noisy; compare same-run ratios and CPU per delivery.",
    }


def _spread(values: list[float | None]) -> dict[str, float | int | None]:
    kept = [v for v in values if v is not None and v == v]  # drop None and NaN
    if not kept:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {
        "median": statistics.median(kept),
        "min": min(kept),
        "max": max(kept),
        "runs": len(kept),
    }


PHASE_KEYS = (
    "us_per_delivery",
    "redis_us_per_delivery",
    "us_per_delivery_total",
    "client_us_per_delivery",
    "deliveries_per_s",
    "server_util",
    "host_busy_cores",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "rate",
    "us_per_round_trip",
    "us_per_publication",
    "publications_per_s",
)


def _phase(res: dict[str, Any] | None, phase: int) -> dict[str, Any] | None:
    if res is None:
        return None
    return next((p for p in res.get("phases", []) if p["phase"] == phase), None)


def _ratio(mine: dict[str, Any] | None, theirs: dict[str, Any] | None, key: str) -> float | None:
    if not mine or not theirs or not mine.get(key) or not theirs.get(key):
        return None
    return mine[key] / theirs[key]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spread per (scenario, N, server), and same-run ratios between servers.

    ``ratio[phase][other]`` is this server's µs CPU per delivery divided by
    ``other``'s, at the same scenario and N **in the same run**, then the
    median over runs (``p99_ratio`` the same for p99 latency). For the
    ``frozen-on`` rows, ``effect`` divides by the same server's ``frozen-off``
    measurement of the same run.
    """
    summary: dict[str, Any] = {}
    by_key: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    index: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    # A measurement that did not get all N subscribers connected is not an
    # N-subscriber measurement: it is listed, and kept out of medians and ratios.
    excluded = [r for r in results if r.get("connected", 0) < r["n"]]
    if excluded:
        summary["excluded"] = [
            {
                "run": r["run"],
                "scenario": r["scenario"],
                "n": r["n"],
                "server": r["server"],
                "connected": r.get("connected"),
                "connect_failures": r.get("connect_failures"),
            }
            for r in excluded
        ]
    results = [r for r in results if r.get("connected", 0) >= r["n"]]
    for res in results:
        by_key.setdefault((res["scenario"], res["n"], res["server"]), []).append(res)
        index[res["scenario"], res["n"], res["server"], res["run"]] = res
    servers = sorted({res["server"] for res in results})
    order = {name: i for i, name in enumerate(SERVERS)}
    for (scenario, n, server), group in sorted(
        by_key.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))
    ):
        row: dict[str, Any] = {
            "kib_per_conn": _spread([g.get("kib_per_conn") for g in group]),
            "setup_us_per_conn": _spread([g.get("setup_us_per_conn") for g in group]),
            "closes": sum(g.get("closes", 0) for g in group),
            "connect_failures": sum(sum(g.get("connect_failures", {}).values()) for g in group),
            "extensions": sorted({k for g in group for k in g.get("extensions", {})}),
        }
        if scenario == "frozen-on":
            row["frozen_close_codes"] = [g.get("frozen_close_code") for g in group]
            row["rss_growth_kib"] = _spread(
                [
                    g["rss_frozen_end_kib"] - g["rss_idle_kib"]
                    for g in group
                    if "rss_frozen_end_kib" in g and "rss_idle_kib" in g
                ]
            )
        for phase in (PHASE_FIXED, PHASE_CLOSED, PHASE_RTT):
            phs = [p for g in group for p in g.get("phases", []) if p["phase"] == phase]
            if not phs:
                continue
            entry: dict[str, Any] = {key: _spread([p.get(key) for p in phs]) for key in PHASE_KEYS}
            entry["lost"] = sum(p["lost"] for p in phs)
            entry["deliveries"] = sum(p["deliveries"] for p in phs)
            entry["stalled"] = sum(bool(p.get("stalled")) for p in phs)
            row[f"phase{phase}"] = entry
            ratios: dict[str, Any] = {}
            p99s: dict[str, Any] = {}
            totals: dict[str, Any] = {}
            per_pub: dict[str, Any] = {}
            for other in servers:
                pairs = [
                    (_phase(g, phase), _phase(index.get((scenario, n, other, g["run"])), phase))
                    for g in group
                ]
                ratios[other] = _spread([_ratio(a, b, "us_per_delivery") for a, b in pairs])
                p99s[other] = _spread([_ratio(a, b, "p99_ms") for a, b in pairs])
                totals[other] = _spread([_ratio(a, b, "us_per_delivery_total") for a, b in pairs])
                per_pub[other] = _spread([_ratio(a, b, "us_per_publication") for a, b in pairs])
            row.setdefault("ratio", {})[str(phase)] = ratios
            if scenario in ROOMS_SCENARIOS:
                row.setdefault("publication_ratio", {})[str(phase)] = per_pub
            row.setdefault("total_ratio", {})[str(phase)] = totals
            row.setdefault("p99_ratio", {})[str(phase)] = p99s
            if scenario in ("frozen-on", "deflate"):
                # frozen-on ÷ frozen-off; deflate ÷ the plain fan-out (same server, N, run).
                plain = "frozen-off" if scenario == "frozen-on" else "fanout"
                pairs = [
                    (
                        _phase(g, phase),
                        _phase(index.get((plain, n, server, g["run"])), phase),
                    )
                    for g in group
                ]
                row.setdefault("effect", {})[str(phase)] = {
                    key: _spread([_ratio(a, b, key) for a, b in pairs])
                    for key in ("us_per_delivery", "p99_ms", "deliveries_per_s")
                }
        summary.setdefault(scenario, {}).setdefault(str(n), {})[server] = row
    return summary


def _fmt(spread: dict[str, Any] | None, digits: int = 1, scale: float = 1.0) -> str:
    if not spread or spread.get("median") is None:
        return "-"
    med = spread["median"] * scale
    if spread["runs"] > 1:
        low, high = spread["min"] * scale, spread["max"] * scale
        return f"{med:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"
    return f"{med:.{digits}f}"


def _ratio_cell(row: dict[str, Any] | None, phase: int, other: str, key: str = "ratio") -> str:
    if not row:
        return "-"
    return _fmt(row.get(key, {}).get(str(phase), {}).get(other), 2)


def idle_rows(summary: dict[str, Any], cfg: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The idle-memory rows: the idle scenario's, or the fan-out's at N = idle N (same steps)."""
    if summary.get("idle"):
        return summary["idle"], "idle scenario"
    fan = summary.get("fanout", {})
    key = str(cfg.idle_n)
    if key in fan:
        return {key: fan[key]}, "fan-out measurement at the same N, before any publication"
    return {}, ""


def redis_section(summary: dict[str, Any], note: dict[str, Any]) -> list[str]:
    """hubbub on the Redis broker against hubbub on the memory broker, same N, same run.

    QUALITY.md: the broker round trip adds at most 25% to the server's CPU per
    delivery at N = 1,000. Redis runs as its own process, so its CPU is its own
    column (read from redis-server's /proc/<pid>/stat over the same phase) and
    is added to the server's only in the "with Redis" ratio.
    """
    fan = summary.get("fanout", {})
    brokers = (HUBBUB_REDIS, HUBBUB_POSTGRES)
    ns = [n for n in sorted(fan, key=int) if any(b in fan[n] for b in brokers)]
    if not ns:
        return []
    lines = [
        "",
        "## Publish through Redis or PostgreSQL (hubbub-redis, hubbub-postgres against hubbub)",
        "",
        f"The same hub on the Redis broker (`{note.get('redis') or 'redis-server'}`, its "
        "own process on a free 127.0.0.1 port, no persistence, one for the whole run). "
        "Server µs: the hub process only. Redis µs: redis-server's own CPU over the same "
        "phase ÷ the same deliveries. Ratios: hubbub-redis ÷ hubbub, same N, same run, "
        "then median; QUALITY.md's bar is ≤ 1.25 (server CPU) at N = 1,000. hubbub-postgres: "
        f"the same on the PostgreSQL broker (`{note.get('postgres') or 'postgres'}`, its own "
        "cluster, fsync off); its row's Redis µs column is the cluster's CPU (postmaster and "
        "backends).",
        "",
        "| N | phase | server | server µs / delivery | Redis µs / delivery "
        "| server + Redis µs | p50 / p99 ms | lost | ÷ hubbub (server) | ÷ hubbub (+ Redis) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in ns:
        for phase, label in ((PHASE_CLOSED, "closed loop"), (PHASE_FIXED, "fixed rate")):
            for server in (HUBBUB, *brokers):
                row = fan[n].get(server)
                ph = row.get(f"phase{phase}") if row else None
                if not ph:
                    continue
                redis = server in brokers
                ratio = _ratio_cell(row, phase, HUBBUB) if redis else "1"
                total = _ratio_cell(row, phase, HUBBUB, "total_ratio") if redis else "1"
                lines.append(
                    f"| {int(n):,} | {label} | {server} | {_fmt(ph['us_per_delivery'], 2)} "
                    f"| {_fmt(ph.get('redis_us_per_delivery'), 2) if redis else '-'} "
                    f"| {_fmt(ph.get('us_per_delivery_total'), 2)} "
                    f"| {_fmt(ph['p50_ms'], 2)} / {_fmt(ph['p99_ms'], 2)} "
                    f"| {ph['lost']} | {ratio} | {total} |"
                )
    return lines


def _median_ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or not a.get("median") or not b.get("median"):
        return "-"
    return f"{a['median'] / b['median']:.2f}"


def scaling_section(summary: dict[str, Any], cfg: argparse.Namespace) -> list[str]:
    """The fan-out at a large N (the ``large`` scenario) against the same server at 1,000."""
    fan = summary.get("fanout", {})
    large = getattr(cfg, "large_n", 20_000)
    big = [n for n in sorted(fan, key=int) if int(n) > 5000 or int(n) == large]
    if not big:
        return []
    lines = [
        "",
        f"## Many subscribers on one node (N = {', '.join(f'{int(n):,}' for n in big)})",
        "",
        "Closed-loop server CPU per delivery and memory per subscribed connection (before "
        "any publication, fresh server). `÷ N=1,000`: this N's median ÷ the same server's "
        "median at N = 1,000 in this run (issue 15's bar: within 20%).",
        "",
        "| N | server | µs CPU / delivery | ÷ N=1,000 | ratio to tutorial | ratio to websockets "
        "| fixed-rate p99 ms | KiB / connection | server µs / connect+subscribe | lost | closes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in big:
        for server, row in fan[n].items():
            ph = row.get(f"phase{PHASE_CLOSED}") or {}
            fixed = row.get(f"phase{PHASE_FIXED}") or {}
            small = fan.get("1000", {}).get(server, {}).get(f"phase{PHASE_CLOSED}") or {}
            lines.append(
                f"| {int(n):,} | {server} | {_fmt(ph.get('us_per_delivery'), 2)} "
                f"| {_median_ratio(ph.get('us_per_delivery'), small.get('us_per_delivery'))} "
                f"| {_ratio_cell(row, PHASE_CLOSED, BASELINE)} "
                f"| {_ratio_cell(row, PHASE_CLOSED, 'websockets')} "
                f"| {_fmt(fixed.get('p99_ms'), 1)} | {_fmt(row['kib_per_conn'], 1)} "
                f"| {_fmt(row['setup_us_per_conn'], 0)} "
                f"| {ph.get('lost', 0) + fixed.get('lost', 0)} | {row['closes']} |"
            )
    return lines


def deflate_section(summary: dict[str, Any]) -> list[str]:
    """Fan-out to clients that offer permessage-deflate, as browsers do."""
    rows = summary.get("deflate", {})
    if not rows:
        return []
    lines = [
        "",
        "## Browser-like clients: permessage-deflate offered (deflate)",
        "",
        "The fan-out scenario again, but every subscriber and the publisher offer "
        "`permessage-deflate; client_max_window_bits`, Chromium's offer (the `websockets` "
        'client\'s `compression="deflate"`), and decompress what they get. Server µs CPU per '
        "delivery; ratios are same N, same run, then median; `deflate ÷ plain` divides by "
        "the same server's `fanout` measurement of the same run (when the run has one). "
        "KiB / connection: RSS with N subscribed, before publishing (each connection's "
        "compressor and decompressor included). Negotiated: the servers' "
        "Sec-WebSocket-Extensions answer.",
        "",
        "| N | server | closed loop µs / delivery | ratio to tutorial | ratio to websockets "
        "| hubbub ÷ this | deflate ÷ plain (closed) | fixed rate µs / delivery "
        "| deflate ÷ plain (fixed) | fixed-rate p99 ms | client µs / delivery "
        "| KiB / connection | lost | closes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    negotiated: set[str] = set()
    for n in sorted(rows, key=int):
        hub = rows[n].get(HUBBUB)
        for server, row in rows[n].items():
            closed = row.get(f"phase{PHASE_CLOSED}") or {}
            fixed = row.get(f"phase{PHASE_FIXED}") or {}
            eff = row.get("effect", {})
            negotiated.update(row.get("extensions", []))
            lines.append(
                f"| {int(n):,} | {server} | {_fmt(closed.get('us_per_delivery'), 2)} "
                f"| {_ratio_cell(row, PHASE_CLOSED, BASELINE)} "
                f"| {_ratio_cell(row, PHASE_CLOSED, 'websockets')} "
                f"| {_ratio_cell(hub, PHASE_CLOSED, server)} "
                f"| {_fmt(eff.get(str(PHASE_CLOSED), {}).get('us_per_delivery'), 2)} "
                f"| {_fmt(fixed.get('us_per_delivery'), 2)} "
                f"| {_fmt(eff.get(str(PHASE_FIXED), {}).get('us_per_delivery'), 2)} "
                f"| {_fmt(fixed.get('p99_ms'), 1)} "
                f"| {_fmt(closed.get('client_us_per_delivery'), 1)} "
                f"| {_fmt(row['kib_per_conn'], 1)} "
                f"| {closed.get('lost', 0) + fixed.get('lost', 0)} | {row['closes']} |"
            )
    lines += ["", "Negotiated: " + "; ".join(f"`{e}`" for e in sorted(negotiated)) + "."]
    return lines


def rooms_section(
    summary: dict[str, Any], cfg: argparse.Namespace, scenario: str = "rooms"
) -> list[str]:
    """Many small rooms (chat): CPU per publication and per delivery, p99 to the others."""
    rows = summary.get(scenario, {})
    if not rows:
        return []
    deflate = scenario == "rooms-deflate"
    lines = [
        "",
        "## Many small rooms (chat)"
        + (", browser-like: permessage-deflate offered (rooms-deflate)" if deflate else ""),
        "",
        f"Rooms of {cfg.room_size} members, each member subscribed to its own room and "
        f"publishing to it {cfg.room_rate:g} time(s) a second for {cfg.room_seconds:g} s "
        "(evenly spread offsets); every publication reaches every member of the room, the "
        "sender included (hubbub's echo; the peers relay to the whole room). Server CPU per "
        "publication and per delivery over the phase; latency: send → delivery to the "
        "*other* members (own echoes excluded). Ratios: same run, then median."
        + (
            " Every member offers `permessage-deflate; client_max_window_bits` (Chromium's "
            "offer) and compresses what it sends with the parameters the server accepted, "
            "as a browser does."
            if deflate
            else ""
        ),
        "",
        "| rooms x members | server | publications/s | µs CPU / publication | ratio to tutorial "
        "| ratio to websockets | hubbub ÷ this | µs CPU / delivery | p50 / p99 ms "
        "| p99 ÷ tutorial | server util | lost | closes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in sorted(rows, key=int):
        hub = rows[n].get(HUBBUB)
        for server, row in rows[n].items():
            ph = row.get(f"phase{PHASE_ROOMS}") or {}
            size = cfg.room_size
            lines.append(
                f"| {int(n) // size:,} x {size} | {server} "
                f"| {_fmt(ph.get('publications_per_s'), 0)} "
                f"| {_fmt(ph.get('us_per_publication'), 1)} "
                f"| {_ratio_cell(row, PHASE_ROOMS, BASELINE, 'publication_ratio')} "
                f"| {_ratio_cell(row, PHASE_ROOMS, 'websockets', 'publication_ratio')} "
                f"| {_ratio_cell(hub, PHASE_ROOMS, server, 'publication_ratio')} "
                f"| {_fmt(ph.get('us_per_delivery'), 1)} "
                f"| {_fmt(ph.get('p50_ms'), 2)} / {_fmt(ph.get('p99_ms'), 2)} "
                f"| {_ratio_cell(row, PHASE_ROOMS, BASELINE, 'p99_ratio')} "
                f"| {_fmt(ph.get('server_util'), 2)} | {ph.get('lost', 0)} "
                f"| {row['closes']} |"
            )
    return lines


def markdown(note: dict[str, Any], cfg: argparse.Namespace, summary: dict[str, Any]) -> str:
    v = note["versions"]
    lines = [
        f"# hubbub benchmark — {note['date']}",
        "",
        f"Machine: {note['cpus']} CPUs ({note['cpus_usable']} usable), shared with other work "
        f"(load average at start {note['loadavg_at_start'][0]:.2f}); Python {note['python']}; "
        f"{note['platform']}. {note.get('note', '')}",
        f"Versions: hubbub {v['hubbub']}, uvicorn {v['uvicorn']} (`--ws {note['uvicorn_ws']}`, "
        f"uvloop {v['uvloop']}, httptools {v['httptools']}), websockets {v['websockets']}, "
        f"starlette {v['starlette']}, msgspec {v['msgspec']}, "
        f"python-socketio {v.get('python-socketio')} (python-engineio "
        f"{v.get('python-engineio')}), broadcaster {v.get('broadcaster')}; "
        f"git {note['git_commit']}.",
        f"Command: `{' '.join(cfg.argv)}` — runs={cfg.runs}, workers={cfg.workers}, "
        f"window={cfg.window}, latency rate ≤ {cfg.rate}/s (≤ {cfg.max_latency_deliveries} "
        f"deliveries/s), closed-loop target {cfg.deliveries} deliveries.",
        "Cells: median (min-max) over runs; ratios are per run (same N, same run), then median.",
        "",
    ]
    if getattr(cfg, "cpu", "all") == "writes":
        lines[-1:-1] = [
            "**Every µs CPU figure here is write system calls** (`--cpu writes`: `syscw`"
            " from `/proc/<pid>/io`), not CPU time."
        ]
    elif getattr(cfg, "cpu", "all") != "all":
        lines[-1:-1] = [f"**CPU here is {cfg.cpu} time only** (`--cpu {cfg.cpu}`), not both."]
    fan = summary.get("fanout", {})
    ns = sorted(fan, key=int)
    if fan and HUBBUB in {s for n in ns for s in fan[n]}:
        others = [s for s in PEERS if any(s in fan[n] for n in ns)]
        head = [f"closed loop N={int(n):,}" for n in ns] + [f"fixed rate N={int(n):,}" for n in ns]
        head += [f"p99 at fixed rate N={int(n):,}" for n in ns]
        lines += [
            "## hubbub (JSON, no batching) against each peer",
            "",
            "hubbub's server CPU per delivery divided by the other server's, same N, same "
            "run (below 1: hubbub spends less); the last columns divide p99 latency at the "
            "fixed rate the same way. hubbub's own options are compared further down.",
            "",
            "| hubbub ÷ | " + " | ".join(head) + " |",
            "| --- |" + " --- |" * len(head),
        ]
        for other in others:
            cells = [_ratio_cell(fan[n].get(HUBBUB), PHASE_CLOSED, other) for n in ns]
            cells += [_ratio_cell(fan[n].get(HUBBUB), PHASE_FIXED, other) for n in ns]
            cells += [_ratio_cell(fan[n].get(HUBBUB), PHASE_FIXED, other, "p99_ratio") for n in ns]
            lines.append(f"| {other} | " + " | ".join(cells) + " |")
        lines.append("")
    if fan:
        lines += [
            "## Fan-out, closed loop (server CPU per delivery)",
            "",
            "| N | server | µs CPU / delivery | ratio to tutorial | hubbub ÷ this | deliveries/s "
            "| server util | client µs / delivery | p50 / p99 ms (loaded) | lost | closes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in ns:
            for server, row in fan[n].items():
                ph = row.get(f"phase{PHASE_CLOSED}")
                if not ph:
                    continue
                hub = fan[n].get(HUBBUB)
                lines.append(
                    f"| {int(n):,} | {server} | {_fmt(ph['us_per_delivery'], 2)} "
                    f"| {_ratio_cell(row, PHASE_CLOSED, BASELINE)} "
                    f"| {_ratio_cell(hub, PHASE_CLOSED, server)} "
                    f"| {_fmt(ph['deliveries_per_s'], 0)} | {_fmt(ph['server_util'], 2)} "
                    f"| {_fmt(ph['client_us_per_delivery'], 1)} "
                    f"| {_fmt(ph['p50_ms'], 1)} / {_fmt(ph['p99_ms'], 1)} "
                    f"| {ph['lost']} | {row['closes']} |"
                )
        lines += [
            "",
            "## Fan-out at a fixed rate (delivery latency)",
            "",
            "CPU here is read in 10 ms ticks over a few thousand deliveries at N = 100: "
            "coarse there, meaningful from N = 1,000.",
            "",
            "| N | server | publications/s | p50 ms | p99 ms | µs CPU / delivery "
            "| ratio to tutorial | hubbub ÷ this | server util | lost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in ns:
            for server, row in fan[n].items():
                ph = row.get(f"phase{PHASE_FIXED}")
                if not ph:
                    continue
                hub = fan[n].get(HUBBUB)
                lines.append(
                    f"| {int(n):,} | {server} | {_fmt(ph['rate'], 1)} | {_fmt(ph['p50_ms'], 2)} "
                    f"| {_fmt(ph['p99_ms'], 2)} | {_fmt(ph['us_per_delivery'], 1)} "
                    f"| {_ratio_cell(row, PHASE_FIXED, BASELINE)} "
                    f"| {_ratio_cell(hub, PHASE_FIXED, server)} "
                    f"| {_fmt(ph['server_util'], 2)} | {ph['lost']} |"
                )
        variants = [s for s in HUBBUB_VARIANTS if s != HUBBUB and any(s in fan[n] for n in ns)]
        if variants and any(HUBBUB in fan[n] for n in ns):
            lines += [
                "",
                "## hubbub's options: MessagePack vs JSON, batching on vs off",
                "",
                "The variant's server CPU per delivery ÷ plain hubbub's (JSON, no batching), "
                "same N, same run.",
                "",
                "| variant ÷ hubbub | "
                + " | ".join(f"closed loop N={int(n):,}" for n in ns)
                + " | "
                + " | ".join(f"fixed rate N={int(n):,}" for n in ns)
                + " |",
                "| --- |" + " --- |" * (2 * len(ns)),
            ]
            for var in variants:
                cells = [_ratio_cell(fan[n].get(var), PHASE_CLOSED, HUBBUB) for n in ns]
                cells += [_ratio_cell(fan[n].get(var), PHASE_FIXED, HUBBUB) for n in ns]
                label = {
                    "hubbub-msgpack": "MessagePack",
                    "hubbub-batch": "batching (`?batch=1`)",
                    HUBBUB_STD: "no pre-framing: standard `websocket.send`",
                    HUBBUB_CTX: "`--ws-compression per-connection`",
                    HUBBUB_REDIS: "Redis broker, server CPU only",
                    HUBBUB_POSTGRES: "PostgreSQL broker, server CPU only",
                    HUBBUB_HYPERCORN: "hypercorn instead of uvicorn, standard sends",
                    HUBBUB_GRANIAN: "granian instead of uvicorn, standard sends",
                }[var]
                lines.append(f"| {var} ({label}) | " + " | ".join(cells) + " |")
    lines += redis_section(summary, note)
    lines += scaling_section(summary, cfg)
    lines += deflate_section(summary)
    lines += rooms_section(summary, cfg)
    lines += rooms_section(summary, cfg, "rooms-deflate")
    lines += servers_section(summary)
    rtt = summary.get("rtt", {})
    if rtt:
        lines += [
            "",
            "## Round trip of one client through the hub (publish → own echo)",
            "",
            f"One client alone on a fresh server, {cfg.rtt_count} sequential round trips.",
            "",
            "| server | p50 ms | p99 ms | server µs CPU / round trip | hubbub ÷ this (CPU) "
            "| lost |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for rows in rtt.values():
            hub = rows.get(HUBBUB)
            for server, row in rows.items():
                ph = row.get(f"phase{PHASE_RTT}")
                if ph:
                    lines.append(
                        f"| {server} | {_fmt(ph['p50_ms'], 3)} | {_fmt(ph['p99_ms'], 3)} "
                        f"| {_fmt(ph['us_per_round_trip'], 0)} "
                        f"| {_ratio_cell(hub, PHASE_RTT, server)} | {ph['lost']} |"
                    )
    on, off = summary.get("frozen-on", {}), summary.get("frozen-off", {})
    if on:
        lines += [
            "",
            "## One frozen subscriber among the others",
            "",
            f"N subscribers read as fast as they can; in `frozen-on` one more joins the channel "
            f"and stops reading (4 KiB receive buffer, transport paused, answers no keepalive). "
            f"Closed loop first ({cfg.frozen_publications} publications of {cfg.frozen_payload} "
            f"bytes, window {cfg.window}: "
            f"this fills the frozen client's buffers), then the fixed rate. Figures are the "
            f"others' (the frozen client's deliveries are not counted); `on ÷ off` is per run, "
            f"same server. A phase that saw no delivery for {cfg.stall_s:g} s stops and counts "
            f"as stalled.",
            "",
            "| N | server | µs CPU / delivery off → on | on ÷ off | deliveries/s off → on "
            "| fixed-rate p99 ms off → on | on ÷ off | lost (others) off / on "
            "| stalled phases on | frozen client closed with | server RSS growth KiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in sorted(on, key=int):
            for server, row in on[n].items():
                base = off.get(n, {}).get(server, {})
                c_on, c_off = row.get("phase2", {}), base.get("phase2", {})
                f_on, f_off = row.get("phase1", {}), base.get("phase1", {})
                eff = row.get("effect", {})
                codes = sorted({str(c) for c in row.get("frozen_close_codes", [])})
                lost_off = c_off.get("lost", 0) + f_off.get("lost", 0)
                lost_on = c_on.get("lost", 0) + f_on.get("lost", 0)
                stalled = c_on.get("stalled", 0) + f_on.get("stalled", 0)
                lines.append(
                    f"| {int(n):,} | {server} "
                    f"| {_fmt(c_off.get('us_per_delivery'), 2)} → "
                    f"{_fmt(c_on.get('us_per_delivery'), 2)} "
                    f"| {_fmt(eff.get('2', {}).get('us_per_delivery'), 2)} "
                    f"| {_fmt(c_off.get('deliveries_per_s'), 0)} → "
                    f"{_fmt(c_on.get('deliveries_per_s'), 0)} "
                    f"| {_fmt(f_off.get('p99_ms'), 1)} → {_fmt(f_on.get('p99_ms'), 1)} "
                    f"| {_fmt(eff.get('1', {}).get('p99_ms'), 2)} "
                    f"| {lost_off} / {lost_on} | {stalled} | {', '.join(codes)} "
                    f"| {_fmt(row.get('rss_growth_kib'), 0)} |"
                )
    sections = [("Memory of the fan-out servers (N subscribed, before publishing)", fan, "")]
    idle, source = idle_rows(summary, cfg)
    sections.append(("Idle memory (fresh server, N connected + subscribed clients)", idle, source))
    for title, rows, source in sections:
        if not rows:
            continue
        lines += ["", f"## {title}", ""]
        if source and source != "idle scenario":
            lines += [f"From the {source}.", ""]
        lines += [
            "| N | server | KiB / connection | server µs CPU / connect+subscribe "
            "| connect failures | closes |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for n in sorted(rows, key=int):
            for server, row in rows[n].items():
                lines.append(
                    f"| {int(n):,} | {server} | {_fmt(row['kib_per_conn'], 1)} "
                    f"| {_fmt(row['setup_us_per_conn'], 0)} | {row['connect_failures']} "
                    f"| {row['closes']} |"
                )
    if summary.get("excluded"):
        lines += [
            "",
            "## Measurements left out",
            "",
            "Not every subscriber connected, so these are kept out of every median and ratio:",
            "",
        ]
        lines += [
            f"- run {e['run']}, {e['scenario']}, N = {e['n']:,}, {e['server']}: "
            f"{e['connected']} connected; {e['connect_failures']}"
            for e in summary["excluded"]
        ]
    lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], cfg: argparse.Namespace, note: dict[str, Any], path: Path):
    """One PNG: CPU per delivery vs N, fixed-rate p99 vs N, KiB per connection, round trip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (ax_cpu, ax_p99), (ax_mem, ax_rtt) = axes
    fan = summary.get("fanout", {})
    ns = sorted(fan, key=int)
    present = [s for s in SERVERS if any(s in fan.get(n, {}) for n in ns)]
    deflate = summary.get("deflate", {})
    # Every server of the fan-out or of the deflate scenario (a run without deflate drew none).
    for server in [s for s in SERVERS if s in present or any(s in deflate[n] for n in deflate)]:
        # The deflate scenario: the same axes, dotted, square markers.
        xs, ys = [], []
        for n in sorted(deflate, key=int):
            cell = deflate[n].get(server, {}).get(f"phase{PHASE_CLOSED}", {}).get("us_per_delivery")
            if cell and cell.get("median") is not None:
                xs.append(int(n))
                ys.append(cell["median"])
        if xs:
            ax_cpu.plot(xs, ys, marker="s", linestyle=":", lw=1.5, label=f"{server} (deflate)")
        for ax, phase, key in (
            (ax_cpu, PHASE_CLOSED, "us_per_delivery"),
            (ax_p99, PHASE_FIXED, "p99_ms"),
        ):
            xs, ys, lo, hi = [], [], [], []
            for n in ns:
                cell = fan[n].get(server, {}).get(f"phase{phase}", {}).get(key)
                if cell and cell.get("median") is not None:
                    xs.append(int(n))
                    ys.append(cell["median"])
                    lo.append(cell["median"] - cell["min"])
                    hi.append(cell["max"] - cell["median"])
            if xs:
                style = "-" if server.startswith("hubbub") else "--"
                width = 2.5 if server == HUBBUB else 1.5
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[lo, hi],
                    marker="o",
                    linestyle=style,
                    lw=width,
                    capsize=3,
                    label=server,
                )
    ax_cpu.set(
        xscale="log",
        xlabel="subscribers N (log)",
        ylabel="server µs CPU per delivery (log)",
        title="Fan-out, closed loop: server CPU per delivery (lower is better)",
    )
    ax_cpu.set_yscale("log")
    ax_p99.set(
        xscale="log",
        yscale="log",
        xlabel="subscribers N (log)",
        ylabel="p99 ms (log)",
        title=f"Delivery latency p99 at ≤ {cfg.rate:g} publications/s",
    )
    for ax in (ax_cpu, ax_p99):
        ax.grid(True, which="both", alpha=0.3)
        if present:
            ax.legend(fontsize=8)
    idle, _ = idle_rows(summary, cfg)
    if idle:
        n = max(idle, key=int)
        names = [s for s in SERVERS if s in idle[n]]
        vals = [idle[n][s]["kib_per_conn"]["median"] or 0 for s in names]
        bars = ax_mem.bar(
            names, vals, color=["C0" if s.startswith("hubbub") else "C7" for s in names]
        )
        ax_mem.bar_label(bars, fmt="%.1f", fontsize=8)
        ax_mem.axhline(30, color="C3", lw=1, ls=":", label="QUALITY.md bar: 30 KiB")
        ax_mem.legend(fontsize=8)
        ax_mem.set(ylabel="KiB", title=f"Idle memory per subscribed connection (N = {int(n):,})")
        ax_mem.tick_params(axis="x", rotation=25)
    rtt = summary.get("rtt", {})
    if rtt:
        rows = next(iter(rtt.values()))
        names = [s for s in SERVERS if s in rows]
        p50 = [rows[s]["phase3"]["p50_ms"]["median"] or 0 for s in names]
        p99 = [rows[s]["phase3"]["p99_ms"]["median"] or 0 for s in names]
        xs = range(len(names))
        ax_rtt.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
        ax_rtt.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
        ax_rtt.set_xticks(list(xs), names, rotation=25)
        ax_rtt.set(ylabel="ms", title="One client's round trip (publish → own echo)")
        ax_rtt.legend(fontsize=8)
    fig.suptitle(
        f"hubbub benchmark {note['date']} — {note['cpus']} shared cores, git {note['git_commit']}; "
        f"medians of {cfg.runs} run(s), bars = min-max",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, about 2 minutes")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: "
        f"{','.join(DEFAULT_SCENARIOS)}); redis: fanout with hubbub-redis",
    )
    parser.add_argument(
        "--deflate-n", default=None, help="deflate scenario: subscriber counts (default --n)"
    )
    parser.add_argument(
        "--large-n", type=int, default=20_000, help="large scenario: subscribers (20,000)"
    )
    parser.add_argument(
        "--rooms", type=int, default=None, help="rooms scenario: rooms (200; quick 100)"
    )
    parser.add_argument("--room-size", type=int, default=5, help="rooms scenario: members per room")
    parser.add_argument(
        "--room-rate", type=float, default=1.0, help="rooms scenario: publications/s per member"
    )
    parser.add_argument(
        "--room-seconds", type=float, default=None, help="rooms scenario: seconds (20; quick 10)"
    )
    parser.add_argument("--n", default=None, help="fan-out subscriber counts (100,1000,5000)")
    parser.add_argument("--idle-n", type=int, default=None, help="clients for the idle scenario")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs (default 3)")
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help=f"comma-separated, from {', '.join(SERVERS)} "
        "(default: all but hubbub-redis and hubbub-postgres)",
    )
    parser.add_argument(
        "--redis",
        action="store_true",
        help="also run hubbub-redis (the same hub on the Redis broker; starts a redis-server)",
    )
    parser.add_argument("--ws", default="websockets-sansio", help="uvicorn --ws for every server")
    parser.add_argument("--workers", type=int, default=3, help="subscriber worker processes")
    parser.add_argument("--window", type=int, default=8, help="closed loop: publications in flight")
    parser.add_argument("--rate", type=float, default=10.0, help="latency phase publications/s")
    parser.add_argument(
        "--max-latency-deliveries",
        type=int,
        default=20_000,
        help="cap on the latency phase's deliveries/s (lowers the rate at large N)",
    )
    parser.add_argument("--deliveries", type=int, default=None, help="closed-loop target")
    parser.add_argument("--rtt-count", type=int, default=None, help="round trips per server")
    parser.add_argument(
        "--frozen-n", type=int, default=None, help="subscribers beside the frozen one"
    )
    parser.add_argument(
        "--frozen-publications", type=int, default=None, help="frozen scenario: closed-loop count"
    )
    parser.add_argument(
        "--frozen-payload", type=int, default=None, help="frozen scenario: payload bytes"
    )
    parser.add_argument(
        "--stall-s", type=float, default=None, help="a phase with no delivery for this long stops"
    )
    parser.add_argument("--max-minutes", type=float, default=None, help="overall time bound")
    parser.add_argument(
        "--cpu",
        choices=("all", "user", "system", "writes"),
        default="all",
        help="count user + system CPU (all), or only one: where a delivery's CPU goes; "
        "writes: write system calls instead of CPU (every µs figure reads as calls)",
    )
    parser.add_argument("--out", default=str(HERE / "results"), help="where results go")
    parser.add_argument(
        "--report", default=None, help="re-render the Markdown and PNG of a results JSON"
    )
    cfg = parser.parse_args(argv)
    global CPU_FIELDS
    CPU_FIELDS = {"all": (11, 12), "user": (11,), "system": (12,), "writes": ()}[cfg.cpu]
    quick = cfg.quick
    cfg.n = [int(x) for x in (cfg.n or ("1000" if quick else "100,1000,5000")).split(",")]
    cfg.deflate_n = [int(x) for x in cfg.deflate_n.split(",")] if cfg.deflate_n else cfg.n
    cfg.rooms = cfg.rooms or (100 if quick else 200)
    cfg.room_seconds = cfg.room_seconds or (10.0 if quick else 20.0)
    cfg.idle_n = cfg.idle_n or (1000 if quick else 5000)
    cfg.runs = cfg.runs or (1 if quick else 3)
    cfg.deliveries = cfg.deliveries or (40_000 if quick else 150_000)
    cfg.rtt_count = cfg.rtt_count or (1000 if quick else 2000)
    cfg.rtt_budget_s = 20.0
    cfg.frozen_n = cfg.frozen_n or (50 if quick else 100)
    cfg.frozen_publications = cfg.frozen_publications or (1200 if quick else 2500)
    cfg.frozen_payload = cfg.frozen_payload or (4096 if quick else 2048)
    cfg.max_minutes = cfg.max_minutes or (4.0 if quick else 30.0)
    cfg.latency_s = 2.0 if quick else 4.0
    cfg.closed_loop_s = 20.0 if quick else 40.0
    cfg.settle_s = 1.0
    cfg.stall_s = cfg.stall_s or (3.0 if quick else 5.0)
    cfg.scenarios = [s for s in cfg.scenarios.split(",") if s]
    cfg.servers = [s for s in cfg.servers.split(",") if s]
    if "redis" in cfg.scenarios:  # the fan-out with hubbub-redis beside hubbub
        cfg.scenarios = [s for s in cfg.scenarios if s != "redis"]
        cfg.scenarios += [] if "fanout" in cfg.scenarios else ["fanout"]
        cfg.redis = True
    if cfg.redis:
        cfg.servers += [s for s in (HUBBUB, HUBBUB_REDIS) if s not in cfg.servers]
    for scenario in cfg.scenarios:
        if scenario not in SCENARIOS:
            parser.error(f"unknown scenario {scenario!r}")
    if cfg.room_size < 2 or cfg.rooms < 1 or cfg.room_rate <= 0:
        parser.error("--rooms >= 1, --room-size >= 2 and --room-rate > 0")
    for server in cfg.servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}")
    cfg.argv = ["python", "benchmarks/run.py", *argv]
    return cfg


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards ``needed`` (never above the hard
    limit, which an unprivileged process cannot raise); the servers and the workers this
    script starts inherit it. Returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def client_counts(cfg: argparse.Namespace) -> list[int]:
    """Every number of clients one server will hold in this run."""
    sizes = {
        "fanout": cfg.n,
        "idle": [cfg.idle_n],
        "frozen": [cfg.frozen_n + 1],
        "deflate": cfg.deflate_n,
        "rooms": [cfg.rooms * cfg.room_size],
        "rooms-deflate": [cfg.rooms * cfg.room_size],
        "large": [cfg.large_n],
    }
    return [n for scenario in cfg.scenarios for n in sizes.get(scenario, [])] or [1]


def _config(data: dict[str, Any]) -> argparse.Namespace:
    """The config of an earlier run, with defaults for options it did not have yet."""
    defaults = {
        "rtt_count": 0,
        "frozen_publications": 0,
        "frozen_payload": 0,
        "stall_s": 5.0,
        "frozen_n": 0,
        "room_size": 5,
        "room_rate": 1.0,
        "room_seconds": 0,
    }
    return argparse.Namespace(**{**defaults, **data["config"]})


def rerender(path: Path) -> int:
    """Print (and write beside it) the Markdown and PNG of an earlier run's JSON; run nothing."""
    data = json.loads(path.read_text())
    cfg = _config(data)
    summary = summarize(data["results"])
    report = markdown(data["machine"], cfg, summary)
    path.with_suffix(".md").write_text(report)
    plot(summary, cfg, data["machine"], path.with_suffix(".png"))
    print(report)
    return 0


def make_plan(cfg: argparse.Namespace) -> list[tuple[int, str, int, str]]:
    """(run, scenario, N, server), servers interleaved and their order rotated run to run."""
    plan: list[tuple[int, str, int, str]] = []
    for run in range(cfg.runs):
        for scenario in cfg.scenarios:
            if scenario == "idle" and "fanout" in cfg.scenarios and cfg.idle_n in cfg.n:
                continue  # the fan-out measurement at that N takes the same steps first
            sizes = {
                "fanout": cfg.n,
                "idle": [cfg.idle_n],
                "rtt": [0],
                "frozen": [cfg.frozen_n],
                "deflate": cfg.deflate_n,
                "rooms": [cfg.rooms * cfg.room_size],
                "rooms-deflate": [cfg.rooms * cfg.room_size],
                "large": [cfg.large_n],
            }
            for i, n in enumerate(sizes[scenario]):
                k = (run + i) % len(cfg.servers)
                for server in cfg.servers[k:] + cfg.servers[:k]:
                    if scenario == "large":
                        # The same measurement as a fan-out at that N: one table for both.
                        if not ("fanout" in cfg.scenarios and n in cfg.n):
                            plan.append((run, "fanout", n, server))
                        continue
                    if scenario == "frozen" and cfg.quick and server in HUBBUB_VARIANTS[1:]:
                        continue  # --quick: the codec variants share plain hubbub's policy
                    if scenario == "frozen":
                        # Without and with the frozen client, one after the other.
                        plan.extend((run, f"frozen-{x}", n, server) for x in ("off", "on"))
                    else:
                        plan.append((run, scenario, n, server))
    return plan


def _runner() -> Any:
    """uvloop for the publisher's process too, where installed (it is in the bench extra)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_plan(
    plan: list[tuple[int, str, int, str]],
    cfg: argparse.Namespace,
    tmp: Path,
    start: float,
    run_async: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Every planned measurement, one after the other, within ``--max-minutes``."""
    results: list[dict[str, Any]] = []
    skipped = 0
    for run, scenario, n, server in plan:
        if time.monotonic() - start > cfg.max_minutes * 60:
            skipped += 1
            continue
        t0 = time.monotonic()
        res = run_async(measure(server, n, cfg, tmp, scenario))
        res.update(run=run, scenario=scenario, seconds=time.monotonic() - t0)
        results.append(res)
        ph = {p["phase"]: p for p in res.get("phases", [])}
        line = (
            f"run {run} {scenario:10} n={n:<5} {server:14} conn={res.get('connected')} "
            f"KiB/conn={res.get('kib_per_conn') or 0:.1f}"
        )
        if PHASE_CLOSED in ph:
            p2 = ph[PHASE_CLOSED]
            line += (
                f" µs/deliv={p2['us_per_delivery'] or 0:.2f} "
                f"deliv/s={p2['deliveries_per_s'] or 0:.0f} lost={p2['lost']}"
                + (" STALLED" if p2.get("stalled") else "")
            )
        if scenario in ROOMS_SCENARIOS and PHASE_ROOMS in ph:
            pr = ph[PHASE_ROOMS]
            line += (
                f" pubs={pr['sent']} µs/pub={pr['us_per_publication'] or 0:.1f} "
                f"µs/deliv={pr['us_per_delivery'] or 0:.2f} p99={pr['p99_ms'] or 0:.2f}ms"
            )
        elif PHASE_FIXED in ph:
            p1 = ph[PHASE_FIXED]
            line += f" p99@rate={p1['p99_ms'] or 0:.1f}ms lost1={p1['lost']}"
            line += " STALLED" if p1.get("stalled") else ""
        if PHASE_RTT in ph:
            p3 = ph[PHASE_RTT]
            line += (
                f" rtt p50={p3['p50_ms'] or 0:.3f}ms p99={p3['p99_ms'] or 0:.3f}ms "
                f"µs/rt={p3['us_per_round_trip'] or 0:.0f} lost={p3['lost']}"
            )
        if "frozen_close_code" in res:
            line += f" frozen-close={res['frozen_close_code']}"
        line += f" closes={res.get('closes')} errors={len(res.get('publish_errors', []))}"
        line += f" ({res['seconds']:.0f}s)"
        print(line, flush=True)
        if PHASE_CLOSED in ph and ph[PHASE_CLOSED].get("redis_us_per_delivery") is not None:
            print(f"    redis µs/deliv={ph[PHASE_CLOSED]['redis_us_per_delivery']:.2f}", flush=True)
    return results, skipped


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    if cfg.report:
        return rerender(Path(cfg.report))
    biggest = max(client_counts(cfg))
    # The server holds one descriptor per client (+ the publisher) in one process, plus its
    # own; the servers and the workers inherit this process's limit.
    needed = biggest + 1 + FD_MARGIN
    soft, hard = raise_fd_limit(needed)
    if soft < needed:
        print(
            f"refusing to run: {biggest:,} clients need at least {needed:,} open files in the "
            f"server process, and the limit here is {soft:,} (hard limit {hard:,}, which only "
            f"a privileged process can raise: `ulimit -Hn`, the container's or systemd's "
            f"LimitNOFILE). The largest N this limit allows is {hard - 1 - FD_MARGIN:,}.",
            file=sys.stderr,
        )
        return 2
    note = machine_note(cfg)
    start = time.monotonic()
    plan = make_plan(cfg)
    run_async = _runner()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(plan)} measurements planned; bound {cfg.max_minutes:g} min", flush=True)
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        redis: RedisServer | None = None
        if HUBBUB_REDIS in cfg.servers:
            # One redis-server for the whole run, stopped by its PID in the finally below.
            redis = RedisServer(Path(tmp))
            cfg.redis_server = redis
            note["redis"] = redis.version
            note["redis_argv"] = redis.argv
        postgres: PostgresServer | None = None
        try:
            if HUBBUB_POSTGRES in cfg.servers:
                # One PostgreSQL cluster for the whole run, stopped by its PID below.
                postgres = PostgresServer(Path(tmp))
                cfg.postgres_server = postgres
                note["postgres"] = postgres.version
                note["postgres_argv"] = postgres.argv
                postgres.wait_ready()
            if redis is not None:
                redis.wait_ready()
            results, skipped = run_plan(plan, cfg, Path(tmp), start, run_async)
        finally:
            if redis is not None:
                redis.stop()
                del cfg.redis_server
            if postgres is not None:
                postgres.stop()
                del cfg.postgres_server
    summary = summarize(results)
    report = markdown(note, cfg, summary)
    if skipped:
        report += f"\n{skipped} measurement(s) skipped: --max-minutes {cfg.max_minutes} reached.\n"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = "quick" if cfg.quick else "full"
    base = out / f"{stamp}-{tag}"
    base.with_suffix(".json").write_text(
        json.dumps(
            {"machine": note, "config": vars(cfg), "summary": summary, "results": results},
            indent=1,
            default=str,
        )
    )
    base.with_suffix(".md").write_text(report)
    plot(summary, cfg, note, base.with_suffix(".png"))
    print()
    print(report)
    print(f"written: {base}.json, .md and .png ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
