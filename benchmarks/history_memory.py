"""Memory cost of history in the memory broker: bytes per kept publication and per channel.

Why: a hub that keeps the last 100 messages of every chat room and the last
100 notifications of every user holds a lot of small objects; this measures
what one channel's history costs so deployments can size it. Run by hand:

    .venv/bin/python benchmarks/history_memory.py [--channels 2000] [--size 100] [--payload 100]

It publishes ``size`` publications of ``payload`` bytes of JSON into each of
``channels`` channels of a real ``MemoryBroker`` (through a running ``Hub``)
and reports the traced allocation growth (``tracemalloc``), per channel and
per publication, and writes it as JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import tracemalloc
from pathlib import Path

import anyio

from hubbub import Hub, Namespace


async def measure(channels: int, size: int, payload: int) -> dict[str, float]:
    hub = Hub(namespaces=[Namespace(name="h", history_size=size, history_ttl=3600)])
    data = {"text": "x" * max(payload - 12, 1)}  # ~payload bytes of JSON
    async with hub:
        await hub.publish("h:warm", data)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for c in range(channels):
            channel = f"h:room-{c}"
            for _ in range(size):
                await hub.publish(channel, data)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    grown = after - before
    return {
        "channels": channels,
        "history_size": size,
        "payload_bytes": payload,
        "bytes_per_channel": grown / channels,
        "bytes_per_publication": grown / (channels * size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=2000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--payload", type=int, default=100)
    args = parser.parse_args()
    result = anyio.run(measure, args.channels, args.size, args.payload)
    result["python"] = platform.python_version()
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out = Path(__file__).parent / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-history.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{args.channels} channels x {args.size} publications of ~{args.payload} B: "
        f"{result['bytes_per_channel'] / 1024:.1f} KiB per channel, "
        f"{result['bytes_per_publication']:.0f} B per kept publication  ({out.name})"
    )


if __name__ == "__main__":
    main()
