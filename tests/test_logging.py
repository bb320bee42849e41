"""Structured logs: one record per operational event, its fields in ``extra``, never a token.

Each test drives the event through the in-memory ASGI driver (both event loops)
or a real redis-server, and reads the records ``caplog`` collected: the
logger name, the ``event`` field and the fields docs/design.md lists for it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from hubbub import AuthMiddleware, Hub, HubApp, Identity, Limits, Namespace, PermissionDenied
from hubbub.brokers.redis import RedisBroker
from hubbub.middleware import RedactTokens
from hubbub.testing._asgi import Event, run_app, websocket_scope

from .apps.auth_app import NAMESPACES, ORIGIN, authenticator, mint
from .asgi_driver import TIMEOUT, serving
from .redis_server import redis_server

pytestmark = pytest.mark.anyio


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    """The records of one ``event``."""
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def fields(record: logging.LogRecord, *names: str) -> dict[str, Any]:
    """Some ``extra`` fields of a record."""
    return {name: getattr(record, name) for name in names}


def assert_no_token(caplog: pytest.LogCaptureFixture, tokens: Iterable[str]) -> None:
    """No token in any message or field of any record."""
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        for token in tokens:
            assert token not in text, record
    for token in tokens:
        assert token not in caplog.text


async def until(predicate: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``within`` seconds."""
    with anyio.fail_after(within):
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


async def handshake(app: Any, headers: list[tuple[bytes, bytes]]) -> list[Event]:
    """One WebSocket handshake: every ASGI event the app sent (an accepted client leaves)."""
    to_app, app_receive = anyio.create_memory_object_stream[Event](4)
    app_send, from_app = anyio.create_memory_object_stream[Event](4)
    events: list[Event] = []
    async with anyio.create_task_group() as tg, to_app, from_app:
        tg.start_soon(run_app, app, websocket_scope(headers=headers), app_receive, app_send)
        await to_app.send({"type": "websocket.connect"})
        with anyio.fail_after(TIMEOUT):
            async for event in from_app:
                events.append(event)
                if event["type"] == "websocket.accept":
                    await to_app.send({"type": "websocket.disconnect", "code": 1000})
    return events


async def test_connect_and_client_disconnect(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``connect`` and ``disconnect`` (code and reason) on ``hubbub.connection``, at INFO."""
    caplog.set_level(logging.INFO, "hubbub")
    hub = Hub(anonymous=True, node="n1")
    async with serving(hub) as clients:
        ws, welcome = await clients.connect()
        ws.leave(1000)
        await until(lambda: bool(logged(caplog, "disconnect")))
    [connect] = logged(caplog, "connect")
    assert connect.name == "hubbub.connection" and connect.levelno == logging.INFO
    assert fields(connect, "client", "user", "node", "ip", "codec", "transport") == {
        "client": welcome["client"],
        "user": "",
        "node": "n1",
        "ip": "127.0.0.1",
        "codec": "json",
        "transport": "websocket",
    }
    [gone] = logged(caplog, "disconnect")
    assert gone.name == "hubbub.connection"
    assert fields(gone, "client", "node", "code", "reason") == {
        "client": welcome["client"],
        "node": "n1",
        "code": 1000,
        "reason": "closed by the client",
    }


async def test_slow_consumer_close_is_logged_then_its_disconnect(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A full queue logs ``slow_consumer`` (WARNING, queue size), then ``disconnect`` 1013."""
    caplog.set_level(logging.INFO, "hubbub")
    hub = Hub(anonymous=True, limits=Limits(queue_messages=4))
    async with serving(hub) as clients:
        frozen, welcome = await clients.connect()
        await frozen.subscribe("ticks")
        for n in range(10):
            await hub.publish("ticks", n)
        await frozen.read_until_closed()
        await until(lambda: bool(logged(caplog, "disconnect")))
    [slow] = logged(caplog, "slow_consumer")
    assert slow.levelno == logging.WARNING and slow.name == "hubbub.connection"
    assert fields(slow, "client", "queued") == {"client": welcome["client"], "queued": 4}
    [gone] = logged(caplog, "disconnect")
    assert fields(gone, "code", "reason") == {
        "code": 1013,
        "reason": "send queue full (slow consumer)",
    }


async def test_rate_limit_refusals_are_logged_by_kind(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A command over its rate and a channel over the cap: ``rate_limited`` with ``kind``."""
    caplog.set_level(logging.INFO, "hubbub")
    hub = Hub(anonymous=True, limits=Limits(command_rate=0.01, command_burst=2, max_channels=1))
    async with serving(hub) as clients:
        ws, welcome = await clients.connect()
        await ws.subscribe("a")
        reply = await ws.command({"type": "subscribe", "channel": "b", "id": 2})
        assert reply["code"] == 429
        reply = await ws.command({"type": "subscribe", "channel": "c", "id": 3})
        assert reply == {"type": "error", "code": 429, "reason": reply["reason"], "id": 3}
    refusals = logged(caplog, "rate_limited")
    assert [fields(r, "kind", "client") for r in refusals] == [
        {"kind": "channels", "client": welcome["client"]},
        {"kind": "command", "client": welcome["client"]},
    ]
    assert hub.stats.rate_limited == {"channels": 1, "command": 1}


async def test_handshake_over_its_rate_is_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handshake refused 429 logs ``rate_limited`` with ``kind=handshake`` and the IP."""
    caplog.set_level(logging.INFO, "hubbub")
    hub = Hub(anonymous=True, limits=Limits(handshake_rate=0.01, handshake_burst=1))
    async with hub:
        app = HubApp(hub)
        first = await handshake(app, [])
        assert first[0]["type"] == "websocket.accept"
        second = await handshake(app, [])
        assert second[0]["status"] == 429
    [refusal] = logged(caplog, "rate_limited")
    assert fields(refusal, "kind", "ip") == {"kind": "handshake", "ip": "127.0.0.1"}
    assert hub.stats.rate_limited == {"handshake": 1}


async def test_auth_failures_are_logged_with_a_reason_never_the_token(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Expired, missing, bad refresh and bad channel tokens: ``auth_failed`` on ``hubbub.auth``."""
    caplog.set_level(logging.DEBUG)
    expired, other = mint("alice", ttl=-60), mint("mallory")
    forged = mint("alice", key="another-secret-of-32-bytes-or-more!!")
    good = mint("alice")
    hub = Hub(authenticator=authenticator(), namespaces=NAMESPACES)
    async with serving(hub) as clients:
        refused = await clients.open(query=b"token=" + expired.encode())
        events = await refused.read_until_closed()
        assert events[0]["status"] == 401
        anonymous = await clients.open()
        assert (await anonymous.read_until_closed())[0]["status"] == 401
        ws, _ = await clients.connect(query=b"token=" + good.encode())
        assert (await ws.command({"type": "refresh", "token": other, "id": 1}))["code"] == 403
        private = {"type": "subscribe", "channel": "private:x", "token": forged, "id": 2}
        assert (await ws.command(private))["code"] == 403
    records = logged(caplog, "auth_failed")
    assert {r.name for r in records} == {"hubbub.auth"}
    assert [fields(r, "reason", "status") for r in records] == [
        {"reason": "invalid_token", "status": 401},
        {"reason": "missing", "status": 401},
        {"reason": "refresh", "status": 403},
        {"reason": "channel_token", "status": 403},
    ]
    assert records[0].detail == "token expired"
    assert records[3].channel == "private:x" and records[3].user == "alice"
    assert hub.stats.auth_failures == {
        "invalid_token": 1,
        "missing": 1,
        "refresh": 1,
        "channel_token": 1,
    }
    assert_no_token(caplog, [expired, other, forged, good])


async def test_middleware_refusals_count_on_the_hub_it_serves(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """AuthMiddleware around a HubApp: a bad Origin and a forged token are logged and counted."""
    caplog.set_level(logging.INFO, "hubbub")
    hub = Hub(authenticator=authenticator(), namespaces=NAMESPACES)
    app = AuthMiddleware(HubApp(hub), authenticator=hub.authenticator, allowed_origins=[ORIGIN])
    forged = mint("alice", key="another-secret-of-32-bytes-or-more!!")
    async with hub:
        evil = await handshake(app, [(b"origin", b"https://evil.example")])
        assert evil[0]["status"] == 403
        bad = [(b"origin", ORIGIN.encode()), (b"authorization", b"Bearer " + forged.encode())]
        assert (await handshake(app, bad))[0]["status"] == 401
    records = logged(caplog, "auth_failed")
    assert [fields(r, "reason", "status", "transport") for r in records] == [
        {"reason": "origin", "status": 403, "transport": "websocket"},
        {"reason": "invalid_token", "status": 401, "transport": "websocket"},
    ]
    assert records[1].detail == "invalid token signature"
    assert hub.stats.auth_failures == {"origin": 1, "invalid_token": 1}
    assert_no_token(caplog, [forged])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the Redis broker runs on asyncio only
async def test_broker_outage_and_recovery_are_logged(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pub/sub link killed: ``broker_down``, ``broker_up`` (outage s), ``broker_lost``."""
    caplog.set_level(logging.INFO, "hubbub")
    with redis_server(tmp_path) as redis:
        broker = RedisBroker.from_url(
            redis.url, timeout=1.0, health_check_interval=0.25, reconnect_delay=0.05
        )
        hub = Hub(anonymous=True, broker=broker, namespaces=[Namespace(name="h", history_size=5)])
        async with serving(hub) as clients:
            await until(broker.ready)
            ws, _ = await clients.connect()
            await ws.subscribe("h:x")
            assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") == 1
            await until(lambda: bool(logged(caplog, "broker_lost")))
    [down] = logged(caplog, "broker_down")
    [up] = logged(caplog, "broker_up")
    [lost] = logged(caplog, "broker_lost")
    assert down.name == up.name == "hubbub.redis" and down.levelno == logging.WARNING
    assert isinstance(down.error, str) and down.error
    assert isinstance(up.outage, float) and up.outage >= 0
    # Resubscribed and possibly lossy: ``h:x`` and the hub's control channel.
    assert lost.name == "hubbub" and fields(lost, "node", "channels") == {
        "node": hub.node,
        "channels": 2,
    }


async def test_user_cap_and_a_forbidding_authenticator(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A user over its connection cap: ``user_connections``; a 403 from the authenticator."""
    caplog.set_level(logging.INFO, "hubbub")

    async def authenticate(scope: Mapping[str, Any]) -> Identity:
        if scope.get("query_string") == b"banned":
            raise PermissionDenied("banned")
        return Identity(user="alice")

    hub = Hub(authenticator=authenticate, limits=Limits(max_connections_per_user=1))
    async with serving(hub) as clients:
        await clients.connect()
        second = await clients.open()
        assert (await second.read_until_closed())[0]["status"] == 429
        banned = await clients.open(query=b"banned")
        assert (await banned.read_until_closed())[0]["status"] == 403
    [refusal] = logged(caplog, "rate_limited")
    assert fields(refusal, "kind", "ip") == {"kind": "user_connections", "ip": "127.0.0.1"}
    [failure] = logged(caplog, "auth_failed")
    assert fields(failure, "reason", "status", "detail") == {
        "reason": "forbidden",
        "status": 403,
        "detail": "banned",
    }
    assert hub.stats.rate_limited == {"user_connections": 1}
    assert hub.stats.auth_failures == {"forbidden": 1}


# -- RedactTokens keeps every record formattable ------------------------------------------------


def _filtered(msg: str, args: Any) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)
    assert RedactTokens().filter(record)
    return record


def test_redaction_keeps_uvicorns_access_arguments_a_five_tuple() -> None:
    """The access record's arguments keep their shape, so uvicorn's formatter still formats it."""
    from uvicorn.logging import AccessFormatter

    token = mint("alice")
    args = ("127.0.0.1:5000", "GET", f"/sse?token={token}&channel=a", "1.1", 200)
    record = _filtered('%s - "%s %s HTTP/%s" %d', args)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    line = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s").format(record)
    assert line == "127.0.0.1:5000 GET /sse?token=[redacted]&channel=a HTTP/1.1 200 OK"


def test_redaction_inside_mapping_arguments_and_across_the_format_string() -> None:
    """Mapping arguments are redacted in place; a token split from its marker still goes."""
    token = mint("alice")
    record = _filtered("auth %(header)s", ({"header": f"Bearer {token}"},))
    assert record.getMessage() == "auth Bearer [redacted]"
    split = _filtered("GET /ws?token=%s", ("opaque-secret",))
    assert split.getMessage() == "GET /ws?token=[redacted]" and "opaque" not in split.getMessage()
    untouched = _filtered("%s of %d", ("no secret", 3))
    assert untouched.args == ("no secret", 3)


def test_redaction_of_an_elided_websocket_frame_covers_its_whole_payload() -> None:
    """websockets shows a frame's start and end only: the token is redacted before eliding."""
    from websockets.frames import Frame, Opcode

    token = mint("alice", channel="private:room")
    command = {"type": "subscribe", "channel": "private:room", "id": 2, "token": token}
    text = _filtered("< %s", (Frame(Opcode.TEXT, json.dumps(command).encode()),)).getMessage()
    assert text.endswith('"token": "[redacted]"}\' [80 bytes]'), text
    assert token[-12:] not in text
    # msgpack, not UTF-8, is shown in hex: the opaque token's "x"s (78) are gone.
    opaque = msgspec.msgpack.encode({**command, "token": "opaque-" + "x" * 300})
    binary = _filtered("< %s", (Frame(Opcode.BINARY, opaque),)).getMessage()
    assert "78 78" not in binary and binary.endswith("74 65 64 5d [60 bytes]"), binary


@pytest.mark.parametrize(
    "text",
    [
        "GET /sse?token=opaque1&channel=a",
        "GET /x?a=1&access_token=opaque1",
        "< cookie: theme=dark; hubbub_token=opaque1",
        "< authorization: Bearer opaque1",
        "< sec-websocket-protocol: hubbub.v1.json, bearer.opaque1",
        '{"type":"refresh","token":"opaque1","id":1}',
    ],
)
def test_every_token_carrier_is_redacted_even_for_opaque_tokens(text: str) -> None:
    """Query, cookie, header, subprotocol and frame carriers lose their token, JWT or not."""
    assert _filtered("%s", (text,)).getMessage() == text.replace("opaque1", "[redacted]")


def test_a_traceback_and_a_stack_lose_their_tokens_too() -> None:
    """An exception whose message shows a URL with its token (an HTTP client error, say)
    is written with its traceback: the traceback and ``stack_info`` are redacted too."""
    token = mint("alice")
    try:
        raise ValueError(f"cannot fetch https://example.test/jwks?token={token}")
    except ValueError:
        record = logging.LogRecord(
            "hubbub", logging.ERROR, __file__, 1, "fetch failed", (), sys.exc_info()
        )
    record.stack_info = f"Stack (most recent call last):\n  Bearer {token}"
    assert RedactTokens().filter(record)
    text = logging.Formatter().format(record)
    assert "ValueError: cannot fetch https://example.test/jwks?token=[redacted]" in text, text
    assert "Bearer [redacted]" in text
    assert token not in text and token.split(".")[2] not in text
