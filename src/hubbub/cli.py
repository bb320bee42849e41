"""The ``hubbub`` command: ``serve`` runs uvicorn, ``schema`` prints the protocol's JSON Schema.

``hubbub serve`` uses a uvicorn ``Server`` whose shutdown first drains every
running hub: uvicorn itself closes each WebSocket with 1012 *before* the app's
lifespan shutdown runs, so a lifespan hook could never say goodbye in time.
Every flag can also be set through a ``HUBBUB_*`` environment variable.

uvicorn is imported only when ``serve`` runs: it comes with the ``standard``
extra (``pip install 'hubbub[standard]'``), and a project that mounts hubbub
under its own server installs and imports none of it.

What cannot be served is refused before anything starts, in one line on
stderr: exit status 2 (argparse's) for a bad flag or ``HUBBUB_*`` value, 1 for
a target that cannot be imported or is not something to serve, or a missing
uvicorn (or the WebSocket library its ``--ws`` needs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import json
import logging
import re
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import msgspec

from ._admin import AdminPage
from ._cli_checks import (
    LOG_LEVELS,
    WS_IMPLEMENTATIONS,
    BadArgument,
    BadVariable,
    Parser,
    check_host,
    env,
    load_target,
    log_level,
    port,
    positive_bytes,
    positive_seconds,
    seconds,
    switch,
    ws_name,
)
from ._demo import DemoAuthenticator
from ._jwt import JWTAuthenticator
from ._keys import validate_key
from ._redact import install_log_redaction
from .api import DEFAULT_MAX_BODY, HubAPI
from .app import HubApp
from .brokers import Broker, broker_from_url
from .hub import Hub, running_hubs
from .limits import Limits
from .middleware import AuthMiddleware
from .namespaces import Namespace
from .protocol import SERVICE_RESTART

if TYPE_CHECKING:
    import uvicorn

__all__ = ["build_demo_hub", "main"]

logger = logging.getLogger("hubbub")

INSTALL_SERVER = "pip install 'hubbub[standard]'"


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


def _require_uvicorn() -> None:
    """A one-line exit saying what to install when uvicorn is missing."""
    try:
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"hubbub serve: error: needs uvicorn ({exc}): {INSTALL_SERVER}") from None


def _check_websockets(ws: str) -> None:
    """uvicorn without a WebSocket library would answer every WebSocket with 404."""
    needed = WS_IMPLEMENTATIONS[ws]
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return
    if needed:
        raise SystemExit(
            f"hubbub serve: error: --ws {ws} needs {' or '.join(needed)}, not installed: "
            + (INSTALL_SERVER if "websockets" in needed else f"pip install {needed[0]}")
        )


def _ws_protocol(ws: str) -> str | type[asyncio.Protocol]:
    """uvicorn's websockets-sansio with hubbub's pre-framed fan-out, when that is what runs.

    Any other ``--ws`` (or no ``websockets`` installed) keeps uvicorn's own class:
    hubbub then sends through the standard ``websocket.send``.
    """
    if ws not in ("auto", "websockets-sansio"):
        return ws
    try:
        from ._uvicorn_ws import SUPPORTED, FramesProtocol
    except ImportError:  # auto without websockets (uvicorn falls back to wsproto), uvicorn < 0.35
        return ws
    return FramesProtocol if SUPPORTED else ws


def _draining_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server that lets hubs say goodbye before uvicorn closes the sockets."""
    import uvicorn  # only ``serve`` needs it: checked by _require_uvicorn()

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            hubs = running_hubs()
            if hubs:
                logger.info("draining %d hub(s) before shutdown", len(hubs))
                async with anyio.create_task_group() as tg:
                    for hub in hubs:
                        tg.start_soon(hub.drain, SERVICE_RESTART, "server restarting")
            await super().shutdown(sockets)

    return DrainingServer(config)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hubbub", description="A real-time WebSocket hub.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run a hub with uvicorn (the demo chat when no target is given)",
        description="Run a hub with uvicorn. TARGET is module:attribute naming a Hub, a "
        "HubApp or any ASGI app; without it the demo chat is served.",
    )
    serve.add_argument("target", nargs="?", default=env("APP"), help="module:hub or module:app")
    serve.add_argument("--host", default=env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=port, default=env("PORT", 8000, port))
    serve.add_argument(
        "--broker",
        default=env("BROKER", "memory://"),
        help=(
            "memory:// (the default), redis://host:port/db or "
            "redis+cluster://host:port[,host:port...] (need hubbub[redis]), or "
            "postgresql://user@host:port/db (needs hubbub[postgres])"
        ),
    )
    serve.add_argument(
        "--ping",
        type=positive_seconds,
        default=env("PING", 25.0, positive_seconds),
        help="seconds between pings",
    )
    serve.add_argument(
        "--pong-timeout",
        type=positive_seconds,
        default=env("PONG_TIMEOUT", 10.0, positive_seconds),
        help="extra seconds of silence before a client is closed 4408",
    )
    serve.add_argument(
        "--max-message-size",
        type=positive_bytes,
        default=env("MAX_MESSAGE_SIZE", 64 * 1024, positive_bytes),
        help="largest client frame in bytes",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=env("SHUTDOWN_TIMEOUT", 5.0, seconds),
        help="seconds uvicorn waits for connections after the hubs drained; a client "
        "that stopped reading cannot hold the process past it",
    )
    serve.add_argument("--ssl-certfile", default=env("SSL_CERTFILE"))
    serve.add_argument("--ssl-keyfile", default=env("SSL_KEYFILE"))
    serve.add_argument(
        "--log-level",
        type=log_level,
        default=env("LOG_LEVEL", "info", log_level),
        help=", ".join(LOG_LEVELS),
    )
    serve.add_argument(
        "--ws",
        type=ws_name,
        default=env("WS", "auto", ws_name),
        help="uvicorn's WebSocket implementation: "
        + ", ".join(WS_IMPLEMENTATIONS)
        + " (auto picks websockets-sansio)",
    )

    auth = serve.add_argument_group(
        "authentication",
        "Any --jwt-* option turns anonymous WebSockets off unless --anonymous is given. "
        "Prefer HUBBUB_JWT_SECRET to --jwt-secret: arguments are visible in `ps`.",
    )
    auth.add_argument("--jwt-secret", default=env("JWT_SECRET"), help="HS256 secret (32+ bytes)")
    auth.add_argument(
        "--jwt-public-key",
        metavar="FILE",
        default=env("JWT_PUBLIC_KEY"),
        help="PEM public key file (RS256/ES256/EdDSA, from the key type)",
    )
    auth.add_argument("--jwt-audience", default=env("JWT_AUDIENCE"), help="expected aud")
    auth.add_argument("--jwt-issuer", default=env("JWT_ISSUER"), help="expected iss (exact)")
    auth.add_argument(
        "--jwt-cookie",
        metavar="NAME",
        default=env("JWT_COOKIE", "hubbub_token"),
        help="the cookie that may carry the token (default hubbub_token), used only from "
        "this server's own pages and --allowed-origin ones; 'none' turns it off",
    )
    auth.add_argument(
        "--anonymous",
        action="store_true",
        default=env("ANONYMOUS", False, switch),
        help="admit WebSockets without a token even when a JWT key is configured",
    )
    auth.add_argument(
        "--allowed-origin",
        action="append",
        default=[o for o in env("ALLOWED_ORIGINS", "").split(",") if o.strip()],
        metavar="ORIGIN",
        help="scheme://host[:port] allowed to open WebSockets (repeatable; "
        "HUBBUB_ALLOWED_ORIGINS is comma-separated); others get 403",
    )
    auth.add_argument(
        "--require-origin",
        action="store_true",
        default=env("REQUIRE_ORIGIN", False, switch),
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
        default=[k.strip() for k in env("API_KEY", "").split(",") if k.strip()],
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
        default=env("ADMIN_KEY") or None,
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
        default=env("METRICS_KEY") or None,
        metavar="KEY",
        help="the key /metrics asks for (`Authorization: apikey <key>`, 16+ characters)",
    )
    metrics.add_argument(
        "--public-metrics",
        action="store_true",
        default=env("PUBLIC_METRICS", False, switch),
        help="serve /metrics without a key on a non-loopback --host",
    )

    commands.add_parser("schema", help="print the JSON Schema of the wire protocol")
    return parser


def _broker(url: str) -> Broker:
    """The ``--broker``, refused now if malformed, not retried forever by a running hub."""
    shown = re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)  # never echo a password
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BadArgument(f"hubbub serve: error: --broker {shown!r}: {exc}") from None
    # A cluster URL lists several seed nodes (host:port,host:port): check each port.
    hosts = parts.netloc.rpartition("@")[2].split(",") if "+cluster" in parts.scheme else [None]
    for host in hosts:
        try:
            (parts if host is None else urlsplit(f"//{host}")).port  # noqa: B018 - 0-65535 or raises
        except ValueError as exc:
            raise BadArgument(
                f"hubbub serve: error: --broker {shown!r}: the port is not a number in 0-65535 "
                f"({exc})"
            ) from None
    if parts.scheme.lower() in ("redis", "rediss") and not parts.hostname:
        raise BadArgument(
            f"hubbub serve: error: --broker {shown!r} names no host: use redis://host:port/db"
        )
    try:
        return broker_from_url(url)
    except ValueError as exc:
        message = str(exc).replace(f" {url!r}", "")
        raise BadArgument(f"hubbub serve: error: --broker {shown!r}: {message}") from None


def _check_tls(args: argparse.Namespace) -> None:
    """The certificate and key load now, rather than failing inside uvicorn with a traceback."""
    if not args.ssl_certfile:
        if args.ssl_keyfile:
            raise BadArgument("hubbub serve: error: --ssl-keyfile needs --ssl-certfile")
        return
    for flag, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise BadArgument(
                    f"hubbub serve: error: {flag} {path!r}: {exc.strerror or exc}"
                ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A key behind a passphrase would make OpenSSL prompt on the terminal.
        context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile, password=lambda: b"")
    except (ssl.SSLError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        raise BadArgument(
            f"hubbub serve: error: --ssl-certfile {args.ssl_certfile!r}"
            + (f" --ssl-keyfile {args.ssl_keyfile!r}" if args.ssl_keyfile else "")
            + f": not a PEM certificate and its unencrypted private key ({reason})"
        ) from None


def _build_app(args: argparse.Namespace) -> Any:
    broker = _broker(args.broker)
    try:
        limits = Limits(
            ping_interval=args.ping,
            pong_timeout=args.pong_timeout,
            max_message_size=args.max_message_size,
        )
    except ValueError as exc:
        raise BadArgument(f"hubbub serve: error: {exc}") from None
    authenticator = _authenticator(args)
    if args.target is None:
        options: dict[str, Any] = {"limits": limits, "broker": broker}
        if authenticator is not None:
            options.update(authenticator=authenticator, anonymous=args.anonymous)
        demo = build_demo_hub(**options)
        return _protect(_hub_app(demo, args, demo=True), authenticator, args, demo)
    if args.broker != "memory://":
        raise BadArgument(
            "hubbub serve: error: --broker configures the demo hub only; "
            "give your own Hub(broker=...) instead"
        )
    obj = load_target(args.target)
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
                raise BadArgument(
                    f"hubbub serve: error: {option} needs a target naming a Hub or a HubApp"
                )
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
            raise BadArgument(f"hubbub serve: error: --metrics-key: {exc}") from None
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
        raise BadArgument(f"hubbub serve: error: --admin-key: {exc}") from None


def _hub_api(hub: Hub, args: argparse.Namespace, max_body: int = DEFAULT_MAX_BODY) -> HubAPI:
    try:
        return HubAPI(hub, keys=args.api_key, max_body=max_body)
    except ValueError as exc:
        raise BadArgument(f"hubbub serve: error: --api-key: {exc}") from None


def _authenticator(args: argparse.Namespace) -> JWTAuthenticator | None:
    if args.jwt_secret and args.jwt_public_key:
        raise BadArgument("hubbub serve: error: give --jwt-secret or --jwt-public-key, not both")
    if not (args.jwt_secret or args.jwt_public_key):
        if args.jwt_audience or args.jwt_issuer:
            raise BadArgument(
                "hubbub serve: error: --jwt-audience/--jwt-issuer need --jwt-secret or "
                "--jwt-public-key"
            )
        return None
    cookie = None if args.jwt_cookie.strip().lower() in ("", "none") else args.jwt_cookie.strip()
    common: dict[str, Any] = {
        "audience": args.jwt_audience,
        "issuer": args.jwt_issuer,
        "cookie": cookie,
    }
    if args.jwt_secret:
        try:
            return JWTAuthenticator(secret=args.jwt_secret, **common)
        except (ValueError, TypeError) as exc:
            raise BadArgument(f"hubbub serve: error: JWT configuration: {exc}") from None
    flag = f"--jwt-public-key {args.jwt_public_key!r}"
    try:
        with open(args.jwt_public_key, "rb") as file:
            pem = file.read()
    except OSError as exc:
        raise BadArgument(f"hubbub serve: error: {flag}: {exc.strerror or exc}") from None
    try:
        return JWTAuthenticator(public_key=pem, **common)
    except (ValueError, TypeError) as exc:
        raise BadArgument(f"hubbub serve: error: {flag}: {exc}") from None


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
        raise BadArgument(f"hubbub serve: error: --allowed-origin: {exc}") from None


def _serve(args: argparse.Namespace) -> None:
    _require_uvicorn()
    import uvicorn  # only ``serve`` needs it (the ``standard`` extra)

    _check_websockets(args.ws)
    check_host(args.host)
    _check_tls(args)
    app = _build_app(args)
    if not args.ssl_certfile and not _is_loopback(args.host):
        logger.warning(
            "serving without TLS on %s: messages and tokens cross the network unencrypted; "
            "use --ssl-certfile/--ssl-keyfile or a TLS-terminating proxy",
            args.host,
        )
    logging.basicConfig(level=LOG_LEVELS[args.log_level], format="%(levelname)s:     %(message)s")
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws=_ws_protocol(args.ws),
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
    server = _draining_server(config)
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
    if args.command != "serve":
        _schema()
        return
    try:
        for value in vars(args).values():
            if isinstance(value, BadVariable):
                raise BadArgument(f"hubbub serve: error: {value.message} (see hubbub serve --help)")
        _serve(args)
    except BadArgument as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
