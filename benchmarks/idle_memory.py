"""Memory per idle subscribed connection under ``hubbub serve``, part by part (tracemalloc).

Why: RSS per connection (run.py's ``idle`` scenario) says how much, not whose.
This script starts ``hubbub serve hubbub_app:hub`` in a child process that,
with ``--tracemalloc``, traces Python allocations and writes a snapshot on
SIGUSR1; it connects 20 warm-up clients, takes a snapshot and the RSS,
connects ``--n`` idle subscribed clients, takes them again, and prints per
connection: the RSS, the asyncio tasks, and (``--tracemalloc``) the bytes
allocated by file and by line, largest first. RSS is only meaningful without
``--tracemalloc`` (tracing costs memory itself).

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python benchmarks/idle_memory.py --n 2000
    PYTHONPATH=src .venv/bin/python benchmarks/idle_memory.py --n 1000 --tracemalloc
    PYTHONPATH=src .venv/bin/python benchmarks/idle_memory.py --n 500 --tracemalloc --depth 12

Only the process this script started is signalled, by its own PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _serve(snapshots: str, trace: int) -> int:
    """The child: hubbub serve, with a SIGUSR1 handler writing a snapshot and the task count."""
    import gc
    import tracemalloc

    if trace:
        tracemalloc.start(trace)
    taken = [0]

    def snapshot(*_: object) -> None:
        gc.collect()
        if trace:
            tracemalloc.take_snapshot().dump(f"{snapshots}/{taken[0]}.snapshot")
        tasks = len(asyncio.all_tasks())
        Path(f"{snapshots}/{taken[0]}.tasks").write_text(str(tasks))
        taken[0] += 1

    signal.signal(signal.SIGUSR1, snapshot)
    from hubbub.cli import main

    return main(sys.argv[sys.argv.index("--") + 1 :])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _wait_for(path: Path) -> None:
    for _ in range(300):
        if path.exists():
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no {path.name} from the server")


async def measure(cfg: argparse.Namespace, snapshots: Path) -> None:
    sys.path.insert(0, str(HERE))
    from callgrind_rtt import connect, free_port

    port = free_port()
    argv = [sys.executable, __file__, "--child", str(snapshots)]
    argv += ["--trace", str(cfg.depth)] if cfg.tracemalloc else []
    argv += ["--", "serve", "hubbub_app:hub", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--ws", "websockets-sansio", "--log-level", "warning"]
    proc = subprocess.Popen(argv, cwd=HERE)
    members = []
    try:
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            await asyncio.sleep(0.1)
        base = f"ws://127.0.0.1:{port}"
        members += [await connect(base, "hubbub", "bench") for _ in range(20)]
        await asyncio.sleep(1)
        before = rss_kib(proc.pid)
        proc.send_signal(signal.SIGUSR1)
        await _wait_for(snapshots / "0.tasks")
        for start in range(0, cfg.n, 50):
            count = min(50, cfg.n - start)
            members += await asyncio.gather(
                *[connect(base, "hubbub", "bench") for _ in range(count)]
            )
        await asyncio.sleep(1.5)
        after = rss_kib(proc.pid)
        proc.send_signal(signal.SIGUSR1)
        await _wait_for(snapshots / "1.tasks")
    finally:
        for member in members:
            member.task.cancel()
        await asyncio.gather(*[m.ws.close() for m in members], return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    n = cfg.n
    tasks = int((snapshots / "1.tasks").read_text()) - int((snapshots / "0.tasks").read_text())
    print(f"N = {n}: RSS {(after - before) / n:.2f} KiB per connection, {tasks / n:.2f} tasks")
    if not cfg.tracemalloc:
        return
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(snapshots / "0.snapshot"))
    new = tracemalloc.Snapshot.load(str(snapshots / "1.snapshot"))
    by_file = new.compare_to(old, "filename")
    print(f"Python allocations: {sum(s.size_diff for s in by_file) / n:.0f} bytes per connection")
    for key in ("filename", "lineno"):
        print(f"-- by {key}")
        for stat in new.compare_to(old, key)[: cfg.top]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1]
            where += f":{frame.lineno}" if key == "lineno" else ""
            print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blocks  {where}")
    if cfg.depth > 1:
        print("-- by traceback (innermost frame last)")
        for stat in new.compare_to(old, "traceback")[: cfg.top]:
            print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blocks")
            for frame in stat.traceback:
                print(f"           {frame.filename.split('site-packages/')[-1]}:{frame.lineno}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        head = argv[: argv.index("--")]
        return _serve(argv[1], int(head[head.index("--trace") + 1]) if "--trace" in head else 0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="idle subscribed clients")
    parser.add_argument("--tracemalloc", action="store_true", help="Python allocations by site")
    parser.add_argument("--top", type=int, default=25, help="sites listed")
    parser.add_argument(
        "--depth", type=int, default=1, help="frames kept per allocation; > 1 lists tracebacks"
    )
    cfg = parser.parse_args(argv)
    if cfg.n < 1:
        parser.error("--n must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(measure(cfg, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
