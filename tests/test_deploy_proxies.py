"""The deployment recipes end to end: nginx and Caddy in front of a real ``hubbub serve``.

Each proxy runs with the configuration rendered from ``examples/deploy/`` (TLS
with a certificate made here), in front of hubbub started with the command line
of ``examples/deploy/hubbub.service`` serving ``examples/deploy/hubbub.toml``.
Every client connects from its own loopback address (127.0.0.x), so the address
hubbub sees can be told apart from the proxy's (127.0.0.1): the test's copy of
hubbub.toml admits one open connection per address
(``limits.max_connections_per_ip = 1``), and a second one from the same address
is refused 429.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .apps.wsclient import Client
from .proxy_servers import (
    DEPLOY,
    Certificates,
    Proxy,
    environment_file,
    make_certificates,
    render_config,
    run_caddy,
    run_nginx,
    unit_command,
)
from .servers import Server, free_port, run_server

pytestmark = pytest.mark.anyio

SECRET = "deploy-test-secret-" + "x" * 32
API_KEY = "deploy-test-api-key-0123456789"
WITHIN = 10.0


@pytest.fixture
def anyio_backend() -> str:
    """websockets' client runs on asyncio only."""
    return "asyncio"


@dataclass
class Stack:
    """hubbub behind one proxy, and what a client needs to reach it."""

    hubbub: Server
    proxy: Proxy
    certs: Certificates

    @property
    def tls(self) -> ssl.SSLContext:
        return self.certs.client_context()

    def logs(self) -> str:
        return f"== hubbub\n{self.hubbub.log()}\n{self.proxy.log()}"


ONE_PER_ADDRESS = ("max_connections_per_ip = 200", "max_connections_per_ip = 1")
TRUST_NOBODY = ('trusted_proxies = ["127.0.0.1", "::1"]', "trusted_proxies = []")
ROOM = "chat:lobby"


@contextmanager
def stack(
    kind: str, tmp_path: Path, *, trusted: bool = True, env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """hubbub (the unit's ExecStart with the shipped hubbub.toml) behind ``kind``.

    The test's copy of hubbub.toml caps connections at one per client address,
    and with ``trusted=False`` trusts no proxy.
    """
    certs = make_certificates(tmp_path)
    port = free_port()
    replacements = [ONE_PER_ADDRESS] if trusted else [ONE_PER_ADDRESS, TRUST_NOBODY]
    config = render_config(
        tmp_path / "etc", port, secret=SECRET, api_key=API_KEY, replacements=replacements
    )
    # hubbub.env sets nothing by default (every line is a comment): the file is the configuration.
    variables = {**environment_file(), **(env or {})}
    run_proxy = run_nginx if kind == "nginx" else run_caddy
    with (
        run_server(unit_command(config), tmp_path, env=variables, port=port) as hubbub,
        run_proxy(hubbub.port, tmp_path / kind, certs) as proxy,
    ):
        yield Stack(hubbub, proxy, certs)


def token(user: str, rooms: Sequence[str] = (ROOM,)) -> str:
    """A connection token for ``user`` with a ``rooms`` claim, as a backend would mint it."""
    claims = {"sub": user, "exp": int(time.time()) + 600, "rooms": list(rooms)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@asynccontextmanager
async def ws_client(
    s: Stack,
    source: str,
    user: str,
    headers: Sequence[tuple[str, str]] = (),
    compression: str | None = None,
) -> AsyncIterator[Client]:
    """A WebSocket through the proxy from the loopback address ``source``; its welcome read."""
    async with connect(
        s.proxy.ws_url + "/ws",
        ssl=s.tls,
        local_addr=(source, 0),
        additional_headers=[("Authorization", f"Bearer {token(user)}"), *headers],
        ping_interval=None,
        compression=compression,
        proxy=None,
        open_timeout=WITHIN,
        close_timeout=2,
    ) as ws:
        client = Client(ws, answer_pings=True)
        welcome = await client.recv(WITHIN)
        assert welcome["type"] == "welcome", welcome
        assert welcome["user"] == user
        yield client


async def refused_status(
    s: Stack, source: str, user: str, headers: Sequence[tuple[str, str]] = ()
) -> int | None:
    """The HTTP status refusing a WebSocket from ``source``, or ``None`` when it opens."""
    try:
        async with ws_client(s, source, user, headers):
            return None
    except InvalidStatus as exc:
        return exc.response.status_code


def http(s: Stack, source: str) -> httpx.AsyncClient:
    """An HTTPS client through the proxy from the loopback address ``source``."""
    transport = httpx.AsyncHTTPTransport(verify=s.tls, local_address=source)
    return httpx.AsyncClient(transport=transport, base_url=s.proxy.url, timeout=WITHIN)


async def api_publish(s: Stack, channel: str, data: Any, key: str = API_KEY) -> httpx.Response:
    """POST /api/publish through the proxy, as a backend does."""
    async with http(s, "127.0.0.9") as client:
        return await client.post(
            "/api/publish",
            json={"channel": channel, "data": data},
            headers={"Authorization": f"apikey {key}"},
        )


async def next_event(lines: AsyncIterator[str], within: float = WITHIN) -> dict[str, str]:
    """The next SSE event (``event``, ``data``, ``id``); comment lines are skipped."""
    event: dict[str, str] = {}
    async with asyncio.timeout(within):
        async for line in lines:
            if not line:
                if "event" in event or "data" in event:
                    return event
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[field] = event[field] + "\n" + value if field in event else value
    raise EOFError(f"the stream ended (partial event: {event})")


PROXIES = ["nginx", "caddy"]


@pytest.mark.parametrize("kind", PROXIES)
async def test_websocket_and_api_through_the_proxy(kind: str, tmp_path: Path) -> None:
    """Subscribe, publish and receive over wss://; the HTTP API publishes with its key only."""
    with stack(kind, tmp_path) as s:
        async with (
            ws_client(s, "127.0.0.5", "alice") as alice,
            ws_client(s, "127.0.0.6", "bob") as bob,
        ):
            await alice.subscribe("news")
            await alice.subscribe(ROOM)
            await bob.publish(ROOM, {"text": "over the proxy"})
            (message,) = await alice.messages(1)
            assert message["channel"] == ROOM
            assert message["data"]["text"] == "over the proxy"
            # news is the backend's: clients may not publish there.
            refused = await bob.request({"type": "publish", "channel": "news", "data": 1})
            assert refused["type"] == "error" and refused["code"] == 403, refused

            answer = await api_publish(s, "news", {"text": "from the backend"})
            assert answer.status_code == 200, answer.text
            (message,) = await alice.messages(1)
            assert message["data"] == {"text": "from the backend"}

            wrong = await api_publish(s, "news", {"text": "no"}, key="wrong-key-0123456789abc")
            assert wrong.status_code == 401
            assert wrong.headers["www-authenticate"].startswith("apikey")
            with pytest.raises(TimeoutError):
                await alice.messages(1, within=0.5)


@pytest.mark.parametrize("kind", PROXIES)
async def test_sse_events_arrive_while_the_stream_is_open(kind: str, tmp_path: Path) -> None:
    """Each SSE event reaches the client when written, not when a proxy buffer fills."""
    with stack(kind, tmp_path) as s:
        async with (
            http(s, "127.0.0.7") as client,
            client.stream(
                "GET",
                "/sse",
                params={"channel": "news"},
                headers={"Authorization": f"Bearer {token('carol')}"},
            ) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            # A few hundred bytes: a buffering proxy would hold them.
            subscribed = await next_event(lines)
            assert subscribed["event"] == "subscribed", subscribed
            assert not response.is_closed
            answer = await api_publish(s, "news", {"n": 1})
            assert answer.status_code == 200, answer.text
            message = await next_event(lines)
            assert message["event"] == "message", message
            assert json.loads(message["data"])["data"] == {"n": 1}
            assert not response.is_closed


@pytest.mark.parametrize("kind", PROXIES)
async def test_trusted_proxy_forwards_the_client_address(kind: str, tmp_path: Path) -> None:
    """Behind a trusted proxy hubbub counts each client's address, and a forged header fails.

    One open connection per address: two clients on two addresses both open,
    since hubbub reads X-Forwarded-For from its trusted proxy. A client cannot
    pick its address: .5 claiming to be 203.0.113.9 is still .5 (refused), and
    .8 claiming to be .5 is still .8 (admitted).
    """
    with stack(kind, tmp_path) as s:
        async with (
            ws_client(s, "127.0.0.5", "alice"),
            ws_client(s, "127.0.0.6", "bob"),
        ):
            assert await refused_status(s, "127.0.0.5", "alice2") == 429
            forged = [("X-Forwarded-For", "203.0.113.9")]
            assert await refused_status(s, "127.0.0.5", "alice3", forged) == 429
            claims_five = [("X-Forwarded-For", "127.0.0.5")]
            assert await refused_status(s, "127.0.0.8", "dave", claims_five) is None


@pytest.mark.parametrize("kind", PROXIES)
async def test_untrusted_proxy_is_one_address(kind: str, tmp_path: Path) -> None:
    """Without the proxy in trusted_proxies every client is the proxy's address (127.0.0.1)."""
    with stack(kind, tmp_path, trusted=False) as s:
        async with ws_client(s, "127.0.0.5", "alice"):
            assert await refused_status(s, "127.0.0.6", "bob") == 429
            forged = [("X-Forwarded-For", "203.0.113.9")]
            assert await refused_status(s, "127.0.0.6", "bob", forged) == 429


@pytest.mark.parametrize("kind", PROXIES)
async def test_trusted_proxies_is_hubbubs_only_trust_setting(kind: str, tmp_path: Path) -> None:
    """hubbub's trusted_proxies alone decides, whatever uvicorn's FORWARDED_ALLOW_IPS says."""
    env = {"FORWARDED_ALLOW_IPS": "*"}
    with stack(kind, tmp_path, env=env) as s:
        async with ws_client(s, "127.0.0.5", "alice"):
            assert await refused_status(s, "127.0.0.6", "bob") is None
            forged = [("X-Forwarded-For", "203.0.113.9")]
            assert await refused_status(s, "127.0.0.5", "alice2", forged) == 429


async def test_untrusted_loopback_proxy_is_not_believed(tmp_path: Path) -> None:
    """With trusted_proxies empty, a proxy on loopback is not believed either.

    uvicorn's own proxy_headers would believe 127.0.0.1 (its FORWARDED_ALLOW_IPS
    default) before hubbub is asked; `hubbub serve` turns them off.
    """
    with stack("nginx", tmp_path, trusted=False) as s:
        async with ws_client(s, "127.0.0.5", "alice"):
            assert await refused_status(s, "127.0.0.6", "bob") == 429


@pytest.mark.parametrize("kind", PROXIES)
async def test_metrics_are_not_served_through_the_proxy(kind: str, tmp_path: Path) -> None:
    """hubbub serves /metrics to loopback without a key; the recipe refuses it from outside."""
    with stack(kind, tmp_path) as s:
        async with http(s, "127.0.0.5") as client:
            assert (await client.get("/metrics")).status_code == 403
            assert (await client.get("/hubbub.js")).status_code == 200
        async with httpx.AsyncClient(base_url=s.hubbub.url, timeout=WITHIN) as direct:
            assert (await direct.get("/metrics")).status_code == 200


def test_nginx_redirects_plain_http_to_https(tmp_path: Path) -> None:
    """The recipe's port-80 server sends every request to https://."""
    with stack("nginx", tmp_path) as s:
        assert s.proxy.http_port is not None
        request = urllib.request.Request(f"http://127.0.0.1:{s.proxy.http_port}/ws?x=1")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(request, timeout=5)
        with info.value as answer:
            assert answer.code == 301
            assert answer.headers["Location"].startswith("https://")
            assert answer.headers["Location"].endswith("/ws?x=1")


@pytest.mark.parametrize("kind", PROXIES)
async def test_sigterm_drains_clients_through_the_proxy(kind: str, tmp_path: Path) -> None:
    """SIGTERM to hubbub: WebSockets get `disconnect` and close 1012, SSE streams end."""
    with stack(kind, tmp_path) as s:
        async with (
            ws_client(s, "127.0.0.5", "alice") as alice,
            http(s, "127.0.0.6") as client,
            client.stream(
                "GET",
                "/sse",
                params={"channel": "news"},
                headers={"Authorization": f"Bearer {token('carol')}"},
            ) as response,
        ):
            await alice.subscribe("news")
            lines = response.aiter_lines()
            assert (await next_event(lines))["event"] == "subscribed"

            os.kill(s.hubbub.pid, signal.SIGTERM)

            ending = await alice.until_closed(within=WITHIN)
            assert ending.disconnect is not None, (ending, s.logs())
            assert ending.disconnect["code"] == 1012
            assert ending.disconnect["reconnect"] is True
            assert ending.code == 1012, (ending, s.logs())

            goodbye = await next_event(lines)
            assert goodbye["event"] == "disconnect", goodbye
            assert json.loads(goodbye["data"])["code"] == 1012
            with pytest.raises(EOFError):
                await next_event(lines)
        try:
            code = await asyncio.to_thread(s.hubbub.process.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hubbub still running 15 s after SIGTERM:\n{s.logs()}")
        assert code == -signal.SIGTERM, s.logs()


@pytest.mark.parametrize("kind", PROXIES)
async def test_the_compression_choice_reaches_clients_through_the_proxy(
    kind: str, tmp_path: Path
) -> None:
    """The proxy passes permessage-deflate's offer and answer on: hubbub's choice holds.

    ``HUBBUB_WS_COMPRESSION=per-connection``: a client offering deflate (as a
    browser does) gets uvicorn's own answer, without ``server_no_context_takeover``.
    """
    with stack(kind, tmp_path, env={"HUBBUB_WS_COMPRESSION": "per-connection"}) as s:
        async with (
            ws_client(s, "127.0.0.5", "alice", compression="deflate") as alice,
            ws_client(s, "127.0.0.6", "bob") as bob,
        ):
            answer = alice.ws.response.headers.get("Sec-WebSocket-Extensions")
            assert answer is not None and answer.startswith("permessage-deflate"), s.logs()
            assert "server_no_context_takeover" not in answer, answer
            await alice.subscribe(ROOM)
            texts = [f"line {i} of the same conversation" for i in range(20)]
            await bob.publish_pipelined(ROOM, [{"text": t} for t in texts])
            assert [m["data"]["text"] for m in await alice.messages(20)] == texts


def test_recipes_name_the_same_upstream() -> None:
    """hubbub.toml, nginx and Caddy agree on where hubbub listens (127.0.0.1:8000)."""
    from hubbub.config import load

    config = load(DEPLOY / "hubbub.toml")
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert "server 127.0.0.1:8000;" in (DEPLOY / "nginx.conf").read_text()
    assert "reverse_proxy 127.0.0.1:8000" in (DEPLOY / "Caddyfile").read_text()
