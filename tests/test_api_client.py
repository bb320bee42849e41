"""``HubbubAPI`` and ``AsyncHubbubAPI`` (hubbub.client.api) against a real uvicorn.

``hubbub serve api_app:app --api-key`` serves the API; a WebSocket client (the
asyncio-only test client) sees what the helper's calls do, and the async
helper runs on asyncio and on trio.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hubbub import Notification, Position
from hubbub.client.api import (
    AsyncHubbubAPI,
    BroadcastOutcome,
    HubbubAPI,
    HubbubAPIError,
)

from .apps.api_app import MAX_BODY
from .apps.wsclient import open_client
from .servers import Server, free_port, run_server

KEY = "k-client-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve api_app:app`` with one API key."""
    argv = ["-m", "hubbub", "serve", "api_app:app", "--port", "{port}", "--api-key", KEY]
    with run_server(argv, tmp_path_factory.mktemp("api_client")) as s:
        yield s


@pytest.fixture
def api(server: Server) -> Iterator[HubbubAPI]:
    with HubbubAPI(server.url, KEY) as helper:
        yield helper


def test_publish_history_and_idempotency(api: HubbubAPI) -> None:
    """``publish`` answers the position; ``history`` pages with ``since``/``limit``/``reverse``."""
    first = api.publish("room:c1", {"n": 0})
    assert isinstance(first, Position) and first.offset >= 1
    for n in range(1, 4):
        api.publish("room:c1", {"n": n})
    again = api.publish("room:c1", {"n": 9}, idempotency_key="once")
    assert api.publish("room:c1", {"n": 9}, idempotency_key="once") == again
    assert api.publish("plain", 1) is None
    page = api.history("room:c1", since=first, limit=2)
    assert [p.data for p in page.publications] == [{"n": 1}, {"n": 2}]
    assert page.position is not None and page.position.epoch == first.epoch
    newest = api.history("room:c1", limit=2, reverse=True)
    assert [p.data["n"] for p in newest.publications] == [9, 3]
    assert all(p.sender is None for p in newest.publications)
    assert api.history("plain").position is None


def test_broadcast_reports_each_channel(api: HubbubAPI) -> None:
    """One outcome per channel: a position, nothing (no history) or the error."""
    outcomes = api.broadcast(["room:c2", "plain", "nope:x"], "hello")
    assert [o.channel for o in outcomes] == ["room:c2", "plain", "nope:x"]
    assert isinstance(outcomes[0].position, Position) and outcomes[0].error is None
    assert outcomes[1] == BroadcastOutcome(channel="plain")
    error = outcomes[2].error
    assert isinstance(error, HubbubAPIError) and error.code == 404


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the WebSocket test client needs it
async def test_calls_reach_a_websocket_client(server: Server) -> None:
    """notify, subscribe, presence, channels, unsubscribe, stats and disconnect act on a
    real connection, seen from its own socket (trio is covered below)."""
    async with (
        AsyncHubbubAPI(server.url, KEY) as api,
        open_client(server.ws_url + "/ws?user=cleo", path="") as ws,
    ):
        position = await api.notify("cleo", Notification(type="mention", title="hi"))
        message = await ws.recv()
        assert message["channel"] == "#cleo" and message["data"]["title"] == "hi"
        assert position is not None and message["offset"] == position.offset
        await api.notify("cleo", {"title": "as a mapping"})
        assert (await ws.recv())["data"]["title"] == "as a mapping"
        await api.subscribe("cleo", "room:c3")
        subscribed = await ws.recv()
        assert subscribed["type"] == "subscribed" and subscribed["channel"] == "room:c3"
        present = await api.presence("room:c3")
        assert present.users == 1
        assert [info.user for info in present.clients.values()] == ["cleo"]
        assert (await api.channels())["room:c3"] == 1
        await api.unsubscribe("cleo", "room:c3")
        assert (await ws.recv()) == {"type": "unsubscribed", "channel": "room:c3"}
        stats = await api.stats()
        assert stats.connections >= 1 and stats.node
        assert await api.disconnect("cleo", code=4000, reason="bye") == 1
        ending = await ws.until_closed()
    assert ending.code == 4000 and ending.reason == "bye"


@pytest.mark.anyio
async def test_async_helper_on_both_event_loops(server: Server) -> None:
    """The async helper works under asyncio and trio alike."""
    async with AsyncHubbubAPI(server.url, KEY, timeout=5.0) as api:
        position = await api.publish("room:c4", [1, 2, 3])
        assert position is not None
        page = await api.history("room:c4", since=Position(position.offset - 1, position.epoch))
        assert [p.data for p in page.publications] == [[1, 2, 3]]
        with pytest.raises(HubbubAPIError) as refused:
            await api.publish("chat:c4", {"text": ""})
        assert refused.value.code == 422


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda api: api.publish("nope:x", 1), 404),
        (lambda api: api.publish("room:big", "x" * MAX_BODY), 413),
        (lambda api: api.publish("chat:r", {"text": ""}), 422),
        (lambda api: api.subscribe("bob", "vip:lounge"), 403),
        (lambda api: api.presence("plain"), 403),
        (lambda api: api.history("room:x", since=Position(1, "not-the-epoch")), 410),
        (lambda api: api.history("room:x", limit=0), 400),
        (lambda api: api.disconnect("bob", code=1006), 400),
        (lambda api: api.notify("", {}), 400),
    ],
)
def test_refusals_raise_hubbub_api_error(api: HubbubAPI, call: object, code: int) -> None:
    """Every refusal is ``HubbubAPIError`` with the server's code and reason."""
    api.publish("room:x", 1)
    with pytest.raises(HubbubAPIError) as refused:
        call(api)  # type: ignore[operator]
    assert refused.value.code == code and refused.value.reason


def test_wrong_key_is_401(server: Server) -> None:
    """A wrong key raises 401."""
    with HubbubAPI(server.url, "wrong-key") as api, pytest.raises(HubbubAPIError) as refused:
        api.stats()
    assert refused.value.code == 401


def test_connections_are_reused(api: HubbubAPI) -> None:
    """Many calls go over one kept-alive connection (httpx's pool, read through httpcore)."""
    for n in range(5):
        api.publish("plain", n)
        api.stats()
    pool = api._client._transport._pool  # type: ignore[attr-defined]
    assert len(pool.connections) == 1


def test_closing_closes_the_client(server: Server) -> None:
    """Leaving the ``with`` block closes the connections; the helper refuses further use."""
    with HubbubAPI(server.url, KEY) as api:
        api.stats()
    assert api._client.is_closed
    with pytest.raises(RuntimeError):
        api.stats()


def test_no_answer_is_code_0() -> None:
    """Refused connections and a hub that never answers (within the timeout) raise code 0."""
    with HubbubAPI(f"http://127.0.0.1:{free_port()}", KEY) as api:
        with pytest.raises(HubbubAPIError) as refused:
            api.stats()
        assert refused.value.code == 0
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts into the backlog, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with HubbubAPI(url, KEY, timeout=0.2) as api, pytest.raises(HubbubAPIError) as timed_out:
            api.stats()
    assert timed_out.value.code == 0 and "Timeout" in timed_out.value.reason


@pytest.mark.parametrize(
    ("url", "key"), [("ftp://x", KEY), ("127.0.0.1:80", KEY), ("http://x", ""), ("http://x", "a b")]
)
def test_bad_arguments_raise_at_construction(url: str, key: str) -> None:
    """A URL that is not http(s) or an unusable key is refused when the helper is built."""
    with pytest.raises(ValueError):
        HubbubAPI(url, key)
    with pytest.raises(ValueError):
        AsyncHubbubAPI(url, key)


def test_import_hubbub_does_not_import_httpx() -> None:
    """``import hubbub`` and ``import hubbub.api_client`` leave httpx unimported."""
    code = "import sys, hubbub, hubbub.api_client\nprint('httpx' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
