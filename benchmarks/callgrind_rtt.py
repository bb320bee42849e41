"""Server instructions per publication, counted by callgrind: load-independent round-trip figures.

Why: on this shared 2-core machine CPU time read from ``/proc`` moves by 10-20%
between runs (other tenants, 10 ms ticks), too much to tell what a 5% cut on
the per-publication path bought. Instructions executed by the server process
do not depend on the load. This script starts one server under
``valgrind --tool=callgrind`` with collection off, connects ``--members``
clients to one room (the last one publishes), runs a few warm-up round trips,
switches collection on (``callgrind_control -i on``), runs ``--count`` round
trips — publish, then wait until the publisher has its ``ack`` (hubbub) and
its own message, and every other member its copy — switches collection off
and reads the total from the output file. ``--members 1`` is the ``rtt``
scenario's round trip; ``--members 5`` one publication of a chat room of five.

Usage (from the repository root; ``valgrind`` on the PATH)::

    PYTHONPATH=src .venv/bin/python benchmarks/callgrind_rtt.py --server hubbub --count 300
    .venv/bin/python benchmarks/callgrind_rtt.py --server tutorial --count 300 --members 5
    # browser-like members (permessage-deflate offered and used)
    PYTHONPATH=src .venv/bin/python benchmarks/callgrind_rtt.py --members 5 --deflate

Only the server process is counted; the clients run natively in this process.
Only processes this script started are signalled, by their own PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_argv(name: str, port: int) -> tuple[list[str], Path]:
    py = sys.executable
    common = ["--host", "127.0.0.1", "--port", str(port), "--ws", "websockets-sansio"]
    if name == "hubbub":
        argv = [py, "-m", "hubbub", "serve", "hubbub_app:hub", *common, "--log-level", "warning"]
        return argv, HERE
    if name == "hubbub-std":
        argv = [py, "-m", "uvicorn", "hubbub_app:app", *common, "--ws-ping-interval", "0"]
        argv += ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
        return [*argv, "--no-access-log"], HERE
    if name == "tutorial":
        argv = [py, "-m", "uvicorn", "tutorial_hub:app", "--app-dir", str(HERE / "peers")]
        argv += [*common, "--loop", "uvloop", "--http", "httptools"]
        return [*argv, "--log-level", "warning", "--no-access-log"], ROOT
    raise SystemExit(f"unknown server {name!r} (hubbub, hubbub-std, tutorial)")


class Member:
    """One client of the room: counts what it receives, by kind."""

    def __init__(self, ws: Any, hubbub: bool) -> None:
        self.ws = ws
        self.hubbub = hubbub
        self.messages = 0
        self.acks = 0
        self.changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if self.hubbub and '"type":"ping"' in frame:
                await self.ws.send('{"type":"pong"}')
                continue
            if self.hubbub and '"type":"ack"' in frame:
                self.acks += 1
            elif '"t":' in frame:
                self.messages += 1
            else:
                raise RuntimeError(f"unexpected frame {frame[:200]!r}")
            self.changed.set()

    async def wait(self, messages: int, acks: int) -> None:
        while self.messages < messages or self.acks < acks:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)


async def connect(base: str, name: str, room: str, deflate: bool = False) -> Member:
    import websockets

    hubbub = name.startswith("hubbub")
    url = f"{base}/ws" if hubbub else f"{base}/ws/{room}"
    # deflate: Chromium's offer, `permessage-deflate; client_max_window_bits`, and what the
    # client sends compressed with what the server accepted, as a browser does.
    compression = "deflate" if deflate else None
    ws = await websockets.connect(url, compression=compression, ping_interval=None, open_timeout=60)
    if hubbub:
        welcome = await asyncio.wait_for(ws.recv(), 60)
        assert '"welcome"' in welcome, welcome
        await ws.send(f'{{"type":"subscribe","channel":"{room}","id":1}}')
        reply = await asyncio.wait_for(ws.recv(), 60)
        assert '"subscribed"' in reply, reply
    return Member(ws, hubbub)


def payload(seq: int, room: str, hubbub: bool) -> str:
    data = f'{{"t":{time.time_ns()},"p":3,"s":{seq},"x":"' + "x" * 40 + '"}'
    if not hubbub:
        return data
    return f'{{"type":"publish","channel":"{room}","data":{data},"id":{seq + 2}}}'


async def round_trips(members: list[Member], start: int, count: int, room: str) -> None:
    publisher = members[-1]
    hubbub = publisher.hubbub
    for seq in range(start, start + count):
        await publisher.ws.send(payload(seq, room, hubbub))
        for member in members:
            await member.wait(seq + 1, seq + 1 if member is publisher and hubbub else 0)


def callgrind_control(pid: int, *args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


def total_ir(path: Path) -> int:
    # "summary:" is written before the costs (0 when collection started late); "totals:" after.
    found = re.findall(r"^totals: (\d+)", path.read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"no total in {path}")
    return sum(int(value) for value in found)


async def measure(cfg: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    port = free_port()
    argv, cwd = server_argv(cfg.server, port)
    out = out_dir / f"callgrind.{cfg.server}.out"
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    env = dict(os.environ)
    log = (out_dir / f"{cfg.server}.log").open("wb")
    proc = subprocess.Popen([*vg, *argv], cwd=cwd, env=env, stdout=log, stderr=log)
    members: list[Member] = []
    try:
        base = f"ws://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(out_dir / f'{cfg.server}.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not listen within 300 s")
            await asyncio.sleep(0.5)
        room = "room-1"
        members.extend(
            [await connect(base, cfg.server, room, cfg.deflate) for _ in range(cfg.members)]
        )
        await round_trips(members, 0, cfg.warmup, room)
        callgrind_control(proc.pid, "-i", "on")
        started = time.monotonic()
        await round_trips(members, cfg.warmup, cfg.count, room)
        elapsed = time.monotonic() - started
        callgrind_control(proc.pid, "-i", "off")
    finally:
        for member in members:
            member.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(member.ws.close(), 5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
    ir = total_ir(out)
    return {
        "server": cfg.server,
        "members": cfg.members,
        "deflate": cfg.deflate,
        "count": cfg.count,
        "ir": ir,
        "ir_per_publication": ir / cfg.count,
        "seconds_under_valgrind": round(elapsed, 1),
        "callgrind_out": str(out),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="hubbub", help="hubbub, hubbub-std or tutorial")
    parser.add_argument("--count", type=int, default=300, help="measured round trips")
    parser.add_argument("--warmup", type=int, default=30, help="round trips before measuring")
    parser.add_argument("--members", type=int, default=1, help="clients in the room")
    parser.add_argument(
        "--deflate", action="store_true", help="clients offer and use permessage-deflate"
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the callgrind files here")
    cfg = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("callgrind_rtt.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if cfg.count < 1 or cfg.members < 1:
        parser.error("--count and --members must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = cfg.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(measure(cfg, out_dir))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
