"""``small_limits.queue_hub``, and one line in the server's log naming the uvicorn serving it.

``tests/test_uvicorn_versions.py`` serves this with an older uvicorn first on
``PYTHONPATH``: ``hubbub serve`` has imported uvicorn before it imports the
target, so the line shows which copy the server process really runs.
"""

from __future__ import annotations

import sys

import uvicorn
from small_limits import queue_hub as hub

__all__ = ["hub"]

print(f"uvicorn-probe: {uvicorn.__version__} {uvicorn.__file__}", file=sys.stderr, flush=True)
