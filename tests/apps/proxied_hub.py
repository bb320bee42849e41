"""A hub served behind nginx or Caddy by ``tests/test_deploy_proxies.py``.

It admits one open connection per client address, which makes the address
hubbub sees observable from outside: a second connection from the same address
is refused 429. ``PROXIED_HUB_TRUSTED`` (comma-separated) lists the trusted
proxies; empty, no proxy is trusted.

When ``hubbub serve`` gets its trusted-proxy flag (``--trusted-proxy``,
``HUBBUB_TRUSTED_PROXIES``), the tests can serve ``examples/deploy/hubbub_app.py``
with that flag instead of this module.
"""

from __future__ import annotations

import os

from hubbub import Hub, Limits, Namespace

TRUSTED = [p.strip() for p in os.environ.get("PROXIED_HUB_TRUSTED", "").split(",") if p.strip()]

hub = Hub(
    namespaces=[Namespace(subscribe="authenticated", publish="authenticated")],
    limits=Limits(
        trusted_proxies=TRUSTED,
        max_connections_per_ip=1,
        # The SIGTERM test waits for the drain: a short one keeps it quick.
        close_timeout=2.0,
    ),
    drain_timeout=5.0,
)
