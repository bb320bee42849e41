"""What the configuration file may say: its tables as msgspec Structs, and how a refusal is said.

The Structs are the single source of truth of every key: msgspec decodes and
validates the file with them (unknown keys, wrong types and out-of-range values
are refused by msgspec itself), ``hubbub config schema`` is their JSON Schema,
and their attribute docstrings are its descriptions. They sit at the bottom of
the configuration modules so that loading, checking, building, showing and
reloading all speak of the same types, and :class:`ConfigError` with them,
because every one of those steps refuses with it.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from ._jwt import MAX_LEEWAY
from .api import DEFAULT_MAX_BODY

__all__ = [
    "HUB_SECTIONS",
    "PATH_KEYS",
    "SECRET_KEYS",
    "AccessLevel",
    "AdminConfig",
    "ApiConfig",
    "AuthConfig",
    "BrokerConfig",
    "Claim",
    "CommandLimit",
    "CommandType",
    "Config",
    "ConfigError",
    "HubConfig",
    "LimitsConfig",
    "LogLevel",
    "MetricsConfig",
    "NamespaceConfig",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PersonalConfig",
    "PositiveFloat",
    "PositiveInt",
    "Rule",
    "ServerConfig",
    "WebSocketCompression",
    "WebSocketImplementation",
]

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
WebSocketImplementation = Literal["auto", "websockets-sansio", "websockets", "wsproto", "none"]
WebSocketCompression = Literal["shared", "per-connection", "off"]
AccessLevel = Literal["anyone", "authenticated", "nobody"]
CommandType = Literal["subscribe", "unsubscribe", "publish", "history", "presence", "refresh"]


class _Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A table of the file: unknown keys are refused, values are immutable."""


class ServerConfig(_Section, frozen=True):
    """``[server]``: where and how uvicorn serves (changes need a restart)."""

    host: str = "127.0.0.1"
    """The address to bind; anything but loopback needs TLS (here or at a proxy)."""
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000
    ssl_certfile: str | None = None
    """PEM certificate (chain) for wss://; relative paths are relative to the file."""
    ssl_keyfile: str | None = None
    """The certificate's unencrypted PEM private key."""
    ws: WebSocketImplementation = "auto"
    """uvicorn's WebSocket implementation (auto picks websockets-sansio)."""
    ws_compression: WebSocketCompression = "shared"
    """permessage-deflate: "shared" (one compressed frame per publication for every
    client, no context between messages: least CPU), "per-connection" (each
    connection its own compressor with context: fewest bytes, most CPU), "off"."""
    shutdown_timeout: NonNegativeFloat = 5.0
    """Seconds uvicorn waits for connections after the hubs drained."""
    log_level: LogLevel = "info"


class HubConfig(_Section, frozen=True):
    """``[hub]``: the hub itself (changes need a restart)."""

    anonymous: bool = False
    """Admit WebSockets without a token even when JWT keys are configured
    (without ``[auth]`` keys every client is anonymous anyway)."""
    node: str | None = None
    """This node's id, shown in ``welcome.node``; random by default."""
    broker_timeout: PositiveFloat = 5.0
    drain_timeout: PositiveFloat = 10.0


class BrokerConfig(_Section, frozen=True):
    """``[broker]``: how publications move between nodes (changes need a restart)."""

    url: str = "memory://"
    """memory://, redis://host:port/db, rediss://..., unix:///path,
    redis+sentinel://h:p,h:p/service[/db], redis+shards://h:p,h:p[/db],
    redis+cluster://h:p,h:p, rediss+cluster://..., postgresql://user@host:port/db."""


class CommandLimit(_Section, frozen=True):
    """A budget of one command type: ``rate`` per second, ``burst`` at once."""

    rate: PositiveFloat
    burst: PositiveInt


class LimitsConfig(_Section, frozen=True):
    """``[limits]``: every field of :class:`hubbub.Limits` (reloadable: new connections)."""

    ping_interval: PositiveFloat = 25.0
    pong_timeout: PositiveFloat = 10.0
    max_message_size: PositiveInt = 64 * 1024
    max_invalid: PositiveInt = 10
    max_channels: PositiveInt = 128
    queue_messages: PositiveInt = 1000
    queue_bytes: PositiveInt = 1024 * 1024
    close_timeout: PositiveFloat = 5.0
    batch_bytes: PositiveInt = 64 * 1024
    command_rate: PositiveFloat = 50.0
    command_burst: PositiveInt = 100
    flood_refusals: PositiveInt = 50
    flood_window: PositiveFloat = 10.0
    command_limits: dict[CommandType, CommandLimit] = msgspec.field(default_factory=dict)
    expiry_grace: PositiveFloat = 30.0
    first_message_timeout: PositiveFloat | None = None
    handshake_rate: PositiveFloat | None = None
    handshake_burst: PositiveInt = 20
    max_connections_per_ip: PositiveInt | None = None
    max_connections_per_user: PositiveInt | None = None
    trusted_proxies: list[str] = msgspec.field(default_factory=list)


class AuthConfig(_Section, frozen=True):
    """``[auth]``: JWT verification, token carriers and the Origin allow-list.

    Give at most one key source: ``secret``/``secret_file`` (HMAC),
    ``public_key_file``, ``jwks_file`` or ``jwks_url``. Any of them turns
    anonymous WebSockets off unless ``hub.anonymous = true``.
    """

    secret: str | list[str] | None = None
    """HMAC secret(s) (32+ bytes for HS256). Prefer secret_file or HUBBUB_JWT_SECRET."""
    secret_file: str | None = None
    """A file holding the HMAC secret(s), one per line (several while rotating)."""
    public_key_file: str | list[str] | None = None
    """PEM public key file(s) (RS*/PS*/ES*/EdDSA)."""
    jwks_file: str | None = None
    """A JSON file holding a JWKS document; keys are chosen by ``kid``."""
    jwks_url: str | None = None
    """https:// URL of a JWKS (fetched and cached); needs ``algorithms``."""
    jwks_cache: PositiveFloat = 300.0
    algorithms: list[str] | None = None
    """Accepted algorithms; by default HS256 for a secret, the key type's otherwise."""
    audience: str | list[str] | None = None
    issuer: str | None = None
    leeway: Annotated[float, Meta(ge=0, le=MAX_LEEWAY)] = 30.0
    require_exp: bool = True
    typ: str | None = None
    """The expected ``typ`` header (e.g. "at+jwt"), checked when given."""
    query: str = "token"
    """The query parameter carrying the token; "" turns it off."""
    cookie: str = ""
    """The cookie carrying the token; "" (the default) turns it off. Needs allowed_origins."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    """scheme://host[:port] allowed to open WebSockets (and to use the cookie)."""
    require_origin: bool = False
    """With allowed_origins, refuse WebSockets without an Origin header."""


class ApiConfig(_Section, frozen=True):
    """``[api]``: the server HTTP API under ``/api/``; off (404) without a key."""

    keys: list[str] = msgspec.field(default_factory=list)
    """Accepted keys (16+ characters); several while rotating. Prefer keys_file."""
    keys_file: str | None = None
    """A file holding the keys, one per line."""
    max_body: PositiveInt = DEFAULT_MAX_BODY


class AdminConfig(_Section, frozen=True):
    """``[admin]``: the live admin page at ``/admin``; off (404) without a key."""

    key: str | None = None
    key_file: str | None = None


class MetricsConfig(_Section, frozen=True):
    """``[metrics]``: Prometheus ``/metrics``."""

    enabled: bool = True
    key: str | None = None
    """The key /metrics asks for (16+ characters)."""
    key_file: str | None = None
    public: bool = False
    """Serve /metrics without a key on a non-loopback host."""


class Claim(_Section, frozen=True):
    """``{ claim = "rooms" }``: the token's claim (a list of strings) must name the channel.

    ``ns:*`` in the claim names every channel of namespace ``ns`` (``*``: the
    default namespace). See :class:`hubbub.ChannelClaim`.
    """

    claim: Annotated[str, Meta(min_length=1)]


Rule = AccessLevel | Claim


class NamespaceConfig(_Section, frozen=True):
    """``[[namespaces]]``: one namespace's options (:class:`hubbub.Namespace`).

    Options left out take their default; with ``chat = true`` the defaults are
    those of :meth:`hubbub.Namespace.chat` (history 100 for a day, replayed on
    join, presence with join/leave events, the chat message schema).
    """

    name: str
    """The part of channel names before the colon; "" is the default namespace."""
    chat: bool = False
    max_length: PositiveInt | None = None
    """With chat: the longest message text (2,000 characters by default)."""
    subscribe: Rule = "anyone"
    publish: Rule = "anyone"
    history_access: Rule | None = None
    """Who may read history without subscribing; by default whoever may subscribe."""
    presence_access: Rule | None = None
    """Who may read presence without subscribing; by default whoever may subscribe."""
    echo: bool = True
    slow_consumer: Literal["disconnect", "drop_oldest"] = "disconnect"
    max_payload: PositiveInt | None = None
    history_size: NonNegativeInt | None = None
    """0 by default (100 with chat)."""
    history_ttl: PositiveFloat | None = None
    """300 seconds by default (a day with chat)."""
    presence: bool | None = None
    """false by default (true with chat)."""
    presence_ttl: PositiveFloat = 60.0
    join_leave: bool | None = None
    """false by default (true with chat)."""
    join_leave_per_user: bool = False
    idempotency_window: PositiveFloat = 120.0
    replay: NonNegativeInt | None = None
    """0 by default (history_size with chat)."""


class PersonalConfig(_Section, frozen=True):
    """``[personal]``: options of the personal channels ``#<user>`` (``Hub(personal=...)``)."""

    echo: bool = True
    slow_consumer: Literal["disconnect", "drop_oldest"] = "disconnect"
    max_payload: PositiveInt | None = None
    history_size: NonNegativeInt = 100
    history_ttl: PositiveFloat = 7 * 24 * 3600.0
    presence: bool = False
    presence_ttl: PositiveFloat = 60.0
    join_leave: bool = False
    join_leave_per_user: bool = False
    idempotency_window: PositiveFloat = 120.0
    replay: NonNegativeInt = 0


class Config(_Section, frozen=True):
    """The whole file. Every table is optional; an empty file is a valid configuration."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    hub: HubConfig = msgspec.field(default_factory=HubConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    namespaces: list[NamespaceConfig] = msgspec.field(default_factory=list)
    personal: PersonalConfig = msgspec.field(default_factory=PersonalConfig)


HUB_SECTIONS: Final = ("hub", "broker", "limits", "namespaces", "personal")
"""Tables that shape the hub: refused beside a TARGET, which builds its own hub."""

SECRET_KEYS: Final = frozenset({"auth.secret", "api.keys", "admin.key", "metrics.key"})
"""Keys shown as ``***`` by ``hubbub config check`` and never logged."""

PATH_KEYS: Final = (
    "server.ssl_certfile",
    "server.ssl_keyfile",
    "auth.secret_file",
    "auth.public_key_file",
    "auth.jwks_file",
    "api.keys_file",
    "admin.key_file",
    "metrics.key_file",
)
"""File names in the file: relative ones are taken relative to the file's directory."""


# -- errors ----------------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration refused: the key's dotted path, why, a hint, and where it came from.

    ``str(error)`` is the one line ``hubbub`` prints:
    ``hubbub.toml:12: namespaces[1].history_size: expected an integer >= 0 (hint: ...)``.
    """

    def __init__(self, key: str, message: str, hint: str = "", where: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.message = message
        self.hint = hint
        self.where = where

    def at(self, where: str) -> ConfigError:
        """The same error, said to come from ``where`` (``file:line``, a flag)."""
        return ConfigError(self.key, self.message, self.hint, where)

    def __str__(self) -> str:
        parts = [p for p in (self.where, self.key) if p]
        text = ": ".join([*parts, self.message])
        return f"{text} ({self.hint})" if self.hint else text
