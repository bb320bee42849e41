"""hubbub: a real-time WebSocket hub for Python ASGI applications.

The modules follow the path a message takes, inside out:

- leaves that every layer may import: ``_errors`` (the error tree), ``_closes``
  (the close-code table), ``_http`` (ASGI types, request helpers, the one JSON
  error answer), ``_stats``, ``_redact``, ``_version``;
- ``messages``: msgspec Structs for every wire message and the two codecs;
- ``protocol``: the per-client state machine, pure and synchronous;
- ``namespaces``, ``limits``, ``auth``, ``chat``: the rules it applies and the
  typed payloads it ships (chat messages, notifications); ``_jwt``: JWT
  verification (``JWTAuthenticator``);
- ``_connection``: a client's bounded send queue and the ``SessionHost``
  interface the hub hands it; ``_session``: the one session path (admit,
  authenticate, open, welcome, run, forget) for both transports,
  ``_websocket`` and ``_sse``, the only code awaiting a client's ASGI
  receive/send; ``_permissions``: who may subscribe, read and publish, for
  WebSocket, SSE and the HTTP API alike;
- ``hub``: the façade (lifecycle, the server-side API, command dispatch) over
  ``_registry``, ``_fanout``, ``_join``, ``_presence``, ``_commands``,
  ``_control`` and ``_brokercall``; ``_recovery``: joining a stream without
  gap or duplicate; ``_sync``: ``hub.sync``, the same API for threads;
- ``brokers``: how publications move between nodes (``Broker``, ``MemoryBroker``);
- ``app``, ``api``, ``middleware`` and ``cli``: the ASGI shells (``HubApp``,
  the server HTTP API ``HubAPI``, ``AuthMiddleware``) and ``hubbub serve``;
- ``contrib``: framework integrations above every shell (``contrib.django``);
- ``client``: the Python client and the HTTP API's client (``client.api``),
  which use ``messages``, ``chat`` and ``_api_wire`` but never the server.

Inner modules never import the shells: ``pyproject.toml``'s import-linter
contracts hold the layers (``docs/architecture.md``).
"""

from __future__ import annotations

from ._errors import AlreadySubscribed as AlreadySubscribed
from ._errors import AuthenticationFailed as AuthenticationFailed
from ._errors import BrokerUnavailable as BrokerUnavailable
from ._errors import HubbubError as HubbubError
from ._errors import HubNotRunning as HubNotRunning
from ._errors import InternalError as InternalError
from ._errors import InvalidData as InvalidData
from ._errors import InvalidMessage as InvalidMessage
from ._errors import MessageTooLarge as MessageTooLarge
from ._errors import MethodNotAllowed as MethodNotAllowed
from ._errors import NotFound as NotFound
from ._errors import PermissionDenied as PermissionDenied
from ._errors import RateLimited as RateLimited
from ._errors import StreamGone as StreamGone
from ._errors import Unavailable as Unavailable
from ._errors import UnknownNamespace as UnknownNamespace
from ._jwt import JWTAuthenticator as JWTAuthenticator
from ._redact import RedactTokens as RedactTokens
from ._redact import install_log_redaction as install_log_redaction
from ._stats import HubStats as HubStats
from ._sync import SyncHub as SyncHub
from ._version import __version__ as __version__
from .api import HubAPI as HubAPI
from .app import HubApp as HubApp
from .auth import Authenticator as Authenticator
from .auth import Identity as Identity
from .auth import find_token as find_token
from .brokers import Broker as Broker
from .brokers import Capability as Capability
from .brokers import HistoryPage as HistoryPage
from .brokers import MemoryBroker as MemoryBroker
from .brokers import Publication as Publication
from .brokers import UnsupportedCapability as UnsupportedCapability
from .chat import ChatMessage as ChatMessage
from .chat import Notification as Notification
from .hub import Hub as Hub
from .limits import Limits as Limits
from .limits import LocalRateLimiter as LocalRateLimiter
from .limits import RateLimiter as RateLimiter
from .messages import Position as Position
from .middleware import AuthMiddleware as AuthMiddleware
from .middleware import HubbubUser as HubbubUser
from .namespaces import ChannelClaim as ChannelClaim
from .namespaces import Namespace as Namespace

__all__ = [
    "AlreadySubscribed",
    "AuthMiddleware",
    "AuthenticationFailed",
    "Authenticator",
    "Broker",
    "BrokerUnavailable",
    "Capability",
    "ChannelClaim",
    "ChatMessage",
    "HistoryPage",
    "Hub",
    "HubAPI",
    "HubApp",
    "HubNotRunning",
    "HubStats",
    "HubbubError",
    "HubbubUser",
    "Identity",
    "InternalError",
    "InvalidData",
    "InvalidMessage",
    "JWTAuthenticator",
    "Limits",
    "LocalRateLimiter",
    "MemoryBroker",
    "MessageTooLarge",
    "MethodNotAllowed",
    "Namespace",
    "NotFound",
    "Notification",
    "PermissionDenied",
    "Position",
    "Publication",
    "RateLimited",
    "RateLimiter",
    "RedactTokens",
    "StreamGone",
    "SyncHub",
    "Unavailable",
    "UnknownNamespace",
    "UnsupportedCapability",
    "__version__",
    "find_token",
    "install_log_redaction",
]
