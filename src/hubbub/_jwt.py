"""JWT verification on PyJWT, following RFC 8725 (JWT best current practices).

Everything that decides whether a token is good is fixed by configuration, never
by the token: the algorithms, the keys (a JWKS is chosen from by ``kid`` only;
``jku``/``x5u`` headers are never followed), the audience and issuer (compared
exactly), whether ``exp`` is required, the ``typ`` header. Configuration errors
raise at construction (a short HMAC secret, ``none``, an HMAC algorithm beside a
public key), so a misconfigured server does not start.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
import jwt

from ._errors import AuthenticationFailed, PermissionDenied
from .auth import (
    DEFAULT_COOKIE,
    Identity,
    check_identity,
    cookie_allowed,
    find_credentials,
    normalise_origin,
)

__all__ = ["JWTAuthenticator"]

_HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}
_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_LEEWAY = 300.0
MAX_NUMERIC_DATE = 253_402_300_799
"""The latest ``exp``/``nbf``/``iat`` accepted: 9999-12-31T23:59:59Z (RFC 7519 NumericDate)."""

KeyMaterial = str | bytes


class JWTAuthenticator:
    """An :class:`~hubbub.Authenticator` verifying JWTs with PyJWT.

    Give exactly one source of keys: ``secret`` (HMAC), ``public_key`` (PEM),
    ``jwks`` (a JWKS document as a dict, or the path of a JSON file) or
    ``jwks_url`` (fetched over HTTPS, cached; opt-in). Several secrets or PEM
    keys may be given while rotating: each is tried in turn.

    Args:
        secret: HMAC secret(s), at least as long as the hash (32 bytes for HS256).
        public_key: PEM public key(s) for RS*/PS*/ES*/EdDSA.
        jwks: a JWKS document, or the path of a file holding one.
        jwks_url: where to fetch the JWKS from; keys are chosen by the token's ``kid``.
        jwks_cache: seconds a fetched JWKS is kept.
        algorithms: the accepted algorithms; by default HS256 for a secret and the
            algorithm of the key's type (RS256, ES256, EdDSA) otherwise.
        audience: the expected ``aud`` (one value or several); checked when given.
        issuer: the expected ``iss``, compared exactly; checked when given.
        leeway: seconds of clock skew allowed for ``exp``/``nbf``/``iat`` (0 to 300).
        require_exp: refuse tokens without ``exp`` (the default).
        typ: the expected ``typ`` header (e.g. ``"at+jwt"``); checked when given.
        cookie: the cookie carrying the token (``None``: not read). A token
            found only there is used when the request's ``Origin`` is this
            server's own, one of ``allowed_origins`` or one an
            :class:`~hubbub.AuthMiddleware` in front allows (or, without
            ``Origin``, with ``Sec-Fetch-Site: same-origin``); otherwise it is
            refused 403 (see :func:`hubbub.auth.cookie_allowed`).
        allowed_origins: other origins (``scheme://host[:port]``) whose pages may
            use the cookie; an AuthMiddleware's ``allowed_origins`` count too.
        query: the query parameter carrying the token (``None``: not read).
        clock: unix time source (for tests).

    Raises:
        ValueError: a missing, ambiguous or weak key, or an unsafe algorithm list.
        TypeError: a value of the wrong type.
    """

    def __init__(
        self,
        *,
        secret: KeyMaterial | Sequence[KeyMaterial] | None = None,
        public_key: KeyMaterial | Sequence[KeyMaterial] | None = None,
        jwks: Mapping[str, Any] | str | Path | None = None,
        jwks_url: str | None = None,
        jwks_cache: float = 300.0,
        algorithms: Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        require_exp: bool = True,
        typ: str | None = None,
        cookie: str | None = DEFAULT_COOKIE,
        query: str | None = "token",
        allowed_origins: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        sources = [x is not None for x in (secret, public_key, jwks, jwks_url)]
        if sum(sources) != 1:
            raise ValueError("give exactly one of secret, public_key, jwks or jwks_url")
        if isinstance(leeway, bool) or not isinstance(leeway, int | float):
            raise TypeError("leeway must be a number of seconds")
        if not math.isfinite(leeway) or not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY:.0f} seconds")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise TypeError("issuer must be a non-empty str (compared exactly)")
        if isinstance(audience, str):
            audience = [audience]
        if audience is not None:
            audience = list(audience)
            if not audience or not all(isinstance(a, str) and a for a in audience):
                raise ValueError("audience must be a non-empty str or list of str")
        self.audience: list[str] | None = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        self.require_exp = bool(require_exp)
        self.typ = _normal_typ(typ) if typ is not None else None
        self.cookie = cookie
        self.query = query
        if isinstance(allowed_origins, str):
            raise TypeError("allowed_origins must be a list of origins, not a str")
        self.allowed_origins = frozenset(normalise_origin(o) for o in allowed_origins or ())
        self.clock = clock
        self._keys: list[Any] = []
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None

        if secret is not None:
            secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
            if not secrets:
                raise ValueError("secret: give at least one")
            algorithms = list(algorithms) if algorithms is not None else ["HS256"]
            _check_algorithms(algorithms, hmac=True)
            need = max(_HMAC[a] for a in algorithms)
            for one in secrets:
                if not isinstance(one, str | bytes):
                    raise TypeError("secret must be str or bytes")
                raw = one.encode() if isinstance(one, str) else one
                if len(raw) < need:
                    raise ValueError(
                        f"the HMAC secret is {len(raw)} bytes; {'/'.join(algorithms)} needs "
                        f"at least {need} random bytes (RFC 7518 §3.2)"
                    )
                if raw.lstrip().startswith(b"-----BEGIN") or raw.lstrip().startswith(b"ssh-"):
                    raise ValueError("a PEM/SSH key is not an HMAC secret: use public_key=")
                self._keys.append(raw)
        elif public_key is not None:
            pems = [public_key] if isinstance(public_key, str | bytes) else list(public_key)
            if not pems:
                raise ValueError("public_key: give at least one")
            self._keys = [_load_public_key(pem) for pem in pems]
            if algorithms is None:
                algorithms = sorted({_default_algorithm(key) for key in self._keys})
            algorithms = list(algorithms)
            _check_algorithms(algorithms, hmac=False)
        elif jwks is not None:
            if isinstance(jwks, str | Path):
                jwks = json.loads(Path(jwks).read_text())
            if not isinstance(jwks, Mapping):
                raise TypeError("jwks must be a JWKS document (dict) or the path of one")
            try:
                self._jwks = jwt.PyJWKSet.from_dict(dict(jwks))
            except jwt.PyJWTError as exc:
                raise ValueError(f"jwks: {exc}") from None
            if algorithms is None:
                algorithms = sorted({k.algorithm_name for k in self._jwks.keys})
            algorithms = list(algorithms)
            _check_algorithms(algorithms, hmac=False)
        else:
            assert jwks_url is not None
            if not jwks_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
                raise ValueError("jwks_url must be https:// (plain http only for localhost)")
            if algorithms is None:
                raise ValueError("with jwks_url, give algorithms= explicitly")
            algorithms = list(algorithms)
            _check_algorithms(algorithms, hmac=False)
            self._jwks_client = jwt.PyJWKClient(
                jwks_url, cache_jwk_set=True, lifespan=int(jwks_cache), timeout=10
            )
        self.algorithms: list[str] = algorithms

    def __repr__(self) -> str:
        return f"<JWTAuthenticator algorithms={self.algorithms}>"

    _SETTINGS = (
        "audience",
        "issuer",
        "leeway",
        "require_exp",
        "typ",
        "cookie",
        "query",
        "allowed_origins",
        "_keys",
        "_jwks",
        "_jwks_client",
        "algorithms",
    )

    def reconfigure(self, other: JWTAuthenticator) -> None:
        """Verify with ``other``'s keys and settings from now on (key rotation, SIGHUP).

        Build ``other`` with the new options (its constructor checks them), then
        hand it here: the running server keeps this object, which middleware and
        hub hold. The settings are swapped in one synchronous step, so call it
        from the event loop's thread: a verification in progress (a JWKS fetch
        awaiting its thread) finishes with the keys it started with or the new ones.
        """
        if not isinstance(other, JWTAuthenticator):
            raise TypeError("reconfigure needs a JWTAuthenticator")
        for name in self._SETTINGS:
            setattr(self, name, getattr(other, name))

    # -- the Authenticator protocol ------------------------------------------------------

    async def __call__(self, scope: Mapping[str, Any]) -> Identity | None:
        """The identity of the token ``scope`` carries; ``None`` when it carries none.

        Raises:
            AuthenticationFailed: a bad token (401).
            PermissionDenied: a token found only in the cookie, on a request from a
                page that may not use it (403).
        """
        found = find_credentials(scope, cookie=self.cookie, query=self.query)
        if found is None:
            return None
        token, carrier = found
        if carrier == "cookie" and not cookie_allowed(scope, self.allowed_origins):
            raise PermissionDenied(
                "a token in a cookie is accepted only from this site's own pages "
                "(Origin not allowed)"
            )
        return await self.verify(token)

    async def verify(self, token: str) -> Identity:
        """Verify a connection token; raises :class:`~hubbub.AuthenticationFailed` (401).

        A channel token (one with a ``channel`` claim) is not a connection token.
        """
        claims = await self.decode(token)
        return identity_from_claims(claims)

    async def verify_channel_token(self, token: str, *, user: str, channel: str) -> None:
        """Check a channel token (protocol §4); raises :class:`~hubbub.PermissionDenied`."""
        try:
            claims = await self.decode(token, typ=False)
        except AuthenticationFailed as exc:
            raise PermissionDenied(f"channel token refused: {exc.reason}") from None
        if claims.get("sub") != user or not user:
            raise PermissionDenied("channel token is for another user")
        if claims.get("channel") != channel:
            raise PermissionDenied("channel token is for another channel")

    async def decode(self, token: str, *, typ: bool = True) -> dict[str, Any]:
        """The verified claims of ``token``; raises AuthenticationFailed for any defect."""
        if self._jwks_client is not None:
            client = self._jwks_client
            try:
                signing = await anyio.to_thread.run_sync(client.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientConnectionError:
                raise AuthenticationFailed("cannot fetch the signing keys") from None
            except jwt.PyJWTError:
                raise AuthenticationFailed("malformed token or unknown key id") from None
            return self.decode_with([signing.key], token, typ=typ)
        if self._jwks is not None:
            return self.decode_with(self._jwks_keys(token), token, typ=typ)
        return self.decode_with(self._keys, token, typ=typ)

    # -- the pure core -----------------------------------------------------------------------

    def _jwks_keys(self, token: str) -> list[Any]:
        assert self._jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed token") from None
        keys = self._jwks.keys
        if kid is not None:
            keys = [k for k in keys if k.key_id == kid]
        elif len(keys) != 1:
            raise AuthenticationFailed("token has no kid and the JWKS holds several keys")
        if not keys:
            raise AuthenticationFailed("unknown key id")
        return [k.key for k in keys]

    def decode_with(self, keys: Sequence[Any], token: str, *, typ: bool = True) -> dict[str, Any]:
        """Verify ``token`` against each of ``keys`` in turn; the claims of the first match."""
        if not isinstance(token, str) or not token or len(token) > 16 * 1024:
            raise AuthenticationFailed("malformed token")
        require = ["sub", "exp"] if self.require_exp else ["sub"]
        if self.issuer is not None:
            require.append("iss")
        if self.audience is not None:
            require.append("aud")
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=self.algorithms,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway,
                    options={"require": require, "verify_aud": self.audience is not None},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise AuthenticationFailed(_reason(exc)) from None
        if claims is None:
            raise AuthenticationFailed("invalid token signature")
        for name in ("exp", "nbf", "iat"):
            # PyJWT accepts numeric strings ("exp": "1700000000"), which hubbub
            # would then read as "no expiry": only JSON numbers are dates here.
            value = claims.get(name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= MAX_NUMERIC_DATE
            ):
                raise AuthenticationFailed(f"invalid token: {name} must be a number of seconds")
        iat = claims.get("iat")
        if iat is not None:
            if iat > self.clock() + self.leeway:
                raise AuthenticationFailed("token issued in the future")
        if typ and self.typ is not None:
            header = jwt.get_unverified_header(token)
            found = header.get("typ")
            if not isinstance(found, str) or _normal_typ(found) != self.typ:
                raise AuthenticationFailed("invalid token type")
        return claims


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """The :class:`Identity` of verified ``claims``; raises AuthenticationFailed if malformed."""
    if "channel" in claims:
        raise AuthenticationFailed("a channel token cannot open or refresh a connection")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 200:
        raise AuthenticationFailed("invalid token: sub must be a non-empty string")
    name = claims.get("name")
    if name is not None and not isinstance(name, str):
        raise AuthenticationFailed("invalid token: name must be a string")
    info = claims.get("info")
    if info is not None and not isinstance(info, dict):
        raise AuthenticationFailed("invalid token: info must be an object")
    channels = claims.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise AuthenticationFailed("invalid token: channels must be a list of strings")
    exp = claims.get("exp")
    expires = int(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    identity = Identity(
        user=sub,
        name=name,
        info=info,
        expires=expires,
        channels=tuple(dict.fromkeys(channels)),
        claims=dict(claims),
    )
    try:
        return check_identity(identity)
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(
            exc.reason.replace("invalid identity", "invalid token")
        ) from None


def _reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "invalid token audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "invalid token issuer"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not allowed"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "invalid token signature"
    return "malformed token"


def _normal_typ(typ: str) -> str:
    typ = typ.strip().lower()
    return typ.removeprefix("application/")


def _check_algorithms(algorithms: list[str], *, hmac: bool) -> None:
    if not algorithms:
        raise ValueError("algorithms: give at least one")
    for alg in algorithms:
        if not isinstance(alg, str):
            raise TypeError("algorithms must be strings")
        if alg.lower() == "none":
            raise ValueError("the 'none' algorithm is never accepted")
        if hmac and alg not in _HMAC:
            raise ValueError(f"{alg} does not go with an HMAC secret (HMAC: HS256/384/512)")
        if not hmac and alg not in _ASYMMETRIC:
            raise ValueError(
                f"{alg} does not go with a public key: HMAC and public-key algorithms never "
                "share a key (RFC 8725 §3.1)"
            )


def _load_public_key(pem: KeyMaterial) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if not isinstance(pem, str | bytes):
        raise TypeError("public_key must be PEM text (str or bytes)")
    raw = pem.encode() if isinstance(pem, str) else pem
    try:
        return load_pem_public_key(raw)
    except ValueError:
        raise ValueError("public_key is not a PEM public key") from None


def _default_algorithm(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name, "ES256"
        )
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported public key type {type(key).__name__}")
