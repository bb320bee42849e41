"""The rules across keys: combinations a file may not hold, refused before anything is built.

msgspec checks each value against its own type and range; what it cannot see
is how keys depend on each other (one JWT key source, a claim rule without a
key, ``replay`` beyond ``history_size``). :func:`check` holds those rules and
does no I/O, so it runs on every load, before every build and before a reload
changes anything; the files a configuration names are read by the builder.
"""

from __future__ import annotations

import ipaddress

from ._config_hub import check_broker_url, limits_of, namespace_options
from ._config_model import Claim, Config, ConfigError, NamespaceConfig, Rule
from ._keys import validate_key
from .auth import normalise_origin

__all__ = ["check", "valid_key"]


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
    check_broker_url(config.broker.url)
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
        valid_key(f"api.keys[{index}]", key, "an API key")
    for table, what in (("admin", "the admin key"), ("metrics", "the metrics key")):
        section = getattr(config, table)
        if section.key is not None:
            valid_key(f"{table}.key", section.key, what)
        if section.key is not None and section.key_file is not None:
            raise ConfigError(
                f"{table}.key_file", f"both {table}.key and {table}.key_file", "give one of them"
            )
    if config.api.keys and config.api.keys_file is not None:
        raise ConfigError("api.keys_file", "both api.keys and api.keys_file", "give one of them")


def valid_key(key: str, value: str, what: str) -> None:
    """Refuse a weak API, admin or metrics key by ``key``, with a command that makes a good one.

    The same rule as the objects' own (:func:`hubbub._keys.validate_key`), so a
    key read from a file later (``api.keys_file``) is judged like one given inline.
    """
    try:
        validate_key(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            key,
            str(exc).split(" (e.g.")[0],
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'",
        ) from None


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
