"""hubbub on its own: the hub is the whole ASGI app.

Run it with::

    uvicorn examples.standalone:app

Clients connect to ``ws://127.0.0.1:8000/ws``; ``GET /health`` answers 200.
Because ``HubApp`` is the top-level app here, uvicorn's lifespan events reach
it and it starts and stops the hub itself: no other wiring is needed.
"""

from __future__ import annotations

from hubbub import Hub, HubApp

# Anonymous clients are admitted: fine for a demo, switch it off once an
# authenticator is configured.
hub = Hub(anonymous=True)
app = HubApp(hub)
