"""hubbub.client: an async Python client that never loses a message silently.

Install with ``pip install 'hubbub[client]'`` (httpx and httpx-ws). It speaks
the wire protocol (``docs/protocol.md``) and nothing else, reusing the
server's own message types and codecs (``hubbub.messages``)::

    async with Client("ws://127.0.0.1:8000/ws", token_provider=get_token) as client:
        async with client.subscribe("feed:news") as sub:
            async for item in sub:
                if isinstance(item, Unrecovered):
                    reload_state(item.channel)
                else:
                    handle(item.data, item.offset)

Why httpx-ws rather than the ``websockets`` client: httpx-ws runs on anyio, so
the client (like the hub) works under asyncio *and* trio, and it rides on
httpx, which the HTTP API helpers and users' backends already use. The
``websockets`` asyncio client is asyncio-only.

The modules, inside out:

- ``_stream``: the pure rule judging each publication against the last
  position seen (deliver, duplicate, gap);
- ``_wire``: commands out and server messages in, on ``hubbub.messages``;
- ``_types``: what the application gets (``Publication``, ``Unrecovered``,
  ``HistoryResult``) and the ``Backoff`` policy;
- ``_subscription``: one channel's bounded, ordered iterator, which reaches
  the client only through the ``SubscriptionHost`` protocol it declares;
- ``_requests``: commands out and replies matched back by id, with timeouts;
- ``_registry``: the open subscriptions and their (re)subscription with
  ``recover``: where each publication is delivered, dropped or recovered;
- ``_client``: the ``Client`` façade and the supervised session — connect,
  read, refresh the token, reconnect with back-off;
- ``_errors``: the ``ClientError`` tree;
- ``api``: ``HubbubAPI``/``AsyncHubbubAPI``, the server HTTP API (PROTOCOL §8)
  from other Python services (``hubbub.api_client`` before 0.2).

The imports run one way, with no cycle (``_client`` → ``_registry`` →
``_requests``/``_subscription`` → the leaves), and outside the package reach
only the shared wire types (``hubbub.messages``, ``hubbub.chat``,
``hubbub._api_wire``): nothing of the server.
"""

from __future__ import annotations

from ..messages import ClientInfo as ClientInfo
from ..messages import Position as Position
from ..messages import Presence as Presence
from ._client import Client as Client
from ._errors import ClientClosed as ClientClosed
from ._errors import ClientError as ClientError
from ._errors import ConnectFailed as ConnectFailed
from ._errors import ConnectionLost as ConnectionLost
from ._errors import Disconnected as Disconnected
from ._errors import RequestFailed as RequestFailed
from ._errors import RequestTimeout as RequestTimeout
from ._subscription import Subscription as Subscription
from ._types import Backoff as Backoff
from ._types import HistoryResult as HistoryResult
from ._types import Item as Item
from ._types import Publication as Publication
from ._types import TokenProvider as TokenProvider
from ._types import Unrecovered as Unrecovered
from .api import AsyncHubbubAPI as AsyncHubbubAPI
from .api import HubbubAPI as HubbubAPI
from .api import HubbubAPIError as HubbubAPIError

__all__ = [
    "AsyncHubbubAPI",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientInfo",
    "ConnectFailed",
    "ConnectionLost",
    "Disconnected",
    "HistoryResult",
    "HubbubAPI",
    "HubbubAPIError",
    "Item",
    "Position",
    "Presence",
    "Publication",
    "RequestFailed",
    "RequestTimeout",
    "Subscription",
    "TokenProvider",
    "Unrecovered",
]
