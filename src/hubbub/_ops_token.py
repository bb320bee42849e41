"""``hubbub token``: minting a JWT the server accepts, checked by the server's own rules.

A token is verified with the same :class:`~hubbub.JWTAuthenticator` rules
before it is printed, so a token this command prints is never one the server
refuses for its shape. ``tail`` mints its own tokens with the same
:class:`Signer`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt

from ._errors import AuthenticationFailed
from ._jwt import MAX_NUMERIC_DATE, JWTAuthenticator, identity_from_claims
from ._ops_io import EXIT_USAGE, OpsError, decode_json, short
from ._ops_settings import OpsSettings, resolve

__all__ = ["Signer", "claim", "run_token", "signer", "ttl"]

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


def claim(text: str) -> tuple[str, Any]:
    """``KEY=JSON``: one extra claim."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{short(text)!r} is not KEY=JSON")
    if key in _RESERVED_CLAIMS:
        raise argparse.ArgumentTypeError(f"the {key!r} claim is set by {_RESERVED_CLAIMS[key]}")
    try:
        return key, decode_json(raw, f"the value of {key!r}")
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"{exc} (a string needs JSON quotes: {key}='\"text\"')"
        ) from None


def run_token(args: argparse.Namespace) -> int:
    """``hubbub token``: the token alone on stdout, so ``TOKEN=$(hubbub token ...)`` works."""
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
