"""The Python client (``hubbub.client``) against a real uvicorn: commands, codecs, tokens, closes.

One ``hubbub serve client_app:app`` process serves the whole module (channels
are unique per test); every async test runs on asyncio and on trio. The pure
parts (back-off, the offset rule) are tested with plain calls.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import msgspec
import pytest

import hubbub.client
from hubbub.client import (
    Backoff,
    Client,
    ClientClosed,
    ConnectFailed,
    Disconnected,
    Item,
    Position,
    Publication,
    RequestFailed,
    Subscription,
    Unrecovered,
)
from hubbub.client._stream import Verdict, classify
from hubbub.messages import Message

from .apps.client_app import API_KEY, mint
from .servers import Server, free_port, run_server

pytestmark = pytest.mark.anyio

SERVE = ["-m", "hubbub", "serve", "client_app:app", "--port", "{port}"]
FAST = Backoff(initial=0.05, maximum=0.3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``client_app:app`` (memory broker) in one real uvicorn process for the module."""
    with run_server(SERVE, tmp_path_factory.mktemp("client")) as running:
        yield running


def unique(prefix: str) -> str:
    """A channel name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def take(sub: Subscription, n: int, within: float = 10.0) -> list[Item]:
    """The next ``n`` items of ``sub``, within ``within`` seconds."""
    items: list[Item] = []
    with anyio.fail_after(within):
        async for item in sub:
            items.append(item)
            if len(items) == n:
                break
    return items


def data(items: list[Item]) -> list[Any]:
    """The payloads of the publications among ``items``."""
    return [item.data for item in items if isinstance(item, Publication)]


async def api(server: Server, method: str, endpoint: str, **kwargs: Any) -> Any:
    """Call the server HTTP API with the test key; the JSON answer."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.request(
            method, f"/api/{endpoint}", headers={"Authorization": f"apikey {API_KEY}"}, **kwargs
        )
    assert response.status_code == 200, response.text
    return response.json()


@asynccontextmanager
async def connect(server: Server, **options: Any) -> AsyncIterator[Client]:
    """A client of ``server`` with fast reconnects."""
    options.setdefault("backoff", FAST)
    async with Client(f"{server.ws_url}/ws", **options) as client:
        yield client


# -- the pure parts ---------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter() -> None:
    """Delays are uniform in [0, min(maximum, initial * factor**n)]; huge attempts stay capped."""
    policy = Backoff(initial=0.5, maximum=30.0, factor=2.0)
    assert [policy.bound(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.bound(10**6) == 30.0
    assert policy.delay(3, rand=lambda: 0.0) == 0.0
    assert policy.delay(3, rand=lambda: 0.5) == 2.0
    assert all(0 <= policy.delay(4) <= 8 for _ in range(200))


@pytest.mark.parametrize(
    "options",
    [{"initial": -1.0}, {"maximum": -1.0}, {"factor": 0.5}, {"max_attempts": 0}],
)
def test_backoff_refuses_bad_settings(options: dict[str, Any]) -> None:
    """A bad back-off policy is refused when it is built."""
    with pytest.raises(ValueError):
        Backoff(**options)


@pytest.mark.parametrize(
    ("offset", "epoch", "verdict"),
    [
        (6, "e1", Verdict.DELIVER),
        (5, "e1", Verdict.DUPLICATE),
        (2, "e1", Verdict.DUPLICATE),
        (8, "e1", Verdict.GAP),
        (1, "e2", Verdict.GAP),
        (None, None, Verdict.DELIVER),
    ],
)
def test_each_publication_is_next_duplicate_or_gap(
    offset: int | None, epoch: str | None, verdict: Verdict
) -> None:
    """Against position 5 of e1: 6 is next, 5 and below duplicates, 8 or a new epoch a gap."""
    message = Message(channel="c", data=msgspec.Raw(b"1"), ts=0, offset=offset, epoch=epoch)
    assert classify(Position(offset=5, epoch="e1"), message) is verdict


def test_a_positioned_publication_without_a_position_is_a_gap() -> None:
    """A history publication before any ``subscribed`` cannot be placed: recover."""
    message = Message(channel="c", data=msgspec.Raw(b"1"), ts=0, offset=1, epoch="e")
    assert classify(None, message) is Verdict.GAP


@pytest.mark.parametrize(
    "options",
    [
        {"token": "a", "token_provider": object()},
        {"codec": "xml"},
        {"token_carrier": "cookie"},
        {"request_timeout": 0},
        {"buffer_size": 0},
    ],
)
def test_bad_client_settings_raise_at_construction(options: dict[str, Any]) -> None:
    """Configuration mistakes raise ValueError when the client is built."""
    with pytest.raises(ValueError):
        Client("ws://127.0.0.1:1/ws", **options)


def test_bad_url_raises_at_construction() -> None:
    """Only ws, wss, http and https URLs are accepted."""
    with pytest.raises(ValueError):
        Client("ftp://example.com/ws")


def test_client_all_is_sorted_and_true() -> None:
    """``hubbub.client.__all__`` is sorted, unique and names real attributes."""
    names = hubbub.client.__all__
    assert names == sorted(set(names))
    assert [name for name in names if not hasattr(hubbub.client, name)] == []


def test_gaps_counter_stays_assignable() -> None:
    """``client.gaps`` starts at 0 and can be reset, as the plain attribute of 0.1 could."""
    client = Client("ws://127.0.0.1:1/ws")
    assert client.gaps == 0
    client.gaps = 5
    assert client.gaps == 5


def test_import_hubbub_does_not_import_the_client_dependencies() -> None:
    """``import hubbub`` loads neither httpx nor httpx-ws (the ``client`` extra is optional)."""
    code = (
        "import sys, hubbub\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'httpx_ws', 'wsproto') or m.startswith('hubbub.client'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


# -- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize("publisher_codec", ["json", "msgpack"])
@pytest.mark.parametrize("subscriber_codec", ["json", "msgpack"])
async def test_publish_and_subscribe_in_both_codecs(
    server: Server, publisher_codec: Any, subscriber_codec: Any
) -> None:
    """Publications reach a subscriber of either codec, in offset order, with their sender."""
    channel = unique("feed:")
    values = [{"n": 1, "text": "héllo"}, [1, 2.5, None, True], "plain", 2**40]
    async with (
        connect(server, codec=subscriber_codec) as subscriber,
        connect(server, codec=publisher_codec) as publisher,
    ):
        async with subscriber.subscribe(channel) as sub:
            positions = [await publisher.publish(channel, value) for value in values]
            items = await take(sub, len(values))
    assert data(items) == values
    assert [p.offset for p in positions if p is not None] == [1, 2, 3, 4]
    assert all(isinstance(i, Publication) and i.kind == "message" for i in items)
    assert [i.position for i in items if isinstance(i, Publication)] == positions
    first = items[0]
    assert isinstance(first, Publication) and first.sender is not None
    assert first.sender.client == publisher.client_id


async def test_channel_without_history_has_no_positions(server: Server) -> None:
    """On a channel without history publish returns None and publications carry no offset."""
    channel = unique("plain")
    async with connect(server) as client, client.subscribe(channel) as sub:
        assert await client.publish(channel, "x") is None
        (item,) = await take(sub, 1)
    assert isinstance(item, Publication) and item.position is None and item.data == "x"


async def test_echo_false_skips_the_publisher(server: Server) -> None:
    """``echo=False`` keeps a publisher's own publication from its subscription."""
    channel = unique("feed:")
    async with connect(server) as client, client.subscribe(channel) as sub:
        await client.publish(channel, "hidden", echo=False)
        await client.publish(channel, "shown")
        items = await take(sub, 1)
    assert data(items) == ["shown"]


async def test_subscribe_with_history_replays_then_goes_live(server: Server) -> None:
    """``history=n`` delivers the newest n kept publications, then live ones, no gap."""
    channel = unique("feed:")
    async with connect(server) as client:
        for n in range(5):
            await client.publish(channel, n)
        async with client.subscribe(channel, history=3) as sub:
            await client.publish(channel, 5)
            items = await take(sub, 4)
    assert data(items) == [2, 3, 4, 5]
    assert [i.offset for i in items if isinstance(i, Publication)] == [3, 4, 5, 6]


async def test_history_limit_since_and_reverse(server: Server) -> None:
    """history: newest ``limit``, the first after ``since``, reversed; another epoch is 410."""
    channel = unique("feed:")
    async with connect(server, codec="msgpack") as client:
        for n in range(6):
            await client.publish(channel, n)
        newest = await client.history(channel, limit=2)
        assert data(list(newest.publications)) == [4, 5]
        assert newest.position is not None and newest.position.offset == 6
        since = await client.history(channel, since=Position(offset=2, epoch=newest.position.epoch))
        assert data(list(since.publications)) == [2, 3, 4, 5]
        backwards = await client.history(channel, limit=3, reverse=True)
        assert data(list(backwards.publications)) == [5, 4, 3]
        with pytest.raises(RequestFailed) as gone:
            await client.history(channel, since=Position(offset=1, epoch="not-the-epoch"))
    assert gone.value.code == 410


async def test_presence_and_join_leave_events(server: Server) -> None:
    """presence lists both clients; the first sees the second join and leave."""
    channel = unique("room:")
    async with (
        connect(server, token=mint("alice", name="Alice")) as alice,
        alice.subscribe(channel) as sub,
    ):
        async with connect(server, token=mint("bob")) as bob, bob.subscribe(channel):
            present = await alice.presence(channel)
            assert present.users == 2
            assert {info.user for info in present.clients.values()} == {"alice", "bob"}
            (joined,) = await take(sub, 1)
        (left,) = await take(sub, 1)
    assert isinstance(joined, Publication) and joined.kind == "join"
    assert joined.sender is not None and joined.sender.user == "bob"
    assert isinstance(left, Publication) and left.kind == "leave" and left.data is None


async def test_error_replies_raise_typed_errors(server: Server) -> None:
    """Refused commands raise RequestFailed carrying the protocol's code and reason."""
    async with connect(server) as client:
        with pytest.raises(RequestFailed) as unknown:
            await client.publish("nope:x", 1)
        assert unknown.value.code == 404 and "nope" in unknown.value.reason
        with pytest.raises(RequestFailed) as invalid:
            await client.publish("bad channel!", 1)
        assert invalid.value.code == 400
        with pytest.raises(RequestFailed) as no_presence:
            await client.presence(unique("feed:"))
        assert no_presence.value.code == 403
        with pytest.raises(RequestFailed) as anonymous:
            await client.refresh("not-a-token")
        assert anonymous.value.code == 403
        with pytest.raises(RequestFailed) as refused:
            async with client.subscribe("nope:y"):
                pass
        assert refused.value.code == 404
        # The session survived every refusal.
        assert await client.publish(unique("feed:"), "still here") is not None
        assert client.connections == 1


async def test_one_subscription_per_channel_and_client(server: Server) -> None:
    """A second subscription to the same channel is refused as documented: RequestFailed 409."""
    channel = unique("feed:")
    async with connect(server) as client, client.subscribe(channel) as first:
        with pytest.raises(RequestFailed) as twice:
            async with client.subscribe(channel):
                pass
        assert twice.value.code == 409
        assert channel in twice.value.reason
        # The refusal left the first subscription working.
        await client.publish(channel, "still")
        assert data(await take(first, 1)) == ["still"]
        await client.unsubscribe(unique("feed:"))  # nothing held: nothing happens


async def test_unsubscribe_ends_the_iterator(server: Server) -> None:
    """``unsubscribe`` ends the iteration; publications after it are not delivered."""
    channel = unique("feed:")
    async with connect(server) as client, client.subscribe(channel) as sub:
        await client.publish(channel, 1)
        await client.unsubscribe(channel)
        await client.publish(channel, 2)
        with anyio.fail_after(5):
            rest = [item async for item in sub]
    assert data(rest) == [1]
    assert sub.closed


async def test_client_used_outside_its_block_raises(server: Server) -> None:
    """Commands before entering or after leaving the block raise ClientClosed."""
    client = Client(f"{server.ws_url}/ws")
    with pytest.raises(ClientClosed):
        await client.publish("feed:x", 1)
    async with client:
        pass
    with pytest.raises(ClientClosed):
        await client.publish("feed:x", 1)
    with pytest.raises(RuntimeError, match="only once"):
        async with client:
            pass


async def test_connect_to_nothing_fails_within_the_timeout() -> None:
    """With nothing listening, ``async with`` raises ConnectFailed after connect_timeout."""
    client = Client(f"ws://127.0.0.1:{free_port()}/ws", connect_timeout=0.5, backoff=FAST)
    with anyio.fail_after(10), pytest.raises(ConnectFailed) as failed:
        async with client:
            pass
    assert failed.value.status is None


# -- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("carrier", ["header", "subprotocol"])
async def test_token_in_header_or_subprotocol(server: Server, carrier: Any) -> None:
    """A token carried either way identifies the user (welcome.user, the sender)."""
    channel = unique("feed:")
    async with (
        connect(server, token=mint("alice"), token_carrier=carrier) as client,
        client.subscribe(channel) as sub,
    ):
        assert client.welcome is not None and client.welcome.user == "alice"
        await client.publish(channel, "hi")
        (item,) = await take(sub, 1)
    assert isinstance(item, Publication) and item.sender is not None
    assert item.sender.user == "alice"


async def test_bad_token_is_refused_with_401(server: Server) -> None:
    """A token the server refuses makes ``async with`` raise ConnectFailed(401), no retry."""
    with anyio.fail_after(10), pytest.raises(ConnectFailed) as failed:
        async with connect(server, token="not.a.jwt"):
            pass
    assert failed.value.status == 401


async def test_token_provider_refreshes_before_expiry(server: Server) -> None:
    """With a provider the client refreshes before ``exp`` and answers pings: no close at all.

    Without a refresh the server would close 4401 within 2.5 s; without pongs,
    4408 after 1.5 s of silence.
    """
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return mint("alice", ttl=2)

    async with connect(server, token_provider=provider, refresh_margin=1.0) as client:
        assert client.welcome is not None and client.welcome.expires is not None
        await anyio.sleep(3)
        assert await client.publish(unique("feed:"), "still") is not None
        assert client.connections == 1
    assert calls >= 3


async def test_token_expiry_with_a_provider_reconnects_with_a_new_token(server: Server) -> None:
    """A refused refresh leads to 4401; with a provider the client comes back and recovers."""
    channel = unique("feed:")
    tokens = [mint("alice", ttl=2), mint("mallory"), mint("alice")]
    reconnecting = anyio.Event()

    async def provider() -> str:
        # The second token, for another user, makes the refresh fail (403).
        if len(tokens) == 1:
            reconnecting.set()
        return tokens.pop(0)

    async with (
        connect(server, token_provider=provider, refresh_margin=1.0) as client,
        connect(server) as publisher,
        client.subscribe(channel) as sub,
    ):
        await publisher.publish(channel, "first")
        items = await take(sub, 1)
        with anyio.fail_after(10):
            await reconnecting.wait()  # the provider's third call: the client is reconnecting
        await publisher.publish(channel, "second")  # recovered if it is not back yet
        items += await take(sub, 1)
    assert data(items) == ["first", "second"]
    assert [i.offset for i in items if isinstance(i, Publication)] == [1, 2]
    assert client.connections == 2
    assert client.welcome is not None and client.welcome.user == "alice"


async def test_manual_refresh_with_a_static_token(server: Server) -> None:
    """``refresh(token)`` renews the connection's expiry; without a token it needs a provider."""
    async with connect(server, token=mint("alice", ttl=60)) as client:
        assert client.welcome is not None and client.welcome.expires is not None
        first = client.welcome.expires
        await client.refresh(mint("alice", ttl=600))
        with pytest.raises(ValueError):
            await client.refresh()
        with pytest.raises(RequestFailed) as other_user:
            await client.refresh(mint("mallory"))
        assert other_user.value.code == 403
        with pytest.raises(RequestFailed) as bad:
            await client.refresh("not.a.jwt")
        assert bad.value.code == 401
        assert client.expires is not None and client.expires > first


async def test_expired_static_token_stops_the_client(server: Server) -> None:
    """A token that expires without a provider: 4401 (reconnect false) ends the client."""
    channel = unique("feed:")
    async with connect(server, token=mint("alice", ttl=2)) as client:
        async with client.subscribe(channel) as sub:
            with anyio.fail_after(10), pytest.raises(Disconnected) as stopped:
                async for _ in sub:
                    pass
        assert stopped.value.code == 4401
        assert client.failure is stopped.value
        with pytest.raises(Disconnected):
            await client.publish(channel, "after")


async def test_kicked_client_stops_with_a_clear_error(server: Server) -> None:
    """``disconnect`` with reconnect false (4403, kicked through the API) ends the client."""
    channel = unique("feed:")
    user = unique("u")
    async with connect(server, token=mint(user)) as client, client.subscribe(channel) as sub:
        await client.publish(channel, "before")
        assert await api(server, "POST", "disconnect", json={"user": user}) == {"disconnected": 1}
        with anyio.fail_after(10), pytest.raises(Disconnected) as stopped:
            async for _ in sub:
                pass
    assert stopped.value.code == 4403
    assert client.connections == 1


async def test_disconnect_with_reconnect_true_is_followed(server: Server) -> None:
    """A server close advising reconnect (1012 through the API): back, recovered, no loss."""
    channel = unique("feed:")
    user = unique("u")
    async with (
        connect(server, token=mint(user)) as client,
        connect(server) as publisher,
        client.subscribe(channel) as sub,
    ):
        await publisher.publish(channel, 0)
        items = await take(sub, 1)
        answer = await api(server, "POST", "disconnect", json={"user": user, "code": 1012})
        assert answer == {"disconnected": 1}
        await publisher.publish(channel, 1)
        items += await take(sub, 1)
    assert data(items) == [0, 1]
    assert [i.offset for i in items if isinstance(i, Publication)] == [1, 2]
    assert client.connections == 2


async def test_subscription_outside_its_block_refuses_to_iterate() -> None:
    """Iterating a subscription that was never entered is a clear error, not a hang."""
    sub = Client("ws://127.0.0.1:1/ws").subscribe("feed:x")
    with pytest.raises(RuntimeError, match="async with"):
        await sub.__anext__()


async def test_personal_channel_is_subscribed_server_side(server: Server) -> None:
    """``#<user>`` (held from welcome) is subscribed without 409 and delivers notifications."""
    user = unique("u")
    async with connect(server, token=mint(user)) as client:
        assert client.welcome is not None
        assert [s.channel for s in client.welcome.subscribed] == [f"#{user}"]
        async with client.subscribe(f"#{user}") as sub:
            notification = {"type": "t", "title": "hello"}
            await api(server, "POST", "notify", json={"user": user, "notification": notification})
            (item,) = await take(sub, 1)
    assert isinstance(item, Publication) and item.data["title"] == "hello"
    assert item.offset == 1


async def test_subscription_made_by_the_server_is_joined_without_409(server: Server) -> None:
    """After an API ``subscribe`` the client joins that subscription, from the server's position."""
    channel = unique("feed:")
    user = unique("u")
    async with connect(server, token=mint(user)) as client, connect(server) as publisher:
        await publisher.publish(channel, "before")
        await api(server, "POST", "subscribe", json={"user": user, "channel": channel})
        await publisher.publish(channel, "after the server subscribed")
        async with client.subscribe(channel) as sub:
            await publisher.publish(channel, "live")
            items = await take(sub, 2)
    assert data(items) == ["after the server subscribed", "live"]
    assert [i.offset for i in items if isinstance(i, Publication)] == [2, 3]
    assert client.gaps == 0


async def test_server_side_unsubscribe_ends_the_iterator(server: Server) -> None:
    """An ``unsubscribed`` the server sends on its own (API unsubscribe) ends the iteration."""
    channel = unique("feed:")
    user = unique("u")
    async with connect(server, token=mint(user)) as client, client.subscribe(channel) as sub:
        await api(server, "POST", "unsubscribe", json={"user": user, "channel": channel})
        with anyio.fail_after(10):
            rest = [item async for item in sub]
    assert rest == []


def test_unrecovered_is_an_item_the_application_must_handle() -> None:
    """``Unrecovered`` is typed apart from publications and says whether the epoch changed."""
    notice = Unrecovered(
        channel="c", previous=Position(offset=3, epoch="a"), position=Position(offset=0, epoch="b")
    )
    assert notice.epoch_changed
    assert not hasattr(notice, "data")


def test_batching_is_refused_when_the_client_is_built() -> None:
    """``params={"batch": "1"}`` is a ValueError at construction, not undecodable frames later."""
    with pytest.raises(ValueError, match="batch"):
        Client("http://127.0.0.1:1", params={"batch": "1"})
