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

Each server speaks its own protocol, so each has a small adapter here: how to
join the bench channel, how to frame a publication, where the timestamp sits
in what comes back, and what to answer to the server's keepalives. For
python-socketio the adapter speaks Engine.IO 4 / Socket.IO 5 framing directly
over the same ``websockets`` client (``/socket.io/?EIO=4&transport=websocket``,
``40`` to connect, ``42[...]`` events, ``421[...]``/``431[...]`` for the join
acknowledgement, ``3`` in answer to the server's ``2`` ping) instead of
python-socketio's ``AsyncClient``: that client runs on aiohttp, decodes every
packet into Python objects and dispatches each event to a handler, several
times the CPU per message of this reader, which on 2 shared cores would make
the load generator, not the server, set the pace.

Every wait here has a deadline and every loop a bound; a worker that is not
told to finish exits on its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
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
PHASES = 4
"""Phase tags carried in payloads: 0 warm-up, 1 fixed rate, 2 closed loop, 3 round trip."""
FROZEN_RCVBUF = 4096
"""SO_RCVBUF of a frozen subscriber's socket: small, so its buffers fill within a few frames."""

_PHASE_OF = {str(i): i for i in range(PHASES)}


def make_payload(phase: int, seq: int, size: int = PAYLOAD_BYTES, tag: str = "") -> str:
    """A ~100-byte JSON object carrying the send time (ns, CLOCK_REALTIME), phase and sequence.

    The field order is fixed (``t`` first, then ``p``) because subscribers parse
    it by position instead of decoding JSON. ``tag`` (the rooms scenario's
    ``#<client>#``) starts the padding string, where no server's re-encoding
    changes it, so a member can tell its own echo from the others' messages.
    """
    head = f'{{"t":{time.time_ns()},"p":{phase},"s":{seq},"x":"{tag}'
    return head + "x" * max(1, size - len(head) - 2) + '"}'


def extract_text(m: str) -> tuple[int, int] | None:
    """(send time ns, phase) from a text message, or None for anything that is not a payload.

    Tolerates the spaces ``json.dumps`` puts after ``:`` (python-socketio
    re-encodes the payload with the standard library).
    """
    i = m.find('"t":')
    if i < 0:
        return None
    j = m.find(",", i)
    k = m.find('"p":', j)
    c = m[k + 4]
    if c == " ":
        c = m[k + 5]
    return int(m[i + 4 : j]), _PHASE_OF[c]


_T_KEY = b"\xa1t\xcf"  # MessagePack: fixstr "t", then uint64 (a time in ns is > 2**32)
_P_KEY = b"\xa1p"


def extract_msgpack(m: bytes) -> tuple[int, int] | None:
    """The same from a MessagePack frame, by byte position (no decoding)."""
    i = m.find(_T_KEY)
    if i < 0 or m[i + 11 : i + 13] != _P_KEY:
        return None
    return int.from_bytes(m[i + 3 : i + 11], "big"), m[i + 13]


# -- protocol adapters ----------------------------------------------------------------------


class Adapter:
    """How one server's protocol joins the channel, publishes and keeps a client alive."""

    name = "base"
    payload_bytes = PAYLOAD_BYTES
    batch = False
    binary = False
    subprotocols: tuple[str, ...] | None = None

    def url(self, base: str, channel: str = CHANNEL) -> str:
        raise NotImplementedError

    async def join(self, ws: Any, channel: str = CHANNEL) -> None:
        """After the handshake: whatever makes this client a subscriber of ``channel``."""

    def publish_frame(
        self, phase: int, seq: int, channel: str = CHANNEL, tag: str = ""
    ) -> str | bytes:
        raise NotImplementedError

    def split(self, frame: Any) -> Sequence[Any]:
        """The messages in one frame."""
        return (frame,)

    extract = staticmethod(extract_text)

    def control(self, message: Any) -> str | bytes | None:
        """The answer to a non-publication message (e.g. a ``pong``), if any."""
        return None

    def is_error(self, message: Any) -> bool:
        return False

    def is_ack(self, message: Any) -> bool:
        return False


class HubbubAdapter(Adapter):
    """hubbub protocol v1, JSON: ``welcome``, ``subscribe``, ``publish``; answers ``ping``."""

    name = "hubbub"

    def __init__(self, batch: bool = False) -> None:
        self.batch = batch

    def url(self, base: str, channel: str = CHANNEL) -> str:
        return f"{base}/ws?batch=1" if self.batch else f"{base}/ws"

    def split(self, frame: Any) -> Sequence[Any]:
        return frame.split("\n") if self.batch else (frame,)

    async def join(self, ws: Any, channel: str = CHANNEL) -> None:
        welcome = await asyncio.wait_for(ws.recv(), 30)
        if '"welcome"' not in welcome:
            raise RuntimeError(f"expected welcome, got {welcome[:200]!r}")
        await ws.send(f'{{"type":"subscribe","channel":"{channel}","id":1}}')
        for _ in range(10):
            reply = await asyncio.wait_for(ws.recv(), 30)
            if '"subscribed"' in reply:
                return
            if '"error"' in reply:
                raise RuntimeError(f"subscribe refused: {reply[:200]!r}")
        raise RuntimeError("no subscribed reply")

    def publish_frame(
        self, phase: int, seq: int, channel: str = CHANNEL, tag: str = ""
    ) -> str | bytes:
        payload = make_payload(phase, seq, self.payload_bytes, tag)
        return f'{{"type":"publish","channel":"{channel}","data":{payload},"id":{seq + 2}}}'

    def control(self, message: Any) -> str | bytes | None:
        return '{"type":"pong"}' if '"type":"ping"' in message else None

    def is_error(self, message: Any) -> bool:
        return '"type":"error"' in message or '"type":"disconnect"' in message

    def is_ack(self, message: Any) -> bool:
        return '"type":"ack"' in message


class HubbubMsgpackAdapter(Adapter):
    """hubbub protocol v1 on the ``hubbub.v1.msgpack`` subprotocol: binary frames."""

    name = "hubbub-msgpack"
    binary = True
    subprotocols = ("hubbub.v1.msgpack",)
    extract = staticmethod(extract_msgpack)

    def __init__(self) -> None:
        import msgspec

        self._encode = msgspec.msgpack.encode
        self._decode = msgspec.msgpack.decode
        # Pad the payload to ~payload_bytes of MessagePack, like the JSON one.
        self._overhead = len(self._encode({"t": time.time_ns(), "p": 0, "s": 0, "x": ""})) + 2

    def url(self, base: str, channel: str = CHANNEL) -> str:
        return f"{base}/ws"

    def _type(self, message: Any) -> str:
        try:
            decoded = self._decode(message)
        except Exception:
            return "?"
        return str(decoded.get("type")) if isinstance(decoded, dict) else "?"

    async def join(self, ws: Any, channel: str = CHANNEL) -> None:
        welcome = await asyncio.wait_for(ws.recv(), 30)
        if self._type(welcome) != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome[:200]!r}")
        await ws.send(self._encode({"type": "subscribe", "channel": channel, "id": 1}))
        for _ in range(10):
            kind = self._type(await asyncio.wait_for(ws.recv(), 30))
            if kind == "subscribed":
                return
            if kind == "error":
                raise RuntimeError("subscribe refused")
        raise RuntimeError("no subscribed reply")

    def publish_frame(
        self, phase: int, seq: int, channel: str = CHANNEL, tag: str = ""
    ) -> str | bytes:
        pad = tag + "x" * max(1, self.payload_bytes - self._overhead - len(tag))
        data = {"t": time.time_ns(), "p": phase, "s": seq, "x": pad}
        return self._encode({"type": "publish", "channel": channel, "data": data, "id": seq + 2})

    def control(self, message: Any) -> str | bytes | None:
        return self._encode({"type": "pong"}) if self._type(message) == "ping" else None

    def is_error(self, message: Any) -> bool:
        return self._type(message) in ("error", "disconnect")

    def is_ack(self, message: Any) -> bool:
        return self._type(message) == "ack"


class RelayAdapter(Adapter):
    """Servers that relay any text verbatim to everyone connected: connected means joined.

    The tutorial hub, broadcaster's chat pattern and the bare ``websockets.broadcast()``
    server all work this way (the sender gets its own message back).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def url(self, base: str, channel: str = CHANNEL) -> str:
        # The bench channel is the peers' original single room; other channels are
        # the rooms scenario's, one URL path each (see peers/).
        return f"{base}/ws" if channel == CHANNEL else f"{base}/ws/{channel}"

    def publish_frame(
        self, phase: int, seq: int, channel: str = CHANNEL, tag: str = ""
    ) -> str | bytes:
        return make_payload(phase, seq, self.payload_bytes, tag)


class SocketIOAdapter(Adapter):
    """Socket.IO 5 over Engine.IO 4, spoken directly on a WebSocket (see the module docstring)."""

    name = "socketio"

    def url(self, base: str, channel: str = CHANNEL) -> str:
        return f"{base}/socket.io/?EIO=4&transport=websocket"

    async def join(self, ws: Any, channel: str = CHANNEL) -> None:
        opened = await asyncio.wait_for(ws.recv(), 30)
        if not opened.startswith("0{"):
            raise RuntimeError(f"expected an Engine.IO open packet, got {opened[:200]!r}")
        await ws.send("40")  # Socket.IO CONNECT to the default namespace
        await self._expect(ws, "40")
        await ws.send(f'421["join","{channel}"]')  # event with ack id 1
        await self._expect(ws, "431")

    async def _expect(self, ws: Any, prefix: str) -> None:
        for _ in range(10):
            reply = await asyncio.wait_for(ws.recv(), 30)
            if reply.startswith(prefix):
                return
            if reply == "2":
                await ws.send("3")
            elif reply.startswith(("44", "41", "1")):
                raise RuntimeError(f"refused: {reply[:200]!r}")
        raise RuntimeError(f"no {prefix!r} reply")

    def publish_frame(
        self, phase: int, seq: int, channel: str = CHANNEL, tag: str = ""
    ) -> str | bytes:
        payload = make_payload(phase, seq, self.payload_bytes, tag)
        if channel == CHANNEL:
            return f'42["msg",{payload}]'
        return f'42["say","{channel}",{payload}]'  # the rooms scenario: relay to that room

    def control(self, message: Any) -> str | bytes | None:
        return "3" if message == "2" else None

    def is_error(self, message: Any) -> bool:
        return message.startswith(("44", "41", "1"))


def adapter_for(name: str) -> Adapter:
    if name in ("hubbub", "hubbub-std", "hubbub-ctx", "hubbub-redis", "hubbub-postgres"):
        return HubbubAdapter()
    if name in ("hubbub-hypercorn", "hubbub-granian"):  # the same hub on another server
        return HubbubAdapter()
    if name == "hubbub-batch":
        return HubbubAdapter(batch=True)
    if name == "hubbub-msgpack":
        return HubbubMsgpackAdapter()
    if name == "socketio":
        return SocketIOAdapter()
    if name.startswith(("tutorial", "broadcaster", "websockets")):
        return RelayAdapter(name)
    raise ValueError(f"no adapter for server {name!r}")


async def open_client(
    url: str, adapter: Adapter, sock: socket.socket | None = None, deflate: bool = False
) -> Any:
    """A ``websockets`` client as lean as it gets: no compression, no keepalive pings.

    With ``deflate`` it offers permessage-deflate the way Chromium does: the
    ``websockets`` client's ``compression="deflate"`` sends exactly
    ``permessage-deflate; client_max_window_bits`` (no ``*_no_context_takeover``,
    no ``server_max_window_bits``), and decompresses what it receives.
    """
    from websockets.asyncio.client import connect

    return await connect(
        url,
        compression="deflate" if deflate else None,
        ping_interval=None,
        open_timeout=30,
        close_timeout=2,
        max_size=2**22,
        subprotocols=list(adapter.subprotocols) if adapter.subprotocols else None,
        sock=sock,
    )


async def open_frozen(server: str, base_url: str) -> Any:
    """A subscriber that joins the channel and then never reads again.

    Its socket has a 4 KiB receive buffer (set before connecting), and once it
    has joined, its transport stops reading: the kernel buffers fill after a
    few frames and the server sees a client that has stopped, like a frozen
    browser tab or a phone that went into a tunnel. It answers no keepalive.
    """
    adapter = adapter_for(server)
    host, port = base_url.removeprefix("ws://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, FROZEN_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await open_client(adapter.url(base_url), adapter, sock=sock)
    await adapter.join(ws)
    ws.transport.pause_reading()
    return ws


async def thaw(ws: Any, budget_s: float = 4.0) -> int | str:
    """Let a frozen client read again; its close code if the server had closed it, else "open".

    The server's close frame sits behind everything buffered before it, so the
    buffered frames are read and thrown away first (bounded by ``budget_s``).
    """
    ws.transport.resume_reading()
    end = time.perf_counter() + budget_s
    with contextlib.suppress(Exception):
        while time.perf_counter() < end:
            await asyncio.wait_for(ws.recv(), max(0.01, end - time.perf_counter()))
    return ws.close_code if ws.close_code is not None else "open"


# -- counting frames ------------------------------------------------------------------------


@dataclass
class Tally:
    """What one process's clients received, per phase."""

    counts: list[int] = field(default_factory=lambda: [0] * PHASES)
    latencies: list[array] = field(default_factory=lambda: [array("q") for _ in range(PHASES)])
    total: int = 0
    closes: dict[str, int] = field(default_factory=dict)
    control: int = 0
    echoes: int = 0
    """Rooms scenario: a member's own publications coming back (counted, no latency sample)."""


async def read_frames(
    ws: Any,
    adapter: Adapter,
    tally: Tally,
    progress: Any = None,
    slot: int = 0,
    on_other: Any = None,
    notify: Any = None,
    own: str | bytes | None = None,
) -> int | None:
    """Read ``ws`` as fast as possible until it closes; returns the close code.

    Per frame: one clock read, a split on ``\\n`` only where batching was asked
    for, and per message the adapter's ``extract`` (a few ``find`` calls and one
    ``int``: no decoding). With ``own`` (the rooms scenario: this member's tag),
    a message carrying it is this member's own echo: a delivery, but no latency
    sample (the latency is publish -> delivery to the *other* members).
    """
    split = adapter.split
    extract = adapter.extract
    counts = tally.counts
    lats = tally.latencies
    cap = LATENCY_CAP
    try:
        async for frame in ws:
            now = time.time_ns()
            got = 0
            for m in split(frame):
                found = extract(m)
                if found is None:
                    tally.control += 1
                    if on_other is not None:
                        on_other(m)
                    reply = adapter.control(m)
                    if reply is not None:
                        await ws.send(reply)
                    continue
                sent_ns, phase = found
                counts[phase] += 1
                got += 1
                if own is not None and own in m:
                    tally.echoes += 1
                    continue
                lat = lats[phase]
                if len(lat) < cap:
                    lat.append(now - sent_ns)
            if got:
                tally.total += got
                if progress is not None:
                    progress[slot] = tally.total
                if notify is not None:
                    notify()
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
    options: dict[str, Any] | None = None,
) -> None:
    """Entry point of one subscriber worker process (spawned by ``run.py``).

    ``options``: ``deflate`` (every client offers permessage-deflate like a
    browser), ``room_size`` and ``first`` (the rooms scenario: client ``i`` of
    this worker is member number ``first + i``, of room ``(first + i) //
    room_size``, and publishes when the parent says so).
    """
    import uvloop

    try:
        uvloop.run(
            _worker(slot, server, base_url, count, progress, pipe, deadline_s, options or {})
        )
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
    options: dict[str, Any],
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    adapter = adapter_for(server)
    deflate = bool(options.get("deflate"))
    room_size = int(options.get("room_size") or 0)
    first = int(options.get("first") or 0)
    tally = Tally()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    clients: list[Any] = []
    members: list[tuple[Any, int, str]] = []  # rooms scenario: (ws, member number, room)
    readers: list[asyncio.Task[int | None]] = []
    failures: dict[str, int] = {}
    extensions: dict[str, int] = {}

    async def one(i: int) -> None:
        member = first + i
        channel = room_name(member // room_size) if room_size else CHANNEL
        async with gate:
            try:
                ws = await open_client(adapter.url(base_url, channel), adapter, deflate=deflate)
                await adapter.join(ws, channel)
            except Exception as exc:
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                failures[key] = failures.get(key, 0) + 1
                return
        clients.append(ws)
        agreed = negotiated(ws)
        extensions[agreed] = extensions.get(agreed, 0) + 1
        own: str | bytes | None = member_tag(member) if room_size else None
        if own is not None and adapter.binary:
            own = own.encode()  # MessagePack frames: the tag sits in the bytes as is
        if room_size:
            members.append((ws, member, channel))
        readers.append(
            asyncio.create_task(read_frames(ws, adapter, tally, progress, slot, own=own))
        )

    t0 = time.perf_counter()
    connect_budget = max(5.0, deadline - loop.time() - 5.0)
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), connect_budget)
    except TimeoutError:
        failures["connect phase timed out"] = count - len(clients)
    pipe.send(
        {
            "ready": len(clients),
            "failures": failures,
            "connect_s": time.perf_counter() - t0,
            "pid": os.getpid(),
            "extensions": extensions,
        }
    )
    # Wait for "finish" from the parent, polling the pipe so the deadline always holds;
    # in the rooms scenario a {"talk": ...} order comes first.
    while loop.time() < deadline:
        if pipe.poll():
            order = pipe.recv()
            if isinstance(order, dict) and "talk" in order:
                pipe.send(await _talk(adapter, members, order, deadline))
                continue
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
            "echoes": tally.echoes,
            "clients": len(clients),
        }
    )


def room_name(room: int) -> str:
    return f"r{room}"


def member_tag(member: int) -> str:
    """The mark a member puts at the start of its payloads' padding (see ``make_payload``)."""
    return f"#{member}#"


def negotiated(ws: Any) -> str:
    """The Sec-WebSocket-Extensions header the server answered with ("none" without one)."""
    response = getattr(ws, "response", None)
    value = response.headers.get("Sec-WebSocket-Extensions") if response is not None else None
    return value or "none"


async def _talk(
    adapter: Adapter, members: list[tuple[Any, int, str]], order: dict[str, Any], deadline: float
) -> dict[str, Any]:
    """Rooms scenario: every member publishes to its room every ``1 / rate`` s for ``seconds``.

    Everyone starts at the same wall-clock instant (``talk``, a ``time.time()``
    the parent chose a little ahead), each with its own offset inside the
    period (member number times the golden ratio, modulo 1), so publications are
    spread evenly instead of arriving in bursts. Bounded: ``seconds * rate``
    publications per member, and the worker's deadline.
    """
    start_at = float(order["talk"])
    period = 1.0 / float(order["rate"])
    count = max(1, round(float(order["seconds"]) * float(order["rate"])))
    phase = int(order["phase"])
    loop = asyncio.get_running_loop()
    sent = 0
    errors: dict[str, int] = {}

    async def member_loop(ws: Any, member: int, channel: str) -> None:
        nonlocal sent
        offset = (member * 0.6180339887) % 1.0 * period
        tag = member_tag(member)
        for k in range(count):
            delay = start_at + offset + k * period - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if loop.time() > deadline:
                return
            try:
                await ws.send(adapter.publish_frame(phase, k, channel, tag))
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            sent += 1

    budget = max(1.0, min(deadline - loop.time(), start_at - time.time() + count * period + 30))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(member_loop(*m) for m in members)), budget)
    return {"published": sent, "send_errors": errors}


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

    Every peer echoes to the sender because the sender is in the room (or the
    broadcast set, or subscribed to the broadcaster channel); the hubbub
    publisher subscribes too (echo is on by default), so every server makes
    N + 1 deliveries per publication.
    """

    def __init__(self, server: str, base_url: str, deflate: bool = False) -> None:
        self.adapter = adapter_for(server)
        self.url = self.adapter.url(base_url)
        self.deflate = deflate
        self.tally = Tally()
        self.acks = 0
        self.errors: list[str] = []
        self.ws: Any = None
        self._reader: asyncio.Task[int | None] | None = None
        self._arrived = asyncio.Event()

    async def open(self) -> None:
        self.ws = await open_client(self.url, self.adapter, deflate=self.deflate)
        await self.adapter.join(self.ws)
        self._reader = asyncio.create_task(
            read_frames(
                self.ws, self.adapter, self.tally, on_other=self._other, notify=self._arrived.set
            )
        )

    def _other(self, message: Any) -> None:
        if self.adapter.is_ack(message):
            self.acks += 1
        elif self.adapter.is_error(message) and len(self.errors) < 20:
            self.errors.append(repr(message[:200]))

    async def send(self, phase: int, seq: int) -> None:
        await self.ws.send(self.adapter.publish_frame(phase, seq))

    async def round_trips(self, phase: int, count: int, budget_s: float) -> int:
        """Publish, wait for the own echo, repeat: ``count`` times or until ``budget_s``.

        The latency of each is recorded by the reader (send timestamp in the
        payload to arrival). Returns the number of round trips completed.
        """
        end = time.perf_counter() + budget_s
        done = 0
        for seq in range(count):
            if time.perf_counter() > end or self.closed:
                break
            before = self.tally.counts[phase]
            self._arrived.clear()
            await self.send(phase, seq)
            for _ in range(100):  # bounded: each wait is at most 0.1 s
                if self.tally.counts[phase] > before:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 0.1)
                self._arrived.clear()
            else:
                break
            done += 1
        return done

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
