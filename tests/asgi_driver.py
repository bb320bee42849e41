"""The in-memory ASGI WebSocket driver of hubbub's own tests, now in ``hubbub.testing._asgi``.

Kept as a re-export so existing tests import it unchanged; users' tests use
:class:`hubbub.testing.HubTester` instead.
"""

from __future__ import annotations

from hubbub.testing._asgi import TIMEOUT as TIMEOUT
from hubbub.testing._asgi import Clients as Clients
from hubbub.testing._asgi import Event as Event
from hubbub.testing._asgi import MemoryWebSocket as MemoryWebSocket
from hubbub.testing._asgi import serving as serving

__all__ = ["TIMEOUT", "Clients", "Event", "MemoryWebSocket", "serving"]
