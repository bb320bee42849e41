"""The ``hubbub`` command: ``serve`` runs uvicorn, ``schema`` prints the protocol's JSON Schema.

``hubbub serve`` uses a uvicorn ``Server`` whose shutdown first drains every
running hub: uvicorn itself closes each WebSocket with 1012 *before* the app's
lifespan shutdown runs, so a lifespan hook could never say goodbye in time.
Every flag can also be set through a ``HUBBUB_*`` environment variable.
"""

from __future__ import annotations

import argparse
import importlib
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

from .app import HubApp
from .hub import Hub, running_hubs
from .limits import Limits
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
    from ._demo import DemoAuthenticator

    return Hub(
        anonymous=True,
        authenticator=DemoAuthenticator(),
        namespaces=[Namespace(), Namespace.chat("chat")],
        **options,
    )


class _SpuriousHandshakeError(logging.Filter):
    """Drops uvicorn's false "returned without completing handshake" error after a denial.

    uvicorn's websockets-sansio implementation logs it at ERROR for every
    WebSocket refused through the denial-response extension (Kludex/uvicorn#3138),
    which would page operators on every rejected token. HubApp always completes
    or denies the handshake, so under ``hubbub serve`` the line is never real.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


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
        "--broker", default=_env("BROKER", "memory://"), help="memory:// (the default)"
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

    commands.add_parser("schema", help="print the JSON Schema of the wire protocol")
    return parser


def _build_app(args: argparse.Namespace) -> Any:
    if args.broker != "memory://":
        raise SystemExit(
            f"hubbub serve: unsupported --broker {args.broker!r} (this version ships memory://)"
        )
    limits = Limits(
        ping_interval=args.ping,
        pong_timeout=args.pong_timeout,
        max_message_size=args.max_message_size,
    )
    if args.target is None:
        return HubApp(build_demo_hub(limits=limits), demo=True)
    obj = _load_target(args.target)
    if isinstance(obj, Hub):
        return HubApp(obj)
    return obj


def _serve(args: argparse.Namespace) -> None:
    app = _build_app(args)
    if not args.ssl_certfile and args.host not in ("127.0.0.1", "localhost", "::1"):
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
    logging.getLogger("uvicorn.error").addFilter(_SpuriousHandshakeError())
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
