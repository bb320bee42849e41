"""Authentication, Origin checks and caps of protocol §2/§4/§6 through a real ``hubbub serve``.

Every token is really signed (PyJWT) and every refusal is read off the wire: the
HTTP status before the upgrade, or the ``error``/close after it. The last test
of the module greps the server's whole log for every token used.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from .apps.auth_app import AUDIENCE, ISSUER, ORIGIN, SECRET, mint
from .apps.wsclient import Client
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

USED: list[str] = []
"""Every token sent to the ``served`` server, for the log test."""


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``auth_app:app`` (HS256, audience, issuer, Origin allow-list) under ``hubbub serve``."""
    argv = ["-m", "hubbub", "serve", "auth_app:app", "--port", "{port}"]
    with run_server(argv, tmp_path_factory.mktemp("auth")) as server:
        yield server


@pytest.fixture
def caps(tmp_path: Path) -> Iterator[Server]:
    """``auth_app:caps_app`` (small per-IP and per-user caps), one server per test."""
    argv = ["-m", "hubbub", "serve", "auth_app:caps_app", "--port", "{port}"]
    with run_server(argv, tmp_path) as server:
        yield server


def _token(sub: str = "alice", **options: Any) -> str:
    token = mint(sub, **options)
    USED.append(token)
    return token


@asynccontextmanager
async def _open(
    server: Server,
    *,
    token: str | None = None,
    carrier: str = "header",
    subprotocols: Sequence[str] = ("hubbub.v1.json",),
    origin: str | None = None,
    welcome: bool = True,
) -> AsyncIterator[Client]:
    url = server.ws_url + "/ws"
    headers: dict[str, str] = {}
    offered = list(subprotocols)
    if token is not None:
        if carrier == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif carrier == "subprotocol":
            offered.append(f"bearer.{token}")
        elif carrier == "cookie":
            headers["Cookie"] = f"other=1; hubbub_token={token}"
        else:
            url += f"?token={token}"
    async with connect(
        url,
        additional_headers=headers,
        subprotocols=[Subprotocol(p) for p in offered] or None,
        origin=Origin(origin) if origin is not None else None,
        ping_interval=None,
        proxy=None,
        open_timeout=10,
        close_timeout=2,
    ) as ws:
        client = Client(ws, answer_pings=True)
        if welcome:
            first = await client.recv(10.0)
            assert first["type"] == "welcome", first
            client.welcome = first
        yield client


async def _status(server: Server, **options: Any) -> tuple[int, dict[str, str]]:
    with pytest.raises(InvalidStatus) as caught:
        async with _open(server, **options):
            pass
    response = caught.value.response
    return response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300}
    claims.update(overrides)
    return claims


def _unsigned() -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."


def _tampered() -> str:
    header, _, signature = mint().split(".")
    forged = _b64(_claims(sub="mallory"))
    return f"{header}.{forged}.{signature}"


REFUSED: dict[str, Any] = {
    "alg none": _unsigned,
    "missing exp": lambda: mint(exp=None),
    "expired": lambda: mint(ttl=-60),
    "not yet valid": lambda: mint(nbf=int(time.time()) + 600),
    "issued in the future": lambda: mint(iat=int(time.time()) + 600),
    "wrong audience": lambda: mint(aud="someone-else"),
    "missing audience": lambda: mint(aud=None),
    "wrong issuer": lambda: mint(iss="https://evil.example.com"),
    "partial issuer": lambda: mint(iss="https://auth.example.co"),
    "issuer with a suffix": lambda: mint(iss="https://auth.example.com.evil.net"),
    "tampered signature": _tampered,
    "another secret": lambda: mint(key="x" * 40),
    "unknown crit header": lambda: mint(headers={"crit": ["exp-ext"], "exp-ext": 1}),
    "missing sub": lambda: mint(sub=None),
    "garbage": lambda: "not-a-jwt",
}


@pytest.mark.parametrize("carrier", ["header", "subprotocol", "cookie", "query"])
async def test_each_carrier_admits_a_valid_token(served: Server, carrier: str) -> None:
    """A valid token in any carrier of §2 (a cookie with an allowed Origin) opens a connection."""
    token = _token(name="Alice", info={"color": "red"})
    origin = ORIGIN if carrier == "cookie" else None
    async with _open(served, token=token, carrier=carrier, origin=origin) as client:
        assert client.welcome["user"] == "alice"
        assert client.welcome["expires"] > time.time()
        assert client.ws.subprotocol == "hubbub.v1.json"
        assert [s["channel"] for s in client.welcome["subscribed"]] == ["#alice"]


async def test_channels_claim_subscribes_server_side(served: Server) -> None:
    """The ``channels`` claim subscribes the client on connect, listed in ``welcome``."""
    async with _open(served, token=_token(channels=["news", "private:board"])) as client:
        channels = {s["channel"] for s in client.welcome["subscribed"]}
        assert channels == {"#alice", "news", "private:board"}


async def test_bearer_subprotocol_alone_is_refused_400(served: Server) -> None:
    """A ``bearer.<jwt>`` offered without any hubbub.v1.* subprotocol is refused 400."""
    status, _ = await _status(served, token=_token(), carrier="subprotocol", subprotocols=())
    assert status == 400


async def test_missing_token_is_refused_401(served: Server) -> None:
    """Without a token, where anonymous access is off, the handshake gets 401."""
    status, _ = await _status(served)
    assert status == 401


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_bad_tokens_are_refused_401(served: Server, case: str) -> None:
    """Every defective token is refused 401 before the upgrade."""
    token = REFUSED[case]()
    USED.append(token)
    status, _ = await _status(served, token=token)
    assert status == 401


async def test_disallowed_origin_is_refused_403(served: Server) -> None:
    """An Origin outside the allow-list is refused 403; the allowed one and none pass."""
    token = _token()
    status, _ = await _status(served, token=token, origin="https://evil.example.com")
    assert status == 403
    status, _ = await _status(served, token=token, origin="http://app.example.com")
    assert status == 403
    async with _open(served, token=token, origin=ORIGIN) as client:
        assert client.welcome["user"] == "alice"
    async with _open(served, token=token) as client:
        assert client.welcome["user"] == "alice"


async def test_another_users_personal_channel_is_refused(served: Server) -> None:
    """Subscribing to another user's ``#user`` channel gets ``error`` 403."""
    async with _open(served, token=_token()) as client:
        reply = await client.request({"type": "subscribe", "channel": "#bob"})
        assert reply["type"] == "error" and reply["code"] == 403


async def test_channel_token_grants_a_forbidden_subscription(served: Server) -> None:
    """A channel token for this user and channel opens a namespace that forbids it."""
    async with _open(served, token=_token()) as client:
        refused = await client.request({"type": "subscribe", "channel": "private:room"})
        assert refused["code"] == 403
        for wrong in (
            _token("bob", channel="private:room"),
            _token("alice", channel="private:other"),
            _token("alice", channel="private:room", ttl=-60),
        ):
            reply = await client.request(
                {"type": "subscribe", "channel": "private:room", "token": wrong}
            )
            assert reply["type"] == "error" and reply["code"] == 403, reply
        good = _token("alice", channel="private:room")
        reply = await client.request(
            {"type": "subscribe", "channel": "private:room", "token": good}
        )
        assert reply["type"] == "subscribed", reply


async def test_refresh_with_another_sub_is_refused_403(served: Server) -> None:
    """``refresh`` with a token for another user gets ``error`` 403; a bad one 401."""
    async with _open(served, token=_token()) as client:
        reply = await client.request({"type": "refresh", "token": _token("bob")})
        assert reply["type"] == "error" and reply["code"] == 403
        reply = await client.request({"type": "refresh", "token": _token(ttl=-60)})
        assert reply["type"] == "error" and reply["code"] == 401


async def test_expiry_without_refresh_closes_4401(served: Server) -> None:
    """A connection whose token expires is closed 4401 after the grace period."""
    async with _open(served, token=_token(ttl=1.5)) as client:
        ending = await client.until_closed(within=8.0)
    assert ending.code == 4401
    assert ending.disconnect is not None and ending.disconnect["reconnect"] is False


async def test_refresh_keeps_the_connection_open(served: Server) -> None:
    """A ``refresh`` with a new token for the same user moves the expiry on (ack expires)."""
    async with _open(served, token=_token(ttl=1.5)) as client:
        fresh = _token(ttl=300)
        reply = await client.request({"type": "refresh", "token": fresh})
        assert reply["type"] == "ack" and reply["expires"] > time.time() + 200
        await asyncio.sleep(3.0)
        reply = await client.request({"type": "subscribe", "channel": "still-here"})
        assert reply["type"] == "subscribed"


async def test_publish_budget_then_flood_closes_4429(served: Server) -> None:
    """Publish has its own tighter budget (429, not executed); flooding on closes 4429."""
    async with _open(served, token=_token()) as client:
        replies = [
            await client.request({"type": "publish", "channel": "room", "data": i})
            for i in range(4)
        ]
        assert [r["type"] for r in replies[:3]] == ["ack"] * 3
        assert replies[3]["type"] == "error" and replies[3]["code"] == 429
        reply = await client.request({"type": "subscribe", "channel": "room"})
        assert reply["type"] == "subscribed"
        for i in range(20):
            await client.send({"type": "publish", "channel": "room", "data": i})
        ending = await client.until_closed(within=5.0)
    assert ending.code == 4429


async def test_rsa_server_refuses_key_confusion(tmp_path: Path) -> None:
    """With an RS256 key, an HS256 token signed with the public key's PEM is refused 401."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(pem)
    argv = ["-m", "hubbub", "serve", "auth_app:rsa_hub", "--port", "{port}"]
    env = {
        "HUBBUB_JWT_PUBLIC_KEY": str(tmp_path / "public.pem"),
        "HUBBUB_JWT_AUDIENCE": AUDIENCE,
        "HUBBUB_JWT_ISSUER": ISSUER,
    }
    with run_server(argv, tmp_path, env=env) as server:
        header = _b64({"alg": "HS256", "typ": "JWT"})
        body = _b64(_claims())
        mac = hmac.new(pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        confused = f"{header}.{body}.{_b64(mac)}"
        status, _ = await _status(server, token=confused)
        assert status == 401
        status, _ = await _status(server, token=mint(key=SECRET))
        assert status == 401
        good = mint(key=key, algorithm="RS256")  # type: ignore[arg-type]
        async with _open(server, token=good, carrier="query") as client:
            assert client.welcome["user"] == "alice"
            reply = await client.request({"type": "subscribe", "channel": "#bob"})
            assert reply["code"] == 403
        log = server.log()
    assert good not in log and confused not in log


async def test_per_user_and_per_ip_caps_refuse_429(caps: Server) -> None:
    """Open connections per user, then per IP, are capped with 429 before the upgrade."""
    alice = mint("alice")
    async with _open(caps, token=alice), _open(caps, token=alice):
        status, _ = await _status(caps, token=alice)
        assert status == 429
        async with _open(caps, token=mint("bob")), _open(caps, token=mint("bob")):
            status, headers = await _status(caps, token=mint("carol"))
            assert status == 429
            assert "retry-after" in headers
    async with _open(caps, token=mint("carol")) as client:
        assert client.welcome["user"] == "carol"


async def test_handshake_flood_per_ip_gets_429_with_retry_after(caps: Server) -> None:
    """Handshake attempts beyond the per-IP rate get 429 with Retry-After, tokens or not."""
    statuses = []
    retry = None
    for _ in range(12):
        status, headers = await _status(caps)
        statuses.append(status)
        retry = headers.get("retry-after", retry)
    assert statuses[:8] == [401] * 8
    assert set(statuses[8:]) == {429}
    assert retry is not None and int(retry) >= 1


async def test_cli_flags_protect_the_demo_and_redact_query_tokens(tmp_path: Path) -> None:
    """``hubbub serve --jwt-secret`` refuses tokenless sockets; query tokens never hit the log."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--allowed-origin", ORIGIN]
    env = {"HUBBUB_JWT_SECRET": SECRET, "HUBBUB_JWT_AUDIENCE": AUDIENCE}
    with run_server(argv, tmp_path, env=env) as server:
        status, _ = await _status(server)
        assert status == 401
        token = mint("dana")
        async with _open(server, token=token, carrier="query", origin=ORIGIN) as client:
            assert client.welcome["user"] == "dana"
        status, _ = await _status(server, token=token, carrier="query", origin="https://x.io")
        assert status == 403
        bad = mint("dana", ttl=-120)  # beyond the default 30 s leeway
        status, _ = await _status(server, token=bad, carrier="query")
        assert status == 401
        await asyncio.sleep(0.3)
        log = server.log()
    assert "[redacted]" in log
    for secret in (token, bad, SECRET):
        assert secret not in log
        assert secret.split(".")[-1] not in log


async def test_no_token_ever_reaches_the_log(served: Server) -> None:
    """The server's whole log holds none of the tokens (nor their signatures) used above."""
    assert len(USED) > 20
    async with _open(served, token=_token(), carrier="query"):
        pass
    await asyncio.sleep(0.3)
    log = served.log()
    assert "WebSocket" in log  # uvicorn did log the handshakes
    for token in USED:
        assert token not in log
        signature = token.split(".")[-1]
        if len(signature) > 10:
            assert signature not in log
    assert SECRET not in log
