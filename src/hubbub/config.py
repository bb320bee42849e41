"""The configuration file of ``hubbub serve``: one TOML file for every option of the server.

A team whose backend is not Python runs hubbub as a standalone server and
configures it without writing code: ``hubbub serve --config hubbub.toml``. The
msgspec Structs below are the single source of truth for every key: they decode
and validate the file (unknown keys, wrong types and out-of-range values are
refused by msgspec itself), give ``hubbub config schema`` its JSON Schema, and
the command-line flags and ``HUBBUB_*`` variables of ``hubbub serve`` are mapped
onto them (:data:`OPTIONS`), with the precedence flag > environment > file >
default. Python users build :class:`~hubbub.Hub` and friends directly; this
module is the layer that builds them from a file (``docs/config.md``).

Every mistake is a :class:`ConfigError`: one line naming the file, the line, the
key's dotted path (``namespaces[1].history_size``) and a hint. tomllib keeps no
positions, so :func:`find_line` finds a key's line from the text itself.

Some options can change while the server runs (keys, limits, allowed origins,
JWT verification): :class:`Reloader` applies a new file to the running objects
(``hubbub serve`` does on SIGHUP) and reports what needs a restart.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import math
import os
import re
import ssl
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from ._admin import AdminPage
from ._demo import DemoAuthenticator
from ._jwt import MAX_LEEWAY, JWTAuthenticator
from ._keys import validate_key
from .api import DEFAULT_MAX_BODY, HubAPI
from .app import HubApp
from .auth import normalise_origin
from .brokers import Broker, broker_from_url
from .hub import Hub
from .limits import COMMAND_TYPES, Limits
from .middleware import AuthMiddleware
from .namespaces import AccessRule, ChannelClaim, Namespace

__all__ = [
    "OPTIONS",
    "AdminConfig",
    "ApiConfig",
    "AuthConfig",
    "BrokerConfig",
    "Claim",
    "CommandLimit",
    "Config",
    "ConfigError",
    "HubConfig",
    "LimitsConfig",
    "MetricsConfig",
    "NamespaceConfig",
    "Option",
    "PersonalConfig",
    "Reloader",
    "Served",
    "ServerConfig",
    "api_keys_of",
    "build_app",
    "build_demo_hub",
    "dump",
    "example",
    "find_line",
    "hmac_secret_of",
    "is_loopback",
    "load",
    "loads",
    "schema",
    "with_overrides",
]

logger = logging.getLogger("hubbub")

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
WebSocketImplementation = Literal["auto", "websockets-sansio", "websockets", "wsproto", "none"]
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
    """memory://, redis://host:port/db, rediss://..., unix:///path, redis+cluster://h:p,h:p,
    rediss+cluster://..., postgresql://user@host:port/db."""


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

_SECTION_TYPES: Final[dict[str, type[Struct]]] = {
    "": Config,
    "server": ServerConfig,
    "hub": HubConfig,
    "broker": BrokerConfig,
    "limits": LimitsConfig,
    "limits.command_limits.*": CommandLimit,
    "auth": AuthConfig,
    "api": ApiConfig,
    "admin": AdminConfig,
    "metrics": MetricsConfig,
    "namespaces": NamespaceConfig,
    "personal": PersonalConfig,
}


# -- the command line and the environment ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One ``hubbub serve`` flag, its ``HUBBUB_*`` variable and the file key it sets."""

    flag: str
    env: str
    key: str
    kind: Literal["str", "int", "float", "bool", "list"] = "str"
    """How the text of the flag or variable is read (``list``: comma-separated in a variable)."""


OPTIONS: Final = (
    Option("--host", "HUBBUB_HOST", "server.host"),
    Option("--port", "HUBBUB_PORT", "server.port", "int"),
    Option("--ssl-certfile", "HUBBUB_SSL_CERTFILE", "server.ssl_certfile"),
    Option("--ssl-keyfile", "HUBBUB_SSL_KEYFILE", "server.ssl_keyfile"),
    Option("--ws", "HUBBUB_WS", "server.ws"),
    Option("--shutdown-timeout", "HUBBUB_SHUTDOWN_TIMEOUT", "server.shutdown_timeout", "float"),
    Option("--log-level", "HUBBUB_LOG_LEVEL", "server.log_level"),
    Option("--anonymous", "HUBBUB_ANONYMOUS", "hub.anonymous", "bool"),
    Option("--broker", "HUBBUB_BROKER", "broker.url"),
    Option("--ping", "HUBBUB_PING", "limits.ping_interval", "float"),
    Option("--pong-timeout", "HUBBUB_PONG_TIMEOUT", "limits.pong_timeout", "float"),
    Option("--max-message-size", "HUBBUB_MAX_MESSAGE_SIZE", "limits.max_message_size", "int"),
    Option("--trusted-proxy", "HUBBUB_TRUSTED_PROXIES", "limits.trusted_proxies", "list"),
    Option("--jwt-secret", "HUBBUB_JWT_SECRET", "auth.secret"),
    Option("--jwt-public-key", "HUBBUB_JWT_PUBLIC_KEY", "auth.public_key_file"),
    Option("--jwt-audience", "HUBBUB_JWT_AUDIENCE", "auth.audience"),
    Option("--jwt-issuer", "HUBBUB_JWT_ISSUER", "auth.issuer"),
    Option("--jwt-cookie", "HUBBUB_JWT_COOKIE", "auth.cookie"),
    Option("--allowed-origin", "HUBBUB_ALLOWED_ORIGINS", "auth.allowed_origins", "list"),
    Option("--require-origin", "HUBBUB_REQUIRE_ORIGIN", "auth.require_origin", "bool"),
    Option("--api-key", "HUBBUB_API_KEY", "api.keys", "list"),
    Option("--admin-key", "HUBBUB_ADMIN_KEY", "admin.key"),
    Option("--metrics-key", "HUBBUB_METRICS_KEY", "metrics.key"),
    Option("--public-metrics", "HUBBUB_PUBLIC_METRICS", "metrics.public", "bool"),
)
"""Every flag of ``hubbub serve`` that sets a file key (``docs/config.md`` has the table)."""


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


# -- loading ---------------------------------------------------------------------------


def load(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, decode and check the file at ``path``; ``HUBBUB_*`` in ``environ`` override it.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or holds a mistake;
            ``where`` names the file and line (or the variable).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror or exc}", where=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "", f"not UTF-8 text (byte {exc.start})", "a TOML file is UTF-8", where=name
        ) from None
    return loads(text, name=name, environ=environ)


def loads(text: str, *, name: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Decode and check TOML ``text`` (``name`` is what errors call it); see :func:`load`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"{name}:{found.group(1)}" if found else name
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        raise ConfigError(
            "",
            f"not valid TOML: {reason}" + (f" at column {found.group(2)}" if found else ""),
            "see https://toml.io",
            where=where,
        ) from None
    config = _convert(document, text, name)
    config = _absolute_paths(config, Path(name).resolve().parent)
    try:
        _check_file(config)
        check(config)
    except ConfigError as exc:
        raise exc.at(_where(name, text, exc.key)) from None
    if environ is not None:
        overrides, sources = environment_overrides(environ)
        config = with_overrides(config, overrides, sources, check_now=True)
    return config


def _where(name: str, text: str, key: str) -> str:
    line = find_line(text, key)
    return f"{name}:{line}" if line is not None else name


def _convert(document: dict[str, Any], text: str, name: str) -> Config:
    try:
        return msgspec.convert(document, Config)
    except msgspec.ValidationError as exc:
        key, message, hint = _explain(str(exc), document)
        raise ConfigError(key, message, hint, _where(name, text, key)) from None


def _explain(error: str, document: Any) -> tuple[str, str, str]:
    """msgspec's ``Expected `int` >= 0 - at `$.namespaces[1].history_size``` in our words."""
    message, _, at = error.rpartition(" - at `")
    if not message:
        message, at = error, "$`"
    path = at.rstrip("`").removeprefix("$").lstrip(".")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", message)
    if unknown:
        field_name = unknown.group(1)
        key = f"{path}.{field_name}" if path else field_name
        known = _field_names(path)
        close = difflib.get_close_matches(field_name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(known)
        return key, "unknown key", hint
    missing = re.fullmatch(r"Object missing required field `(.+)`", message)
    if missing:
        key = f"{path}.{missing.group(1)}" if path else missing.group(1)
        return key, "missing required key", f"add {missing.group(1)} = ..."
    value = _value_at(document, path)
    got = f", got {_show(value)}" if value is not _MISSING else ""
    words = re.sub(r", got `?[A-Za-z]+`?$", "", message)
    words = words.replace("Expected `", "expected `").replace("`", "")
    words = re.sub(r"\bstr\b", "a string", words)
    words = re.sub(r"\bint\b", "an integer", words)
    words = re.sub(r"\bfloat\b", "a number", words)
    words = re.sub(r"\bbool\b", "true or false", words)
    words = re.sub(r"\barray\b", "an array", words)
    words = re.sub(r"\bobject\b", "a table", words)
    return path, words + got, _HINTS.get(_generic(path), "see hubbub config example")


_MISSING: Final = object()

_HINTS: Final = {
    "server.port": "a TCP port, 1-65535",
    "server.log_level": "one of critical, error, warning, info, debug, trace",
    "server.ws": "one of auto, websockets-sansio, websockets, wsproto, none",
    "namespaces.subscribe": 'anyone, authenticated, nobody or { claim = "name" }',
    "namespaces.publish": 'anyone, authenticated, nobody or { claim = "name" }',
    "namespaces.history_access": 'anyone, authenticated, nobody or { claim = "name" }',
    "namespaces.presence_access": 'anyone, authenticated, nobody or { claim = "name" }',
    "auth.leeway": f"seconds of clock skew, 0-{MAX_LEEWAY:.0f}",
    "limits.command_limits": "keys: " + ", ".join(sorted(COMMAND_TYPES)),
}


def _generic(path: str) -> str:
    """``namespaces[2].publish`` → ``namespaces.publish``: the key without indices."""
    return re.sub(r"\[\d+\]", "", path)


def _value_at(document: Any, path: str) -> Any:
    value = document
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("[") and isinstance(value, list):
            index = int(part[1:-1])
            if index >= len(value):
                return _MISSING
            value = value[index]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return _MISSING
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _field_names(path: str) -> list[str]:
    generic = _generic(path)
    if generic.startswith("limits.command_limits."):
        generic = "limits.command_limits.*"
    section = _SECTION_TYPES.get(generic)
    if section is None:
        for rule in ("subscribe", "publish", "history_access", "presence_access"):
            if generic == f"namespaces.{rule}":
                section = Claim
    return list(section.__struct_fields__) if section is not None else []


def _absolute_paths(config: Config, base: Path) -> Config:
    document = msgspec.to_builtins(config)
    for key in PATH_KEYS:
        table, name = key.split(".")
        value = document[table].get(name)
        if isinstance(value, str) and value:
            document[table][name] = str(base / value)
        elif isinstance(value, list):
            document[table][name] = [str(base / v) for v in value]
    return msgspec.convert(document, Config)


def _check_file(config: Config) -> None:
    """Rules of the file that the flags and the Python API do not have."""
    auth = config.auth
    if auth.cookie and not auth.allowed_origins:
        raise ConfigError(
            "auth.cookie",
            "the cookie carrier needs auth.allowed_origins",
            "a cookie is sent by the browser from any page; list the origins whose pages "
            "may use it, or leave cookie out",
        )


def environment_overrides(
    environ: Mapping[str, str],
) -> tuple[dict[str, Any], dict[str, str]]:
    """The file keys set by ``HUBBUB_*`` variables: ``({key: value}, {key: variable})``.

    Values are converted as the flags convert them; a bad one raises ConfigError
    naming the variable.
    """
    overrides: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None:
            continue
        try:
            overrides[option.key] = convert_option(option, raw)
        except ValueError as exc:
            raise ConfigError(
                option.key, f"{option.env}={raw!r}: {exc}", where=option.env
            ) from None
        sources[option.key] = option.env
    return overrides, sources


def convert_option(option: Option, raw: str) -> Any:
    """A ``HUBBUB_*`` variable's text as the value of its file key; ValueError says why."""
    if option.kind == "list":
        return [v.strip() for v in raw.split(",") if v.strip()]
    if option.kind == "bool":
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("", "0", "false", "no", "off"):
            return False
        raise ValueError("not 1/true/yes/on or 0/false/no/off")
    if option.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError("not a whole number") from None
    if option.kind == "float":
        try:
            number = float(raw)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    return raw


def with_overrides(
    config: Config,
    overrides: Mapping[str, Any],
    sources: Mapping[str, str] | None = None,
    *,
    check_now: bool = False,
) -> Config:
    """``config`` with the dotted ``overrides`` (from flags or variables) applied.

    Raises:
        ConfigError: a value does not fit its key; ``where`` is the key's source.
    """
    if not overrides:
        return config
    document = msgspec.to_builtins(config)
    for key, value in overrides.items():
        table, name = key.split(".")
        document[table][name] = value
    sources = sources or {}
    try:
        merged = msgspec.convert(document, Config)
    except msgspec.ValidationError as exc:
        key, message, hint = _explain(str(exc), document)
        raise ConfigError(key, message, hint, sources.get(key, "")) from None
    if check_now:
        try:
            check(merged)
        except ConfigError as exc:
            raise exc.at(sources.get(exc.key, exc.where)) from None
    return merged


# -- checking and building ---------------------------------------------------------------


def check(config: Config) -> None:
    """Refuse impossible combinations and values the objects would refuse, without I/O.

    Files named in the configuration are read by :func:`build_parts`, not here.
    """
    auth = config.auth
    sources = [
        k
        for k in ("secret", "secret_file", "public_key_file", "jwks_file", "jwks_url")
        if getattr(auth, k) not in (None, [], "")
    ]
    if len(sources) > 1:
        raise ConfigError(
            f"auth.{sources[1]}",
            f"one JWT key source, not both auth.{sources[0]} and auth.{sources[1]}",
            "give exactly one of secret, secret_file, public_key_file, jwks_file, jwks_url",
        )
    if not sources:
        for name in ("audience", "issuer", "algorithms"):
            if getattr(auth, name) is not None:
                raise ConfigError(
                    f"auth.{name}",
                    "needs a JWT key",
                    "add auth.secret_file, auth.public_key_file, auth.jwks_file or auth.jwks_url",
                )
    if auth.jwks_url is not None and auth.algorithms is None:
        raise ConfigError("auth.jwks_url", "needs auth.algorithms", 'e.g. algorithms = ["RS256"]')
    if auth.require_origin and not auth.allowed_origins:
        raise ConfigError(
            "auth.require_origin",
            "needs auth.allowed_origins",
            "without an allow-list no Origin is checked",
        )
    for index, origin in enumerate(auth.allowed_origins):
        try:
            normalise_origin(origin)
        except ValueError as exc:
            raise ConfigError(
                f"auth.allowed_origins[{index}]", str(exc), "e.g. https://app.example.com"
            ) from None
    server = config.server
    if server.ssl_keyfile and not server.ssl_certfile:
        raise ConfigError(
            "server.ssl_keyfile", "a TLS key without a certificate", "add server.ssl_certfile"
        )
    for index, proxy in enumerate(config.limits.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"limits.trusted_proxies[{index}]",
                f"not an address or network: {proxy!r}",
                "e.g. 127.0.0.1 or 10.0.0.0/8",
            ) from None
    _check_keys(config)
    _check_broker_url(config.broker.url)
    names: dict[str, int] = {}
    authenticated = bool(sources)
    for index, namespace in enumerate(config.namespaces):
        key = f"namespaces[{index}]"
        if namespace.name in names:
            raise ConfigError(
                f"{key}.name",
                f"namespace {namespace.name!r} is configured twice "
                f"(namespaces[{names[namespace.name]}])",
                "one [[namespaces]] table per name",
            )
        names[namespace.name] = index
        _check_namespace(key, namespace, authenticated)
    namespace_options(config)  # what Namespace itself refuses, named by key
    limits_of(config)


def _check_keys(config: Config) -> None:
    for index, key in enumerate(config.api.keys):
        _valid_key(f"api.keys[{index}]", key, "an API key")
    for table, what in (("admin", "the admin key"), ("metrics", "the metrics key")):
        section = getattr(config, table)
        if section.key is not None:
            _valid_key(f"{table}.key", section.key, what)
        if section.key is not None and section.key_file is not None:
            raise ConfigError(
                f"{table}.key_file", f"both {table}.key and {table}.key_file", "give one of them"
            )
    if config.api.keys and config.api.keys_file is not None:
        raise ConfigError("api.keys_file", "both api.keys and api.keys_file", "give one of them")


def _valid_key(key: str, value: str, what: str) -> None:
    try:
        validate_key(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            key,
            str(exc).split(" (e.g.")[0],
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'",
        ) from None


def _shown_url(url: str) -> str:
    """A broker URL fit for a message: never its password."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def _check_broker_url(url: str) -> None:
    shown = repr(_shown_url(url))
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(
            "broker.url", f"{shown}: {exc}", "e.g. redis://127.0.0.1:6379/0"
        ) from None
    hosts = parts.netloc.rpartition("@")[2].split(",") if "+cluster" in parts.scheme else [None]
    for host in hosts:
        try:
            (parts if host is None else urlsplit(f"//{host}")).port  # noqa: B018 - raises
        except ValueError as exc:
            raise ConfigError(
                "broker.url",
                f"{shown}: the port is not a number in 0-65535 ({exc})",
                "host:port",
            ) from None
    if parts.scheme.lower() in ("redis", "rediss") and not parts.hostname:
        raise ConfigError("broker.url", f"{shown} names no host", "use redis://host:port/db")


def _check_namespace(key: str, namespace: NamespaceConfig, authenticated: bool) -> None:
    if namespace.max_length is not None and not namespace.chat:
        raise ConfigError(f"{key}.max_length", "only for chat namespaces", "add chat = true")
    history = (
        namespace.history_size
        if namespace.history_size is not None
        else (100 if namespace.chat else 0)
    )
    if namespace.slow_consumer == "drop_oldest" and history > 0:
        raise ConfigError(
            f"{key}.slow_consumer",
            "drop_oldest drops messages, which would leave gaps in a stream with history",
            "use drop_oldest only with history_size = 0",
        )
    presence = namespace.presence if namespace.presence is not None else namespace.chat
    if namespace.join_leave and not presence:
        raise ConfigError(
            f"{key}.join_leave", "join/leave events need presence", "add presence = true"
        )
    replay = (
        namespace.replay if namespace.replay is not None else (history if namespace.chat else 0)
    )
    if replay > history:
        raise ConfigError(
            f"{key}.replay",
            f"replays {replay} but history_size is {history}",
            "replay <= history_size",
        )
    for rule_name in ("subscribe", "publish", "history_access", "presence_access"):
        rule = getattr(namespace, rule_name)
        if not authenticated and (rule == "authenticated" or isinstance(rule, Claim)):
            raise ConfigError(
                f"{key}.{rule_name}",
                f"{_rule_text(rule)} needs JWT authentication, and [auth] has no key",
                "add auth.secret_file (or another key source), or HUBBUB_JWT_SECRET",
            )


def _rule_text(rule: Rule) -> str:
    return f"claim {rule.claim!r}" if isinstance(rule, Claim) else repr(rule)


def _rule(rule: Rule | None) -> AccessRule | None:
    if isinstance(rule, Claim):
        return ChannelClaim(rule.claim)
    return rule


def namespace_options(config: Config) -> tuple[list[Namespace], Namespace]:
    """The :class:`~hubbub.Namespace` objects of ``[[namespaces]]`` and ``[personal]``."""
    built: list[Namespace] = []
    for index, section in enumerate(config.namespaces):
        options: dict[str, Any] = {
            "subscribe": _rule(section.subscribe),
            "publish": _rule(section.publish),
            "history_access": _rule(section.history_access),
            "presence_access": _rule(section.presence_access),
            "echo": section.echo,
            "slow_consumer": section.slow_consumer,
            "presence_ttl": section.presence_ttl,
            "join_leave_per_user": section.join_leave_per_user,
            "idempotency_window": section.idempotency_window,
        }
        for name in (
            "max_payload",
            "history_size",
            "history_ttl",
            "presence",
            "join_leave",
            "replay",
        ):
            value = getattr(section, name)
            if value is not None:
                options[name] = value
        try:
            if section.chat:
                if section.max_length is not None:
                    options["max_length"] = section.max_length
                built.append(Namespace.chat(section.name, **options))
            else:
                built.append(Namespace(name=section.name, **options))
        except (TypeError, ValueError) as exc:
            raise _from_python(f"namespaces[{index}]", "Namespace", exc) from None
    personal = config.personal
    try:
        mine = Namespace(
            name="personal",
            **{name: getattr(personal, name) for name in personal.__struct_fields__},
        )
    except (TypeError, ValueError) as exc:
        raise _from_python("personal", "Namespace", exc) from None
    return built, mine


def _from_python(key: str, owner: str, exc: Exception) -> ConfigError:
    """An error of a hubbub object's own checks, named by the key it came from."""
    message = str(exc)
    found = re.search(rf"{owner}\.(\w+)", message)
    if found:
        key = f"{key}.{found.group(1)}" if key else f"{owner.lower()}.{found.group(1)}"
        message = message.replace(f"{owner}.{found.group(1)}", found.group(1))
    return ConfigError(key, message, "see hubbub config example")


def limits_of(config: Config) -> Limits:
    """The :class:`~hubbub.Limits` of ``[limits]``."""
    section = config.limits
    options = {name: getattr(section, name) for name in section.__struct_fields__}
    options["command_limits"] = {
        kind: (budget.rate, budget.burst) for kind, budget in section.command_limits.items()
    }
    options["trusted_proxies"] = tuple(section.trusted_proxies)
    try:
        return Limits(**options)
    except (TypeError, ValueError) as exc:
        raise _from_python("limits", "Limits", exc) from None


def _read_lines(key: str, path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            lines = [line.strip() for line in file.read().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            key, f"{path!r}: cannot read: {reason}", "check the path and its mode"
        ) from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ConfigError(key, f"{path!r} holds no key", "one key per line")
    return lines


def _read_bytes(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(
            key, f"{path!r}: cannot read: {exc.strerror or exc}", "check the path"
        ) from None


def authenticator_of(config: Config) -> JWTAuthenticator | None:
    """The :class:`~hubbub.JWTAuthenticator` of ``[auth]``, or ``None`` without a key source.

    Reads the key files it names.
    """
    auth = config.auth
    common: dict[str, Any] = {
        "jwks_cache": auth.jwks_cache,
        "algorithms": auth.algorithms,
        "audience": auth.audience,
        "issuer": auth.issuer,
        "leeway": auth.leeway,
        "require_exp": auth.require_exp,
        "typ": auth.typ,
        "cookie": auth.cookie or None,
        "query": auth.query or None,
        "allowed_origins": auth.allowed_origins,
    }
    key = "auth"
    files: list[str] = []
    if auth.secret is not None or auth.secret_file is not None:
        if auth.secret_file is not None:
            key = "auth.secret_file"
            secret: Any = _read_lines(key, auth.secret_file)
        else:
            key = "auth.secret"
            secret = auth.secret
        common["secret"] = secret
    elif auth.public_key_file is not None:
        key = "auth.public_key_file"
        files = (
            [auth.public_key_file]
            if isinstance(auth.public_key_file, str)
            else auth.public_key_file
        )
        common["public_key"] = [_read_bytes(key, path) for path in files]
    elif auth.jwks_file is not None:
        key = "auth.jwks_file"
        try:
            common["jwks"] = json.loads(_read_bytes(key, auth.jwks_file))
        except ValueError as exc:
            raise ConfigError(
                key, f"not a JSON JWKS: {exc}", 'a file holding {"keys": [...]}'
            ) from None
    elif auth.jwks_url is not None:
        key = "auth.jwks_url"
        common["jwks_url"] = auth.jwks_url
    else:
        return None
    try:
        return JWTAuthenticator(**common)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for name in ("algorithms", "audience", "issuer", "leeway"):
            if message.startswith(name):
                key = f"auth.{name}"
        if key == "auth.public_key_file":
            message = f"{', '.join(repr(f) for f in files)}: {message}"
        raise ConfigError(key, message, "see docs/auth.md") from None


def broker_of(config: Config) -> Broker:
    """The broker ``broker.url`` names (not started: nothing is connected yet)."""
    url = config.broker.url
    _check_broker_url(url)
    try:
        return broker_from_url(url)
    except ValueError as exc:
        message = str(exc).replace(f" {url!r}", "")
        raise ConfigError("broker.url", f"{_shown_url(url)!r}: {message}", "") from None


def check_tls(config: Config) -> None:
    """The certificate and key load now, rather than failing inside uvicorn with a traceback."""
    server = config.server
    if not server.ssl_certfile:
        if server.ssl_keyfile:
            raise ConfigError(
                "server.ssl_keyfile", "a TLS key without a certificate", "add ssl_certfile"
            )
        return
    for key, path in (
        ("server.ssl_certfile", server.ssl_certfile),
        ("server.ssl_keyfile", server.ssl_keyfile),
    ):
        if path:
            _read_bytes(key, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A key behind a passphrase would make OpenSSL prompt on the terminal.
        context.load_cert_chain(server.ssl_certfile, server.ssl_keyfile, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            "server.ssl_certfile",
            f"{server.ssl_certfile!r}: not a PEM certificate and its unencrypted private key "
            f"({reason})",
            "PEM files; the key without a passphrase",
        ) from None


def hmac_secret_of(config: Config) -> str | None:
    """The first HMAC secret of ``[auth]`` (what ``hubbub token`` signs with), or ``None``."""
    auth = config.auth
    if auth.secret_file is not None:
        secrets = _read_lines("auth.secret_file", auth.secret_file)
    elif auth.secret is None:
        return None
    else:
        secrets = [auth.secret] if isinstance(auth.secret, str) else list(auth.secret)
    return secrets[0] if secrets else None


def api_keys_of(config: Config) -> list[str]:
    """``api.keys``, or the keys of ``api.keys_file``."""
    if config.api.keys_file is not None:
        keys = _read_lines("api.keys_file", config.api.keys_file)
        for index, key in enumerate(keys):
            _valid_key(f"api.keys_file (line {index + 1})", key, "an API key")
        return keys
    return list(config.api.keys)


def key_of(config: Config, table: Literal["admin", "metrics"]) -> str | None:
    """``admin.key``/``metrics.key``, or the first line of its ``key_file``."""
    section: AdminConfig | MetricsConfig = getattr(config, table)
    if section.key_file is not None:
        key = _read_lines(f"{table}.key_file", section.key_file)[0]
        _valid_key(f"{table}.key_file", key, f"the {table} key")
        return key
    return section.key


def build_parts(config: Config) -> None:
    """Everything :func:`build_app` would build and read, checked: ``hubbub config check``."""
    check(config)
    check_tls(config)
    namespace_options(config)
    limits_of(config)
    authenticator_of(config)
    broker_of(config)
    api_keys_of(config)
    key_of(config, "admin")
    key_of(config, "metrics")


# -- the served app --------------------------------------------------------------------


def build_demo_hub(**options: Any) -> Hub:
    """The hub ``hubbub serve`` runs without an argument or a file.

    The memory broker; visitors identified by the name the page sends with
    ``?name=`` (trusted: a demo only), anonymous clients otherwise; the default
    namespace where anyone may subscribe and publish; and a ``chat`` namespace
    (chat schema, the last 100 messages replayed on join, presence, join/leave
    events) for the demo page's rooms.
    """
    options.setdefault("anonymous", True)
    options.setdefault("authenticator", DemoAuthenticator())
    return Hub(namespaces=[Namespace(), Namespace.chat("chat")], **options)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 (Python 3.11 calls it not loopback)
    return address.is_loopback


@dataclass
class Served:
    """What :func:`build_app` built: the ASGI app to serve and the objects a reload changes."""

    app: Any
    """The ASGI app to hand to the server (the middleware, a HubApp, or the target)."""
    hub: Hub | None = None
    hub_app: HubApp | None = None
    middleware: AuthMiddleware | None = None
    authenticator: JWTAuthenticator | None = None


def build_app(
    config: Config, target: Any = None, *, demo: bool = False, given: Iterable[str] = ()
) -> Served:
    """Build what ``hubbub serve`` serves from ``config``.

    Args:
        config: the effective configuration.
        target: a :class:`~hubbub.Hub`, :class:`~hubbub.HubApp` or any ASGI app
            to serve instead of a hub built from ``config`` (``hubbub serve
            module:attr``); it builds its own hub, so ``hub``/``broker``/
            ``namespaces``/``personal`` must be left out (``given`` says which
            keys were set; the caller refuses them).
        demo: without a target, serve the demo hub (``hubbub serve`` without a
            file) instead of the configured namespaces.

    Raises:
        ConfigError: anything that cannot be built.
    """
    check(config)
    check_tls(config)
    limits = limits_of(config)
    authenticator = authenticator_of(config)
    api_keys = api_keys_of(config)
    admin_key = key_of(config, "admin")
    metrics_key = key_of(config, "metrics")
    served = Served(app=None, authenticator=authenticator)
    hub: Hub | None
    if target is None:
        broker = broker_of(config)
        options: dict[str, Any] = {"limits": limits, "broker": broker}
        if demo:
            if authenticator is not None:
                options.update(authenticator=authenticator, anonymous=config.hub.anonymous)
            hub = build_demo_hub(**options)
        else:
            namespaces, personal = namespace_options(config)
            hub = Hub(
                namespaces=namespaces or None,
                personal=personal,
                authenticator=authenticator,
                anonymous=config.hub.anonymous or authenticator is None,
                node=config.hub.node,
                broker_timeout=config.hub.broker_timeout,
                drain_timeout=config.hub.drain_timeout,
                **options,
            )
        app: Any = HubApp(hub, demo=demo)
    elif isinstance(target, HubApp):
        app, hub = target, target.hub
    elif isinstance(target, Hub):
        hub, app = target, HubApp(target)
    else:
        hub, app = None, target
        for key in ("api.keys", "admin.key", "metrics.key"):
            if key in given:
                raise ConfigError(key, "needs a target naming a Hub or a HubApp", "")
    if isinstance(app, HubApp):
        served.hub_app = app
        if api_keys:
            # A target's own HubApp keeps its body limit unless the file sets one.
            max_body = config.api.max_body
            if target is not None and max_body == DEFAULT_MAX_BODY:
                max_body = app.api.max_body
            app.api = HubAPI(app.hub, keys=api_keys, max_body=max_body)
        if admin_key is not None:
            app.admin = AdminPage(app.hub, key=admin_key)
        _configure_metrics(app, config, metrics_key, served)
    served.hub = hub
    if hub is not None and authenticator is not None and hub.authenticator is None:
        # The middleware authenticates the handshake; the hub needs the same keys
        # for `refresh` and channel tokens.
        hub.authenticator = authenticator
    served.app = app
    auth = config.auth
    if authenticator is not None or auth.allowed_origins:
        served.middleware = AuthMiddleware(
            app,
            authenticator=authenticator,
            anonymous=config.hub.anonymous or authenticator is None,
            allowed_origins=auth.allowed_origins or None,
            require_origin=auth.require_origin,
            # Count handshakes per IP before any token is verified.
            admission=hub.admission if hub is not None else None,
        )
        served.app = served.middleware
    return served


def _configure_metrics(
    app: HubApp, config: Config, key: str | None, served: Served | None = None
) -> None:
    """``metrics.key``; without any key, /metrics is off (404) unless bound to loopback.

    Exposed, ``/metrics`` would let anyone read the hub's figures and make it
    walk every channel and connection (bounded per second, see hubbub.metrics).
    """
    if key is not None:
        app.set_metrics_key(key)
    host = config.server.host
    enabled = config.metrics.enabled
    if enabled and app.metrics_key is None and not config.metrics.public and not is_loopback(host):
        enabled = False
        if served is not None:
            logger.warning(
                "/metrics is off (404) on %s without a key: give metrics.key "
                "(--metrics-key, HUBBUB_METRICS_KEY), or metrics.public = true "
                "(--public-metrics) to serve it to anyone",
                host,
            )
    app.metrics = enabled


# -- reloading ---------------------------------------------------------------------------

RELOADABLE: Final = (
    "api.keys",
    "api.keys_file",
    "admin.key",
    "admin.key_file",
    "metrics.key",
    "metrics.key_file",
    "metrics.public",
    "metrics.enabled",
    "limits.",
    "auth.allowed_origins",
    "auth.require_origin",
    "auth.secret",
    "auth.secret_file",
    "auth.public_key_file",
    "auth.jwks_file",
    "auth.jwks_url",
    "auth.jwks_cache",
    "auth.algorithms",
    "auth.audience",
    "auth.issuer",
    "auth.leeway",
    "auth.require_exp",
    "auth.typ",
    "auth.query",
    "auth.cookie",
)
"""Keys a reload applies to the running server (prefixes end with a dot)."""


def _flatten(config: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for table, section in msgspec.to_builtins(config).items():
        if isinstance(section, dict):
            for name, value in section.items():
                flat[f"{table}.{name}"] = value
        else:
            flat[table] = section
    return flat


def _reloadable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RELOADABLE)


class Reloader:
    """Applies a new configuration to a running server: ``hubbub serve``'s SIGHUP.

    What can change safely is applied to the running objects (keys, limits,
    allowed origins, JWT verification); every other change is reported as
    needing a restart and left as it is. A configuration that cannot be built
    changes nothing.

    Args:
        served: what :func:`build_app` built.
        config: the configuration it was built from.
    """

    def __init__(self, served: Served, config: Config) -> None:
        self.served = served
        self.config = config
        self._files = _file_contents(config)

    def apply(self, new: Config) -> tuple[list[str], list[str]]:
        """Apply ``new``; returns (one line per applied change, keys that need a restart).

        Raises:
            ConfigError: ``new`` cannot be built; nothing was changed.
        """
        old_flat, new_flat = _flatten(self.config), _flatten(new)
        changed = [k for k in new_flat if old_flat.get(k) != new_flat.get(k)]
        # A key file rewritten in place (rotation) is a change even under the same name.
        files = _file_contents(new)
        changed += [k for k, v in files.items() if k not in changed and self._files.get(k) != v]
        restart = [k for k in changed if not _reloadable(k)]
        live = [k for k in changed if _reloadable(k)]
        served = self.served
        app = served.hub_app
        # Build and check everything first: nothing is applied unless all of it can be.
        check(new)
        limits = limits_of(new) if any(k.startswith("limits.") for k in live) else None
        auth_changed = any(k.startswith("auth.") and "origin" not in k for k in live)
        authenticator = authenticator_of(new) if auth_changed else None
        api_keys = api_keys_of(new) if any(k.startswith("api.") for k in live) else None
        admin_key = key_of(new, "admin") if any(k.startswith("admin.") for k in live) else None
        metrics_key = key_of(new, "metrics")
        for key in list(live):
            needs = None
            if key.startswith(("api.", "admin.", "metrics.", "limits.")) and app is None:
                needs = key
            elif key.startswith("admin.") and (
                app is None or app.admin is None or admin_key is None
            ):
                needs = key  # turning the admin page on or off starts or stops its sampler
            elif key.startswith("auth.") and "origin" not in key:
                if served.authenticator is None or authenticator is None:
                    needs = key  # JWT on or off changes who is admitted: a restart
            elif "origin" in key and served.middleware is None:
                needs = key
            if needs is not None:
                live.remove(key)
                restart.append(key)
        applied: list[str] = []
        if app is not None and any(k.startswith("api.") for k in live):
            assert api_keys is not None
            app.api.set_keys(api_keys)
            applied.append(f"api keys replaced ({len(api_keys)} key(s))")
        if app is not None and app.admin is not None and any(k.startswith("admin.") for k in live):
            assert admin_key is not None
            app.admin.set_key(admin_key)
            applied.append("admin key replaced")
        if app is not None and any(k.startswith("metrics.") for k in live):
            _configure_metrics(app, new, metrics_key)
            if metrics_key is None:
                app.set_metrics_key(None)
            applied.append(
                "metrics "
                + ("off" if not app.metrics else "key replaced" if app.metrics_key else "open")
            )
        if limits is not None and app is not None:
            app.set_limits(limits)
            applied.extend(
                f"{key}: {_brief(old_flat.get(key))} -> {_brief(new_flat.get(key))}"
                for key in live
                if key.startswith("limits.")
            )
        if authenticator is not None and served.authenticator is not None:
            served.authenticator.reconfigure(authenticator)
            for key in live:
                if key.startswith("auth.") and "origin" not in key:
                    shown = (
                        "(secret)"
                        if key in SECRET_KEYS or key.endswith("_file")
                        else (f"{_brief(old_flat.get(key))} -> {_brief(new_flat.get(key))}")
                    )
                    applied.append(f"{key} applied {shown}")
        if served.middleware is not None and any("origin" in k for k in live):
            served.middleware.set_allowed_origins(
                new.auth.allowed_origins or None, require_origin=new.auth.require_origin
            )
            if served.authenticator is not None:
                served.authenticator.allowed_origins = frozenset(
                    normalise_origin(o) for o in new.auth.allowed_origins
                )
            applied.append(f"auth.allowed_origins: {', '.join(new.auth.allowed_origins) or 'none'}")
        # What needs a restart stays as it runs: remember the running values for it.
        kept = msgspec.to_builtins(new)
        running = msgspec.to_builtins(self.config)
        for key in restart:
            table, _, name = key.partition(".")
            if name:
                kept[table][name] = running[table][name]
            else:
                kept[table] = running[table]
        self.config = msgspec.convert(kept, Config)
        self._files = files
        return applied, sorted(restart)


def _file_contents(config: Config) -> dict[str, bytes | None]:
    """The contents of the key files ``config`` names (``None``: unreadable), by key."""
    contents: dict[str, bytes | None] = {}
    for key in PATH_KEYS:
        table, name = key.split(".")
        value = getattr(getattr(config, table), name)
        if not value or table == "server":
            continue
        paths = [value] if isinstance(value, str) else value
        data = b""
        for path in paths:
            try:
                with open(path, "rb") as file:
                    data += file.read() + b"\0"
            except OSError:
                contents[key] = None
                break
        else:
            contents[key] = data
    return contents


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- showing -----------------------------------------------------------------------------


def effective(config: Config) -> Config:
    """``config`` with each namespace's defaults filled in (those of its kind, chat or not)."""
    built, _ = namespace_options(config)
    sections = []
    for section, namespace in zip(config.namespaces, built, strict=True):
        options = {
            name: getattr(namespace, name)
            for name in (
                "max_payload",
                "history_size",
                "history_ttl",
                "presence",
                "join_leave",
                "replay",
            )
        }
        if section.chat and section.max_length is None:
            options["max_length"] = 2000
        sections.append(msgspec.structs.replace(section, **options))
    return msgspec.structs.replace(config, namespaces=sections)


def dump(config: Config, fmt: Literal["toml", "json"] = "toml", *, mask: bool = True) -> str:
    """``config`` as TOML or JSON, secrets shown as ``***`` unless ``mask`` is false."""
    document = msgspec.to_builtins(config)
    if mask:
        for key in SECRET_KEYS:
            table, name = key.split(".")
            value = document[table].get(name)
            if isinstance(value, list):
                document[table][name] = ["***" for _ in value]
            elif value is not None:
                document[table][name] = "***"
        document["broker"]["url"] = re.sub(
            r"(://[^/@:]*):[^/@]*@", r"\1:***@", document["broker"]["url"]
        )
    if fmt == "json":
        return json.dumps(document, indent=2)
    return _to_toml(document)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _to_toml(document: dict[str, Any]) -> str:
    lines: list[str] = []
    for table, section in document.items():
        if isinstance(section, list):
            for item in section:
                lines.append(f"[[{table}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None)
                lines.append("")
            continue
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in section.items() if v is not None)
        lines.append("")
    return "\n".join(lines)


def schema() -> dict[str, Any]:
    """The JSON Schema of the file (draft 2020-12), for editors that complete TOML."""
    document = msgspec.json.schema(Config, ref_template="#/$defs/{name}")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "hubbub configuration file"
    return document


def example() -> str:
    """A complete, commented configuration file: every key, that ``hubbub config check`` accepts."""
    return (Path(__file__).parent / "static" / "hubbub.example.toml").read_text(encoding="utf-8")


# -- where a key is in the text ----------------------------------------------------------

_TABLE_ARRAY = re.compile(r"^\[\[\s*(.+?)\s*\]\]\s*(#.*)?$")
_TABLE = re.compile(r"^\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_ASSIGN = re.compile(
    r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=\s*(.*)$"""
)
_INLINE_KEY = re.compile(r"""(?:^|[{,])\s*([A-Za-z0-9_-]+|"[^"]*")\s*=""")


def _key_parts(text: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def _index(text: str) -> dict[str, int]:
    """Each dotted key, table and array element of a TOML text → the line it starts on."""
    index: dict[str, int] = {}
    counts: dict[str, int] = {}
    current: list[str] = []
    open_string: str | None = None
    depth = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if open_string is not None:
            if line.count(open_string) % 2 == 1:
                open_string = None
            continue
        if depth > 0:
            depth += line.count("[") - line.count("]")
            continue
        if not line or line.startswith("#"):
            continue
        found = _TABLE_ARRAY.match(line)
        if found:
            path = ".".join(_qualify(_key_parts(found.group(1))[:-1], counts))
            name = (path + "." if path else "") + _key_parts(found.group(1))[-1]
            counts[name] = counts.get(name, 0) + 1
            current = [f"{name}[{counts[name] - 1}]"]
            index.setdefault(name, number)
            index.setdefault(current[0], number)
            continue
        found = _TABLE.match(line)
        if found:
            current = [".".join(_qualify(_key_parts(found.group(1)), counts))]
            index.setdefault(current[0], number)
            continue
        found = _ASSIGN.match(line)
        if not found:
            continue
        full = ".".join([*current, *_key_parts(found.group(1))])
        index.setdefault(full, number)
        value = found.group(2)
        if value.startswith("{"):
            for key in _INLINE_KEY.findall(value):
                index.setdefault(f"{full}.{key.strip(chr(34))}", number)
        for quote in ('"""', "'''"):
            if value.startswith(quote) and value.count(quote) == 1:
                open_string = quote
        if value.startswith("["):
            depth = _bracket_depth(value)
    return index


def _bracket_depth(value: str) -> int:
    depth = 0
    quote = None
    for char in value:
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
    return max(depth, 0)


def _qualify(parts: list[str], counts: Mapping[str, int]) -> list[str]:
    """``namespaces.access`` under the 2nd ``[[namespaces]]`` → ``namespaces[1].access``."""
    out: list[str] = []
    for part in parts:
        path = ".".join([*out, part]) if out else part
        plain = re.sub(r"\[\d+\]", "", path)
        if plain in counts or path in counts:
            out.append(f"{part}[{counts.get(path, counts.get(plain, 1)) - 1}]")
        else:
            out.append(part)
    return out


def find_line(text: str, key: str) -> int | None:
    """The line of ``text`` where dotted ``key`` (``namespaces[1].history_size``) is set.

    Falls back to the nearest enclosing table or element that is in the text;
    ``None`` when not even the table is (a default value).
    """
    index = _index(text)
    parts = re.findall(r"[^.\[\]]+(?:\[\d+\])?", key)
    while parts:
        found = index.get(".".join(parts))
        if found is not None:
            return found
        last = parts[-1]
        if last.endswith("]"):
            parts[-1] = re.sub(r"\[\d+\]$", "", last)
        else:
            parts.pop()
    return None
