"""``hubbub token``, ``publish``, ``notify``, ``tail`` and ``stats``: operating a running hub.

These commands talk to a hub from outside, as any backend would. This module
holds their parsers, the dispatch, and the HTTP API commands (``publish``,
``notify`` and ``stats`` through :class:`hubbub.client.HubbubAPI`); the rest
is one module per concern, each below this one:

- ``_ops_tail``: ``tail``, a WebSocket subscriber that recovers what it missed
  across reconnects and says so on stderr when it cannot;
- ``_ops_token``: ``token``, a JWT checked by the server's own rules before it
  is printed (``tail`` mints with the same :class:`Signer`);
- ``_ops_settings``: :func:`resolve`, every server address and key option in
  one place (flag, ``HUBBUB_*``, ``--config``, default) into :class:`OpsSettings`;
- ``_ops_io``: :class:`OpsError`, the exit statuses, one line on stderr.

Failures are one line on stderr and an exit status that tells a script what
to do (docs/operations.md has the table): 1 the ``client`` extra is missing,
2 bad arguments or input, 3 the hub cannot be reached or the connection ended,
4 a key or token was refused (401/403), 5 not found (404: the API is off or the
URL is wrong), 6 the hub is busy or unavailable (429, 503, other 5xx), 7 any
other refusal. Ctrl-C or SIGTERM ends ``tail`` quietly with status 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._cli_checks import positive_seconds
from ._errors import HubbubError
from ._ops_io import (
    EXIT_MISSING_EXTRA,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_REFUSED_AUTH,
    EXIT_UNAVAILABLE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    OpsError,
    decode_json,
    quiet_stdout,
    say,
    short,
    write_json,
)
from ._ops_settings import DEFAULT_URL, OpsSettings, resolve
from ._ops_tail import DEFAULT_TAIL_USER, run_tail
from ._ops_token import Signer, claim, run_token, signer, ttl
from .namespaces import personal_channel, validate_channel

if TYPE_CHECKING:
    from .client import HubbubAPI, HubbubAPIError

__all__ = [
    "DEFAULT_URL",
    "EXIT_MISSING_EXTRA",
    "EXIT_NOT_FOUND",
    "EXIT_REFUSED",
    "EXIT_REFUSED_AUTH",
    "EXIT_UNAVAILABLE",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "OPS_COMMANDS",
    "OpsError",
    "OpsSettings",
    "Signer",
    "add_ops_commands",
    "resolve",
    "run_ops",
    "signer",
]

OPS_COMMANDS: Final = frozenset({"token", "publish", "notify", "tail", "stats"})
INSTALL_CLIENT: Final = "pip install 'hubbub[client]'"
_PS_WARNING: Final = "arguments are visible in `ps`"


# -- argument types ------------------------------------------------------------------------------


def json_object(text: str) -> dict[str, Any]:
    value = decode_json(text, repr(short(text)))
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{short(text)!r} is not a JSON object")
    return value


def channel_name(text: str) -> str:
    try:
        return validate_channel(text)
    except HubbubError as exc:
        raise argparse.ArgumentTypeError(f"{short(text)!r}: {exc.reason}") from None


# -- the parsers ---------------------------------------------------------------------------------


def add_ops_commands(commands: Any) -> None:
    """Add ``token``, ``publish``, ``notify``, ``tail`` and ``stats`` to ``hubbub``'s subparsers."""
    token = commands.add_parser(
        "token",
        help="mint a JWT the configured server accepts (prints the token only)",
        description="Mint a connection token (or a channel token) signed with the key the "
        "server verifies: an HS256 secret (--secret-file, HUBBUB_JWT_SECRET) or a PEM "
        "private key (--private-key, HUBBUB_JWT_PRIVATE_KEY). Only the token is printed, "
        "so TOKEN=$(hubbub token --user alice) works.",
    )
    token.add_argument("--user", required=True, help="the user id (the sub claim)")
    token.add_argument(
        "--ttl",
        type=ttl,
        default=ttl("1h"),
        help="lifetime: 90s, 30m, 1h (the default), 2d or seconds",
    )
    token.add_argument(
        "--channel",
        dest="channels",
        action="append",
        type=channel_name,
        default=[],
        metavar="CHANNEL",
        help="a channel the connection is subscribed to on connect, server-side (repeatable)",
    )
    token.add_argument("--name", help="the display name (the name claim)")
    token.add_argument("--info", type=json_object, help="a JSON object shown with the user")
    token.add_argument(
        "--claim",
        dest="claims",
        action="append",
        type=claim,
        default=[],
        metavar="KEY=JSON",
        help="an extra claim, its value in JSON (repeatable), e.g. role='\"admin\"'",
    )
    token.add_argument(
        "--channel-token",
        type=channel_name,
        metavar="CHANNEL",
        help="mint a channel token for CHANNEL (subscribe's token, protocol §4) instead of a "
        "connection token",
    )
    _config_option(token)
    _key_options(token)

    publish = commands.add_parser(
        "publish",
        help="publish into a channel through the server HTTP API",
        description="Publish JSON data into CHANNEL through the running server's HTTP API "
        "and print the ack ({channel, offset, epoch}; offset and epoch are null where the "
        "channel keeps no history).",
    )
    publish.add_argument("channel", type=channel_name, metavar="CHANNEL")
    publish.add_argument("data", metavar="JSON", help="the data as JSON ('-': read stdin)")
    publish.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a retry with the same key within the server's window publishes once",
    )
    _config_option(publish)
    _api_options(publish)

    notify = commands.add_parser(
        "notify",
        help="push a notification to a user through the server HTTP API",
        description="Push a notification to every connection of USER (and keep it in the "
        "user's personal channel): JSON is an object with type, title, message and data.",
    )
    notify.add_argument("user", metavar="USER")
    notify.add_argument("notification", metavar="JSON", help="a JSON object ('-': read stdin)")
    _config_option(notify)
    _api_options(notify)

    tail = commands.add_parser(
        "tail",
        help="subscribe to channels and print each publication as a JSON line",
        description="Subscribe over WebSocket and print each publication as one JSON line "
        "({channel, offset, epoch, data, info}) until interrupted. Across reconnects it "
        "recovers what it missed from the channel's history, once each; where it cannot, "
        "it says so on stderr. The token: --token/HUBBUB_TOKEN, else one minted with the "
        "configured key (refreshed before it expires), else none (anonymous).",
    )
    tail.add_argument("channels", nargs="+", type=channel_name, metavar="CHANNEL")
    tail.add_argument(
        "--history",
        type=_count,
        metavar="N",
        help="first print the last N kept publications of each channel",
    )
    tail.add_argument(
        "--token",
        help=f"a connection token (prefer HUBBUB_TOKEN: {_PS_WARNING})",
    )
    tail.add_argument(
        "--user",
        default=DEFAULT_TAIL_USER,
        help=f"the user of a minted token (default {DEFAULT_TAIL_USER})",
    )
    tail.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="give up when the first connection takes longer (default 10)",
    )
    tail.add_argument(
        "-q", "--quiet", action="store_true", help="no status lines on stderr (warnings stay)"
    )
    tail.add_argument(
        "-v", "--verbose", action="store_true", help="also the client's own log lines on stderr"
    )
    _config_option(tail)
    _url_option(tail)
    _key_options(tail)

    stats = commands.add_parser(
        "stats",
        help="print the answering node's figures (server HTTP API)",
        description="Print the figures of the node that answers, as JSON or a table.",
    )
    stats.add_argument("--format", choices=("json", "table"), default="json")
    _config_option(stats)
    _api_options(stats)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's configuration file (HUBBUB_CONFIG): its address, first API key, "
        "HMAC secret, audience and issuer, below flags and HUBBUB_* variables",
    )


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        help=f"the hub's address (HUBBUB_URL; default {DEFAULT_URL}); ws:// is derived",
    )


def _api_options(parser: argparse.ArgumentParser) -> None:
    _url_option(parser)
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the server HTTP API key (prefer HUBBUB_API_KEY: {_PS_WARNING})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="for connecting and for each read and write (default 10)",
    )


def _key_options(parser: argparse.ArgumentParser) -> None:
    keys = parser.add_argument_group(
        "signing key",
        "The key the server verifies with --jwt-secret/--jwt-public-key, and the audience "
        "and issuer it expects. The secret is read from a file, or from HUBBUB_JWT_SECRET: "
        f"never from an argument ({_PS_WARNING}).",
    )
    keys.add_argument(
        "--secret-file", metavar="FILE", help="a file holding the HS256 secret (32+ bytes)"
    )
    keys.add_argument(
        "--private-key",
        metavar="FILE",
        help="a PEM private key file (HUBBUB_JWT_PRIVATE_KEY): RS256/ES256/EdDSA from its type",
    )
    keys.add_argument("--audience", help="the aud claim (HUBBUB_JWT_AUDIENCE)")
    keys.add_argument("--issuer", help="the iss claim (HUBBUB_JWT_ISSUER)")


# -- running -------------------------------------------------------------------------------------


def run_ops(args: argparse.Namespace) -> int:
    """Run one operator command; the exit status (errors already written to stderr)."""
    command = args.command
    try:
        if command == "token":
            return run_token(args)
        _require_client(command)
        settings = resolve(args)
        if command == "tail":
            return run_tail(args, settings)
        return _api_command(args, settings)
    except OpsError as exc:
        say(f"hubbub {command}: error: {exc.message}")
        return exc.status
    except KeyboardInterrupt:
        return 0 if command == "tail" else 130
    except BrokenPipeError:
        quiet_stdout()
        return 0


def _require_client(command: str) -> None:
    """A one-line exit saying what to install when the ``client`` extra is missing."""
    for name in ("httpx", "httpx_ws", "wsproto"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise OpsError(
                EXIT_MISSING_EXTRA,
                f"needs the client extra ({exc}): {INSTALL_CLIENT}",
            ) from None


# -- the HTTP API commands -----------------------------------------------------------------------


def _read_json(text: str, what: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return decode_json(text, what)
    except argparse.ArgumentTypeError as exc:
        raise OpsError(EXIT_USAGE, str(exc)) from None


def _api(settings: OpsSettings, timeout: float) -> HubbubAPI:
    from .client import HubbubAPI

    if settings.api_key is None:
        raise OpsError(EXIT_USAGE, "needs the server's API key: --api-key KEY or HUBBUB_API_KEY")
    try:
        return HubbubAPI(settings.url, settings.api_key, timeout=timeout)
    except ValueError as exc:
        raise OpsError(EXIT_USAGE, f"--api-key/HUBBUB_API_KEY: {exc}") from None


def _api_command(args: argparse.Namespace, settings: OpsSettings) -> int:
    from .client import HubbubAPIError

    command = args.command
    if command == "publish":
        data = _read_json(args.data, "the data")
    elif command == "notify":
        data = _read_json(args.notification, "the notification")
        if not isinstance(data, dict):
            raise OpsError(
                EXIT_USAGE, "the notification must be a JSON object: {type, title, message, data}"
            )
    with _api(settings, args.timeout) as api:
        try:
            if command == "publish":
                position = api.publish(args.channel, data, idempotency_key=args.idempotency_key)
                answer: Any = _ack(args.channel, position)
            elif command == "notify":
                position = api.notify(args.user, data)
                answer = _ack(personal_channel(args.user), position, user=args.user)
            else:
                stats = msgspec.to_builtins(api.stats())
                if args.format == "table":
                    width = max(len(name) for name in stats)
                    for name, value in stats.items():
                        sys.stdout.write(f"{name:<{width}}  {value}\n")
                    sys.stdout.flush()
                    return 0
                answer = stats
        except HubbubAPIError as exc:
            raise _api_failure(exc, settings.url) from None
    write_json(answer)
    return 0


def _ack(channel: str, position: Any, **extra: str) -> dict[str, Any]:
    return {
        **extra,
        "channel": channel,
        "offset": None if position is None else position.offset,
        "epoch": None if position is None else position.epoch,
    }


def _api_failure(exc: HubbubAPIError, url: str) -> OpsError:
    """What a refusal of the HTTP API means to the operator, with its exit status."""
    code, reason = exc.code, exc.reason
    if code == 0:
        return OpsError(EXIT_UNREACHABLE, f"cannot reach the hub at {url}: {reason}")
    if code == 401:
        return OpsError(EXIT_REFUSED_AUTH, f"401 from {url}: the API key was refused ({reason})")
    if code == 403:
        return OpsError(EXIT_REFUSED_AUTH, f"403 from {url}: not allowed ({reason})")
    if code == 404 and "namespace" in reason:
        return OpsError(EXIT_NOT_FOUND, f"404 from {url}: {reason}")
    if code == 404:
        return OpsError(
            EXIT_NOT_FOUND,
            f"404 from {url}/api/: the server's HTTP API is off (start it with --api-key or "
            f"HUBBUB_API_KEY) or the URL is wrong ({reason})",
        )
    if code == 429:
        return OpsError(
            EXIT_UNAVAILABLE,
            f"429 from {url}: too many requests, or too many wrong keys from this address: "
            f"retry later ({reason})",
        )
    if code >= 500:
        return OpsError(EXIT_UNAVAILABLE, f"{code} from {url}: the hub is unavailable ({reason})")
    return OpsError(EXIT_REFUSED, f"{code} from {url}: {reason}")
