"""Reading the multi-host Redis URLs (``redis+sentinel://``, ``redis+shards://``): hosts,
path, the broker's own options and redis-py's, each refused with a ValueError that says
what is wrong, so ``hubbub serve --broker`` can show it on one line.

Both have the shape ``<scheme>://[user:password@]host:port[,host:port...]/<path>?<query>``,
as ``redis+cluster://`` has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

__all__ = ["BROKER_OPTIONS", "MultiHostURL", "broker_options", "redis_options", "split"]

BROKER_OPTIONS: Final[Mapping[str, Callable[[str], Any]]] = {
    "prefix": str,
    "timeout": float,
    "health_check_interval": float,
    "max_connections": int,
    "idempotency_keys": int,
}
"""The query options the Redis brokers read themselves (``RedisBroker.from_url``'s)."""

# What redis-py reads from a URL's query besides its typed options (strings).
_REDIS_STRINGS: Final = frozenset(
    {
        "client_name",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_password",
    }
)
# Set by the broker from ``timeout`` and ``max_connections``, or meaningless here.
_NOT_IN_URL: Final = frozenset({"db", "max_connections", "timeout", "protocol"})


@dataclass(frozen=True)
class MultiHostURL:
    """A multi-host Redis URL, taken apart."""

    scheme: str
    tls: bool
    username: str | None
    password: str | None
    hosts: list[tuple[str, int]]
    path: list[str]
    query: dict[str, str]


def split(url: str, schemes: Mapping[str, bool], default_port: int, what: str) -> MultiHostURL:
    """Take ``url`` apart; ``schemes`` maps each accepted scheme to whether it means TLS.

    Raises:
        ValueError: another scheme, no host, a host without a name or with a bad port,
            a query given twice.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes:
        raise ValueError(f"not a {what} URL (use {' or '.join(f'{s}://' for s in schemes)})")
    try:
        parts = urlsplit("redis://" + rest)
    except ValueError as exc:
        raise ValueError(f"malformed {what} URL: {exc}") from None
    userinfo, at, netloc = parts.netloc.rpartition("@")
    if not netloc:
        raise ValueError(f"a {what} URL needs at least one host:port")
    hosts = [_host(address, default_port, what) for address in netloc.split(",")]
    username = password = None
    if at:
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs):
        raise ValueError(f"an option is given twice in the {what} URL")
    path = [unquote(p) for p in parts.path.split("/")[1:]] if parts.path else []
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    return MultiHostURL(scheme, schemes[scheme], username, password, hosts, path, query)


def _host(address: str, default_port: int, what: str) -> tuple[str, int]:
    address = address.strip()
    if address.startswith("["):  # [IPv6]:port
        host, bracket, port = address[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"malformed host {address!r} in the {what} URL")
        port = port[1:]
    else:
        host, _, port = address.partition(":")
    if not host:
        raise ValueError(f"a host in the {what} URL has no name: {address!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port of {address!r} in the {what} URL is not a number in 1-65535")
    return host, int(port)


def broker_options(query: dict[str, str], options: dict[str, Any], what: str) -> None:
    """Move the broker's own options from ``query`` into ``options`` (converted; an option
    given as a keyword argument wins)."""
    for name, convert in BROKER_OPTIONS.items():
        if name not in query:
            continue
        raw = query.pop(name)
        try:
            value = convert(raw)
        except ValueError:
            kind = "an integer" if convert is int else "a number"
            raise ValueError(f"{name} in the {what} URL must be {kind}, got {raw!r}") from None
        options.setdefault(name, value)


def redis_options(query: dict[str, str], what: str) -> dict[str, Any]:
    """redis-py's connection options from what is left of ``query``, typed.

    Raises:
        ValueError: an option neither the broker nor redis-py knows, or a bad value.
    """
    known = (set(URL_QUERY_ARGUMENT_PARSERS) | _REDIS_STRINGS) - _NOT_IN_URL
    for name in query:
        if name not in known:
            raise ValueError(
                f"unknown option {name!r} in the {what} URL (the broker's: "
                f"{', '.join(BROKER_OPTIONS)}; redis-py's: {', '.join(sorted(known))})"
            )
    kwargs: dict[str, Any] = dict(parse_url(f"redis://localhost/?{urlencode(query)}"))
    for name in ("host", "port", "db", "connection_class"):
        kwargs.pop(name, None)
    return kwargs
