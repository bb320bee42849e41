"""The hub that ``hubbub.service`` serves: ``hubbub serve hubbub_app:hub``.

Copy it to ``/etc/hubbub/hubbub_app.py`` and edit it: namespaces, history,
presence and permissions are configured here. The JWT secret, the API key and
the allowed origins come from ``HUBBUB_*`` variables (``hubbub.env``), which
``hubbub serve`` applies to this hub.

The proxy (nginx or Caddy) runs on the same host and connects from loopback:
listing it in ``trusted_proxies`` makes hubbub take the client's address from
its ``X-Forwarded-For``, so per-IP limits count clients, not the proxy. From any
other peer the header is ignored: a client cannot choose its own address.
"""

from __future__ import annotations

from hubbub import Hub, Limits, Namespace

hub = Hub(
    namespaces=[
        # Channels without a namespace: authenticated clients subscribe; only
        # the backend publishes (HTTP API).
        Namespace(subscribe="authenticated", publish="nobody"),
        # chat:<room>: history, presence and join/leave for signed-in users.
        Namespace.chat("chat", subscribe="authenticated", publish="authenticated"),
    ],
    limits=Limits(trusted_proxies=["127.0.0.1", "::1"]),
)
