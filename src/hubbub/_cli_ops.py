"""``hubbub token``, ``publish``, ``notify``, ``tail`` and ``stats``: operating a running hub.

These commands talk to a hub from outside, as any backend would: ``token``
mints a JWT that the server's :class:`~hubbub.JWTAuthenticator` accepts (it is
verified with the same rules before it is printed, so a token this command
prints is never one the server refuses for its shape); ``publish``, ``notify``
and ``stats`` go through the server HTTP API (:class:`hubbub.client.HubbubAPI`);
``tail`` subscribes over WebSocket with the Python client, which recovers what
it missed across reconnects, and says so on stderr when it cannot.

Every option that names the server or a key is resolved in one place,
:func:`resolve`, flag first, then the ``HUBBUB_*`` environment, then the
default, into one frozen :class:`OpsSettings`: a configuration file slots in
there as one more layer.

Failures are one line on stderr and an exit status that tells a script what
to do (docs/operations.md has the table): 1 the ``client`` extra is missing,
2 bad arguments or input, 3 the hub cannot be reached or the connection ended,
4 a key or token was refused (401/403), 5 not found (404: the API is off or the
URL is wrong), 6 the hub is busy or unavailable (429, 503, other 5xx), 7 any
other refusal. Ctrl-C or SIGTERM ends ``tail`` quietly with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlsplit, urlunsplit

import anyio
import jwt
import msgspec

from ._cli_checks import positive_seconds
from ._errors import AuthenticationFailed, HubbubError
from ._jwt import MAX_NUMERIC_DATE, JWTAuthenticator, identity_from_claims
from .namespaces import personal_channel, validate_channel

if TYPE_CHECKING:
    from .client import Client, HubbubAPI, HubbubAPIError, Subscription

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
DEFAULT_URL: Final = "http://127.0.0.1:8000"
INSTALL_CLIENT: Final = "pip install 'hubbub[client]'"

EXIT_MISSING_EXTRA: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_REFUSED_AUTH: Final = 4
EXIT_NOT_FOUND: Final = 5
EXIT_UNAVAILABLE: Final = 6
EXIT_REFUSED: Final = 7

TAIL_TOKEN_TTL: Final = 3600
"""Seconds a token ``tail`` mints for itself lives; the client refreshes it before then."""
DEFAULT_TAIL_USER: Final = "hubbub-tail"
# Claims set by their own flags (or by the configuration), never by --claim.
_RESERVED_CLAIMS: Final = {
    "sub": "--user",
    "exp": "--ttl",
    "iat": "the time of minting",
    "nbf": "the time of minting",
    "name": "--name",
    "info": "--info",
    "channels": "--channel",
    "channel": "--channel-token",
    "aud": "--audience or HUBBUB_JWT_AUDIENCE",
    "iss": "--issuer or HUBBUB_JWT_ISSUER",
}
_DURATION = re.compile(r"([0-9]+)\s*([smhd]?)")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PS_WARNING: Final = "arguments are visible in `ps`"


class OpsError(Exception):
    """A command failed: ``message`` goes to stderr in one line, ``status`` is the exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- option resolution: flag > environment > default ---------------------------------------------


@dataclass(frozen=True, slots=True)
class OpsSettings:
    """Where the hub is and which keys to use, as resolved from flags and ``HUBBUB_*``.

    Attributes:
        url: the hub's base address, ``http(s)://host[:port][/prefix]`` (no trailing slash).
        api_key: the server HTTP API key, or ``None``.
        secret: the HS256 secret, or ``None``.
        private_key_file: the PEM private key file (RS/ES/EdDSA), or ``None``.
        key_source: the flag or variable the signing key came from, for messages.
        audience: the ``aud`` claim to mint, or ``None``.
        issuer: the ``iss`` claim to mint, or ``None``.
        token: a token given as it is (``tail``), or ``None``.
    """

    url: str = DEFAULT_URL
    api_key: str | None = None
    secret: bytes | None = None
    private_key_file: str | None = None
    key_source: str | None = None
    audience: str | None = None
    issuer: str | None = None
    token: str | None = None

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint: ``ws(s)://host[:port][/prefix]/ws``."""
        scheme = "wss" if self.url.startswith("https:") else "ws"
        return f"{scheme}:{self.url.split(':', 1)[1]}/ws"


def _pick(flag: str | None, environ: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """The value and where it came from: the flag, else ``HUBBUB_<name>``, else nothing."""
    if flag is not None:
        return flag, "flag"
    value = environ.get(f"HUBBUB_{name}")
    if value is not None and value.strip():
        return value, f"HUBBUB_{name}"
    return None, ""


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> OpsSettings:
    """Every server address and key option of an operator command, in one place.

    Precedence: the command-line flag, then the ``HUBBUB_*`` variable, then
    the default. A signing key is resolved only for the commands that mint
    (``token``, ``tail``); a key file is read here, so a missing one is named
    before anything is sent.

    Raises:
        OpsError: a malformed URL, an unreadable secret file, or two signing keys
            given at the same level (exit status 2).
    """
    env = os.environ if environ is None else environ
    command = args.command
    path, _ = _pick(getattr(args, "config", None), env, "CONFIG")
    file = _from_file(path, env) if path is not None else _FileSettings()
    url, url_from = _pick(getattr(args, "url", None), env, "URL")
    if url is None and file.url is not None:
        url, url_from = file.url, f"the configuration file {path!r}"
    api_key, _ = _pick(getattr(args, "api_key", None), env, "API_KEY")
    if api_key is not None:
        # The server's HUBBUB_API_KEY may list several keys (rotation): any one will do.
        api_key = next((k.strip() for k in api_key.split(",") if k.strip()), None)
    token, _ = _pick(getattr(args, "token", None), env, "TOKEN")
    audience, _ = _pick(getattr(args, "audience", None), env, "JWT_AUDIENCE")
    issuer, _ = _pick(getattr(args, "issuer", None), env, "JWT_ISSUER")
    settings = OpsSettings(
        url=_base_url(url or DEFAULT_URL, url_from or "the default"),
        api_key=api_key if api_key is not None else file.api_key,
        audience=audience if audience is not None else file.audience,
        issuer=issuer if issuer is not None else file.issuer,
        token=token.strip() if token is not None else None,
    )
    if command not in ("token", "tail"):
        return settings
    settings = _with_signing_key(settings, args, env)
    if settings.key_source is None and file.secret is not None:
        settings = replace(settings, secret=file.secret, key_source=f"auth.secret of {path!r}")
    return settings


@dataclass(frozen=True, slots=True)
class _FileSettings:
    """What the server's configuration file says about reaching and signing for it."""

    url: str | None = None
    api_key: str | None = None
    secret: bytes | None = None
    audience: str | None = None
    issuer: str | None = None


def _from_file(path: str, env: Mapping[str, str]) -> _FileSettings:
    """The server's own file: where it listens, its first API key and HMAC secret.

    A server bound to every address (``0.0.0.0``, ``::``) is reached on loopback.
    """
    from .config import ConfigError, api_keys_of, hmac_secret_of, load

    try:
        config = load(path, environ=env)
        keys = api_keys_of(config)
        secret = hmac_secret_of(config)
    except ConfigError as exc:
        raise OpsError(EXIT_USAGE, f"--config: {exc}") from None
    server = config.server
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if server.ssl_certfile else "http"
    audience = config.auth.audience
    return _FileSettings(
        url=f"{scheme}://{shown}:{server.port}",
        api_key=keys[0] if keys else None,
        secret=secret.encode() if secret is not None else None,
        audience=audience if isinstance(audience, str) or audience is None else audience[0],
        issuer=config.auth.issuer,
    )


def _with_signing_key(
    settings: OpsSettings, args: argparse.Namespace, env: Mapping[str, str]
) -> OpsSettings:
    secret_file = getattr(args, "secret_file", None)
    private_key = getattr(args, "private_key", None)
    if secret_file is not None and private_key is not None:
        raise OpsError(EXIT_USAGE, "give --secret-file or --private-key, not both")
    if secret_file is None and private_key is None:
        env_secret = env.get("HUBBUB_JWT_SECRET") or None
        env_key = env.get("HUBBUB_JWT_PRIVATE_KEY") or None
        if env_secret is not None and env_key is not None:
            raise OpsError(
                EXIT_USAGE,
                "HUBBUB_JWT_SECRET and HUBBUB_JWT_PRIVATE_KEY are both set: unset one, or "
                "choose with --secret-file or --private-key",
            )
        if env_secret is not None:
            return replace(settings, secret=env_secret.encode(), key_source="HUBBUB_JWT_SECRET")
        if env_key is not None:
            return replace(settings, private_key_file=env_key, key_source="HUBBUB_JWT_PRIVATE_KEY")
        return settings
    if secret_file is None:
        return replace(settings, private_key_file=private_key, key_source="--private-key")
    source = f"--secret-file {secret_file!r}"
    try:
        with open(secret_file, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise OpsError(EXIT_USAGE, f"{source}: {exc.strerror or exc}") from None
    # `echo secret > file` adds a newline that HUBBUB_JWT_SECRET=$(cat file) would not keep.
    return replace(settings, secret=raw.rstrip(b"\r\n"), key_source=source)


def _base_url(url: str, source: str) -> str:
    """``url`` as ``http(s)://host[:port][/prefix]``; ``ws(s)://`` is accepted and converted."""
    where = f"--url {url!r}" if source == "flag" else f"{source}={url!r}"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises for a port outside 0-65535
    except ValueError as exc:
        raise OpsError(EXIT_USAGE, f"{where}: {exc}") from None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("http", "https") or not parts.hostname:
        raise OpsError(
            EXIT_USAGE,
            f"{where} is not the hub's address: use http://host:port or https://host[/prefix]",
        )
    if parts.query or parts.fragment:
        raise OpsError(EXIT_USAGE, f"{where}: the hub's address takes no query or fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/ws"):
        path = path[: -len("/ws")]  # the WebSocket endpoint given: its base is meant
    return urlunsplit((scheme, parts.netloc, path, "", ""))


# -- minting -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signer:
    """The configured signing key, and an authenticator holding the server's rules for it."""

    algorithm: str
    key: Any
    verify_key: Any
    authenticator: JWTAuthenticator
    audience: str | None = None
    issuer: str | None = None
    clock: Callable[[], float] = field(default=time.time)

    def mint(
        self,
        user: str,
        ttl: int,
        *,
        name: str | None = None,
        info: dict[str, Any] | None = None,
        channels: Sequence[str] = (),
        channel: str | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A token for ``user``, checked against the server's rules before it is returned.

        ``channel`` makes a channel token (protocol §4) instead of a connection token.

        Raises:
            OpsError: the server would refuse the token (exit status 2).
        """
        now = int(self.clock())
        payload: dict[str, Any] = {**(claims or {}), "sub": user, "iat": now, "exp": now + ttl}
        if name is not None:
            payload["name"] = name
        if info is not None:
            payload["info"] = info
        if channels:
            payload["channels"] = list(channels)
        if channel is not None:
            payload["channel"] = channel
        if self.audience is not None:
            payload["aud"] = self.audience
        if self.issuer is not None:
            payload["iss"] = self.issuer
        try:
            token = jwt.encode(payload, self.key, algorithm=self.algorithm)
        except (TypeError, ValueError) as exc:  # a claim JSON cannot carry
            raise OpsError(EXIT_USAGE, f"cannot encode the token: {exc}") from None
        try:
            verified = self.authenticator.decode_with([self.verify_key], token, typ=False)
            if channel is None:
                identity_from_claims(verified)
        except AuthenticationFailed as exc:
            raise OpsError(EXIT_USAGE, f"the hub would refuse this token: {exc.reason}") from None
        return token


def signer(settings: OpsSettings) -> Signer | None:
    """The configured signing key, or ``None`` without one.

    A secret is held to the authenticator's rules (32+ bytes for HS256, not a
    PEM key); a private key chooses its algorithm from its type, as the server
    does from the public key (RS256, ES256/384/512, EdDSA).

    Raises:
        OpsError: a key the server would not accept, or a file that cannot be read
            (exit status 2).
    """
    common: dict[str, Any] = {"audience": settings.audience, "issuer": settings.issuer}
    source = settings.key_source or "the signing key"
    if settings.secret is not None:
        try:
            authenticator = JWTAuthenticator(secret=settings.secret, **common)
        except (ValueError, TypeError) as exc:
            raise OpsError(EXIT_USAGE, f"{source}: {exc}") from None
        return Signer(
            "HS256",
            settings.secret,
            settings.secret,
            authenticator,
            settings.audience,
            settings.issuer,
        )
    if settings.private_key_file is None:
        return None
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    path = settings.private_key_file
    where = f"{source} {path!r}" if source == "--private-key" else f"{source}={path!r}"
    try:
        with open(path, "rb") as file:
            pem = file.read()
    except OSError as exc:
        raise OpsError(EXIT_USAGE, f"{where}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise OpsError(
            EXIT_USAGE, f"{where}: the key is encrypted: give an unencrypted PEM private key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise OpsError(EXIT_USAGE, f"{where}: not a PEM private key") from None
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        authenticator = JWTAuthenticator(public_key=public, **common)
    except (ValueError, TypeError) as exc:
        raise OpsError(EXIT_USAGE, f"{where}: {exc}") from None
    algorithm = authenticator.algorithms[0]
    return Signer(
        algorithm, key, key.public_key(), authenticator, settings.audience, settings.issuer
    )


# -- argument types ------------------------------------------------------------------------------


def ttl(text: str) -> int:
    """A lifetime: ``90s``, ``30m``, ``1h``, ``2d`` or a number of seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = int(match[1]) * _UNITS[match[2]] if match else 0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a positive number of seconds, or 90s, 30m, 1h, 2d"
        )
    if time.time() + seconds > MAX_NUMERIC_DATE:
        raise argparse.ArgumentTypeError(f"{text!r} would expire after the year 9999")
    return seconds


def decode_json(text: str, what: str) -> Any:
    """``text`` decoded as JSON, or ArgumentTypeError naming ``what``."""
    try:
        return msgspec.json.decode(text.encode(errors="surrogateescape"))
    except msgspec.DecodeError as exc:
        raise argparse.ArgumentTypeError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{what} is nested too deeply") from None


def json_object(text: str) -> dict[str, Any]:
    value = decode_json(text, repr(_short(text)))
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{_short(text)!r} is not a JSON object")
    return value


def claim(text: str) -> tuple[str, Any]:
    """``KEY=JSON``: one extra claim."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{_short(text)!r} is not KEY=JSON")
    if key in _RESERVED_CLAIMS:
        raise argparse.ArgumentTypeError(f"the {key!r} claim is set by {_RESERVED_CLAIMS[key]}")
    try:
        return key, decode_json(raw, f"the value of {key!r}")
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (a string needs JSON quotes: {key}='\"text\"')"
        ) from None


def channel_name(text: str) -> str:
    try:
        return validate_channel(text)
    except HubbubError as exc:
        raise argparse.ArgumentTypeError(f"{_short(text)!r}: {exc.reason}") from None


def _short(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


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
            return _token(args)
        _require_client(command)
        settings = resolve(args)
        if command == "tail":
            return _tail(args, settings)
        return _api_command(args, settings)
    except OpsError as exc:
        _say(f"hubbub {command}: error: {exc.message}")
        return exc.status
    except KeyboardInterrupt:
        return 0 if command == "tail" else 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0


def _say(line: str, stream: TextIO | None = None) -> None:
    """One line on stderr, however many lines its parts had."""
    stream = stream or sys.stderr
    stream.write(" ".join(line.split()) + "\n")
    stream.flush()


def _quiet_stdout() -> None:
    """The reader went away (``| head``): no complaint when Python flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


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


def _write_json(value: Any) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")
    sys.stdout.buffer.flush()


def _token(args: argparse.Namespace) -> int:
    settings = resolve(args)
    found = signer(settings)
    if found is None:
        raise OpsError(
            EXIT_USAGE,
            "no signing key: give --secret-file FILE or --private-key FILE, or set "
            "HUBBUB_JWT_SECRET or HUBBUB_JWT_PRIVATE_KEY",
        )
    if args.channel_token is not None and (args.channels or args.info or args.name):
        raise OpsError(
            EXIT_USAGE,
            "a channel token carries only the user and the channel: "
            "leave out --channel, --info and --name",
        )
    token = found.mint(
        args.user,
        args.ttl,
        name=args.name,
        info=args.info,
        channels=list(dict.fromkeys(args.channels)),
        channel=args.channel_token,
        claims=dict(args.claims),
    )
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return 0


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
    _write_json(answer)
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


# -- tail ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tail:
    """One ``tail`` run: its options and how it ended."""

    url: str
    quiet: bool
    history: int | None
    expected: int = 0
    failure: OpsError | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    broken_pipe: bool = False
    settled: anyio.Event | None = None
    """Set once every subscription is open, or the run failed."""

    def check_settled(self) -> None:
        if self.settled is not None and (
            self.failure is not None or len(self.subscriptions) >= self.expected
        ):
            self.settled.set()

    def status(self, line: str) -> None:
        if not self.quiet:
            _say(f"hubbub tail: {line}")

    def warn(self, line: str) -> None:
        _say(f"hubbub tail: warning: {line}")

    def fail(self, error: OpsError, scope: anyio.CancelScope) -> None:
        if self.failure is None:
            self.failure = error
        self.check_settled()
        scope.cancel()


def _tail(args: argparse.Namespace, settings: OpsSettings) -> int:
    from .client import Backoff, Client

    token = settings.token
    provider = None
    if token is None:
        found = signer(settings)
        if found is not None:
            user = args.user
            found.mint(user, TAIL_TOKEN_TTL)  # refused now, in one line, if the server would

            async def provider() -> str:
                return found.mint(user, TAIL_TOKEN_TTL)

    try:
        client = Client(
            settings.ws_url,
            token=token,
            token_provider=provider,
            # An operator's restart takes seconds: come back within 5 s of it.
            backoff=Backoff(initial=0.25, maximum=5.0),
            connect_timeout=args.connect_timeout,
        )
    except ValueError as exc:
        raise OpsError(EXIT_USAGE, str(exc)) from None
    _client_log(verbose=args.verbose)
    channels = list(dict.fromkeys(args.channels))
    run = _Tail(url=settings.ws_url, quiet=args.quiet, history=args.history, expected=len(channels))
    anyio.run(_tail_main, client, channels, run)
    if run.broken_pipe:
        _quiet_stdout()
        return 0
    if run.failure is not None:
        raise run.failure
    return 0


class _OneLine(logging.Formatter):
    """A log record as one stderr line: the message only, never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        return "hubbub tail: client: " + " ".join(record.getMessage().split())


def _client_log(*, verbose: bool) -> None:
    """The client's log lines go to stderr with ``--verbose``, nowhere otherwise.

    tail reports what matters to an operator itself (a lost connection, a loss it
    could not recover, a refusal); the client's own lines repeat it in a library's
    words, with tracebacks.
    """
    logger = logging.getLogger("hubbub.client")
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)


async def _tail_main(client: Client, channels: list[str], run: _Tail) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, tg.cancel_scope)
        await _tail_session(client, channels, run, tg.cancel_scope)
        tg.cancel_scope.cancel()


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    """Ctrl-C and SIGTERM end ``tail`` the way the block ends: the client closes with 1000."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _tail_session(
    client: Client, channels: list[str], run: _Tail, scope: anyio.CancelScope
) -> None:
    from .client import ConnectFailed

    run.settled = settled = anyio.Event()
    try:
        async with client:
            user = client.welcome.user if client.welcome is not None else ""
            run.status(f"connected to {run.url} as {user or 'an anonymous client'}")
            async with anyio.create_task_group() as tg:
                for channel in channels:
                    tg.start_soon(_follow, client, channel, run, scope)
                tg.start_soon(_watch_connection, client, run)
                await settled.wait()
                if run.failure is None:
                    run.status("subscribed to " + ", ".join(channels))
    except ConnectFailed as exc:
        run.fail(_connect_failure(exc.status, exc.reason, run.url), scope)


def _connect_failure(status: int | None, reason: str, url: str) -> OpsError:
    if status is None:
        # Retried until the deadline: the last refusal, if it was one, tells why.
        found = re.search(r"handshake refused: (\d{3})", reason)
        if found is None:
            return OpsError(EXIT_UNREACHABLE, f"cannot connect to {url}: {reason}")
        status = int(found[1])
    if status in (401, 4401):
        return OpsError(
            EXIT_REFUSED_AUTH,
            f"{status} from {url}: the token was refused or is missing ({reason}); give "
            "--token/HUBBUB_TOKEN, or the server's key to mint one",
        )
    if status in (403, 4403):
        return OpsError(
            EXIT_REFUSED_AUTH, f"{status} from {url}: refused (Origin, ban or kick) ({reason})"
        )
    if status == 404:
        return OpsError(EXIT_NOT_FOUND, f"404 from {url}: no WebSocket endpoint there ({reason})")
    if status in (429, 503) or 500 <= status < 600 or status in (1012, 1013):
        return OpsError(EXIT_UNAVAILABLE, f"{status} from {url}: the hub is busy ({reason})")
    return OpsError(EXIT_UNREACHABLE, f"{status} from {url}: the connection ended ({reason})")


async def _follow(client: Client, channel: str, run: _Tail, scope: anyio.CancelScope) -> None:
    from .client import ClientError, Disconnected, RequestFailed, Unrecovered

    try:
        async with client.subscribe(channel, history=run.history) as sub:
            run.subscriptions[channel] = sub
            run.check_settled()
            async for item in sub:
                if isinstance(item, Unrecovered):
                    run.warn(_unrecovered(item))
                    continue
                if item.kind != "message":
                    continue
                line = {
                    "channel": item.channel,
                    "offset": item.offset,
                    "epoch": item.epoch,
                    "data": item.data,
                    "info": item.info,
                }
                try:
                    _write_json(line)
                except BrokenPipeError:
                    run.broken_pipe = True
                    scope.cancel()
                    return
        if not scope.cancel_called:
            run.warn(f"{channel}: the server ended the subscription")
            del run.subscriptions[channel]
            if not run.subscriptions:
                run.fail(OpsError(EXIT_UNREACHABLE, "the server ended every subscription"), scope)
    except RequestFailed as exc:
        status = {
            401: EXIT_REFUSED_AUTH,
            403: EXIT_REFUSED_AUTH,
            404: EXIT_NOT_FOUND,
            429: EXIT_UNAVAILABLE,
            503: EXIT_UNAVAILABLE,
        }.get(exc.code, EXIT_REFUSED)
        run.fail(OpsError(status, f"subscribe {channel}: {exc.code}: {exc.reason}"), scope)
    except Disconnected as exc:
        run.fail(_connect_failure(exc.code, exc.reason, run.url), scope)
    except ClientError as exc:
        run.fail(OpsError(EXIT_UNREACHABLE, f"{channel}: {exc}"), scope)


def _unrecovered(item: Any) -> str:
    previous, position = item.previous, item.position
    where = "" if position is None else f"; continuing after offset {position.offset}"
    if item.epoch_changed:
        return (
            f"{item.channel}: publications missed, not recoverable: the stream was replaced "
            f"(epoch {previous.epoch} -> {position.epoch}; the server lost its history, e.g. "
            f"a restart on the memory broker) after offset {previous.offset}{where}"
        )
    seen = "" if previous is None else f" after offset {previous.offset}"
    return (
        f"{item.channel}: publications missed, not recoverable: the history no longer "
        f"reaches back{seen}{where}"
    )


async def _watch_connection(client: Client, run: _Tail) -> None:
    """Say when the connection drops and comes back; warn for channels that keep no history."""
    seen = client.connections
    connected = True
    while True:
        await anyio.sleep(0.1)
        if connected and not client.connected:
            connected = False
            run.status("connection lost: reconnecting")
        if client.connections != seen:
            seen = client.connections
            connected = True
            run.status("reconnected: recovering what was missed")
            for channel, sub in run.subscriptions.items():
                if sub.position is None and not sub.closed:
                    run.warn(
                        f"{channel} keeps no history: what was published there while "
                        "disconnected is lost"
                    )
