"""``AuthMiddleware`` in front of a Starlette app and a hub, through Starlette's TestClient.

The same middleware protects the application's own HTTP routes (``request.user``,
``request.auth``) and the hub's WebSocket; ``RedactTokens`` keeps tokens out of
log records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse

from hubbub import (
    AuthMiddleware,
    Hub,
    HubApp,
    Identity,
    Limits,
    PermissionDenied,
    RedactTokens,
    install_log_redaction,
)
from hubbub.middleware import normalise_origin, redact

from .apps.auth_app import ORIGIN, authenticator, mint


def _app() -> tuple[Starlette, Hub]:
    hub = Hub(authenticator=authenticator())

    async def me(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "user": request.user.display_name,
                "authenticated": request.user.is_authenticated,
                "scopes": request.auth.scopes,
            }
        )

    @requires("authenticated")
    async def secret(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/me", me),
            Route("/secret", secret),
            WebSocketRoute("/ws", HubApp(hub)),
            Mount("/hub", HubApp(hub)),
        ],
        lifespan=hub.lifespan,
    )
    app.add_middleware(AuthMiddleware, authenticator=hub.authenticator, allowed_origins=[ORIGIN])
    return app, hub


@pytest.fixture
def client() -> Iterator[TestClient]:
    """A Starlette app behind AuthMiddleware, lifespan running."""
    app, _ = _app()
    with TestClient(app) as client:
        yield client


def test_http_routes_see_the_user(client: TestClient) -> None:
    """A bearer token sets ``request.user`` and the ``authenticated`` scope."""
    token = mint("alice", name="Alice")
    body = client.get("/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert body == {"user": "Alice", "authenticated": True, "scopes": ["authenticated"]}
    assert client.get("/secret", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_http_without_token_is_anonymous_and_bad_token_401(client: TestClient) -> None:
    """No token: an unauthenticated user (routes decide); a bad token: 401."""
    assert client.get("/me").json()["authenticated"] is False
    assert client.get("/secret").status_code == 403
    response = client.get("/me", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


def test_websocket_uses_the_middleware_identity(client: TestClient) -> None:
    """The hub takes the identity the middleware verified; refresh works through the hub."""
    token = mint("alice")
    with client.websocket_connect("/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
        welcome = ws.receive_json()
        assert welcome["user"] == "alice"
        ws.send_json({"type": "refresh", "token": mint("alice", ttl=600), "id": 1})
        assert ws.receive_json()["type"] == "ack"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer bad"}, 401),
        ({"Origin": "https://evil.example.com"}, 403),
    ],
)
def test_websocket_refusals_before_the_upgrade(
    client: TestClient, headers: dict[str, str], status: int
) -> None:
    """A missing or bad token is refused 401 and a foreign Origin 403, before accept."""
    if "Origin" in headers:
        headers["Authorization"] = f"Bearer {mint('alice')}"
    with pytest.raises(WebSocketDenialResponse) as caught:
        with client.websocket_connect("/ws", headers=headers):
            pass
    assert caught.value.status_code == status


def test_origin_allow_list_is_exact() -> None:
    """Origins compare on scheme, host and port; default ports are made explicit."""
    assert normalise_origin("https://App.example.com") == "https://app.example.com:443"
    assert normalise_origin("http://a.io:8080") == "http://a.io:8080"
    for bad in ("app.example.com", "https://a.io/path", "ftp://a.io"):
        with pytest.raises(ValueError):
            normalise_origin(bad)
    assert normalise_origin("null", strict=False) == ""


def test_require_origin_refuses_headerless_sockets() -> None:
    """With ``require_origin`` a WebSocket without Origin is refused."""
    middleware = AuthMiddleware(lambda *a: None, allowed_origins=[ORIGIN], require_origin=True)
    scope: dict[str, Any] = {"type": "websocket", "headers": []}
    with pytest.raises(Exception, match="Origin"):
        middleware.check_origin(scope)
    scope["headers"] = [(b"origin", ORIGIN.encode())]
    middleware.check_origin(scope)


def test_configuration_errors_raise() -> None:
    """A str for the allow-list, a bad origin or a non-callable authenticator raise."""
    with pytest.raises(TypeError):
        AuthMiddleware(None, allowed_origins=ORIGIN)
    with pytest.raises(ValueError):
        AuthMiddleware(None, allowed_origins=["example.com"])
    with pytest.raises(TypeError):
        AuthMiddleware(None, authenticator=42)  # type: ignore[arg-type]


def test_redaction_removes_every_carrier() -> None:
    """Query tokens, bearer credentials and bare JWTs are replaced by [redacted]."""
    token = mint("alice")
    line = f'127.0.0.1 - "WebSocket /ws?a=1&token={token}&b=2" 101 Bearer {token} {token}'
    cleaned = redact(line)
    assert token not in cleaned and token.split(".")[-1] not in cleaned
    assert "a=1" in cleaned and "b=2" in cleaned


def test_log_filter_rewrites_records(caplog: pytest.LogCaptureFixture) -> None:
    """``RedactTokens`` rewrites the formatted message of a record; it never drops one."""
    logger = logging.getLogger("hubbub.test.redact")
    redactor = RedactTokens()
    logger.addFilter(redactor)
    token = mint("alice")
    try:
        with caplog.at_level(logging.INFO, logger="hubbub.test.redact"):
            logger.info('%s - "WebSocket %s" 403', "127.0.0.1:1", f"/ws?token={token}")
    finally:
        logger.removeFilter(redactor)
    assert caplog.records and token not in caplog.text
    assert "token=[redacted]" in caplog.text
    installed = install_log_redaction(["hubbub.test.redact"])
    assert installed in logger.filters
    logger.removeFilter(installed)


def test_handshakes_are_counted_once_before_any_token_check() -> None:
    """With the hub's admission, the middleware refuses floods 429 before verifying tokens."""
    hub = Hub(authenticator=authenticator(), limits=Limits(handshake_rate=0.01, handshake_burst=2))
    app = AuthMiddleware(HubApp(hub), authenticator=hub.authenticator, admission=hub.admission)
    headers = {"Authorization": f"Bearer {mint('alice')}"}
    with TestClient(app) as client:
        for _ in range(2):  # counted by the middleware only, not again by the hub
            with client.websocket_connect("/ws", headers=headers) as ws:
                assert ws.receive_json()["type"] == "welcome"
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect("/ws", headers={"Authorization": "Bearer bad"}):
                pass
    assert caught.value.status_code == 429
    assert int(caught.value.headers["retry-after"]) >= 1
    with pytest.raises(TypeError):
        AuthMiddleware(None, admission=object())  # type: ignore[arg-type]


def test_a_banned_user_is_refused_403() -> None:
    """An authenticator raising PermissionDenied (a banned user) refuses the handshake 403."""

    async def banned(scope: Any) -> Identity:
        raise PermissionDenied("user banned")

    hub = Hub()
    app = AuthMiddleware(HubApp(hub), authenticator=banned)
    with TestClient(app) as client:
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect("/ws"):
                pass
        assert caught.value.status_code == 403
        assert client.get("/health").status_code == 403


def test_a_junk_cookie_is_ignored_on_http_but_not_a_bad_explicit_token(
    client: TestClient,
) -> None:
    """A stale cookie leaves HTTP requests unauthenticated (routes decide); a bad header is 401."""
    client.cookies.set("hubbub_token", "not-a-jwt")
    try:
        assert client.get("/me").json()["authenticated"] is False
        assert client.get("/secret").status_code == 403
        good = {"Authorization": f"Bearer {mint('alice')}"}
        assert client.get("/me", headers=good).json()["authenticated"] is True
        assert client.get("/me", headers={"Authorization": "Bearer nope"}).status_code == 401
        # A route that needs the user (the hub's stream) still refuses the bad cookie.
        assert client.get("/hub/sse?channel=a", headers={"Origin": ORIGIN}).status_code == 401
    finally:
        client.cookies.clear()


def test_the_middleware_gives_back_every_per_ip_place_it_takes() -> None:
    """Places taken by the middleware are released after refusals and when sockets end."""
    hub = Hub(authenticator=authenticator(), limits=Limits(max_connections_per_ip=1))
    app = AuthMiddleware(HubApp(hub), authenticator=hub.authenticator, admission=hub.admission)
    headers = {"Authorization": f"Bearer {mint('alice')}"}
    with TestClient(app) as client:
        with client.websocket_connect("/ws", headers=headers) as ws:
            assert ws.receive_json()["type"] == "welcome"
            with pytest.raises(WebSocketDenialResponse) as caught:
                with client.websocket_connect("/ws", headers=headers):
                    pass
            assert caught.value.status_code == 429
        for bad in ({"Authorization": "Bearer bad"}, {}):
            with pytest.raises(WebSocketDenialResponse) as caught:
                with client.websocket_connect("/ws", headers=bad):
                    pass
            assert caught.value.status_code == 401
        with pytest.raises(WebSocketDenialResponse) as caught:
            with client.websocket_connect("/elsewhere", headers=headers):
                pass
        assert caught.value.status_code == 404
        with client.websocket_connect("/ws", headers=headers) as ws:
            assert ws.receive_json()["type"] == "welcome"
        assert hub.admission._per_ip == {}


def test_sse_handshakes_are_counted_before_any_token_check() -> None:
    """Wrapping a HubApp, the middleware refuses an SSE flood 429 before verifying tokens."""
    hub = Hub(authenticator=authenticator(), limits=Limits(handshake_rate=0.01, handshake_burst=2))
    app = AuthMiddleware(HubApp(hub), authenticator=hub.authenticator, admission=hub.admission)
    bad = {"Authorization": "Bearer bad"}
    with TestClient(app) as client:
        statuses = [client.get("/sse?channel=a", headers=bad) for _ in range(3)]
        assert [r.status_code for r in statuses] == [401, 401, 429]
        assert int(statuses[-1].headers["retry-after"]) >= 1
        assert client.get("/health").status_code == 200  # other routes are not handshakes
        assert hub.admission._per_ip == {}
