"""The load generator: protocol adapters, subscriber worker processes and the publisher.

Why it looks like this: on a 2-core machine the clients compete with the
server for CPU, so the subscribers must cost as little as possible per message
and must never be what holds a figure back. Subscribers are spread over a few
worker processes (``multiprocessing``, spawn), each running the ``websockets``
asyncio client on uvloop with compression off. A subscriber does not decode
JSON: it finds the send timestamp and the phase tag in the frame by string
search, counts, and records the latency. Each worker publishes its running
total of received messages in a shared array, which the publisher (in the
parent process) reads to run closed-loop without any extra messages.

Every wait here has a deadline and every loop a bound; a worker that is not
told to finish exits on its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

CHANNEL = "bench"
PAYLOAD_BYTES = 100
LATENCY_CAP = 400_000
"""Latency samples kept per phase per worker (a bound on memory and on the pipe)."""
CONNECT_CONCURRENCY = 48
"""Handshakes in flight per worker: keeps the server's listen backlog from overflowing."""
PHASES = 3
"""Phase tags carried in payloads: 0 warm-up, 1 latency at a fixed rate, 2 closed loop."""

_PHASE_OF = {str(i): i for i in range(PHASES)}


def make_payload(phase: int, seq: int) -> str:
    """A ~100-byte JSON object carrying the send time (ns, CLOCK_REALTIME), phase and sequence.

    The field order is fixed (``t`` first, then ``p``) because subscribers parse
    it by position instead of decoding JSON.
    """
    head = f'{{"t":{time.time_ns()},"p":{phase},"s":{seq},"x":"'
    return head + "x" * max(1, PAYLOAD_BYTES - len(head) - 2) + '"}'


# -- protocol adapters ----------------------------------------------------------------------


class Adapter:
    """How one server's protocol joins the channel, publishes and keeps a client alive."""

    name = "base"
    batch = False

    def url(self, base: str) -> str:
        raise NotImplementedError

    async def join(self, ws: Any) -> None:
        """After the handshake: whatever makes this client a subscriber of the bench channel."""

    def publish_frame(self, payload: str, seq: int) -> str:
        raise NotImplementedError

    def control(self, message: str) -> str | None:
        """The answer to a non-publication message (e.g. a ``pong``), if any."""
        return None

    def is_error(self, message: str) -> bool:
        return False

    def is_ack(self, message: str) -> bool:
        return False


class HubbubAdapter(Adapter):
    """hubbub protocol v1, JSON: ``welcome``, ``subscribe``, ``publish``; answers ``ping``."""

    name = "hubbub"

    def __init__(self, batch: bool = False) -> None:
        self.batch = batch

    def url(self, base: str) -> str:
        return f"{base}/ws?batch=1" if self.batch else f"{base}/ws"

    async def join(self, ws: Any) -> None:
        welcome = await asyncio.wait_for(ws.recv(), 30)
        if '"welcome"' not in welcome:
            raise RuntimeError(f"expected welcome, got {welcome[:200]!r}")
        await ws.send(f'{{"type":"subscribe","channel":"{CHANNEL}","id":1}}')
        for _ in range(10):
            reply = await asyncio.wait_for(ws.recv(), 30)
            if '"subscribed"' in reply:
                return
            if '"error"' in reply:
                raise RuntimeError(f"subscribe refused: {reply[:200]!r}")
        raise RuntimeError("no subscribed reply")

    def publish_frame(self, payload: str, seq: int) -> str:
        return f'{{"type":"publish","channel":"{CHANNEL}","data":{payload},"id":{seq + 2}}}'

    def control(self, message: str) -> str | None:
        return '{"type":"pong"}' if '"type":"ping"' in message else None

    def is_error(self, message: str) -> bool:
        return '"type":"error"' in message or '"type":"disconnect"' in message

    def is_ack(self, message: str) -> bool:
        return '"type":"ack"' in message


class TutorialAdapter(Adapter):
    """The tutorial hub: connected means joined; any text is relayed verbatim to everyone."""

    name = "tutorial"

    def url(self, base: str) -> str:
        return f"{base}/ws"

    def publish_frame(self, payload: str, seq: int) -> str:
        return payload


def adapter_for(name: str) -> Adapter:
    if name == "hubbub":
        return HubbubAdapter()
    if name == "hubbub-batch":
        return HubbubAdapter(batch=True)
    if name.startswith("tutorial"):
        return TutorialAdapter()
    raise ValueError(f"no adapter for server {name!r}")


async def open_client(url: str) -> Any:
    """A ``websockets`` client as lean as it gets: no compression, no keepalive pings."""
    from websockets.asyncio.client import connect

    return await connect(
        url,
        compression=None,
        ping_interval=None,
        open_timeout=30,
        close_timeout=2,
        max_size=2**22,
    )


# -- counting frames ------------------------------------------------------------------------


@dataclass
class Tally:
    """What one process's clients received, per phase."""

    counts: list[int] = field(default_factory=lambda: [0] * PHASES)
    latencies: list[array] = field(default_factory=lambda: [array("q") for _ in range(PHASES)])
    total: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    control: int = 0


async def read_frames(
    ws: Any,
    adapter: Adapter,
    tally: Tally,
    progress: Any = None,
    slot: int = 0,
    on_other: Any = None,
) -> int | None:
    """Read ``ws`` as fast as possible until it closes; returns the close code.

    Per frame: one clock read, a split on ``\\n`` only where batching was asked
    for, and per message two ``find`` calls and one ``int``.
    """
    batch = adapter.batch
    counts = tally.counts
    lats = tally.latencies
    phase_of = _PHASE_OF
    cap = LATENCY_CAP
    try:
        async for frame in ws:
            now = time.time_ns()
            got = 0
            for m in frame.split("\n") if batch else (frame,):
                i = m.find('"t":')
                if i < 0:
                    tally.control += 1
                    if on_other is not None:
                        on_other(m)
                    reply = adapter.control(m)
                    if reply is not None:
                        await ws.send(reply)
                    continue
                j = m.find(",", i)
                phase = phase_of[m[j + 5]]
                counts[phase] += 1
                lat = lats[phase]
                if len(lat) < cap:
                    lat.append(now - int(m[i + 4 : j]))
                got += 1
            if got:
                tally.total += got
                if progress is not None:
                    progress[slot] = tally.total
    except Exception as exc:  # ConnectionClosedError and friends: recorded, not raised
        tally.closes[type(exc).__name__] = tally.closes.get(type(exc).__name__, 0) + 1
    return ws.close_code


# -- subscriber worker process --------------------------------------------------------------


def worker_main(
    slot: int,
    server: str,
    base_url: str,
    count: int,
    progress: Any,
    pipe: Connection,
    deadline_s: float,
) -> None:
    """Entry point of one subscriber worker process (spawned by ``run.py``)."""
    import uvloop

    try:
        uvloop.run(_worker(slot, server, base_url, count, progress, pipe, deadline_s))
    finally:
        pipe.close()
        # Exit without closing thousands of sockets politely: the figures are taken,
        # and the kernel closes them at once (the server sees ordinary disconnects).
        os._exit(0)


async def _worker(
    slot: int,
    server: str,
    base_url: str,
    count: int,
    progress: Any,
    pipe: Connection,
    deadline_s: float,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    adapter = adapter_for(server)
    url = adapter.url(base_url)
    tally = Tally()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[Any] = []
    readers: list[asyncio.Task[int | None]] = []
    failures: dict[str, int] = {}

    async def one() -> None:
        async with gate:
            try:
                ws = await open_client(url)
                await adapter.join(ws)
            except Exception as exc:
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                failures[key] = failures.get(key, 0) + 1
                return
        clients.append(ws)
        readers.append(asyncio.create_task(read_frames(ws, adapter, tally, progress, slot)))

    t0 = time.perf_counter()
    connect_budget = max(5.0, deadline - loop.time() - 5.0)
    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), connect_budget)
    except TimeoutError:
        failures["connect phase timed out"] = count - len(clients)
    pipe.send(
        {
            "ready": len(clients),
            "failures": failures,
            "connect_s": time.perf_counter() - t0,
            "pid": os.getpid(),
        }
    )
    # Wait for "finish" from the parent, polling the pipe so the deadline always holds.
    while loop.time() < deadline:
        if pipe.poll():
            pipe.recv()
            break
        await asyncio.sleep(0.05)
    closed_early: dict[str, int] = {}
    for task in readers:
        if task.done():
            code = str(task.result())
            closed_early[code] = closed_early.get(code, 0) + 1
    pipe.send(
        {
            "counts": tally.counts,
            "latencies": [lat.tobytes() for lat in tally.latencies],
            "closed_early": closed_early,
            "exceptions": tally.closes,
            "control": tally.control,
            "clients": len(clients),
        }
    )


def unpack_latencies(blobs: Sequence[bytes]) -> list[array]:
    out = []
    for blob in blobs:
        arr = array("q")
        arr.frombytes(blob)
        out.append(arr)
    return out


# -- the publisher (runs in the parent process) ---------------------------------------------


class Publisher:
    """One client that publishes and, like every subscriber, also receives each publication.

    The tutorial hub echoes to the sender because the sender is in the room;
    the hubbub publisher subscribes too (echo is on by default), so both
    servers make N + 1 deliveries per publication.
    """

    def __init__(self, server: str, base_url: str) -> None:
        self.adapter = adapter_for(server)
        self.url = self.adapter.url(base_url)
        self.tally = Tally()
        self.acks = 0
        self.errors: list[str] = []
        self.ws: Any = None
        self._reader: asyncio.Task[int | None] | None = None

    async def open(self) -> None:
        self.ws = await open_client(self.url)
        await self.adapter.join(self.ws)
        self._reader = asyncio.create_task(
            read_frames(self.ws, self.adapter, self.tally, on_other=self._other)
        )

    def _other(self, message: str) -> None:
        if self.adapter.is_ack(message):
            self.acks += 1
        elif self.adapter.is_error(message) and len(self.errors) < 20:
            self.errors.append(message[:200])

    async def send(self, phase: int, seq: int) -> None:
        await self.ws.send(self.adapter.publish_frame(make_payload(phase, seq), seq))

    @property
    def closed(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
