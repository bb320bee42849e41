"""Hostile tests of the entry points (issue #13) through real ``hubbub serve`` processes.

Cookie tokens and the Origin check, concurrent handshakes against the caps,
JWT claim types and purposes, claims that a codec cannot carry, a junk cookie
on routes that need no user, and the cost of opening an SSE stream. Every
answer is read off the wire: the HTTP status before the upgrade or the stream,
or the ``error`` reply after it. The hubs are ``tests/apps/edge_app.py`` and
the demo hub under ``--jwt-secret``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

from .apps.auth_app import SECRET
from .apps.wsclient import Client
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

ALLOWED = "https://app.example.com"
EVIL = "https://evil.example.com"
ADMIN_KEY = "admin-key-for-tests-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


def _serve_jwt(tmp: Path, *extra: str) -> Any:
    argv = ["-m", "hubbub", "serve", "--port", "{port}", "--admin-key", ADMIN_KEY, *extra]
    return run_server(argv, tmp, env={"HUBBUB_JWT_SECRET": SECRET})


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo hub under ``hubbub serve`` with a JWT secret and no Origin allow-list."""
    with _serve_jwt(tmp_path_factory.mktemp("jwt")) as server:
        yield server


@pytest.fixture(scope="module")
def origin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same with ``--allowed-origin https://app.example.com``."""
    with _serve_jwt(tmp_path_factory.mktemp("origin"), "--allowed-origin", ALLOWED) as server:
        yield server


def _app_server(tmp: Path, name: str) -> Any:
    return run_server(["-m", "hubbub", "serve", f"edge_app:{name}", "--port", "{port}"], tmp)


def mint(sub: str = "alice", *, ttl: float = 300.0, **claims: Any) -> str:
    """A token for the demo server (no audience or issuer), claims overridable."""
    now = time.time()
    payload: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl)}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, "HS256")


@asynccontextmanager
async def ws_open(
    server: Server,
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    origin: str | None = None,
    subprotocols: Sequence[str] = ("hubbub.v1.json",),
) -> AsyncIterator[Client]:
    async with connect(
        server.ws_url + "/ws" + query,
        additional_headers=headers or {},
        subprotocols=[Subprotocol(p) for p in subprotocols],
        origin=Origin(origin) if origin is not None else None,
        ping_interval=None,
        proxy=None,
        open_timeout=20,
        close_timeout=2,
    ) as ws:
        client = Client(ws, answer_pings=True)
        first = await client.recv(10.0)
        assert first["type"] == "welcome", first
        client.welcome = first
        yield client


async def ws_status(server: Server, **options: Any) -> int:
    """101 when the socket opened with a welcome, else the refusal's HTTP status."""
    try:
        async with ws_open(server, **options):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


def sse_status(
    server: Server, query: str = "?channel=news", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """The status of ``GET /sse`` and its first bytes (closed at once)."""
    with (
        httpx.Client(timeout=10.0) as http,
        http.stream("GET", server.url + "/sse" + query, headers=headers or {}) as response,
    ):
        if response.status_code != 200:
            return response.status_code, response.read().decode()
        return 200, next(response.iter_text())


def http_status(server: Server, path: str, headers: dict[str, str]) -> int:
    """The status of a plain ``GET``."""
    with httpx.Client(timeout=10.0) as http:
        return http.get(server.url + path, headers=headers).status_code


def assert_no_crash(server: Server) -> None:
    """Nothing raised inside the ASGI app (uvicorn logs such a crash with its traceback)."""
    log = server.log()
    assert "Exception in ASGI application" not in log
    for name in ("OverflowError", "UnicodeEncodeError", "EncodeError"):
        assert name not in log


def own_origin(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


# -- 3: a cookie token needs an allowed Origin -------------------------------------------------


async def test_cookie_websocket_needs_its_own_or_an_allowed_origin(jwt_server: Server) -> None:
    """Without an allow-list a cookie token opens a WebSocket only from the server's own origin."""
    cookie = {"Cookie": f"hubbub_token={mint('victim')}"}
    assert await ws_status(jwt_server, headers=cookie, origin=EVIL) == 403
    assert await ws_status(jwt_server, headers=cookie) == 403  # no Origin: not a browser page
    async with ws_open(jwt_server, headers=cookie, origin=own_origin(jwt_server)) as client:
        assert client.welcome["user"] == "victim"
    # An explicit token is not ambient: any Origin may carry it when there is no allow-list.
    async with ws_open(jwt_server, query=f"?token={mint('bob')}", origin=EVIL) as client:
        assert client.welcome["user"] == "bob"


def test_cookie_sse_needs_its_own_or_an_allowed_origin(jwt_server: Server) -> None:
    """A cookie opens /sse only from the server's own origin or a same-origin fetch."""
    cookie = f"hubbub_token={mint('victim')}"
    assert sse_status(jwt_server, headers={"Cookie": cookie, "Origin": EVIL})[0] == 403
    assert sse_status(jwt_server, headers={"Cookie": cookie})[0] == 403
    cross = {"Cookie": cookie, "Sec-Fetch-Site": "same-site"}
    assert sse_status(jwt_server, headers=cross)[0] == 403
    same = {"Cookie": cookie, "Sec-Fetch-Site": "same-origin"}
    assert sse_status(jwt_server, headers=same)[0] == 200
    own = {"Cookie": cookie, "Origin": own_origin(jwt_server)}
    assert sse_status(jwt_server, headers=own)[0] == 200
    assert sse_status(jwt_server, headers={"Origin": EVIL})[0] == 401  # no token at all


async def test_cookie_with_an_allow_list(origin_server: Server) -> None:
    """With --allowed-origin a cookie token works from a listed Origin, on /ws and /sse alike."""
    cookie = f"hubbub_token={mint('carol')}"
    async with ws_open(origin_server, headers={"Cookie": cookie}, origin=ALLOWED) as client:
        assert client.welcome["user"] == "carol"
    assert await ws_status(origin_server, headers={"Cookie": cookie}, origin=EVIL) == 403
    assert await ws_status(origin_server, headers={"Cookie": cookie}) == 403
    assert sse_status(origin_server, headers={"Cookie": cookie, "Origin": ALLOWED})[0] == 200
    assert sse_status(origin_server, headers={"Cookie": cookie, "Origin": EVIL})[0] == 403


# -- 7: caps hold against concurrent handshakes ------------------------------------------------


async def _concurrent_ws(server: Server, queries: list[str]) -> list[int]:
    async with AsyncExitStack() as stack:

        async def one(query: str) -> int:
            try:
                await stack.enter_async_context(ws_open(server, query=query))
            except InvalidStatus as exc:
                return int(exc.response.status_code)
            return 101

        return list(await asyncio.gather(*(one(q) for q in queries)))


async def _concurrent_sse(server: Server, queries: list[str]) -> list[int]:
    async with httpx.AsyncClient(timeout=20.0) as http, AsyncExitStack() as stack:

        async def one(query: str) -> int:
            request = http.stream("GET", server.url + "/sse" + query)
            response = await stack.enter_async_context(request)
            return response.status_code

        return list(await asyncio.gather(*(one(q) for q in queries)))


@pytest.mark.parametrize("name", ["slow_app", "slow_mw_app"])
async def test_per_ip_cap_holds_against_concurrent_handshakes(tmp_path: Path, name: str) -> None:
    """30 concurrent handshakes with an awaiting authenticator: exactly 5 open, 25 get 429."""
    with _app_server(tmp_path, name) as server:
        statuses = await _concurrent_ws(server, [f"?user=u{i}" for i in range(30)])
        assert sorted(statuses).count(101) == 5, statuses
        assert statuses.count(429) == 25, statuses
        # Every refused reservation was given back: five more may open now.
        statuses = await _concurrent_ws(server, [f"?user=v{i}" for i in range(5)])
        assert statuses == [101] * 5
        # Refused handshakes (no credentials) give their place back too.
        assert await ws_status(server) == 401
        assert await ws_status(server, query="?user=w") == 101


async def test_per_ip_cap_holds_for_concurrent_sse_streams(tmp_path: Path) -> None:
    """30 concurrent SSE streams with an awaiting authenticator: exactly 5 stream, 25 get 429."""
    with _app_server(tmp_path, "slow_app") as server:
        statuses = await _concurrent_sse(server, [f"?channel=a&user=u{i}" for i in range(30)])
        assert statuses.count(200) == 5, statuses
        assert statuses.count(429) == 25, statuses
        statuses = await _concurrent_sse(server, [f"?channel=a&user=v{i}" for i in range(5)])
        assert statuses == [200] * 5


async def test_per_user_cap_holds_against_concurrent_handshakes(tmp_path: Path) -> None:
    """10 concurrent handshakes of one user (cap 3): exactly 3 open, the rest get 429."""
    with _app_server(tmp_path, "slow_app") as server:
        statuses = await _concurrent_ws(server, ["?user=same"] * 4)
        assert sorted(statuses) == [101, 101, 101, 429], statuses


# -- 12: claim types and token purposes ---------------------------------------------------------


def _string_claim(name: str) -> str:
    now = int(time.time())
    value = {"exp": now + 300, "nbf": now - 10, "iat": now}[name]
    return mint("alice", **{name: str(value)})


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_numeric_string_dates_are_refused(jwt_server: Server, claim: str) -> None:
    """``exp``/``nbf``/``iat`` given as numeric strings are refused 401 on /ws and /sse."""
    token = _string_claim(claim)
    assert await ws_status(jwt_server, query=f"?token={token}") == 401
    assert sse_status(jwt_server, f"?channel=news&token={token}")[0] == 401


async def test_refresh_with_a_string_exp_keeps_the_expiry(jwt_server: Server) -> None:
    """``refresh`` with a string ``exp`` is ``error`` 401: it cannot clear the expiry."""
    async with ws_open(jwt_server, query=f"?token={mint('alice')}") as client:
        expires = client.welcome["expires"]
        reply = await client.request({"type": "refresh", "token": _string_claim("exp")})
        assert reply["type"] == "error" and reply["code"] == 401, reply
        fresh = mint("alice", ttl=600)
        reply = await client.request({"type": "refresh", "token": fresh})
        assert reply["type"] == "ack" and reply["expires"] > expires


async def test_a_channel_token_is_not_a_connection_token(jwt_server: Server) -> None:
    """A channel token (it has ``channel``) opens no connection and refreshes none."""
    channel_token = mint("alice", channel="news")
    assert await ws_status(jwt_server, query=f"?token={channel_token}") == 401
    assert sse_status(jwt_server, f"?channel=news&token={channel_token}")[0] == 401
    async with ws_open(jwt_server, query=f"?token={mint('alice')}") as client:
        reply = await client.request({"type": "refresh", "token": channel_token})
        assert reply["type"] == "error" and reply["code"] == 401, reply


# -- 13: claims every codec can carry ---------------------------------------------------------


CLAIMS: dict[str, tuple[dict[str, Any], bool]] = {
    "info-beyond-64-bits": ({"info": {"n": 2**70}}, False),
    "negative-info-beyond-64-bits": ({"info": {"n": [-(2**64)]}}, False),
    "exp-beyond-64-bits": ({"exp": 2**70}, False),
    "exp-infinite": ({"exp": 1e400}, False),
    "name-not-a-string": ({"name": 5}, False),
    "info-at-the-64-bit-edge": ({"info": {"n": 2**63 - 1, "m": -(2**63)}}, True),
}


@pytest.mark.parametrize("case", sorted(CLAIMS))
@pytest.mark.parametrize("codec", ["hubbub.v1.json", "hubbub.v1.msgpack"])
async def test_claims_are_checked_against_both_codecs(
    jwt_server: Server, case: str, codec: str
) -> None:
    """A token whose claims a codec cannot carry is refused 401, whatever the client's codec."""
    claims, ok = CLAIMS[case]
    token = mint("alice", **claims)
    status = await ws_status(jwt_server, query=f"?token={token}", subprotocols=[codec])
    assert status == (101 if ok else 401)
    assert sse_status(jwt_server, f"?channel=news&token={token}")[0] == (200 if ok else 401)
    await asyncio.sleep(0.2)
    assert_no_crash(jwt_server)


async def test_custom_identities_are_checked_like_claims(tmp_path: Path) -> None:
    """An Identity from a custom authenticator that a codec cannot carry is refused 401."""
    with _app_server(tmp_path, "identity_app") as server:
        for case in ("big-info", "big-expires", "surrogate-name", "surrogate-user", "int-keys"):
            for codec in ("hubbub.v1.json", "hubbub.v1.msgpack"):
                status = await ws_status(server, query=f"?case={case}", subprotocols=[codec])
                assert status == 401, (case, codec)
            assert sse_status(server, f"?channel=a&case={case}")[0] == 401, case
        for case in ("not-json", "bool-expires"):
            assert await ws_status(server, query=f"?case={case}") == 401, case
        async with ws_open(server, query="?case=ok", subprotocols=["hubbub.v1.msgpack"]) as client:
            assert client.welcome["user"] == "ok"
            # refresh goes through the same check: an expiry beyond 64 bits is 401.
            reply = await client.request({"type": "refresh", "token": "ok-big-expires"})
            assert reply["type"] == "error" and reply["code"] == 401, reply
            reply = await client.request({"type": "refresh", "token": "ok"})
            assert reply["type"] == "ack", reply
        await asyncio.sleep(0.2)
        assert_no_crash(server)


# -- 14: a junk cookie locks nobody out --------------------------------------------------------


async def test_a_junk_cookie_breaks_no_route_that_needs_no_user(jwt_server: Server) -> None:
    """A stale cookie: /health, /hubbub.js and the admin key work; an explicit token wins."""
    junk = {"Cookie": "hubbub_token=not-a-jwt"}
    stale = {"Cookie": f"hubbub_token={mint('alice', ttl=-600)}"}
    for cookie in (junk, stale):
        assert http_status(jwt_server, "/health", cookie) == 200
        assert http_status(jwt_server, "/hubbub.js", cookie) == 200
        admin = {**cookie, "Authorization": f"apikey {ADMIN_KEY}"}
        assert http_status(jwt_server, "/admin/stats", admin) == 200
        fresh = mint("alice")
        headers = {**cookie, "Origin": own_origin(jwt_server)}
        assert sse_status(jwt_server, f"?channel=news&token={fresh}", headers)[0] == 200
        assert sse_status(jwt_server, "?channel=news", headers)[0] == 401
        async with ws_open(jwt_server, query=f"?token={fresh}", headers=cookie) as client:
            assert client.welcome["user"] == "alice"
        status = await ws_status(jwt_server, headers=cookie, origin=own_origin(jwt_server))
        assert status == 401


# -- 15: opening an SSE stream is charged like the commands it stands for -------------------------


def test_sse_subscriptions_are_charged_to_the_command_budget(tmp_path: Path) -> None:
    """A stream naming more channels than the command burst (10) is refused 429 before it starts."""
    with _app_server(tmp_path, "budget_app") as server:
        many = "?" + "&".join(f"channel=room:r{i}" for i in range(40))
        status, body = sse_status(server, many)
        assert status == 429, body
        assert "budget" in body
        ten = "?" + "&".join(f"channel=room:r{i}" for i in range(10))
        assert sse_status(server, ten)[0] == 200


async def test_sse_handshakes_count_against_the_per_ip_rate(tmp_path: Path) -> None:
    """SSE streams and WebSockets share the per-IP handshake rate: the 4th at once gets 429."""
    with _app_server(tmp_path, "rate_app") as server:
        assert sse_status(server)[0] == 200
        assert await ws_status(server) == 101
        assert sse_status(server)[0] == 200
        status, body = sse_status(server)
        assert status == 429, body
        assert await ws_status(server) == 429


def test_serve_names_or_turns_off_the_cookie_carrier(monkeypatch: pytest.MonkeyPatch) -> None:
    """``hubbub serve --jwt-cookie`` names the cookie; ``none`` (or empty) turns it off."""
    from hubbub import AuthMiddleware, JWTAuthenticator
    from hubbub.cli import _build_app, _parser

    monkeypatch.delenv("HUBBUB_JWT_COOKIE", raising=False)
    monkeypatch.setenv("HUBBUB_JWT_SECRET", SECRET)
    for argv, expected in (([], "hubbub_token"), (["--jwt-cookie", "sid"], "sid")):
        app = _build_app(_parser().parse_args(["serve", *argv]))
        assert isinstance(app, AuthMiddleware)
        assert isinstance(app.authenticator, JWTAuthenticator)
        assert app.authenticator.cookie == expected
    monkeypatch.setenv("HUBBUB_JWT_COOKIE", "none")
    app = _build_app(_parser().parse_args(["serve"]))
    assert isinstance(app, AuthMiddleware) and isinstance(app.authenticator, JWTAuthenticator)
    assert app.authenticator.cookie is None


COOKIE_PAGE = """async ({ token, victim }) => {
  document.cookie = `hubbub_token=${token}; path=/; SameSite=Lax`;
  const sse = (url, credentials) => new Promise((resolve) => {
    const source = new EventSource(url, { withCredentials: credentials });
    source.addEventListener("subscribed", () => { source.close(); resolve("open"); });
    source.onerror = () => { source.close(); resolve("refused"); };
  });
  const ws = (url) => new Promise((resolve) => {
    const socket = new WebSocket(url, ["hubbub.v1.json"]);
    socket.onmessage = (event) => { socket.close(); resolve(JSON.parse(event.data).user); };
    socket.onerror = () => resolve("refused");
  });
  const out = {};
  if (victim) {
    out.sse = await sse(`${victim}/sse?channel=news`, true);
    out.ws = await ws(`${victim.replace("http", "ws")}/ws`);
  } else {
    out.sse = await sse("/sse?channel=news", false);
    out.ws = await ws(`ws://${location.host}/ws`);
  }
  return out;
}"""


@pytest.mark.browser
def test_a_real_browser_uses_the_cookie_only_from_the_servers_own_pages(tmp_path: Path) -> None:
    """Chromium: the cookie opens /sse and /ws from the server's page, not from another port's."""
    from .test_demo_browser import chromium, open_page

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        _serve_jwt(tmp_path / "a") as victim,
        _serve_jwt(tmp_path / "b") as other,
        chromium() as browser,
    ):
        problems: list[str] = []
        page = open_page(browser, problems)
        page.goto(victim.url + "/health")  # a page without the demo's CSP
        own = page.evaluate(COOKIE_PAGE, {"token": mint("victim"), "victim": None})
        assert own == {"sse": "open", "ws": "victim"}
        # Cookies ignore ports: a page of the other server sends the victim's cookie.
        page.goto(other.url + "/health")
        foreign = page.evaluate(COOKIE_PAGE, {"token": mint("victim"), "victim": victim.url})
        assert foreign == {"sse": "refused", "ws": "refused"}
        time.sleep(0.3)
        log = victim.log()
        assert "refused an SSE stream (403)" in log
        assert '"WebSocket /ws" 403' in log
