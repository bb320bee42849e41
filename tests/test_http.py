"""``hubbub._http``: the one JSON error answer and the request helpers every shell shares."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from hubbub import AuthenticationFailed, MethodNotAllowed, NotFound, RateLimited
from hubbub._http import (
    APIKEY_CHALLENGE,
    BEARER_CHALLENGE,
    cookie,
    deny,
    error_body,
    header,
    query_param,
    route_path,
    send_error,
    send_refusal,
)


def _sent(call: Any) -> list[dict[str, Any]]:
    """Run one answer and return the ASGI messages it sent."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    anyio.run(call, send)
    return sent


def test_error_body_is_code_and_reason() -> None:
    """Every refusal's body is ``{"code": <status>, "reason": ...}`` in that order."""
    assert error_body(404, "not found") == b'{"code":404,"reason":"not found"}'


def test_send_error_orders_its_headers() -> None:
    """Content-Type, Content-Length, Retry-After, Allow, WWW-Authenticate, then the caller's."""

    async def answer(send: Any) -> None:
        await send_error(
            send,
            MethodNotAllowed("use GET", allow="GET, HEAD"),
            retry_after=7,
            challenge=APIKEY_CHALLENGE,
            headers=[(b"x-extra", b"1")],
        )

    start, body = _sent(answer)
    assert start == {
        "type": "http.response.start",
        "status": 405,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body["body"])).encode()),
            (b"retry-after", b"7"),
            (b"allow", b"GET, HEAD"),
            (b"x-extra", b"1"),
        ],
    }
    assert msgspec.json.decode(body["body"]) == {"code": 405, "reason": "use GET"}


@pytest.mark.parametrize(
    ("challenge", "expected"), [(BEARER_CHALLENGE, BEARER_CHALLENGE), (None, None)]
)
def test_send_error_challenges_only_a_401(challenge: bytes | None, expected: bytes | None) -> None:
    """``WWW-Authenticate`` goes with a 401 when a challenge is given, never with another status."""

    async def answer(send: Any) -> None:
        await send_error(send, AuthenticationFailed("bad token"), challenge=challenge)
        await send_error(send, NotFound(), challenge=challenge)

    first, _, second, _ = _sent(answer)
    assert dict(first["headers"]).get(b"www-authenticate") == expected
    assert b"www-authenticate" not in dict(second["headers"])


def test_send_refusal_for_a_status_outside_the_tree() -> None:
    """A status no HubbubError carries (426) gets the same body shape."""

    async def answer(send: Any) -> None:
        await send_refusal(send, 426, "use a WebSocket", headers=[(b"upgrade", b"websocket")])

    start, body = _sent(answer)
    assert start["status"] == 426
    assert (b"upgrade", b"websocket") in start["headers"]
    assert body["body"] == b'{"code":426,"reason":"use a WebSocket"}'


def test_deny_uses_the_denial_extension() -> None:
    """With ``websocket.http.response`` the handshake gets the error's status and JSON body."""
    scope = {"type": "websocket", "extensions": {"websocket.http.response": {}}}

    async def answer(send: Any) -> None:
        await deny(scope, send, RateLimited("slow down"), retry_after=3)

    start, body = _sent(answer)
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 429
    assert (b"retry-after", b"3") in start["headers"]
    assert body == {
        "type": "websocket.http.response.body",
        "body": b'{"code":429,"reason":"slow down"}',
    }


def test_deny_without_the_extension_closes_1008() -> None:
    """Without the extension the only answer is a close (servers turn it into 403)."""

    async def answer(send: Any) -> None:
        await deny({"type": "websocket"}, send, NotFound("x" * 200))

    (close,) = _sent(answer)
    assert close == {"type": "websocket.close", "code": 1008, "reason": "x" * 120}


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/hub/ws", "/hub", "/ws"),
        ("/hub", "/hub", "/"),
        ("/hubx/ws", "/hub", "/hubx/ws"),
        ("/ws/", "", "/ws"),
        ("", "", "/"),
    ],
)
def test_route_path(path: str, root: str, expected: str) -> None:
    """The app's own path: ``root_path`` removed at a segment boundary, a trailing slash too."""
    assert route_path({"path": path, "root_path": root}) == expected


def test_header_and_query_param() -> None:
    """Headers match case-insensitively (first wins); a query parameter's last value wins."""
    scope = {
        "headers": [(b"Origin", b"https://a.example"), (b"origin", b"https://b.example")],
        "query_string": b"name=a&name=b&flag&bad=%ff",
    }
    assert header(scope, b"origin") == "https://a.example"
    assert header(scope, b"missing") is None
    assert query_param(scope, "name") == "b"
    assert query_param(scope, "flag") == ""
    assert query_param(scope, "bad") is not None
    assert query_param(scope, "missing") is None


def test_cookie_passes_over_a_header_it_cannot_parse_and_an_empty_value() -> None:
    """``cookie`` takes the first Cookie header holding the cookie non-empty: a header the
    parser refuses and an empty value are passed over; the header name's case does not
    matter; a missing cookie is ``None``, never an exception."""
    scope: dict[str, Any] = {
        "headers": [
            (b"cookie", b"hubbub_token=a; $bad"),  # CookieError: passed over
            (b"Cookie", b"hubbub_token="),
            (b"COOKIE", b"other=1; hubbub_token=tok"),
            (b"cookie", b"hubbub_token=later"),
        ]
    }
    assert cookie(scope, "hubbub_token") == "tok"
    assert cookie(scope, "other") == "1"
    assert cookie(scope, "missing") is None
    assert cookie({}, "hubbub_token") is None
    assert cookie({"headers": [(b"cookie", b"hubbub_token=a; $bad")]}, "hubbub_token") is None
