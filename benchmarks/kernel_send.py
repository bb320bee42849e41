"""The kernel's own cost of one small loopback ``send()`` at N sockets: the floor under any server.

Why: a closed-loop fan-out's server CPU per delivery is mostly system time (the
``send()`` per socket, and on loopback the receiving side's TCP processing and
wake-up, which run in the sender's system call). Issue 15 asks that CPU per
delivery at N = 20,000 stay within 20% of N = 1,000. This script measures what
the kernel alone charges a sender for that, with no server, no framing and no
event loop: one process holds N client sockets and sends 100 bytes to each in
turn (``TCP_NODELAY``, as asyncio and uvloop set it); a second process holds
the N accepted sockets and reads them through epoll, either sleeping in
``epoll_wait`` between events (``sleep``: what a real client does, so sends
wake it) or polling without sleeping (``busy``). The figure is the sender's
system (and user) time per ``send()``, from ``getrusage`` around each pass.

Usage (loopback only; bounded in rounds and time; stops by itself)::

    python benchmarks/kernel_send.py                       # N = 1,000 and 19,500, both modes
    python benchmarks/kernel_send.py --n 1000,5000,19500 --modes sleep

Results go to ``benchmarks/results/<timestamp>-kernel-send.json`` and ``.md``.
Descriptors: each process holds N sockets; N above the hard ``RLIMIT_NOFILE``
minus 100 is refused with the largest N allowed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import select
import socket
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAYLOAD = b"x" * 100
SENDS_PER_MEASUREMENT = 400_000  # rounds = this // N (at least 10)


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if n + 100 > hard:
        raise SystemExit(
            f"N = {n} needs {n + 100} descriptors; the hard limit allows N <= {hard - 100}"
        )
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, hard))


def _receiver(ports: Any, n: int, mode: str, stop: Any) -> None:
    _raise_nofile(n)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    ports.put(listener.getsockname()[1])
    poller = select.epoll()
    accepted: dict[int, socket.socket] = {}
    while len(accepted) < n:
        conn, _ = listener.accept()
        conn.setblocking(False)
        accepted[conn.fileno()] = conn
        poller.register(conn.fileno(), select.EPOLLIN)
    ports.put("ready")
    timeout = 0 if mode == "busy" else 0.5
    while not stop.is_set():
        for fd, _ in poller.poll(timeout, 4096):
            try:
                accepted[fd].recv(65536)
            except BlockingIOError:
                pass


def measure(n: int, mode: str, deadline: float) -> dict[str, Any]:
    """Sender CPU per ``send()`` at ``n`` sockets with the receiver in ``mode``."""
    _raise_nofile(n)
    ctx = mp.get_context("spawn")
    ports = ctx.Queue(2)  # the receiver's port, then "ready"
    stop = ctx.Event()
    reader = ctx.Process(target=_receiver, args=(ports, n, mode, stop), daemon=True)
    reader.start()
    socks: list[socket.socket] = []
    try:
        port = ports.get(timeout=30)
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(sock)
        if ports.get(timeout=60) != "ready":
            raise RuntimeError("the receiver did not accept every connection")
        for sock in socks:  # warm-up pass
            sock.send(PAYLOAD)
        time.sleep(0.5)
        rounds = max(10, SENDS_PER_MEASUREMENT // n)
        system = user = 0.0
        sends = 0
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            before = resource.getrusage(resource.RUSAGE_SELF)
            for sock in socks:
                sock.send(PAYLOAD)
            after = resource.getrusage(resource.RUSAGE_SELF)
            system += after.ru_stime - before.ru_stime
            user += after.ru_utime - before.ru_utime
            sends += n
            time.sleep(0.02)  # the receiver drains; the next pass starts from empty buffers
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        reader.join(10)
        if reader.is_alive():
            reader.kill()
            reader.join(5)
    return {
        "n": n,
        "mode": mode,
        "sends": sends,
        "system_us_per_send": system / sends * 1e6 if sends else None,
        "user_us_per_send": user / sends * 1e6 if sends else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="1000,19500", help="socket counts, comma-separated")
    parser.add_argument("--modes", default="sleep,busy", help="receiver modes: sleep, busy")
    parser.add_argument("--runs", type=int, default=3, help="measurements per N and mode")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="overall time bound")
    parser.add_argument("--out", default=str(HERE / "results"), help="where results go")
    cfg = parser.parse_args(argv)
    ns = [int(x) for x in cfg.n.split(",")]
    modes = cfg.modes.split(",")
    deadline = time.monotonic() + cfg.max_minutes * 60
    rows: list[dict[str, Any]] = []
    for run in range(cfg.runs):
        for mode in modes:
            for n in ns if run % 2 == 0 else reversed(ns):  # alternate the order
                if time.monotonic() > deadline:
                    break
                row = measure(n, mode, deadline)
                row["run"] = run
                rows.append(row)
                print(
                    f"run {run} n={n} mode={mode} system µs/send={row['system_us_per_send']:.2f}"
                    f" user µs/send={row['user_us_per_send']:.2f} sends={row['sends']}",
                    flush=True,
                )
    lines = [
        "# Kernel cost of one 100-byte loopback send() at N sockets",
        "",
        f"`python benchmarks/kernel_send.py --n {cfg.n} --modes {cfg.modes} --runs {cfg.runs}`"
        f" on {platform.node()} ({platform.machine()}, kernel {platform.release()}),"
        f" {datetime.now().isoformat(timespec='seconds')}. Median (min-max) over runs.",
        "",
        "| receiver | N | system µs / send | user µs / send | system ÷ smallest N |",
        "| --- | --- | --- | --- | --- |",
    ]
    summary: dict[str, dict[int, float]] = {}
    for mode in modes:
        base: float | None = None
        for n in ns:
            got = [r for r in rows if r["mode"] == mode and r["n"] == n and r["sends"]]
            if not got:
                continue
            system = [r["system_us_per_send"] for r in got]
            user = [r["user_us_per_send"] for r in got]
            median = statistics.median(system)
            summary.setdefault(mode, {})[n] = median
            base = median if base is None else base
            lines.append(
                f"| {mode} | {n:,} | {median:.2f} ({min(system):.2f}-{max(system):.2f}) |"
                f" {statistics.median(user):.2f} | {median / base:.2f} |"
            )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stamp}-kernel-send.json").write_text(
        json.dumps({"argv": sys.argv[1:], "rows": rows, "summary": summary}, indent=2)
    )
    (out / f"{stamp}-kernel-send.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {out / stamp}-kernel-send.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
