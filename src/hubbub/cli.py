"""The ``hubbub`` command: ``serve`` runs uvicorn, ``config`` checks, shows and explains the
configuration file, ``schema`` prints the protocol's JSON Schema.

``hubbub serve`` uses a uvicorn ``Server`` whose shutdown first drains every
running hub: uvicorn itself closes each WebSocket with 1012 *before* the app's
lifespan shutdown runs, so a lifespan hook could never say goodbye in time.
Under ``--config`` the same server reloads the file on SIGHUP.

Every flag can also be set through a ``HUBBUB_*`` environment variable, and every
flag and variable sets a key of the configuration file (:data:`hubbub.config.OPTIONS`):
flag > variable > file > default. This module only maps the command line onto
those keys; :mod:`hubbub.config` checks and builds what is served.

uvicorn is imported only when ``serve`` runs: it comes with the ``standard``
extra (``pip install 'hubbub[standard]'``), and a project that mounts hubbub
under its own server installs and imports none of it.

What cannot be served is refused before anything starts, in one line on
stderr: exit status 2 (argparse's) for a bad flag, ``HUBBUB_*`` value or
configuration file, 1 for a target that cannot be imported or is not something
to serve, or a missing uvicorn (or the WebSocket library its ``--ws`` needs).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from . import config as configuration
from ._cli_checks import (
    LOG_LEVELS,
    WS_COMPRESSIONS,
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
    ws_compression,
    ws_name,
)
from ._cli_ops import OPS_COMMANDS, add_ops_commands, run_ops
from ._redact import install_log_redaction
from ._version import __version__
from .config import (
    HUB_SECTIONS,
    OPTIONS,
    Config,
    ConfigError,
    Reloader,
    Served,
    build_app,
    build_demo_hub,
    find_line,
)
from .hub import running_hubs
from .protocol import SERVICE_RESTART

if TYPE_CHECKING:
    import uvicorn

__all__ = ["build_demo_hub", "main"]

logger = logging.getLogger("hubbub")

INSTALL_SERVER = "pip install 'hubbub[standard]'"
LEGACY_COOKIE = "hubbub_token"
"""The cookie carrier ``hubbub serve`` reads without a file (the file's is opt-in)."""


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


def _ws_protocol(ws: str, compression: str) -> str | type[asyncio.Protocol]:
    """uvicorn's websockets-sansio with hubbub's pre-framed fan-out, when that is what runs.

    ``compression`` (``server.ws_compression``) picks the class's deflate
    behaviour; ``"off"`` itself is uvicorn's ``ws_per_message_deflate=False``,
    which every implementation honours. Any other ``--ws`` (or no ``websockets``
    installed, or uvicorn < 0.52.1) keeps uvicorn's own class: hubbub then sends
    through the standard ``websocket.send``, and "shared" and "per-connection"
    both mean uvicorn's own deflate with context takeover.
    """
    if ws not in ("auto", "websockets-sansio"):
        return ws
    try:
        from ._uvicorn_ws import PROTOCOLS, SUPPORTED
    except ImportError:  # auto without websockets (uvicorn falls back to wsproto), uvicorn < 0.35
        return ws
    return PROTOCOLS[compression] if SUPPORTED else ws


def _draining_server(config: uvicorn.Config, reload: _Reload | None = None) -> uvicorn.Server:
    """A uvicorn server that lets hubs say goodbye before uvicorn closes the sockets.

    With ``reload`` it also re-reads the configuration file on SIGHUP, for as
    long as it serves (the handler is the event loop's; uvicorn installs its own
    for SIGINT and SIGTERM only).
    """
    import uvicorn  # only ``serve`` needs it: checked by _require_uvicorn()

    class DrainingServer(uvicorn.Server):
        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            if reload is None:
                await super().serve(sockets)
                return
            async with anyio.create_task_group() as tg:
                with anyio.open_signal_receiver(signal.SIGHUP) as signals:
                    tg.start_soon(_reloads, signals, reload)
                    await super().serve(sockets)
                    tg.cancel_scope.cancel()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            hubs = running_hubs()
            if hubs:
                logger.info("draining %d hub(s) before shutdown", len(hubs))
                async with anyio.create_task_group() as tg:
                    for hub in hubs:
                        tg.start_soon(hub.drain, SERVICE_RESTART, "server restarting")
            await super().shutdown(sockets)

    return DrainingServer(config)


@dataclass
class _Reload:
    """What a SIGHUP needs: the file, the command line's keys (they still win), the server."""

    path: str
    settings: _Settings
    reloader: Reloader


async def _reloads(signals: Any, reload: _Reload) -> None:
    async for _ in signals:
        _reload_once(reload)


def _reload_once(reload: _Reload) -> None:
    """Re-read the file and apply what may change; a bad file changes nothing."""
    path = reload.path
    try:
        config = configuration.load(path)
        config = configuration.with_overrides(config, reload.settings.overrides)
        applied, restart = reload.reloader.apply(config)
    except ConfigError as exc:
        logger.error("config reload failed, the running configuration is kept: %s", exc)
        return
    except Exception as exc:  # a bug must not end the server: say it and keep serving
        logger.error("config reload failed, the running configuration is kept: %r", exc)
        return
    for line in applied:
        logger.info("config reload: %s", line)
    if restart:
        logger.warning("config reload: changed but needs a restart: %s", ", ".join(restart))
    if not applied and not restart:
        logger.info("config reload: %s: nothing changed", path)


def _listed(name: str) -> list[str] | None:
    raw = os.environ.get(f"HUBBUB_{name}")
    if raw is None:
        return None
    return [v.strip() for v in raw.split(",") if v.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hubbub", description="A real-time WebSocket hub.")
    parser.add_argument("--version", action="version", version=f"hubbub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    # Defaults are the HUBBUB_* variables or None ("not given"): the defaults
    # themselves live in hubbub.config, so that a flag left out never masks the file.
    serve = commands.add_parser(
        "serve",
        help="run a hub with uvicorn (the demo chat when no target or file is given)",
        description="Run a hub with uvicorn. TARGET is module:attribute naming a Hub, a "
        "HubApp or any ASGI app; without it the hub of --config is served, or the demo chat.",
    )
    serve.add_argument("target", nargs="?", default=env("APP"), help="module:hub or module:app")
    serve.add_argument(
        "--config",
        metavar="FILE",
        default=env("CONFIG"),
        help="a TOML configuration file (hubbub config example); flags and HUBBUB_* "
        "variables override its keys; SIGHUP reloads it",
    )
    serve.add_argument("--host", default=env("HOST"), help="default 127.0.0.1")
    serve.add_argument("--port", type=port, default=env("PORT", None, port), help="default 8000")
    serve.add_argument(
        "--broker",
        default=env("BROKER"),
        help=(
            "memory:// (the default); redis://host:port/db, "
            "redis+sentinel://host:port[,host:port...]/service[/db], "
            "redis+shards://host:port[,host:port...][/db] or "
            "redis+cluster://host:port[,host:port...] (need hubbub[redis]); or "
            "postgresql://user@host:port/db (needs hubbub[postgres])"
        ),
    )
    serve.add_argument(
        "--ping",
        type=positive_seconds,
        default=env("PING", None, positive_seconds),
        help="seconds between pings (default 25)",
    )
    serve.add_argument(
        "--pong-timeout",
        type=positive_seconds,
        default=env("PONG_TIMEOUT", None, positive_seconds),
        help="extra seconds of silence before a client is closed 4408 (default 10)",
    )
    serve.add_argument(
        "--max-message-size",
        type=positive_bytes,
        default=env("MAX_MESSAGE_SIZE", None, positive_bytes),
        help="largest client frame in bytes (default 65536)",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=_listed("TRUSTED_PROXIES"),
        metavar="ADDRESS",
        help="a reverse proxy (address or network) whose X-Forwarded-For names the client "
        "(repeatable; HUBBUB_TRUSTED_PROXIES is comma-separated)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=env("SHUTDOWN_TIMEOUT", None, seconds),
        help="seconds uvicorn waits for connections after the hubs drained (default 5); a "
        "client that stopped reading cannot hold the process past it",
    )
    serve.add_argument("--ssl-certfile", default=env("SSL_CERTFILE"))
    serve.add_argument("--ssl-keyfile", default=env("SSL_KEYFILE"))
    serve.add_argument(
        "--log-level",
        type=log_level,
        default=env("LOG_LEVEL", None, log_level),
        help=", ".join(LOG_LEVELS) + " (default info)",
    )
    serve.add_argument(
        "--ws",
        type=ws_name,
        default=env("WS", None, ws_name),
        help="uvicorn's WebSocket implementation: "
        + ", ".join(WS_IMPLEMENTATIONS)
        + " (auto, the default, picks websockets-sansio)",
    )
    serve.add_argument(
        "--ws-compression",
        type=ws_compression,
        default=env("WS_COMPRESSION", None, ws_compression),
        metavar="{" + ",".join(WS_COMPRESSIONS) + "}",
        help="permessage-deflate: shared (the default: one compressed frame per publication "
        "for every client, least CPU), per-connection (each connection its own compressor "
        "with context: fewest bytes, most CPU) or off",
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
        default=env("JWT_COOKIE"),
        help="the cookie that may carry the token (without --config: hubbub_token), used "
        "only from this server's own pages and --allowed-origin ones; 'none' turns it off",
    )
    auth.add_argument(
        "--anonymous",
        action="store_true",
        default=env("ANONYMOUS", None, switch),
        help="admit WebSockets without a token even when a JWT key is configured",
    )
    auth.add_argument(
        "--allowed-origin",
        action="append",
        default=_listed("ALLOWED_ORIGINS"),
        metavar="ORIGIN",
        help="scheme://host[:port] allowed to open WebSockets (repeatable; "
        "HUBBUB_ALLOWED_ORIGINS is comma-separated); others get 403",
    )
    auth.add_argument(
        "--require-origin",
        action="store_true",
        default=env("REQUIRE_ORIGIN", None, switch),
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
        default=_listed("API_KEY"),
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
        default=env("PUBLIC_METRICS", None, switch),
        help="serve /metrics without a key on a non-loopback --host",
    )

    config = commands.add_parser(
        "config",
        help="check, show or explain the configuration file",
        description="The configuration file of hubbub serve --config (docs/config.md).",
    )
    actions = config.add_subparsers(dest="action", required=True)
    check = actions.add_parser(
        "check",
        help="validate FILE and print the effective configuration (secrets masked)",
        description="Validate FILE (with the HUBBUB_* variables applied, as serve would) "
        "and print the effective configuration, secrets shown as ***. Exit 0 when it "
        "can be served, 2 otherwise.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--format", choices=("toml", "json"), default="toml")
    actions.add_parser("example", help="print a complete, commented configuration file")
    actions.add_parser("schema", help="print the JSON Schema of the configuration file")

    commands.add_parser("schema", help="print the JSON Schema of the wire protocol")
    add_ops_commands(commands)
    return parser


@dataclass
class _Settings:
    """The command line's share of the configuration: which keys it set, and from where."""

    overrides: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def _command_line(args: argparse.Namespace, argv: Sequence[str] | None) -> _Settings:
    """The file keys set by flags and ``HUBBUB_*`` variables (argparse read both)."""
    tokens = list(sys.argv[1:] if argv is None else argv)
    settings = _Settings()
    for option in OPTIONS:
        dest = option.flag.lstrip("-").replace("-", "_")
        value = getattr(args, dest, None)
        if value is None:
            continue
        flagged = option.env not in os.environ or any(
            t == option.flag or t.startswith(option.flag + "=") for t in tokens
        )
        settings.sources[option.key] = option.flag if flagged else option.env
        if option.key == "auth.cookie" and value.strip().lower() in ("", "none"):
            value = ""
        settings.overrides[option.key] = value
    if args.config is None and "auth.cookie" not in settings.overrides:
        settings.overrides["auth.cookie"] = LEGACY_COOKIE
        settings.sources["auth.cookie"] = "--jwt-cookie"
    return settings


_KEY = re.compile(r"\b(?:server|hub|broker|limits|auth|api|admin|metrics|personal)\.[a-z_]+\b")


def _refusal(exc: ConfigError, settings: _Settings, path: str | None, text: str | None) -> str:
    """The one line for a ConfigError: its source (flag, variable, or file:line), key, reason."""
    key = re.sub(r"\[\d+\]$", "", exc.key)
    # Where the file's own checks placed it (file:line), else the flag or variable that set it.
    source = exc.where or settings.sources.get(key) or settings.sources.get(exc.key)
    if source is not None and source.startswith(("--", "HUBBUB_")):
        flags = {o.key: (o.flag if source.startswith("--") else o.env) for o in OPTIONS}

        def speak(text: str) -> str:
            return _KEY.sub(lambda m: flags.get(m.group(0), m.group(0)), text)

        message = speak(exc.message)
        # "--port 99999 ..." / "--admin-key needs ...": a value or a verb follows the flag.
        joined = " " if message[:1] in "'\"" or message.startswith("needs ") else ": "
        line = f"{source}{joined}{message}"
        return f"{line} ({speak(exc.hint)})" if exc.hint else line
    if source is None and path is not None and text is not None:
        line_number = find_line(text, exc.key)
        source = f"{path}:{line_number}" if line_number is not None else path
    return str(exc.at(source or ""))


def _load(args: argparse.Namespace, settings: _Settings) -> tuple[Config, str | None, str | None]:
    """The file (or the defaults), then the command line's keys over it."""
    path: str | None = args.config
    text: str | None = None
    config = Config()
    if path is not None:
        config = configuration.load(path)
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError:  # pragma: no cover - it was read a moment ago
            text = None
    return configuration.with_overrides(config, settings.overrides, settings.sources), path, text


def _served(
    args: argparse.Namespace,
    argv: Sequence[str] | None = None,
    precheck: Callable[[Config], None] | None = None,
) -> tuple[Served, Config, _Settings]:
    settings = _command_line(args, argv)
    path = text = None
    try:
        config, path, text = _load(args, settings)
        target = None
        if args.target is not None:
            for table in HUB_SECTIONS:
                if getattr(config, table) != getattr(Config(), table):
                    flag = next(
                        (s for k, s in settings.sources.items() if k.startswith(table + ".")), None
                    )
                    if flag is not None:
                        raise ConfigError(
                            "",
                            f"{flag} configures the hub hubbub serve builds, not {args.target!r}",
                            f"give your own Hub({table}=...) instead"
                            if table != "broker"
                            else "give your own Hub(broker=...) instead",
                            where="",
                        )
                    raise ConfigError(
                        table,
                        f"the target {args.target!r} builds its own hub: [{table}] cannot apply",
                        "leave hub, broker, limits, namespaces and personal out of the file "
                        "when serving a TARGET",
                    )
            target = load_target(args.target)
        if precheck is not None:
            precheck(config)
        served = build_app(
            config,
            target,
            demo=args.target is None and path is None,
            given=set(settings.overrides),
        )
    except ConfigError as exc:
        if not exc.key and not exc.where:
            raise BadArgument(f"hubbub serve: error: {exc.message} ({exc.hint})") from None
        raise BadArgument(f"hubbub serve: error: {_refusal(exc, settings, path, text)}") from None
    except (TypeError, ValueError) as exc:
        raise BadArgument(f"hubbub serve: error: {exc}") from None
    return served, config, settings


def _build_app(args: argparse.Namespace) -> Any:
    """The ASGI app ``hubbub serve ARGS`` would serve (for tests and embedding)."""
    return _served(args)[0].app


def _serve(args: argparse.Namespace, argv: Sequence[str] | None = None) -> None:
    _require_uvicorn()
    import uvicorn  # only ``serve`` needs it (the ``standard`` extra)

    def precheck(config: Config) -> None:
        _check_websockets(config.server.ws)
        check_host(config.server.host)

    served, config, settings = _served(args, argv, precheck)
    server_config = config.server
    logging.basicConfig(
        level=LOG_LEVELS[server_config.log_level], format="%(levelname)s:     %(message)s"
    )
    if not server_config.ssl_certfile and not configuration.is_loopback(server_config.host):
        logger.warning(
            "serving without TLS on %s: messages and tokens cross the network unencrypted; "
            "use --ssl-certfile/--ssl-keyfile or a TLS-terminating proxy",
            server_config.host,
        )
    max_message_size = config.limits.max_message_size
    uvicorn_config = uvicorn.Config(
        served.app,
        host=server_config.host,
        port=server_config.port,
        ws=_ws_protocol(server_config.ws, server_config.ws_compression),
        ws_per_message_deflate=server_config.ws_compression != "off",
        # uvicorn refuses frames above its own limit with 1009; keep it above ours so
        # hubbub answers first (with a `disconnect` message) for moderately large frames.
        ws_max_size=max(max_message_size * 4, 1024 * 1024),
        # hubbub sends its own pings; browsers never ping and ASGI has no ping event.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ssl_certfile=server_config.ssl_certfile,
        ssl_keyfile=server_config.ssl_keyfile,
        log_level=server_config.log_level,
        lifespan="auto",
        # hubbub's trusted_proxies alone decides whom X-Forwarded-For is believed
        # from: uvicorn's own handling would trust 127.0.0.1 (FORWARDED_ALLOW_IPS)
        # before hubbub is asked, so a loopback proxy counted even when untrusted.
        proxy_headers=False,
        # uvicorn annotates it int but takes seconds as a float.
        timeout_graceful_shutdown=server_config.shutdown_timeout,  # type: ignore[arg-type]
    )
    reload = None
    if args.config is not None:
        reload = _Reload(args.config, settings, Reloader(served, config))
    server = _draining_server(uvicorn_config, reload)
    # uvicorn logs every request's path with its query string: ?token= would leak.
    install_log_redaction()
    logging.getLogger("uvicorn.error").addFilter(_SpuriousHandshakeError())
    logging.getLogger("uvicorn.error").addFilter(_ClientInputTraceback())
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl+C it caught once the hubs have drained and the
        # server has stopped: the shutdown is complete, so end quietly with status 0,
        # as uvicorn's own command line does, not with a traceback.
        pass


def _config_command(args: argparse.Namespace) -> None:
    """``hubbub config check|example|schema``."""
    if args.action == "example":
        sys.stdout.write(configuration.example())
        return
    if args.action == "schema":
        print(json.dumps(configuration.schema(), indent=2, sort_keys=True))
        return
    try:
        config = configuration.load(args.file, environ=os.environ)
        configuration.build_parts(config)
        shown = configuration.dump(configuration.effective(config), args.format)
    except ConfigError as exc:
        if exc.where == "" and exc.key:
            exc = exc.at(_file_line(args.file, exc.key))
        sys.stderr.write(f"hubbub config check: error: {exc}\n")
        raise SystemExit(2) from None
    sys.stdout.write(shown if shown.endswith("\n") else shown + "\n")


def _file_line(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            line = find_line(file.read(), key)
    except (OSError, UnicodeDecodeError):
        return path
    return f"{path}:{line}" if line is not None else path


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
    if args.command in OPS_COMMANDS:
        raise SystemExit(run_ops(args))
    if args.command == "schema":
        _schema()
        return
    if args.command == "config":
        _config_command(args)
        return
    try:
        for value in vars(args).values():
            if isinstance(value, BadVariable):
                raise BadArgument(f"hubbub serve: error: {value.message} (see hubbub serve --help)")
        _serve(args, argv)
    except BadArgument as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
