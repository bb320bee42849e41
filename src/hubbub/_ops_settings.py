"""Where the hub is and which keys to use: one resolution for every operator command.

Every option that names the server or a key is resolved here, in
:func:`resolve`: flag first, then the ``HUBBUB_*`` environment, then the
server's configuration file (``--config``), then the default, into one frozen
:class:`OpsSettings`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from ._ops_io import EXIT_USAGE, OpsError

__all__ = ["DEFAULT_URL", "OpsSettings", "resolve"]

DEFAULT_URL: Final = "http://127.0.0.1:8000"


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
