"""A top-level ``HubApp`` for hypercorn: ``python -m hypercorn hyper_app:app``.

``HubApp`` starts and stops the hub from the ASGI lifespan when it is the
top-level app, so no other wiring is needed.
"""

from __future__ import annotations

from hubbub import Hub, HubApp

app = HubApp(Hub(anonymous=True))
