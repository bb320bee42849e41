"""hubbub's benchmark: fan-out and idle memory against the tutorial Starlette hub, in one run.

Why: QUALITY.md holds hubbub to "no more server CPU per delivery than the
tutorial hub on the same uvicorn" and "<= 30 KiB per idle subscribed client".
The machine is 2 shared cores, so wall-clock throughput is noise; what this
script compares is **server CPU per delivery** (utime + stime of the server
process and its descendants, from /proc/<pid>/stat) and ratios between servers
measured **interleaved in the same run**, each on a **fresh server process**.

Usage::

    .venv/bin/python benchmarks/run.py --quick
    .venv/bin/python benchmarks/run.py --n 1000,5000 --runs 3

Per measurement: start the server as its own subprocess on a free 127.0.0.1
port; connect the publisher (warm-up); read the server's RSS; connect N
subscribers from worker processes; read RSS again (idle KiB per connection);
then, for ``fanout``, phase 1 publishes at a fixed rate (latency) and phase 2
publishes closed-loop with a window of in-flight publications (CPU per
delivery, deliveries/s). Then stop everything this script started, by PID.
Installs nothing; every loop is bounded in count and in time.
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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")
BASELINE = "tutorial"
SERVERS = ("hubbub", "hubbub-batch", "tutorial")

# -- /proc readings -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it has gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


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

    def __init__(self, name: str, ws: str, log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}-{self.port}.log"
        py = sys.executable
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--ws", ws]
        if name.startswith("hubbub"):
            # The demo hub with the command rate limit lifted (see hubbub_app.py).
            argv = [py, "-m", "hubbub", "serve", "hubbub_app:hub", *common]
            argv += ["--log-level", "warning"]
        else:
            argv = [
                py,
                "-m",
                "uvicorn",
                "tutorial_hub:app",
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
                self.pids = [self.proc.pid, *descendants(self.proc.pid)]
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen within {timeout} s:\n{self.log_tail()}")

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

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


# -- one measurement ------------------------------------------------------------------------


class Snapshot:
    """CPU of the server, of the load generator, and of the whole host, at one instant."""

    def __init__(self, server: Server, client_pids: list[int]) -> None:
        self.wall = time.perf_counter()
        self.server = server.cpu()
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
) -> dict[str, Any]:
    """Publish ``count`` times (at ``rate``/s, or closed-loop with ``window`` in flight)."""
    base = sum(progress)
    before = Snapshot(server, client_pids)
    t0 = before.wall
    end = t0 + budget_s
    sent = 0
    while sent < count and time.perf_counter() < end and not pub.closed:
        if rate:
            delay = t0 + sent / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        if window:
            for _ in range(int(budget_s / 0.0005) + 1):
                if sent - (sum(progress) - base) // n_subs < window or time.perf_counter() > end:
                    break
                await asyncio.sleep(0.0005)
        await pub.send(phase, sent)
        sent += 1
    grace_end = time.perf_counter() + 10.0
    while time.perf_counter() < grace_end:
        if sum(progress) - base >= sent * n_subs and pub.tally.counts[phase] >= sent:
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
        "server_cpu_s": after.server - before.server,
        "client_cpu_s": after.clients - before.clients,
        "host_busy_cores": host_busy / wall if wall > 0 else None,
        "progress_deliveries": sum(progress) - base,
    }


async def measure(
    name: str, n: int, cfg: argparse.Namespace, log_dir: Path, with_phases: bool
) -> dict[str, Any]:
    """Fresh server, publisher, N subscribers; RSS; then the phases if ``with_phases``."""
    server = Server(name, cfg.ws, log_dir)
    ctx = mp.get_context("spawn")
    workers: list[Any] = []
    pipes: list[Any] = []
    result: dict[str, Any] = {"server": name, "n": n, "argv": server.argv}
    pub: loadgen.Publisher | None = None
    try:
        server.wait_ready()
        result["uvloop"] = uses_uvloop(server.proc.pid)
        loop = asyncio.get_running_loop()
        # The publisher connects first and publishes a few warm-up messages, so
        # the baseline RSS already includes everything a first connection loads.
        pub = loadgen.Publisher(name, server.base_url)
        await pub.open()
        for seq in range(3):
            await pub.send(0, seq)
        for _ in range(200):
            if pub.tally.counts[0] >= 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        rss0 = server.rss()
        cpu0 = server.cpu()
        share = [n // cfg.workers + (1 if i < n % cfg.workers else 0) for i in range(cfg.workers)]
        share = [s for s in share if s]
        progress = ctx.RawArray("q", len(share))
        phase_budget = (cfg.latency_s * 3 + cfg.closed_loop_s + 40) if with_phases else 0
        connect_budget = 30 + n / 50
        for slot, count in enumerate(share):
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
        cpu1 = server.cpu()
        await asyncio.sleep(cfg.settle_s)
        rss1 = server.rss()
        result["rss_base_kib"] = rss0
        result["rss_idle_kib"] = rss1
        result["kib_per_conn"] = (rss1 - rss0) / connected if connected else None
        result["setup_us_per_conn"] = (cpu1 - cpu0) / connected * 1e6 if connected else None
        client_pids = [r["pid"] for r in ready if r.get("pid")] + [os.getpid()]
        phases: list[dict[str, Any]] = []
        if with_phases and connected:
            rate = min(cfg.rate, cfg.max_latency_deliveries / connected)
            lat_count = max(10, round(rate * cfg.latency_s))
            phases.append(
                await run_phase(
                    pub,
                    server,
                    client_pids,
                    progress,
                    connected,
                    phase=1,
                    count=lat_count,
                    rate=rate,
                    window=None,
                    budget_s=lat_count / rate * 2 + 10,
                )
            )
            cl_count = max(20, min(5000, cfg.deliveries // connected))
            phases.append(
                await run_phase(
                    pub,
                    server,
                    client_pids,
                    progress,
                    connected,
                    phase=2,
                    count=cl_count,
                    rate=None,
                    window=cfg.window,
                    budget_s=cfg.closed_loop_s,
                )
            )
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
            echoes = pub.tally.counts[p]
            deliveries = received + echoes
            expected = ph["sent"] * (connected + 1)
            lats: list[int] = list(pub.tally.latencies[p])
            for rep in reports:
                lats.extend(loadgen.unpack_latencies(rep["latencies"])[p])
            lats.sort()
            ph["deliveries"] = deliveries
            ph["lost"] = expected - deliveries
            ph["us_per_delivery"] = ph["server_cpu_s"] / deliveries * 1e6 if deliveries else None
            ph["client_us_per_delivery"] = (
                ph["client_cpu_s"] / deliveries * 1e6 if deliveries else None
            )
            ph["deliveries_per_s"] = deliveries / ph["wall_s"] if ph["wall_s"] else None
            ph["server_util"] = ph["server_cpu_s"] / ph["wall_s"] if ph["wall_s"] else None
            ph["latency_samples"] = len(lats)
            ph["p50_ms"] = percentile(lats, 0.50) / 1e6
            ph["p99_ms"] = percentile(lats, 0.99) / 1e6
            ph["max_ms"] = (lats[-1] / 1e6) if lats else None
        result["phases"] = phases
        result["rss_end_kib"] = server.rss()
    finally:
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
        "note": "2 cores shared with other work: absolute figures are noisy; compare "
        "same-run ratios and CPU per delivery.",
    }


def _spread(values: list[float]) -> dict[str, float | int | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spread per (scenario, N, server), and same-run ratios to the baseline."""
    summary: dict[str, Any] = {}
    by_key: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for res in results:
        by_key.setdefault((res["scenario"], res["n"], res["server"]), []).append(res)
    for (scenario, n, server), group in sorted(by_key.items()):
        row: dict[str, Any] = {
            "kib_per_conn": _spread([g.get("kib_per_conn") for g in group]),
            "setup_us_per_conn": _spread([g.get("setup_us_per_conn") for g in group]),
            "closes": sum(g.get("closes", 0) for g in group),
            "connect_failures": sum(sum(g.get("connect_failures", {}).values()) for g in group),
        }
        for phase in (1, 2):
            phs = [p for g in group for p in g.get("phases", []) if p["phase"] == phase]
            if not phs:
                continue
            row[f"phase{phase}"] = {
                key: _spread([p.get(key) for p in phs])
                for key in (
                    "us_per_delivery",
                    "client_us_per_delivery",
                    "deliveries_per_s",
                    "server_util",
                    "host_busy_cores",
                    "p50_ms",
                    "p99_ms",
                    "rate",
                )
            }
            row[f"phase{phase}"]["lost"] = sum(p["lost"] for p in phs)
            row[f"phase{phase}"]["deliveries"] = sum(p["deliveries"] for p in phs)
        # Ratio to the baseline measured in the same run at the same N, per phase.
        for phase, key in ((2, "cpu_ratio_to_tutorial"), (1, "phase1_cpu_ratio_to_tutorial")):
            ratios = []
            for g in group:
                base = next(
                    (
                        r
                        for r in results
                        if r["scenario"] == scenario
                        and r["n"] == n
                        and r["server"] == BASELINE
                        and r["run"] == g["run"]
                    ),
                    None,
                )
                if base is None:
                    continue
                mine = next((p for p in g.get("phases", []) if p["phase"] == phase), None)
                theirs = next((p for p in base.get("phases", []) if p["phase"] == phase), None)
                if mine and theirs and mine["us_per_delivery"] and theirs["us_per_delivery"]:
                    ratios.append(mine["us_per_delivery"] / theirs["us_per_delivery"])
            row[key] = _spread(ratios)
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


def markdown(note: dict[str, Any], cfg: argparse.Namespace, summary: dict[str, Any]) -> str:
    v = note["versions"]
    lines = [
        f"# hubbub benchmark — {note['date']}",
        "",
        f"Machine: {note['cpus']} CPUs ({note['cpus_usable']} usable), shared with other work "
        f"(load average at start {note['loadavg_at_start'][0]:.2f}); Python {note['python']}; "
        f"{note['platform']}.",
        f"Versions: hubbub {v['hubbub']}, uvicorn {v['uvicorn']} (`--ws {note['uvicorn_ws']}`, "
        f"uvloop {v['uvloop']}, httptools {v['httptools']}), websockets {v['websockets']}, "
        f"starlette {v['starlette']}, msgspec {v['msgspec']}; git {note['git_commit']}.",
        f"Command: `{' '.join(cfg.argv)}` — runs={cfg.runs}, workers={cfg.workers}, "
        f"window={cfg.window}, latency rate ≤ {cfg.rate}/s (≤ {cfg.max_latency_deliveries} "
        f"deliveries/s), closed-loop target {cfg.deliveries} deliveries.",
        "Cells: median (min-max) over runs; ratios are per run (same N, same run), then median.",
        "",
    ]
    fan = summary.get("fanout", {})
    if fan:
        lines += [
            "## Fan-out, closed loop (server CPU per delivery)",
            "",
            "| N | server | µs CPU / delivery | ratio to tutorial | deliveries/s | server util "
            "| client µs / delivery | p50 / p99 ms (loaded) | lost | closes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in sorted(fan, key=int):
            for server, row in fan[n].items():
                ph = row.get("phase2")
                if not ph:
                    continue
                lines.append(
                    f"| {int(n):,} | {server} | {_fmt(ph['us_per_delivery'], 2)} "
                    f"| {_fmt(row['cpu_ratio_to_tutorial'], 2)} "
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
            "| ratio to tutorial | server util | lost |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for n in sorted(fan, key=int):
            for server, row in fan[n].items():
                ph = row.get("phase1")
                if not ph:
                    continue
                lines.append(
                    f"| {int(n):,} | {server} | {_fmt(ph['rate'], 1)} | {_fmt(ph['p50_ms'], 2)} "
                    f"| {_fmt(ph['p99_ms'], 2)} | {_fmt(ph['us_per_delivery'], 1)} "
                    f"| {_fmt(row['phase1_cpu_ratio_to_tutorial'], 2)} "
                    f"| {_fmt(ph['server_util'], 2)} | {ph['lost']} |"
                )
    sections = [("fanout", "Memory of the fan-out servers (N subscribed, before publishing)")]
    sections.append(("idle", "Idle memory (fresh server, N connected + subscribed clients)"))
    for scenario, title in sections:
        rows = summary.get(scenario, {})
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
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
    lines.append("")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, about 2 minutes")
    parser.add_argument("--scenarios", default="fanout,idle", help="fanout,idle")
    parser.add_argument("--n", default=None, help="fan-out subscriber counts (100,1000,5000)")
    parser.add_argument("--idle-n", type=int, default=None, help="clients for the idle scenario")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs (default 3)")
    parser.add_argument(
        "--servers", default="hubbub,tutorial", help=f"comma-separated, from {', '.join(SERVERS)}"
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
    parser.add_argument("--max-minutes", type=float, default=None, help="overall time bound")
    parser.add_argument("--out", default=str(HERE / "results"), help="where results go")
    parser.add_argument(
        "--report", default=None, help="re-render the Markdown of a results JSON; run nothing"
    )
    cfg = parser.parse_args(argv)
    quick = cfg.quick
    cfg.n = [int(x) for x in (cfg.n or ("100,1000" if quick else "100,1000,5000")).split(",")]
    cfg.idle_n = cfg.idle_n or (2000 if quick else 5000)
    cfg.runs = cfg.runs or (2 if quick else 3)
    cfg.deliveries = cfg.deliveries or (40_000 if quick else 150_000)
    cfg.max_minutes = cfg.max_minutes or (4.0 if quick else 30.0)
    cfg.latency_s = 2.0 if quick else 4.0
    cfg.closed_loop_s = 20.0 if quick else 40.0
    cfg.settle_s = 1.0
    cfg.scenarios = [s for s in cfg.scenarios.split(",") if s]
    cfg.servers = [s for s in cfg.servers.split(",") if s]
    for scenario in cfg.scenarios:
        if scenario not in ("fanout", "idle"):
            parser.error(f"unknown scenario {scenario!r}")
    for server in cfg.servers:
        if server not in SERVERS:
            parser.error(f"unknown server {server!r}")
    cfg.argv = ["python", "benchmarks/run.py", *argv]
    return cfg


def raise_fd_limit(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rerender(path: Path) -> int:
    """Print (and write beside it) the Markdown of an earlier run's JSON, without running."""
    data = json.loads(path.read_text())
    cfg = argparse.Namespace(**data["config"])
    report = markdown(data["machine"], cfg, summarize(data["results"]))
    path.with_suffix(".md").write_text(report)
    print(report)
    return 0


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    if cfg.report:
        return rerender(Path(cfg.report))
    biggest = max([*cfg.n, cfg.idle_n])
    # Servers and workers inherit the limit: each needs one descriptor per client.
    soft, _ = raise_fd_limit(biggest + 1024)
    if soft < biggest + 256:
        print(f"warning: open-file limit {soft} is too low for {biggest} clients", file=sys.stderr)
    note = machine_note(cfg)
    start = time.monotonic()
    plan: list[tuple[int, str, int, str]] = []
    for run in range(cfg.runs):
        for scenario in cfg.scenarios:
            sizes = cfg.n if scenario == "fanout" else [cfg.idle_n]
            for i, n in enumerate(sizes):
                # Interleave, and alternate which server goes first.
                k = (run + i) % len(cfg.servers)
                plan.extend((run, scenario, n, s) for s in cfg.servers[k:] + cfg.servers[:k])
    results: list[dict[str, Any]] = []
    skipped = 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        for run, scenario, n, server in plan:
            if time.monotonic() - start > cfg.max_minutes * 60:
                skipped += 1
                continue
            t0 = time.monotonic()
            res = asyncio.run(measure(server, n, cfg, Path(tmp), scenario == "fanout"))
            res.update(run=run, scenario=scenario, seconds=time.monotonic() - t0)
            results.append(res)
            ph = {p["phase"]: p for p in res.get("phases", [])}
            line = (
                f"run {run} {scenario:6} n={n:<5} {server:12} conn={res.get('connected')} "
                f"KiB/conn={res.get('kib_per_conn') or 0:.1f}"
            )
            if 2 in ph:
                line += (
                    f" µs/deliv={ph[2]['us_per_delivery'] or 0:.2f} "
                    f"deliv/s={ph[2]['deliveries_per_s'] or 0:.0f} lost={ph[2]['lost']}"
                )
            if 1 in ph:
                line += f" p99@rate={ph[1]['p99_ms']:.1f}ms lost1={ph[1]['lost']}"
            line += f" closes={res.get('closes')} errors={len(res.get('publish_errors', []))}"
            line += f" ({res['seconds']:.0f}s)"
            print(line, flush=True)
    summary = summarize(results)
    report = markdown(note, cfg, summary)
    if skipped:
        report += f"\n{skipped} measurement(s) skipped: --max-minutes {cfg.max_minutes} reached.\n"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = "quick" if cfg.quick else "full"
    (out / f"{stamp}-{tag}.json").write_text(
        json.dumps(
            {
                "machine": note,
                "config": vars(cfg),
                "summary": summary,
                "results": results,
            },
            indent=1,
            default=str,
        )
    )
    (out / f"{stamp}-{tag}.md").write_text(report)
    print()
    print(report)
    print(f"written: {out / f'{stamp}-{tag}.json'} and .md ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
