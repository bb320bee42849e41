"""The ``hubbub`` command: ``serve`` runs uvicorn, ``schema`` prints the protocol's JSON Schema.

``hubbub serve`` uses a uvicorn ``Server`` whose shutdown first drains every
running hub: uvicorn itself closes each WebSocket with 1012 *before* the app's
lifespan shutdown runs, so a lifespan hook could never say goodbye in time.
Every flag can also be set through a ``HUBBUB_*`` environment variable.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec
import uvicorn

from ._admin import AdminPage
from ._demo import DemoAuthenticator
from ._jwt import JWTAuthenticator
from ._keys import validate_key
from ._redact import install_log_redaction
from .api import DEFAULT_MAX_BODY, HubAPI
from .app import HubApp
from .brokers import broker_from_url
from .hub import Hub, running_hubs
from .limits import Limits
from .middleware import AuthMiddleware
from .namespaces import Namespace
from .protocol import SERVICE_RESTART

__all__ = ["build_demo_hub", "main"]

logger = logging.getLogger("hubbub")


def build_demo_hub(**options: Any) -> Hub:
    """The hub ``hubbub serve`` runs without an argument.

    The memory broker; visitors identified by the name the page sends with
    ``?name=`` (trusted: a demo only), anonymous clients otherwise; the default
    namespace where anyone may subscribe and publish; and a ``chat`` namespace
    (chat schema, the last 100 messages replayed on join, presence, join/leave
    events) for the demo page's rooms.
    """
    options.setdefault("anonymous", True)
    options.setdefault("authenticator", DemoAuthenticator())
    return Hub(namespaces=[Namespace(), Namespace.chat("chat")], **options)


class _SpuriousHandshakeError(logging.Filter):
    """Drops uvicorn's false "returned without completing handshake" error after a denial.

    uvicorn's websockets-sansio implementation logs it at ERROR for every
    WebSocket refused through the denial-response extension (Kludex/uvicorn#3138),
    which would page operators on every rejected token. HubApp always completes
    or denies the handshake, so under ``hubbub serve`` the line is never real.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing handshake."


class _ClientInputTraceback(logging.Filter):
    """Drops uvicorn's traceback for a text frame that is not UTF-8.

    uvicorn's websockets-sansio implementation (``hubbub serve``'s default) logs
    it with ``logger.exception`` at ERROR after answering the frame correctly
    (close 1007), so any client could write tracebacks into the log at will. The
    close is still logged, once, as the client's ``disconnect`` (code 1007).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # record.msg, not getMessage(): a filter that raises breaks the caller's log call.
        return record.msg != "Invalid UTF-8 sequence received from client."


class _DrainingServer(uvicorn.Server):
    """A uvicorn server that lets hubs say goodbye before uvicorn closes the sockets."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        hubs = running_hubs()
        if hubs:
            logger.info("draining %d hub(s) before shutdown", len(hubs))
            async with anyio.create_task_group() as tg:
                for hub in hubs:
                    tg.start_soon(hub.drain, SERVICE_RESTART, "server restarting")
        await super().shutdown(sockets)


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"HUBBUB_{name}", default)


def _load_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"hubbub serve: expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"hubbub serve: {module_name!r} has no attribute {attr!r}") from None
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubbub", description="A real-time WebSocket hub.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run a hub with uvicorn (the demo chat when no target is given)",
        description="Run a hub with uvicorn. TARGET is module:attribute naming a Hub, a "
        "HubApp or any ASGI app; without it the demo chat is served.",
    )
    serve.add_argument("target", nargs="?", default=_env("APP"), help="module:hub or module:app")
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8000")))
    serve.add_argument(
        "--broker",
        default=_env("BROKER", "memory://"),
        help=(
            "memory:// (the default), redis://host:port/db (needs hubbub[redis]) or "
            "postgresql://user@host:port/db (needs hubbub[postgres])"
        ),
    )
    serve.add_argument(
        "--ping", type=float, default=float(_env("PING", "25")), help="seconds between pings"
    )
    serve.add_argument(
        "--pong-timeout",
        type=float,
        default=float(_env("PONG_TIMEOUT", "10")),
        help="extra seconds of silence before a client is closed 4408",
    )
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=int(_env("MAX_MESSAGE_SIZE", str(64 * 1024))),
        help="largest client frame in bytes",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=float(_env("SHUTDOWN_TIMEOUT", "5")),
        help="seconds uvicorn waits for connections after the hubs drained; a client "
        "that stopped reading cannot hold the process past it",
    )
    serve.add_argument("--ssl-certfile", default=_env("SSL_CERTFILE"))
    serve.add_argument("--ssl-keyfile", default=_env("SSL_KEYFILE"))
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    serve.add_argument(
        "--ws",
        default=_env("WS", "auto"),
        help="uvicorn's WebSocket implementation (auto picks websockets-sansio)",
    )

    auth = serve.add_argument_group(
        "authentication",
        "Any --jwt-* option turns anonymous WebSockets off unless --anonymous is given. "
        "Prefer HUBBUB_JWT_SECRET to --jwt-secret: arguments are visible in `ps`.",
    )
    auth.add_argument("--jwt-secret", default=_env("JWT_SECRET"), help="HS256 secret (32+ bytes)")
    auth.add_argument(
        "--jwt-public-key",
        metavar="FILE",
        default=_env("JWT_PUBLIC_KEY"),
        help="PEM public key file (RS256/ES256/EdDSA, from the key type)",
    )
    auth.add_argument("--jwt-audience", default=_env("JWT_AUDIENCE"), help="expected aud")
    auth.add_argument("--jwt-issuer", default=_env("JWT_ISSUER"), help="expected iss (exact)")
    auth.add_argument(
        "--jwt-cookie",
        metavar="NAME",
        default=_env("JWT_COOKIE", "hubbub_token"),
        help="the cookie that may carry the token (default hubbub_token), used only from "
        "this server's own pages and --allowed-origin ones; 'none' turns it off",
    )
    auth.add_argument(
        "--anonymous",
        action="store_true",
        default=_env("ANONYMOUS", "").lower() in ("1", "true", "yes"),
        help="admit WebSockets without a token even when a JWT key is configured",
    )
    auth.add_argument(
        "--allowed-origin",
        action="append",
        default=[o for o in _env("ALLOWED_ORIGINS", "").split(",") if o.strip()],
        metavar="ORIGIN",
        help="scheme://host[:port] allowed to open WebSockets (repeatable; "
        "HUBBUB_ALLOWED_ORIGINS is comma-separated); others get 403",
    )
    auth.add_argument(
        "--require-origin",
        action="store_true",
        default=_env("REQUIRE_ORIGIN", "").lower() in ("1", "true", "yes"),
        help="with --allowed-origin, refuse WebSockets without an Origin header",
    )

    api = serve.add_argument_group(
        "server HTTP API",
        "The API under <prefix>/api/ is off (404) without a key. "
        "Prefer HUBBUB_API_KEY to --api-key: arguments are visible in `ps`.",
    )
    api.add_argument(
        "--api-key",
        action="append",
        default=[k.strip() for k in _env("API_KEY", "").split(",") if k.strip()],
        metavar="KEY",
        help="a key accepted in `Authorization: apikey <key>` (repeatable for rotation; "
        "HUBBUB_API_KEY is comma-separated)",
    )

    admin = serve.add_argument_group(
        "admin page",
        "The live admin page at <prefix>/admin is off (404) without a key. "
        "Prefer HUBBUB_ADMIN_KEY to --admin-key: arguments are visible in `ps`.",
    )
    admin.add_argument(
        "--admin-key",
        default=_env("ADMIN_KEY") or None,
        metavar="KEY",
        help="the key the admin page asks for (sent as `Authorization: apikey <key>`)",
    )

    metrics = serve.add_argument_group(
        "metrics",
        "GET <prefix>/metrics (Prometheus). Open on a loopback --host; on any other "
        "address it is off (404) unless --metrics-key or --public-metrics is given. "
        "Prefer HUBBUB_METRICS_KEY to --metrics-key: arguments are visible in `ps`.",
    )
    metrics.add_argument(
        "--metrics-key",
        default=_env("METRICS_KEY") or None,
        metavar="KEY",
        help="the key /metrics asks for (`Authorization: apikey <key>`, 16+ characters)",
    )
    metrics.add_argument(
        "--public-metrics",
        action="store_true",
        default=_env("PUBLIC_METRICS", "").lower() in ("1", "true", "yes"),
        help="serve /metrics without a key on a non-loopback --host",
    )

    commands.add_parser("schema", help="print the JSON Schema of the wire protocol")
    return parser


def _build_app(args: argparse.Namespace) -> Any:
    try:
        broker = broker_from_url(args.broker)
    except ValueError as exc:
        raise SystemExit(f"hubbub serve: --broker: {exc}") from None
    limits = Limits(
        ping_interval=args.ping,
        pong_timeout=args.pong_timeout,
        max_message_size=args.max_message_size,
    )
    authenticator = _authenticator(args)
    if args.target is None:
        options: dict[str, Any] = {"limits": limits, "broker": broker}
        if authenticator is not None:
            options.update(authenticator=authenticator, anonymous=args.anonymous)
        demo = build_demo_hub(**options)
        return _protect(_hub_app(demo, args, demo=True), authenticator, args, demo)
    if args.broker != "memory://":
        raise SystemExit(
            "hubbub serve: --broker configures the demo hub only; "
            "give your own Hub(broker=...) instead"
        )
    obj = _load_target(args.target)
    if isinstance(obj, HubApp):
        hub: Hub | None = obj.hub
        if args.api_key:
            obj.api = _hub_api(obj.hub, args, max_body=obj.api.max_body)
        if args.admin_key:
            obj.admin = _admin_page(obj.hub, args)
        _configure_metrics(obj, args)
    elif isinstance(obj, Hub):
        hub, obj = obj, _hub_app(obj, args)
    else:
        hub = None
        for flag in ("api_key", "admin_key", "metrics_key"):
            if getattr(args, flag):
                option = "--" + flag.replace("_", "-")
                raise SystemExit(f"hubbub serve: {option} needs a target naming a Hub or a HubApp")
    if hub is not None and authenticator is not None and hub.authenticator is None:
        # The middleware authenticates the handshake; the hub needs the same keys
        # for `refresh` and channel tokens.
        hub.authenticator = authenticator
    return _protect(obj, authenticator, args, hub)


def _hub_app(hub: Hub, args: argparse.Namespace, *, demo: bool = False) -> HubApp:
    app = HubApp(hub, demo=demo)
    if args.api_key:
        app.api = _hub_api(hub, args)
    if args.admin_key:
        app.admin = _admin_page(hub, args)
    _configure_metrics(app, args)
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 (Python 3.11 calls it not loopback)
    return address.is_loopback


def _configure_metrics(app: HubApp, args: argparse.Namespace) -> None:
    """``--metrics-key``; without any key, /metrics is off (404) unless bound to loopback.

    Exposed, ``/metrics`` would let anyone read the hub's figures and make it
    walk every channel and connection (bounded per second, see hubbub.metrics).
    """
    if args.metrics_key:
        try:
            validate_key(args.metrics_key, "the metrics key")
        except ValueError as exc:
            raise SystemExit(f"hubbub serve: --metrics-key: {exc}") from None
        app.metrics_key = args.metrics_key
    if app.metrics_key is None and not args.public_metrics and not _is_loopback(args.host):
        app.metrics = False
        logger.warning(
            "/metrics is off (404) on %s without a key: give --metrics-key "
            "(HUBBUB_METRICS_KEY), or --public-metrics to serve it to anyone",
            args.host,
        )


def _admin_page(hub: Hub, args: argparse.Namespace) -> AdminPage:
    try:
        return AdminPage(hub, key=args.admin_key)
    except ValueError as exc:
        raise SystemExit(f"hubbub serve: --admin-key: {exc}") from None


def _hub_api(hub: Hub, args: argparse.Namespace, max_body: int = DEFAULT_MAX_BODY) -> HubAPI:
    try:
        return HubAPI(hub, keys=args.api_key, max_body=max_body)
    except ValueError as exc:
        raise SystemExit(f"hubbub serve: --api-key: {exc}") from None


def _authenticator(args: argparse.Namespace) -> JWTAuthenticator | None:
    if args.jwt_secret and args.jwt_public_key:
        raise SystemExit("hubbub serve: give --jwt-secret or --jwt-public-key, not both")
    if not (args.jwt_secret or args.jwt_public_key):
        if args.jwt_audience or args.jwt_issuer:
            raise SystemExit(
                "hubbub serve: --jwt-audience/--jwt-issuer need --jwt-secret or --jwt-public-key"
            )
        return None
    cookie = None if args.jwt_cookie.strip().lower() in ("", "none") else args.jwt_cookie.strip()
    common: dict[str, Any] = {
        "audience": args.jwt_audience,
        "issuer": args.jwt_issuer,
        "cookie": cookie,
    }
    try:
        if args.jwt_secret:
            return JWTAuthenticator(secret=args.jwt_secret, **common)
        with open(args.jwt_public_key, "rb") as file:
            pem = file.read()
        return JWTAuthenticator(public_key=pem, **common)
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"hubbub serve: JWT configuration: {exc}") from None


def _protect(
    app: Any, authenticator: JWTAuthenticator | None, args: argparse.Namespace, hub: Hub | None
) -> Any:
    if authenticator is None and not args.allowed_origin:
        return app
    try:
        return AuthMiddleware(
            app,
            authenticator=authenticator,
            anonymous=args.anonymous or authenticator is None,
            allowed_origins=args.allowed_origin or None,
            require_origin=args.require_origin,
            # Count handshakes per IP before any token is verified.
            admission=hub.admission if hub is not None else None,
        )
    except ValueError as exc:
        raise SystemExit(f"hubbub serve: --allowed-origin: {exc}") from None


def _serve(args: argparse.Namespace) -> None:
    app = _build_app(args)
    if not args.ssl_certfile and not _is_loopback(args.host):
        logger.warning(
            "serving without TLS on %s: messages and tokens cross the network unencrypted; "
            "use --ssl-certfile/--ssl-keyfile or a TLS-terminating proxy",
            args.host,
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws=args.ws,
        # uvicorn refuses frames above its own limit with 1009; keep it above ours so
        # hubbub answers first (with a `disconnect` message) for moderately large frames.
        ws_max_size=max(args.max_message_size * 4, 1024 * 1024),
        # hubbub sends its own pings; browsers never ping and ASGI has no ping event.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_level=args.log_level.lower(),
        lifespan="auto",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    server = _DrainingServer(config)
    # uvicorn logs every request's path with its query string: ?token= would leak.
    install_log_redaction()
    logging.getLogger("uvicorn.error").addFilter(_SpuriousHandshakeError())
    logging.getLogger("uvicorn.error").addFilter(_ClientInputTraceback())
    server.run()


def _schema() -> None:
    from .messages import Command, ServerMessage

    (client, server), components = msgspec.json.schema_components(
        [Command, ServerMessage], ref_template="#/$defs/{name}"
    )
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hubbub wire protocol, version 1",
        "$defs": components,
        "properties": {"client": client, "server": server},
    }
    print(json.dumps(document, indent=2, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``hubbub`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)
    else:
        _schema()


if __name__ == "__main__":  # pragma: no cover
    main()
