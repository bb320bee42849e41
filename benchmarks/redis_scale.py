"""Redis Cluster against one Redis (issue 16): publications/s with history, Redis CPU per
publication, the cost of the replication-id read in the publish script, and the hub's
fan-out CPU per delivery through the cluster.

Why a script of its own: ``run.py`` compares servers for fan-out; this compares broker
back ends. The machine has 2 shared cores, so the cluster's six redis-server processes,
the publishers and the hub all compete for them: raw publications/s is bounded by the
publishers here, not by Redis. The figure that carries over to real machines (one core
per primary) is **Redis CPU per publication** (``INFO cpu`` of every redis-server, before
and after), from which the capacity per primary core follows.

Usage (from the repository root; ``PYTHONPATH=src`` to run a worktree's code)::

    python benchmarks/redis_scale.py                     # everything, 3 runs, medians
    python benchmarks/redis_scale.py --parts publish --runs 3 --seconds 6
    python benchmarks/redis_scale.py --parts fanout --n 1000

Parts: ``publish`` (one Redis with the replication-id read, one Redis without it —
the script text patched in this process only — and the cluster: P publisher processes
x C publishes in flight each, over K history channels), ``fanout`` (run.py's fan-out
scenario on ``hubbub-redis`` with the broker URL of one Redis, then of the cluster).
Writes ``results/<date>-redis-scale.{json,md}`` with the command line. Every loop is
bounded in count and time; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from tests.redis_cluster import RedisCluster, redis_cluster  # noqa: E402
from tests.redis_server import RedisServer, redis_server  # noqa: E402

_LINEAGE_READ = "string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '-'"


# -- the publish part ----------------------------------------------------------------------


def _publisher(
    url: str, prefix: str, channels: int, inflight: int, seconds: float, lineage: bool, out: Any
) -> None:
    """One publisher process: ``inflight`` publishes at once for ``seconds``; sends its count."""
    import anyio

    import hubbub.brokers.redis as single
    import hubbub.brokers.redis_cluster as clustered
    from hubbub import BrokerUnavailable
    from hubbub.brokers import broker_from_url
    from hubbub.brokers._base import HistoryOptions, Publication

    if not lineage:  # the script as it was before the replication-id check
        single.PUBLISH = single.PUBLISH.replace(_LINEAGE_READ, "'-'")
        clustered.SPUBLISH = clustered.SPUBLISH.replace(_LINEAGE_READ, "'-'")
        assert "INFO" not in single.PUBLISH and "INFO" not in clustered.SPUBLISH
    keep = HistoryOptions(size=100, ttl=300.0)

    async def main() -> tuple[int, int]:
        sep = "&" if "?" in url else "?"
        broker = broker_from_url(f"{url}{sep}prefix={prefix}&max_connections={inflight}")
        done = errors = 0
        async with anyio.create_task_group() as tg:
            await broker.start(lambda p: None, lambda c: None, tg)
            end = time.monotonic() + seconds

            async def loop(i: int) -> None:
                nonlocal done, errors
                n = i
                while time.monotonic() < end:
                    channel = f"ch{n % channels}"
                    n += inflight
                    try:
                        await broker.publish(Publication(channel, b'"hello"', "json", 0), keep)
                        done += 1
                    except BrokerUnavailable:
                        errors += 1

            async with anyio.create_task_group() as inner:
                for i in range(inflight):
                    inner.start_soon(loop, i)
            await broker.stop()
        return done, errors

    out.send(asyncio.run(main()))
    out.close()


def _cpu(server: RedisServer) -> float:
    info = server.command("INFO", "cpu").decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def _role(server: RedisServer) -> str:
    return "primary" if server.command("ROLE")[0] == b"master" else "replica"


def publish_once(
    setup: str, url: str, servers: list[RedisServer], cfg: argparse.Namespace, publishers: int
) -> dict[str, Any]:
    """One measurement: the publishers against ``url``; Redis CPU from ``INFO cpu``."""
    ctx = mp.get_context("spawn")
    prefix = f"b{secrets.token_hex(3)}:"
    roles = {s.port: _role(s) for s in servers}
    before = {s.port: _cpu(s) for s in servers}
    procs, pipes = [], []
    t0 = time.monotonic()
    inflight = cfg.inflight if publishers else 4
    publishers = publishers or 1
    for _ in range(publishers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_publisher,
            args=(
                url,
                prefix,
                cfg.channels,
                inflight,
                cfg.seconds,
                setup != "redis-no-lineage",
                child,
            ),
            daemon=True,
        )
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)
    results = []
    for proc, pipe in zip(procs, pipes, strict=True):
        if pipe.poll(cfg.seconds + 60):
            results.append(pipe.recv())
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    wall = time.monotonic() - t0
    after = {s.port: _cpu(s) for s in servers}
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    cpu = {port: after[port] - before[port] for port in before}
    primary_cpu = sum(v for p, v in cpu.items() if roles[p] == "primary")
    replica_cpu = sum(v for p, v in cpu.items() if roles[p] == "replica")
    # The publishers ran cfg.seconds each; the wall time includes their start-up.
    rate = done / cfg.seconds
    busiest = max(v for p, v in cpu.items() if roles[p] == "primary")
    return {
        "setup": setup,
        "publications": done,
        "errors": errors,
        "wall_s": round(wall, 2),
        "pub_per_s": round(rate),
        "primary_cpu_s": round(primary_cpu, 3),
        "replica_cpu_s": round(replica_cpu, 3),
        "primary_us_per_pub": round(primary_cpu / done * 1e6, 2) if done else None,
        "busiest_primary_cores": round(busiest / cfg.seconds, 2),
        "primaries": sum(1 for r in roles.values() if r == "primary"),
        "publishers": publishers,
        "inflight": inflight,
        "per_primary_pub_per_s": round(rate / sum(1 for r in roles.values() if r == "primary")),
    }


def publish_part(cfg: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in ("one", "primary", "replica"):
        (tmp / name).mkdir()
    with (
        redis_server(tmp / "one") as one,
        redis_server(tmp / "primary") as primary,
        redis_server(tmp / "replica") as replica,
        redis_cluster(tmp / "cluster") as cluster,
    ):
        # One Redis with a replica, like each cluster primary: what replication costs.
        replica.command("REPLICAOF", "127.0.0.1", primary.port)
        for _ in range(100):  # bounded: 10 s
            if primary.command("INFO", "replication").count(b"state=online"):
                break
            time.sleep(0.1)
        setups: list[tuple[str, str, list[RedisServer], int]] = [
            ("redis", one.url, [one], cfg.publishers),
            ("redis-no-lineage", one.url, [one], cfg.publishers),
            ("redis-replicated", primary.url, [primary, replica], cfg.publishers),
            # A lower load (one publisher, 4 in flight), nearer what each cluster
            # primary gets: per-command costs are shared by fewer commands per wake-up.
            ("redis-replicated-low", primary.url, [primary, replica], 0),
            ("cluster", cluster.url, cluster.nodes, cfg.publishers),
        ]
        for run in range(cfg.runs):  # interleaved: every setup once per run
            for setup, url, servers, publishers in setups:
                row = publish_once(setup, url, servers, cfg, publishers)
                row["run"] = run
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


# -- the fan-out part ----------------------------------------------------------------------


class _Backend:
    """What run.py's ``Server`` reads of a broker back end: its URL and a PID for its CPU."""

    def __init__(self, url: str, pids: list[int]) -> None:
        self.url = url
        self.pid = pids[0]
        self.pids = pids


def fanout_part(cfg: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    import run

    args = ["--scenarios", "fanout", "--n", str(cfg.n), "--runs", "1"]
    rcfg = run.parse_args(args)
    rows: list[dict[str, Any]] = []
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    (tmp / "fan-one").mkdir()
    with redis_server(tmp / "fan-one") as one, redis_cluster(tmp / "fan-cluster") as cluster:
        backends = {
            "redis": _Backend(one.url, [one.process.pid]),
            "cluster": _Backend(cluster.url, [n.process.pid for n in _primaries(cluster)]),
        }
        for r in range(cfg.runs):
            for setup, backend in backends.items():
                rcfg.redis_server = backend
                result = asyncio.run(run.measure(run.HUBBUB_REDIS, cfg.n, rcfg, log_dir, "fanout"))
                closed = [p for p in result.get("phases", []) if p.get("phase") == run.PHASE_CLOSED]
                ph = closed[0] if closed else {}
                row = {
                    "setup": setup,
                    "run": r,
                    "n": cfg.n,
                    "deliveries": ph.get("deliveries"),
                    "server_us_per_delivery": ph.get("us_per_delivery"),
                    "lost": ph.get("lost"),
                    "publish_errors": result.get("publish_errors"),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def _primaries(cluster: RedisCluster) -> list[RedisServer]:
    return cluster.primaries()


# -- report --------------------------------------------------------------------------------


def median(rows: list[dict[str, Any]], setup: str, field: str) -> float | None:
    values = [r[field] for r in rows if r["setup"] == setup and r.get(field) is not None]
    return statistics.median(values) if values else None


def markdown(
    cfg: argparse.Namespace,
    note: dict[str, Any],
    publish: list[dict[str, Any]],
    fanout: list[dict[str, Any]],
) -> str:
    lines = [
        "# Redis Cluster against one Redis",
        "",
        f"Command: `{note['command']}`",
        "",
        f"Machine: {note['machine']}. **2 cores shared with other work** (other helpers ran "
        "tests meanwhile): the six cluster processes, the publishers and the hub compete for "
        "them, so publications/s is bounded by the publishers here. Medians of "
        f"{cfg.runs} interleaved runs.",
        "",
    ]
    if publish:
        lines += [
            "## Publish into history channels",
            "",
            f"{cfg.publishers} publisher processes x {cfg.inflight} publishes in flight, "
            f"{cfg.channels} channels, history 100, {cfg.seconds} s each. Redis CPU from "
            "`INFO cpu` (used_cpu_sys + used_cpu_user) of every redis-server before/after. "
            "Capacity per primary core = 1 s / primary µs per publication; the cluster's "
            "= that x 3 primaries (its slots spread the channels evenly). "
            "redis-replicated: a lone Redis with one replica, as each cluster primary has; "
            "-low: the same with 1 publisher x 4 in flight (a lower load per primary).",
            "",
            "| setup | publications/s (here) | per primary | primary µs/publication "
            "| replica CPU s | busiest primary (cores) | capacity (publications/s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        setups = ("redis", "redis-no-lineage", "redis-replicated", "redis-replicated-low")
        for setup in (*setups, "cluster"):
            rate = median(publish, setup, "pub_per_s")
            us = median(publish, setup, "primary_us_per_pub")
            primaries = 3 if setup == "cluster" else 1
            capacity = primaries * 1e6 / us if us else None
            lines.append(
                f"| {setup} | {rate:,.0f} | {median(publish, setup, 'per_primary_pub_per_s'):,.0f}"
                f" | {us:.1f} | "
                f"{median(publish, setup, 'replica_cpu_s'):.2f} | "
                f"{median(publish, setup, 'busiest_primary_cores'):.2f} | "
                f"{capacity:,.0f} |"
            )
        lines.append("")
    if fanout:
        lines += [
            "## Fan-out through the broker (hub CPU per delivery)",
            "",
            f"run.py's fan-out scenario (closed loop) on `hubbub-redis`, N = {cfg.n}, the hub's "
            "broker URL one Redis or the cluster.",
            "",
            "| setup | hub µs/delivery (median) | runs |",
            "| --- | ---: | --- |",
        ]
        for setup in ("redis", "cluster"):
            values = [r["server_us_per_delivery"] for r in fanout if r["setup"] == setup]
            shown = ", ".join(f"{v:.2f}" for v in values if v is not None)
            lines.append(
                f"| {setup} | {median(fanout, setup, 'server_us_per_delivery'):.2f} | {shown} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="publish,fanout")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--n", type=int, default=1000, help="fan-out subscribers")
    cfg = parser.parse_args(argv)
    parts = set(cfg.parts.split(","))
    note = {
        "command": " ".join(["python", "benchmarks/redis_scale.py", *argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with tempfile.TemporaryDirectory(prefix="hubbub-redis-scale-") as tmp:
        publish = publish_part(cfg, Path(tmp)) if "publish" in parts else []
        fanout = fanout_part(cfg, Path(tmp)) if "fanout" in parts else []
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = HERE / "results" / f"{stamp}-redis-scale"
    out.with_suffix(".json").write_text(
        json.dumps(
            {"note": note, "config": vars(cfg), "publish": publish, "fanout": fanout}, indent=2
        )
    )
    text = markdown(cfg, note, publish, fanout)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main(sys.argv[1:])
