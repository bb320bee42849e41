"""The hub the benchmark serves: ``hubbub serve``'s demo hub with the command rate limit lifted.

Why: the closed-loop phase has one publisher send hundreds of publications a
second (at N = 100), far above the default per-client command rate (50/s,
burst 100), which would answer most of them ``error`` 429 and then close the
publisher 4429. The benchmark measures fan-out, not the rate limiter, so this
module raises that limit and changes nothing else (other limits keep their
defaults; the tutorial hub has no limit at all). Served by run.py as::

    python -m hubbub serve hubbub_app:hub   # with benchmarks/ as the working directory

The broker comes from the ``HUBBUB_BENCH_BROKER`` environment variable, a URL
as ``hubbub serve --broker`` takes it (``memory://``, the default,
``redis://127.0.0.1:PORT/0`` or ``postgresql://…``): run.py sets it for the
``hubbub-redis`` and ``hubbub-postgres`` servers, so those variants are this
same hub publishing through Redis or PostgreSQL.
"""

from __future__ import annotations

import os

from hubbub import HubApp, Limits
from hubbub.brokers import broker_from_url
from hubbub.cli import build_demo_hub

BROKER_URL = os.environ.get("HUBBUB_BENCH_BROKER", "memory://")

hub = build_demo_hub(
    limits=Limits(command_rate=1e9, command_burst=1_000_000),
    broker=broker_from_url(BROKER_URL),
)

app = HubApp(hub)
"""The same hub as an ASGI app, for ``python -m uvicorn hubbub_app:app`` (run.py's ``hubbub-std``:
uvicorn's own WebSocket class, so no pre-framed fan-out)."""
