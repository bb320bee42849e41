"""The hub behind the HTTP API's end-to-end tests: ``hubbub serve api_app:app --api-key K``.

Clients name their user in ``?user=`` (anonymous without it). Namespaces: the
default one, ``room:`` (history, presence), ``chat:`` (schema), ``vip:`` (only
the server subscribes, and only users whose id starts with ``vip-``), ``broken:``
(a ``can_subscribe`` hook that raises). Two channels per connection at most and
a 4 KiB API body limit, so the tests cross both quickly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from hubbub import Hub, HubApp, Identity, Limits, Namespace

MAX_BODY = 4096
MAX_CHANNELS = 2


async def user_from_query(scope: Mapping[str, Any]) -> Identity | None:
    users = parse_qs(scope.get("query_string", b"").decode()).get("user")
    return Identity(user=users[0]) if users else None


def vip_only(identity: Identity, channel: str) -> bool:
    return identity.user.startswith("vip-")


def broken(identity: Identity, channel: str) -> bool:
    raise RuntimeError("a hook with a bug")


hub = Hub(
    anonymous=True,
    authenticator=user_from_query,
    limits=Limits(max_channels=MAX_CHANNELS),
    namespaces=[
        Namespace(),
        Namespace(name="room", history_size=10, presence=True),
        Namespace.chat("chat"),
        Namespace(name="vip", subscribe="nobody", can_subscribe=vip_only),
        Namespace(name="broken", can_subscribe=broken),
    ],
)

app = HubApp(hub, api_max_body=MAX_BODY)
