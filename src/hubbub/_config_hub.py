"""What the tables that shape the hub build: Limits, the Namespaces, the broker.

These translations do no I/O (the broker is built, not connected), so the
checker can build them to ask :class:`~hubbub.Namespace` and
:class:`~hubbub.Limits` what they refuse, and report it by key, instead of
repeating their rules. The builder and ``hubbub config show`` use the same
functions, so what is checked is what is served.
"""

from __future__ import annotations

import re
from typing import Any, Final
from urllib.parse import urlsplit

from ._config_model import Claim, Config, ConfigError, Rule
from .brokers import Broker, broker_from_url
from .limits import Limits
from .namespaces import AccessRule, ChannelClaim, Namespace

__all__ = [
    "DEFAULTED_BY_KIND",
    "broker_of",
    "check_broker_url",
    "limits_of",
    "namespace_options",
    "shown_url",
]

DEFAULTED_BY_KIND: Final = (
    "max_payload",
    "history_size",
    "history_ttl",
    "presence",
    "join_leave",
    "replay",
)
"""``[[namespaces]]`` keys whose default depends on ``chat``: left to Namespace when not given."""


def shown_url(url: str) -> str:
    """A broker URL fit for a message: never its password."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


def check_broker_url(url: str) -> None:
    """Refuse a URL whose host or port cannot be parsed, by key and with the password hidden.

    It needs no broker package and no connection, so :func:`check` runs it
    before anything is built.
    """
    shown = repr(shown_url(url))
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(
            "broker.url", f"{shown}: {exc}", "e.g. redis://127.0.0.1:6379/0"
        ) from None
    # Cluster, Sentinel and shard URLs (redis+cluster://, redis+sentinel://,
    # redis+shards://) list several host:port: check each one.
    hosts = parts.netloc.rpartition("@")[2].split(",") if "+" in parts.scheme else [None]
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
        for name in DEFAULTED_BY_KIND:
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


def broker_of(config: Config) -> Broker:
    """The broker ``broker.url`` names (not started: nothing is connected yet)."""
    url = config.broker.url
    check_broker_url(url)
    try:
        return broker_from_url(url)
    except ValueError as exc:
        message = str(exc).replace(f" {url!r}", "")
        raise ConfigError("broker.url", f"{shown_url(url)!r}: {message}", "") from None
