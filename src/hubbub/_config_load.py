"""From a TOML file to a checked :class:`Config`, and the flags and ``HUBBUB_*`` that override it.

tomllib parses, msgspec converts into the Structs, :func:`check` judges the
combinations; each refusal becomes a :class:`ConfigError` in the operator's
words, with the file and line (:func:`find_line`, since tomllib keeps no
positions), the key's dotted path and a hint. Relative file names are made
absolute here, against the file's directory, so that a file means the same
whatever directory the server is started from. The command line and the
environment are applied to the same document (:data:`OPTIONS`), so a flag, a
variable and a key are refused alike.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct

from ._cli_checks import switch
from ._config_check import check
from ._config_locate import find_line
from ._config_model import (
    PATH_KEYS,
    AdminConfig,
    ApiConfig,
    AuthConfig,
    BrokerConfig,
    Claim,
    CommandLimit,
    Config,
    ConfigError,
    HubConfig,
    LimitsConfig,
    MetricsConfig,
    NamespaceConfig,
    PersonalConfig,
    ServerConfig,
)
from ._jwt import MAX_LEEWAY
from .limits import COMMAND_TYPES

__all__ = [
    "OPTIONS",
    "Option",
    "convert_option",
    "environment_overrides",
    "load",
    "loads",
    "with_overrides",
]

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
    Option("--ws-compression", "HUBBUB_WS_COMPRESSION", "server.ws_compression"),
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
    # msgspec's "Invalid enum value 'x'" for a Literal: the value is said once, by `got`.
    words = re.sub(r"^Invalid enum value .*", "not an allowed value", words)
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
    "server.ws_compression": "one of shared, per-connection, off",
    "namespaces.subscribe": 'anyone, authenticated, nobody or { claim = "name" }',
    "namespaces.publish": 'anyone, authenticated, nobody or { claim = "name" }',
    "namespaces.history_access": 'anyone, authenticated, nobody or { claim = "name" }',
    "namespaces.presence_access": 'anyone, authenticated, nobody or { claim = "name" }',
    "auth.leeway": f"seconds of clock skew, 0-{MAX_LEEWAY:.0f}",
    "limits.command_limits": "keys: " + ", ".join(sorted(COMMAND_TYPES)),
}

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
"""Each table's Struct by its dotted path: the keys a "did you mean" hint may offer."""


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
        # The words of the flags' own check, so a variable reads the same with or without a file.
        try:
            return switch(raw)
        except argparse.ArgumentTypeError:
            raise ValueError("not 1/true/yes/on or 0/false/no/off") from None
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


KEY_SOURCES: tuple[tuple[str, ...], ...] = (
    ("api.keys", "api.keys_file"),
    ("auth.secret", "auth.secret_file", "auth.public_key_file", "auth.jwks_file", "auth.jwks_url"),
    ("admin.key", "admin.key_file"),
    ("metrics.key", "metrics.key_file"),
)
"""Keys that give the same thing (a key, a JWT key source) different ways: at most one.

A flag or variable setting one of them replaces the lower layer's choice, so
``HUBBUB_API_KEY`` overrides a file's ``api.keys_file`` instead of being refused
as two sources (flag > variable > file). Two set in the same layer are still
refused by :func:`check`.
"""


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
    defaults = msgspec.to_builtins(Config())
    for key, value in overrides.items():
        table, name = key.split(".")
        document[table][name] = value
        for group in KEY_SOURCES:
            if key in group:
                for other in group:
                    if other not in overrides:
                        other_table, other_name = other.split(".")
                        document[other_table][other_name] = defaults[other_table].get(other_name)
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
