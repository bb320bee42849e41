"""The pure parts of authentication, without an event loop: JWT rules, carriers, limits.

Tokens are really signed with PyJWT; verification goes through
``JWTAuthenticator.decode_with``, the synchronous core the async API wraps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hubbub import (
    AuthenticationFailed,
    Identity,
    JWTAuthenticator,
    Limits,
    PermissionDenied,
    find_token,
)
from hubbub._jwt import identity_from_claims
from hubbub.auth import (
    ANONYMOUS,
    ChannelTokenAuthenticator,
    RefreshingAuthenticator,
    check_identity,
    cookie_allowed,
    find_credentials,
)
from hubbub.limits import Admission, LocalRateLimiter, client_ip
from hubbub.messages import JSON
from hubbub.namespaces import Namespace, NamespaceRegistry
from hubbub.protocol import ClientProtocol, Close, Execute, Send

SECRET = "0123456789abcdef0123456789abcdef"


def _sign(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", **kw: Any) -> str:
    base = {"sub": "alice", "exp": int(time.time()) + 60}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=alg, **kw)


def _verify(auth: JWTAuthenticator, token: str) -> Identity:
    return identity_from_claims(auth.decode_with(auth._keys, token))


# -- construction ---------------------------------------------------------------------------


def test_short_hmac_secret_is_refused_at_construction() -> None:
    """An HMAC secret shorter than 32 bytes raises ValueError (PyJWT would only warn)."""
    with pytest.raises(ValueError, match="32"):
        JWTAuthenticator(secret="too-short")
    with pytest.raises(ValueError, match="64"):
        JWTAuthenticator(secret=SECRET, algorithms=["HS512"])


@pytest.mark.parametrize(
    "options",
    [
        {"secret": SECRET, "algorithms": ["none"]},
        {"secret": SECRET, "algorithms": ["RS256"]},
        {"secret": SECRET, "algorithms": []},
        {"secret": SECRET, "leeway": 3600},
        {"secret": SECRET, "leeway": -1},
        {"secret": SECRET, "audience": []},
        {},
        {"secret": SECRET, "jwks": {"keys": []}},
        {"secret": "-----BEGIN PUBLIC KEY-----" + "A" * 40},
        {"public_key": "not a pem"},
        {"jwks_url": "http://example.com/jwks.json", "algorithms": ["RS256"]},
        {"jwks_url": "https://example.com/jwks.json"},
    ],
)
def test_unsafe_configurations_raise(options: dict[str, Any]) -> None:
    """``none``, mixed key families, unbounded leeway, missing or doubled keys all raise."""
    with pytest.raises((ValueError, TypeError)):
        JWTAuthenticator(**options)


def test_public_key_with_hmac_algorithm_is_refused() -> None:
    """A public key never serves an HMAC algorithm (the key-confusion attack)."""
    pem = _rsa_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ValueError, match="never share"):
        JWTAuthenticator(public_key=pem, algorithms=["HS256"])


# -- verification ---------------------------------------------------------------------------


def test_claims_become_the_identity() -> None:
    """sub, name, info, channels and exp map onto the Identity."""
    auth = JWTAuthenticator(secret=SECRET)
    exp = int(time.time()) + 60
    token = _sign({"name": "Al", "info": {"a": 1}, "channels": ["x", "x", "y"], "exp": exp})
    identity = _verify(auth, token)
    assert identity == Identity(user="alice", name="Al", expires=exp, channels=("x", "y"))
    assert identity.info == {"a": 1}


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": None}, "exp"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not yet valid"),
        ({"iat": int(time.time()) + 3600}, "not yet valid"),
        ({"sub": None}, "sub"),
        ({"sub": 42}, "malformed"),
        ({"info": "text"}, "info"),
        ({"channels": "a"}, "channels"),
        ({"name": 3}, "name"),
        ({"exp": str(int(time.time()) + 3600)}, "exp must be a number"),
        ({"nbf": str(int(time.time()) - 10)}, "nbf must be a number"),
        ({"iat": str(int(time.time()))}, "iat must be a number"),
        ({"exp": True}, "expired"),
        ({"exp": 2**70}, "exp must be a number"),
        ({"nbf": -1}, "nbf must be a number"),
        ({"info": {"n": 2**64}}, "both codecs"),
        ({"info": {"n": -(2**63) - 1}}, "both codecs"),
        ({"channel": "room"}, "channel token"),
    ],
)
def test_bad_claims_are_refused(claims: dict[str, Any], reason: str) -> None:
    """Missing exp/sub, expired, immature or ill-typed claims raise AuthenticationFailed."""
    auth = JWTAuthenticator(secret=SECRET, leeway=0)
    with pytest.raises(AuthenticationFailed, match=reason):
        _verify(auth, _sign(claims))


def test_exp_may_be_made_optional() -> None:
    """With ``require_exp=False`` a token without exp is accepted and never expires."""
    auth = JWTAuthenticator(secret=SECRET, require_exp=False)
    assert _verify(auth, _sign({"exp": None})).expires is None


def test_issuer_is_compared_exactly() -> None:
    """``iss`` must equal the configured issuer: no prefix, no suffix, not missing."""
    auth = JWTAuthenticator(secret=SECRET, issuer="https://auth.example.com")
    assert _verify(auth, _sign({"iss": "https://auth.example.com"})).user == "alice"
    for iss in ("https://auth.example.co", "https://auth.example.com/", "auth.example.com", None):
        with pytest.raises(AuthenticationFailed):
            _verify(auth, _sign({"iss": iss}))


def test_audience_is_checked_where_configured() -> None:
    """With an audience, tokens for another one or without one are refused."""
    auth = JWTAuthenticator(secret=SECRET, audience=["a", "b"])
    assert _verify(auth, _sign({"aud": "b"})).user == "alice"
    for aud in ("c", None):
        with pytest.raises(AuthenticationFailed):
            _verify(auth, _sign({"aud": aud}))


def test_typ_header_is_checked_when_configured() -> None:
    """``typ`` must match when configured (case-insensitive, application/ optional)."""
    auth = JWTAuthenticator(secret=SECRET, typ="at+jwt")
    assert _verify(auth, _sign({}, headers={"typ": "application/AT+JWT"})).user == "alice"
    with pytest.raises(AuthenticationFailed, match="type"):
        _verify(auth, _sign({}, headers={"typ": "JWT"}))


def test_alg_none_and_tampering_are_refused() -> None:
    """An unsigned token and one signed with another key are refused."""
    auth = JWTAuthenticator(secret=SECRET)
    unsigned = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(AuthenticationFailed, match="algorithm"):
        _verify(auth, unsigned)
    with pytest.raises(AuthenticationFailed, match="signature"):
        _verify(auth, _sign({}, key="y" * 32))


def test_rotation_accepts_old_and_new_secrets() -> None:
    """Several secrets are each tried: tokens of the old and the new key pass."""
    old, new = "o" * 32, "n" * 32
    auth = JWTAuthenticator(secret=[new, old])
    assert _verify(auth, _sign({}, key=old)).user == "alice"
    assert _verify(auth, _sign({}, key=new)).user == "alice"


def _rsa_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("kind", ["RS256", "ES256", "EdDSA"])
def test_public_keys_pick_their_algorithm(kind: str) -> None:
    """RSA, P-256 and Ed25519 PEM keys verify RS256, ES256 and EdDSA tokens."""
    private: Any
    if kind == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    auth = JWTAuthenticator(public_key=pem)
    assert auth.algorithms == [kind]
    assert _verify(auth, _sign({}, key=private, alg=kind)).user == "alice"


def test_jwks_file_chooses_the_key_by_kid(tmp_path: Path) -> None:
    """A JWKS file verifies by ``kid``; an unknown kid is refused; jku is never followed."""
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    document = {"keys": []}
    for index, key in enumerate(keys):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid=f"k{index}", alg="RS256", use="sig")
        document["keys"].append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    auth = JWTAuthenticator(jwks=path)
    for index, key in enumerate(keys):
        token = _sign({}, key=key, alg="RS256", headers={"kid": f"k{index}"})
        assert identity_from_claims(auth.decode_with(auth._jwks_keys(token), token)).user
    token = _sign({}, key=keys[0], alg="RS256", headers={"kid": "k1", "jku": "https://x/"})
    with pytest.raises(AuthenticationFailed, match="signature"):
        auth.decode_with(auth._jwks_keys(token), token)
    token = _sign({}, key=keys[0], alg="RS256", headers={"kid": "nope"})
    with pytest.raises(AuthenticationFailed, match="unknown key"):
        auth._jwks_keys(token)


# -- carriers -------------------------------------------------------------------------------


def _scope(**kw: Any) -> dict[str, Any]:
    return {"type": "websocket", "headers": [], "query_string": b"", **kw}


def test_carriers_are_read_in_protocol_order() -> None:
    """Authorization beats the subprotocol, which beats the query, which beats the cookie."""
    scope = _scope(
        headers=[(b"authorization", b"Bearer H"), (b"cookie", b"a=1; hubbub_token=C")],
        subprotocols=["hubbub.v1.json", "bearer.S"],
        query_string=b"token=Q",
    )
    assert find_credentials(scope) == ("H", "header")
    scope["headers"] = scope["headers"][1:]
    assert find_credentials(scope) == ("S", "subprotocol")
    scope["subprotocols"] = ["hubbub.v1.json"]
    assert find_credentials(scope) == ("Q", "query")
    assert find_token(scope) == "Q"
    scope["query_string"] = b""
    assert find_credentials(scope) == ("C", "cookie")
    assert find_token(scope, cookie=None) is None
    assert find_token(_scope(headers=[(b"cookie", b"bad\x00cookie;;==")])) is None
    assert find_token(_scope(headers=[(b"authorization", b"Basic abc")])) is None


# -- limits ---------------------------------------------------------------------------------


def test_local_rate_limiter_refills_with_its_clock() -> None:
    """A key gets ``burst`` events, then waits 1/rate seconds per event."""
    now = [0.0]
    limiter = LocalRateLimiter(2.0, 3, clock=lambda: now[0], max_keys=2)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0
    now[0] = 0.5
    assert limiter.take("a") == 0.0
    limiter.take("c")  # evicts the least recently used key
    assert len(limiter._buckets) == 2


def test_admission_caps_users_and_addresses() -> None:
    """Open connections per IP and per user are capped; closing frees a place."""
    admission = Admission(Limits(max_connections_per_ip=1, max_connections_per_user=2))
    assert admission.check_user(1) is None
    assert admission.check_user(2) is not None
    admission.opened("1.2.3.4")
    assert admission._per_ip == {"1.2.3.4": 1}
    admission.closed("1.2.3.4")
    assert admission._per_ip == {}


@pytest.mark.anyio
async def test_check_ip_holds_the_place_it_grants() -> None:
    """check_ip takes the place when it admits (a second check is refused) until closed."""
    admission = Admission(Limits(max_connections_per_ip=2))
    assert await admission.check_ip("1.2.3.4") is None
    assert await admission.check_ip("1.2.3.4") is None
    refused = await admission.check_ip("1.2.3.4")
    assert refused is not None and "at most 2" in refused[0]
    admission.closed("1.2.3.4")
    assert await admission.check_ip("1.2.3.4") is None
    assert admission._per_ip == {"1.2.3.4": 2}


@pytest.mark.anyio
async def test_check_ip_gives_the_place_back_when_the_rate_refuses() -> None:
    """A handshake refused by the rate limiter holds no place of the address."""
    admission = Admission(Limits(handshake_rate=0.001, handshake_burst=1, max_connections_per_ip=5))
    assert await admission.check_ip("1.2.3.4") is None
    refused = await admission.check_ip("1.2.3.4")
    assert refused is not None and refused[1] >= 1
    assert admission._per_ip == {"1.2.3.4": 1}


def _headers(**fields: str) -> dict[str, Any]:
    return {"headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in fields.items()]}


@pytest.mark.parametrize(
    ("headers", "allowed", "ok"),
    [
        ({"host": "chat.example.com", "origin": "https://chat.example.com"}, None, True),
        ({"host": "chat.example.com:443", "origin": "https://chat.example.com"}, None, True),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, None, True),
        ({"host": "[::1]:8000", "origin": "http://[::1]:8000"}, None, True),
        ({"host": "chat.example.com", "origin": "https://evil.example.com"}, None, False),
        ({"host": "chat.example.com", "origin": "https://chat.example.com:8443"}, None, False),
        ({"host": "chat.example.com", "origin": "null"}, None, False),
        ({"host": "chat.example.com/x", "origin": "https://chat.example.com"}, None, False),
        ({"host": "chat.example.com"}, None, False),
        ({"host": "chat.example.com", "sec_fetch_site": "same-origin"}, None, True),
        ({"host": "chat.example.com", "sec_fetch_site": "none"}, None, True),
        ({"host": "backend:8000", "origin": "https://chat.example.com"}, None, False),
        ({"host": "b:80", "origin": "https://c.io", "sec_fetch_site": "same-origin"}, None, True),
        ({"origin": "https://evil.example.com", "sec_fetch_site": "none"}, None, False),
        ({"host": "chat.example.com", "sec_fetch_site": "same-site"}, None, False),
        ({"host": "chat.example.com", "sec_fetch_site": "cross-site"}, None, False),
        ({"origin": "https://app.example.com"}, {"https://app.example.com:443"}, True),
        ({"origin": "https://evil.example.com"}, {"https://app.example.com:443"}, False),
    ],
)
def test_a_cookie_counts_only_from_a_trusted_page(
    headers: dict[str, str], allowed: set[str] | None, ok: bool
) -> None:
    """The cookie is used for this server's own Origin, an allowed one, or a same-origin fetch."""
    assert cookie_allowed(_headers(**headers), allowed) is ok


@pytest.mark.anyio
async def test_a_cookie_from_another_site_is_refused_403() -> None:
    """JWTAuthenticator refuses a cookie token from a foreign Origin; explicit tokens pass."""
    auth = JWTAuthenticator(secret=SECRET, allowed_origins=["https://app.example.com"])
    token = _sign({})
    cookie = ("cookie", f"hubbub_token={token}")
    scope = _headers(host="chat.example.com", origin="https://evil.example.com")
    scope["headers"].append((cookie[0].encode(), cookie[1].encode()))
    with pytest.raises(PermissionDenied, match="cookie"):
        await auth(scope)
    scope["headers"][1] = (b"origin", b"https://app.example.com")
    identity = await auth(scope)
    assert identity is not None and identity.user == "alice"
    scope["headers"][1] = (b"origin", b"https://evil.example.com")
    scope["query_string"] = f"token={token}".encode()
    assert await auth(scope) == identity
    # AuthMiddleware leaves its allow-list in the scope: those origins count too.
    other = JWTAuthenticator(secret=SECRET)
    scope = _headers(origin="https://app.example.com", cookie=f"hubbub_token={token}")
    with pytest.raises(PermissionDenied):
        await other(scope)
    scope["hubbub.allowed_origins"] = frozenset({"https://app.example.com:443"})
    assert await other(scope) == identity


@pytest.mark.parametrize(
    "identity",
    [
        Identity(user="a", info={"n": 2**64}),
        Identity(user="a", info={1: "x"}),
        Identity(user="a", info={"x": object()}),
        Identity(user="\ud800"),
        Identity(user="a", name="\udfff"),
        Identity(user="a", expires=2**63),
        Identity(user="a", expires=True),  # type: ignore[arg-type]
        Identity(user="a", channels=("x", 1)),  # type: ignore[arg-type]
        Identity(user=1),  # type: ignore[arg-type]
        Identity(user="a", name=2),  # type: ignore[arg-type]
        Identity(user="a", info=[1]),  # type: ignore[arg-type]
        "alice",
    ],
)
def test_identities_both_codecs_cannot_carry_are_refused(identity: Any) -> None:
    """check_identity refuses what JSON or MessagePack could not carry to every client."""
    with pytest.raises(AuthenticationFailed, match="invalid identity"):
        check_identity(identity)


def test_identities_at_the_edges_pass() -> None:
    """64-bit integers at both ends, nested info and no info at all are fine."""
    for identity in (
        Identity(user="a", info={"n": [2**64 - 1, -(2**63)], "d": {"x": [1.5, None]}}),
        Identity(user="", expires=2**63 - 1),
        ANONYMOUS,
    ):
        assert check_identity(identity) is identity


def test_client_ip_trusts_forwarded_headers_only_from_proxies() -> None:
    """X-Forwarded-For/Forwarded name the client only when the peer is a trusted proxy."""
    xff = [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.0.0.2")]
    assert client_ip("198.51.100.1", xff, ["10.0.0.0/8"]) == "198.51.100.1"
    assert client_ip("10.0.0.1", xff, ["10.0.0.0/8"]) == "203.0.113.9"
    assert client_ip("10.0.0.1", xff, []) == "10.0.0.1"
    forwarded = [(b"forwarded", b'for="[2001:db8::1]:443";proto=https')]
    assert client_ip("10.0.0.1", forwarded, ["10.0.0.1"]) == "2001:db8::1"
    assert client_ip("10.0.0.1", [(b"x-forwarded-for", b"junk")], ["10.0.0.1"]) == "10.0.0.1"
    assert client_ip(None, xff, []) == "unknown"


@pytest.mark.parametrize(
    "options",
    [
        {"command_limits": {"dance": (1.0, 1)}},
        {"command_limits": {"publish": (0, 1)}},
        {"command_limits": {"publish": 5}},
        {"trusted_proxies": "10.0.0.1"},
        {"trusted_proxies": ["not-an-ip"]},
        {"max_connections_per_ip": 0},
        {"handshake_rate": -1.0},
        {"first_message_timeout": 0},
    ],
)
def test_limit_configuration_errors_raise(options: dict[str, Any]) -> None:
    """Bad budgets, proxies and caps raise at construction."""
    with pytest.raises((ValueError, TypeError)):
        Limits(**options)


def _protocol(limits: Limits, identity: Identity = ANONYMOUS) -> ClientProtocol:
    registry = NamespaceRegistry(
        [Namespace(), Namespace(name="private", subscribe="nobody")], Namespace(name="personal")
    )
    return ClientProtocol(
        identity=identity, codec=JSON, namespaces=registry, limits=limits, now=0.0
    )


def _frame(**message: Any) -> str:
    return json.dumps(message)


def test_publish_budget_is_separate_from_subscribe() -> None:
    """A per-type budget refuses publishes with 429 while subscribes still pass."""
    protocol = _protocol(Limits(command_limits={"publish": (1.0, 2)}))
    publish = _frame(type="publish", channel="a", data=1)
    results = [protocol.receive(publish, 0.0) for _ in range(3)]
    assert [type(r[0]) for r in results] == [Execute, Execute, Send]
    assert isinstance(protocol.receive(_frame(type="subscribe", channel="a"), 0.0)[0], Execute)


def test_channel_token_defers_a_forbidden_subscribe_to_the_hub() -> None:
    """A forbidden subscribe with a token is executed as needing a channel token."""
    protocol = _protocol(Limits(), Identity(user="alice"))
    plain = _frame(type="subscribe", channel="private:x")
    assert isinstance(protocol.receive(plain, 0.0)[0], Send)
    with_token = _frame(type="subscribe", channel="private:x", token="t")
    event = protocol.receive(with_token, 0.0)[0]
    assert isinstance(event, Execute) and event.channel_token


def test_expiry_and_first_message_deadlines_close() -> None:
    """Past its expiry a connection closes 4401; silent past the first deadline, 4408."""
    protocol = _protocol(Limits(first_message_timeout=2.0))
    assert protocol.heartbeat(1.9) == []  # nothing due before the first-message deadline
    assert protocol.heartbeat(2.0) == [Close(4408, "no first message within the deadline", False)]
    protocol = _protocol(Limits(first_message_timeout=2.0))
    protocol.receive(_frame(type="subscribe", channel="a"), 1.0)
    protocol.expiry = 5.0
    assert protocol.heartbeat(4.0) == []
    closing = protocol.heartbeat(5.0)
    assert closing == [Close(4401, "token expired and not refreshed")]
    assert isinstance(closing[0], Close) and not closing[0].reconnect


# -- JWKS over HTTP (opt-in) ----------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """The JWKS fetch runs in a worker thread; one backend is enough."""
    return "asyncio"


@pytest.mark.anyio
async def test_jwks_url_is_fetched_once_and_cached() -> None:
    """With ``jwks_url`` the keys are fetched over HTTP, then served from the cache."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    body = json.dumps({"keys": [jwk]}).encode()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        auth = JWTAuthenticator(jwks_url=url, algorithms=["RS256"])
        for _ in range(2):
            token = _sign({}, key=key, alg="RS256", headers={"kid": "k1"})
            assert (await auth.verify(token)).user == "alice"
        assert hits == ["/jwks.json"]
        with pytest.raises(AuthenticationFailed):
            await auth.verify(_sign({}, key=key, alg="RS256", headers={"kid": "other"}))
        with pytest.raises(AuthenticationFailed):
            await auth.verify("garbage")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.anyio
async def test_async_api_reads_carriers_and_channel_tokens() -> None:
    """``__call__`` finds the token (None without one); channel tokens are checked fully."""
    auth = JWTAuthenticator(secret=SECRET)
    scope = {"type": "websocket", "headers": [(b"authorization", b"Bearer " + _sign({}).encode())]}
    identity = await auth(scope)
    assert identity is not None and identity.user == "alice"
    assert await auth({"type": "http", "headers": []}) is None
    good = _sign({"channel": "room"})
    await auth.verify_channel_token(good, user="alice", channel="room")
    for token, user, channel in (
        (good, "bob", "room"),
        (good, "alice", "other"),
        (_sign({"channel": "room", "exp": int(time.time()) - 100}), "alice", "room"),
        (_sign({}), "alice", "room"),  # a connection token is no channel token
    ):
        with pytest.raises(PermissionDenied):
            await auth.verify_channel_token(token, user=user, channel=channel)


@pytest.mark.parametrize(
    "options",
    [
        {"secret": SECRET, "leeway": True},
        {"secret": SECRET, "issuer": ""},
        {"secret": []},
        {"secret": [SECRET, 42]},
        {"public_key": []},
        {"public_key": 42},
        {"jwks": 42},
        {"jwks": {"keys": [{"kty": "nope"}]}},
        {"secret": SECRET, "algorithms": [42]},
    ],
)
def test_more_configuration_errors_raise(options: dict[str, Any]) -> None:
    """Wrong types and empty key lists raise at construction."""
    with pytest.raises((ValueError, TypeError)):
        JWTAuthenticator(**options)


def test_jwks_without_kid_uses_its_only_key() -> None:
    """A token without ``kid`` is verified by a one-key JWKS, refused by a several-key one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    one = JWTAuthenticator(jwks={"keys": [jwk]}, algorithms=["RS256"])
    token = _sign({}, key=key, alg="RS256")
    assert identity_from_claims(one.decode_with(one._jwks_keys(token), token)).user == "alice"
    two = JWTAuthenticator(jwks={"keys": [jwk, jwk]}, algorithms=["RS256"])
    with pytest.raises(AuthenticationFailed, match="several"):
        two._jwks_keys(token)
    with pytest.raises(AuthenticationFailed, match="malformed"):
        two._jwks_keys("garbage")
    assert "RS256" in repr(one)


def test_jwt_authenticator_has_the_optional_capabilities() -> None:
    """JWTAuthenticator is a RefreshingAuthenticator and a ChannelTokenAuthenticator."""
    authenticator = JWTAuthenticator(secret=SECRET)
    assert isinstance(authenticator, RefreshingAuthenticator)
    assert isinstance(authenticator, ChannelTokenAuthenticator)


def test_a_plain_authenticator_has_neither_capability() -> None:
    """A bare async callable offers neither ``verify`` nor ``verify_channel_token``."""

    async def authenticate(scope: Any) -> Identity | None:
        return None

    assert not isinstance(authenticate, RefreshingAuthenticator)
    assert not isinstance(authenticate, ChannelTokenAuthenticator)
