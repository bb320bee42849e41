"""What ``hubbub serve`` serves, built from a checked configuration: the I/O-reading builders.

Checking never reads a file; building does. Here the key files, the TLS
certificate and the JWKS are read, the authenticator, the hub, its HubApp and
the middleware are made, and :class:`Served` keeps the objects a reload may
change later. Every failure is a :class:`ConfigError` naming the key, so
``hubbub config check`` (:func:`build_parts`) finds at once what ``serve`` would
stop on, without starting anything.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ._admin import AdminPage
from ._config_check import check, valid_key
from ._config_hub import broker_of, limits_of, namespace_options
from ._config_model import AdminConfig, Config, ConfigError, MetricsConfig
from ._demo import DemoAuthenticator
from ._jwt import JWTAuthenticator
from .api import DEFAULT_MAX_BODY, HubAPI
from .app import HubApp
from .hub import Hub
from .middleware import AuthMiddleware
from .namespaces import Namespace

__all__ = [
    "Served",
    "api_keys_of",
    "authenticator_of",
    "build_app",
    "build_demo_hub",
    "build_parts",
    "check_tls",
    "configure_metrics",
    "hmac_secret_of",
    "is_loopback",
    "key_of",
]

logger = logging.getLogger("hubbub")


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
            valid_key(f"api.keys_file (line {index + 1})", key, "an API key")
        return keys
    return list(config.api.keys)


def key_of(config: Config, table: Literal["admin", "metrics"]) -> str | None:
    """``admin.key``/``metrics.key``, or the first line of its ``key_file``."""
    section: AdminConfig | MetricsConfig = getattr(config, table)
    if section.key_file is not None:
        key = _read_lines(f"{table}.key_file", section.key_file)[0]
        valid_key(f"{table}.key_file", key, f"the {table} key")
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
        configure_metrics(app, config, metrics_key, served)
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


def configure_metrics(
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
