"""``hubbub.testing``: the in-process hub, the scripted client and every fault it injects."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from hubbub import (
    AuthenticationFailed,
    AuthMiddleware,
    BrokerUnavailable,
    Hub,
    HubApp,
    Identity,
    Limits,
    MemoryBroker,
    Namespace,
    find_token,
)
from hubbub.testing import (
    CommandFailed,
    ConnectionClosed,
    FaultyBroker,
    HandshakeRefused,
    HubTester,
)
from hubbub.testing.contract import BrokerContract, BrokerFactory, BrokerUnderTest, ManualClock


class TestFaultyBrokerWhenHealthy(BrokerContract):
    """A healthy ``FaultyBroker`` is transparent: the contract passes through it."""

    @pytest.fixture
    def make_broker(self) -> BrokerFactory:
        """Faulty brokers around memory brokers on a manual clock."""

        async def make() -> BrokerUnderTest:
            clock = ManualClock()
            return BrokerUnderTest(FaultyBroker(MemoryBroker(clock=clock)), clock.advance)

        return make


pytestmark = pytest.mark.anyio

NEWS = Namespace(name="news", history_size=50)
"""A namespace whose channels keep history (offsets, epochs, recovery)."""


class TokenTable:
    """An authenticator over a fixed token → user table (what a real app's would look up)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)

    async def __call__(self, scope: Mapping[str, Any]) -> Identity | None:
        token = find_token(scope)
        if token is None:
            return None
        user = self.users.get(token)
        if user is None:
            raise AuthenticationFailed("unknown token")
        return Identity(user=user)


# -- the tester and the handshake -------------------------------------------------------------


async def test_connect_anonymous_and_exchange_messages(anyio_backend: str) -> None:
    """Two anonymous clients subscribe and publish through the real app; replies match ids."""
    async with HubTester() as tester:
        ann, bob = await tester.connect(), await tester.connect()
        assert ann.welcome["type"] == "welcome" and ann.welcome["user"] == ""
        assert ann.id and ann.id != bob.id
        subscribed = await ann.subscribe("lobby")
        assert subscribed["type"] == "subscribed" and subscribed["channel"] == "lobby"
        ack = await bob.publish("lobby", {"text": "hi"})
        assert ack["type"] == "ack"
        message = await ann.receive()
        assert message["type"] == "message" and message["data"] == {"text": "hi"}
        assert tester.hub.connection_count == 2
        await ann.receive_nothing()


async def test_connect_as_a_user_bypasses_authentication(anyio_backend: str) -> None:
    """``connect(user=...)`` hands the identity over: name, info and server-side channels."""
    async with HubTester(anonymous=False) as tester:
        ann = await tester.connect("ann", name="Ann", info={"role": "admin"}, channels=["lobby"])
        assert ann.welcome["user"] == "ann"
        subscribed = {entry["channel"] for entry in ann.welcome["subscribed"]}
        assert subscribed == {"#ann", "lobby"}
        await tester.hub.publish("lobby", "server-side")
        assert (await ann.receive())["data"] == "server-side"
        with pytest.raises(HandshakeRefused) as refused:
            await tester.connect()
        assert refused.value.status == 401 and refused.value.body["code"] == 401


async def test_token_goes_through_the_hub_authenticator(anyio_backend: str) -> None:
    """``connect(token=...)`` sends a bearer token; the app's authenticator decides."""
    async with HubTester(authenticator=TokenTable({"t-ann": "ann"}), anonymous=False) as tester:
        ann = await tester.connect(token="t-ann")
        assert ann.welcome["user"] == "ann"
        with pytest.raises(HandshakeRefused) as refused:
            await tester.connect(token="forged")
        assert refused.value.status == 401 and refused.value.body["reason"] == "unknown token"
        assert refused.value.headers["content-type"] == "application/json"


async def test_refusals_carry_the_documented_status(anyio_backend: str) -> None:
    """Unknown subprotocols get 400, a wrong path 404, an IP over its cap 429."""
    async with HubTester(limits=Limits(max_connections_per_ip=1)) as tester:
        with pytest.raises(HandshakeRefused) as bad_codec:
            await tester.connect(subprotocols=["chat.v9"])
        assert bad_codec.value.status == 400
        with pytest.raises(HandshakeRefused) as bad_path:
            await tester.connect(path="/elsewhere")
        assert bad_path.value.status == 404
        await tester.connect(ip="10.0.0.1")
        with pytest.raises(HandshakeRefused) as capped:
            await tester.connect(ip="10.0.0.1")
        assert capped.value.status == 429
        await tester.connect(ip="10.0.0.2")


async def test_msgpack_client(anyio_backend: str) -> None:
    """A msgpack client sends and receives binary frames; payloads keep their types."""
    async with HubTester() as tester:
        packed = await tester.connect(codec="msgpack")
        plain = await tester.connect()
        await packed.subscribe("lobby")
        await plain.subscribe("lobby")
        await plain.publish("lobby", {"n": 1, "f": 1.5})
        assert (await packed.receive())["data"] == {"n": 1, "f": 1.5}
        await packed.publish("lobby", [1, "two"])
        assert (await plain.receive())["data"] == {"n": 1, "f": 1.5}
        assert (await plain.receive())["data"] == [1, "two"]


async def test_batched_frames_are_split(anyio_backend: str) -> None:
    """With ``batch=True`` several messages may share a frame; the client hands them singly."""
    async with HubTester() as tester:
        client = await tester.connect(batch=True)
        await client.subscribe("ticks")
        client.freeze()
        for n in range(5):
            await tester.hub.publish("ticks", n)
        client.thaw()
        assert [(await client.receive())["data"] for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_request_keeps_interleaved_messages_in_order(anyio_backend: str) -> None:
    """Messages arriving before a reply stay in the inbox, in order, for ``receive``."""
    async with HubTester() as tester:
        client = await tester.connect()
        await client.subscribe("a")
        client.freeze()
        await tester.hub.publish("a", 1)
        await tester.hub.publish("a", 2)
        client.thaw()
        await client.subscribe("b")
        assert [(await client.receive())["data"] for _ in range(2)] == [1, 2]


async def test_receive_until_and_receive_all(anyio_backend: str) -> None:
    """``receive_until`` reads up to a type; ``receive_all`` takes whatever has landed."""
    async with HubTester() as tester:
        client = await tester.connect()
        await client.subscribe("a")
        assert await client.receive_all() == []
        await tester.hub.publish("a", 0)
        await client.send({"type": "unsubscribe", "channel": "a", "id": 7})
        upto = await client.receive_until("unsubscribed")
        assert [m["type"] for m in upto] == ["message", "unsubscribed"] and upto[1]["id"] == 7
        await tester.hub.publish("a", "not delivered")
        assert await client.receive_all() == []
        client.freeze()
        assert client.frozen and "frozen" in repr(client)


async def test_history_and_presence_helpers(anyio_backend: str) -> None:
    """``history`` and ``presence`` return their replies; ``unsubscribe`` stops delivery."""
    room = Namespace(name="room", history_size=10, presence=True)
    async with HubTester(namespaces=[room]) as tester:
        ann = await tester.connect("ann")
        await ann.subscribe("room:1")
        for n in range(3):
            await ann.publish("room:1", n)
        assert [(await ann.receive())["offset"] for _ in range(3)] == [1, 2, 3]
        page = await ann.history("room:1", limit=2)
        assert [p["data"] for p in page["publications"]] == [1, 2]
        present = await ann.presence("room:1")
        assert [entry["user"] for entry in present["clients"].values()] == ["ann"]
        assert (await ann.unsubscribe("room:1"))["type"] == "unsubscribed"
        await tester.hub.publish("room:1", "after")
        await ann.receive_nothing()


async def test_errors_raise_command_failed(anyio_backend: str) -> None:
    """An ``error`` reply raises CommandFailed with its code; the connection stays open."""
    async with HubTester() as tester:
        client = await tester.connect()
        with pytest.raises(CommandFailed) as unknown:
            await client.subscribe("nowhere:1")
        assert unknown.value.code == 404 and unknown.value.error["type"] == "error"
        await client.subscribe("lobby")
        with pytest.raises(CommandFailed) as twice:
            await client.subscribe("lobby")
        assert twice.value.code == 409
        assert not client.closed


async def test_send_raw_reaches_the_decoder(anyio_backend: str) -> None:
    """Malformed frames get ``error`` 400; a binary frame on JSON too."""
    async with HubTester() as tester:
        client = await tester.connect()
        await client.send_raw("{not json")
        assert (await client.receive())["code"] == 400
        await client.send_raw(b"\x00\x01")
        assert (await client.receive())["code"] == 400


async def test_receive_nothing_fails_when_something_came(anyio_backend: str) -> None:
    """``receive_nothing`` raises AssertionError when a message is waiting, and keeps it."""
    async with HubTester() as tester:
        client = await tester.connect()
        await client.subscribe("lobby")
        await tester.hub.publish("lobby", "surprise")
        with pytest.raises(AssertionError, match="surprise"):
            await client.receive_nothing()
        assert (await client.receive())["data"] == "surprise"
        await client.receive_nothing(grace=0.05)


async def test_receive_times_out_and_reports_the_close(anyio_backend: str) -> None:
    """``receive`` raises TimeoutError when nothing comes, ConnectionClosed after the end."""
    async with HubTester(timeout=0.2) as tester:
        client = await tester.connect()
        with pytest.raises(TimeoutError):
            await client.receive()
        await client.close()
        assert client.closed and client.close_code == 1000
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.code == 1000
        await tester.settle()
        assert tester.hub.connection_count == 0


async def test_pings_are_answered_or_shown(anyio_backend: str) -> None:
    """Pings are answered and hidden by default; ``auto_pong=False`` shows them."""
    limits = Limits(ping_interval=0.1, pong_timeout=1.0)
    async with HubTester(limits=limits) as tester:
        quiet = await tester.connect()
        raw = await tester.connect(auto_pong=False)
        assert (await raw.receive())["type"] == "ping"
        await raw.send({"type": "pong"})
        await quiet.receive_nothing(grace=0.3)
        assert not quiet.closed
        await raw.wait_closed()
        assert raw.close_code == 4408


async def test_wait_closed_returns_what_came_before(anyio_backend: str) -> None:
    """``wait_closed`` reads up to the end: the goodbye is kept, the code is recorded."""
    async with HubTester() as tester:
        ann = await tester.connect("ann")
        await tester.hub.disconnect("ann", reason="banned")
        seen = await ann.wait_closed()
        assert seen[-1]["type"] == "disconnect" and ann.goodbye == seen[-1]
        assert ann.close_code == 4403


async def test_tester_with_an_application_hub_restores_it(anyio_backend: str) -> None:
    """Given the app's hub, the tester wraps its broker and authenticator, then restores them."""
    broker = MemoryBroker()
    authenticator = TokenTable({"t": "ann"})
    hub = Hub(broker=broker, authenticator=authenticator)
    async with HubTester(hub) as tester:
        assert tester.broker.inner is broker and tester.hub.broker is tester.broker
        assert (await tester.connect(token="t")).welcome["user"] == "ann"
    assert hub.broker is broker and hub.authenticator is authenticator
    assert hub.state == "stopped"


async def test_an_error_in_the_test_propagates_and_stops_everything(anyio_backend: str) -> None:
    """An exception inside ``async with HubTester()`` comes out unwrapped; the hub stops."""
    tester = HubTester()
    with pytest.raises(ZeroDivisionError):
        async with tester:
            await tester.connect()
            raise ZeroDivisionError
    assert tester.hub.state == "stopped" and tester.hub.connection_count == 0


async def test_the_app_and_the_authenticator_hooks_are_kept(anyio_backend: str) -> None:
    """A given ``HubApp`` serves the clients; the authenticator's extra methods stay reachable."""

    class Refreshing(TokenTable):
        async def verify(self, token: str) -> Identity:
            return Identity(user=self.users[token])

    hub = Hub(authenticator=Refreshing({"t": "ann"}))
    with pytest.raises(ValueError, match="app must serve"):
        HubTester(hub, app=HubApp(Hub()))
    app = HubApp(hub, api_keys=["k-0123456789abcdef"])
    async with HubTester(hub, app=app) as tester:
        assert tester.app is app
        assert (await getattr(hub.authenticator, "verify")("t")).user == "ann"  # noqa: B009
        assert repr(tester.broker).startswith("<FaultyBroker up around <hubbub")
        client = await tester.connect(token="t")
        assert "open" in repr(client)


async def test_clients_go_through_middleware_in_front(anyio_backend: str) -> None:
    """With ``app`` behind AuthMiddleware, Origin checks and tokens apply as in production."""
    hub = Hub()
    guarded = AuthMiddleware(
        HubApp(hub),
        authenticator=TokenTable({"t": "ann"}),
        allowed_origins=["https://chat.example"],
        admission=hub.admission,
    )
    async with HubTester(hub, app=guarded) as tester:
        good = [("origin", "https://chat.example")]
        assert (await tester.connect(token="t", headers=good)).welcome["user"] == "ann"
        with pytest.raises(HandshakeRefused) as foreign:
            await tester.connect(token="t", headers=[("origin", "https://evil.example")])
        assert foreign.value.status == 403
        with pytest.raises(HandshakeRefused) as anonymous:
            await tester.connect(headers=good)
        assert anonymous.value.status == 401


async def test_misuse_is_refused(anyio_backend: str) -> None:
    """A hub and Hub options together, or connecting before entering, raise at once."""
    with pytest.raises(TypeError):
        HubTester(Hub(), anonymous=True)
    tester = HubTester()
    with pytest.raises(RuntimeError, match="async with"):
        await tester.connect()
    with pytest.raises(TypeError):
        async with HubTester() as running:
            await running.connect("ann", identity=Identity(user="bob"))


# -- client faults ----------------------------------------------------------------------------


async def test_dropped_client_is_cleaned_up(anyio_backend: str) -> None:
    """A client cut without a close frame leaves the hub's registry; others are untouched."""
    async with HubTester() as tester:
        gone, stays = await tester.connect("gone"), await tester.connect("stays")
        await gone.subscribe("lobby")
        await stays.subscribe("lobby")
        gone.drop()
        assert gone.closed and gone.close_code == 1006
        with pytest.raises(ConnectionClosed):
            await gone.receive()
        await tester.settle()
        assert tester.hub.connection_count == 1
        assert tester.hub.channels() == {"#stays": 1, "lobby": 1}
        await tester.hub.publish("lobby", "still here")
        assert (await stays.receive())["data"] == "still here"


async def test_frozen_client_is_closed_as_a_slow_consumer(anyio_backend: str) -> None:
    """A client that stops reading overflows its queue and gets 1013; the others get everything."""
    async with HubTester(limits=Limits(queue_messages=4)) as tester:
        slow, fast = await tester.connect(), await tester.connect()
        await slow.subscribe("ticks")
        await fast.subscribe("ticks")
        slow.freeze()
        for n in range(20):
            await tester.hub.publish("ticks", n)
            assert (await fast.receive())["data"] == n
        slow.thaw()
        seen = await slow.wait_closed()
        data = [m["data"] for m in seen if m["type"] == "message"]
        assert data == list(range(len(data))) and len(data) < 20
        assert slow.close_code == 1013 and slow.goodbye is not None
        assert slow.goodbye["reconnect"] is True
        assert tester.hub.stats.slow_consumer_closes == 1


async def test_frozen_client_in_a_lossy_namespace_loses_old_messages(anyio_backend: str) -> None:
    """With ``drop_oldest`` a frozen client keeps its connection and skips old messages."""
    cursor = Namespace(name="cursor", slow_consumer="drop_oldest")
    async with HubTester(namespaces=[cursor], limits=Limits(queue_messages=3)) as tester:
        client = await tester.connect()
        await client.subscribe("cursor:1")
        client.freeze()
        for n in range(10):
            await tester.hub.publish("cursor:1", n)
        client.thaw()
        data = [message["data"] for message in await client.receive_all()]
        assert data[-1] == 9 and data == sorted(data) and len(data) < 10
        assert not client.closed and tester.hub.stats.dropped > 0


# -- broker faults ----------------------------------------------------------------------------


async def test_broker_outage_answers_503_and_comes_back(anyio_backend: str) -> None:
    """While the broker is down, commands get 503 and ready() is False; then all works again."""
    async with HubTester() as tester:
        client = await tester.connect()
        await client.subscribe("lobby")
        tester.broker.fail()
        assert await tester.broker.ready() is False
        transport = httpx.ASGITransport(app=tester.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as http:
            assert (await http.get("/ready")).status_code == 503
        with pytest.raises(CommandFailed) as refused:
            await client.publish("lobby", "lost")
        assert refused.value.code == 503
        with pytest.raises(BrokerUnavailable):
            await tester.hub.publish("lobby", "lost")
        tester.broker.restore()
        assert await tester.broker.ready() is True
        await client.publish("lobby", "back")
        assert (await client.receive())["data"] == "back"
        assert tester.broker.calls.count("publish") == 3


async def test_lost_deliveries_are_repaired_from_history(anyio_backend: str) -> None:
    """Publications a deaf node missed arrive once its broker reports the loss, in order."""
    async with HubTester(namespaces=[NEWS]) as tester:
        client = await tester.connect()
        await client.subscribe("news:1")
        await tester.hub.publish("news:1", 1)
        assert (await client.receive())["offset"] == 1
        tester.broker.deafen()
        for n in (2, 3, 4):
            await tester.hub.publish("news:1", n)
        await client.receive_nothing()
        tester.broker.restore()
        assert [(await client.receive())["offset"] for _ in range(3)] == [2, 3, 4]
        assert tester.broker.losses_reported == 1
        await tester.settle()
        assert tester.hub.stats.gaps_repaired == 1


async def test_lost_deliveries_without_history_stay_lost(anyio_backend: str) -> None:
    """Channels without history are at-most-once: what a deaf node missed is gone."""
    async with HubTester() as tester:
        client = await tester.connect()
        await client.subscribe("lobby")
        tester.broker.deafen()
        await tester.hub.publish("lobby", "missed")
        tester.broker.restore()
        await client.receive_nothing()
        await tester.hub.publish("lobby", "seen")
        assert (await client.receive())["data"] == "seen"


async def test_stalled_broker_times_out_into_503(anyio_backend: str) -> None:
    """A frozen broker makes commands fail with 503 after ``broker_timeout``, not hang."""
    async with HubTester(broker_timeout=0.2) as tester:
        client = await tester.connect()
        tester.broker.stall()
        with pytest.raises(CommandFailed) as refused:
            await client.publish("lobby", "x")
        assert refused.value.code == 503
        tester.broker.restore(report_loss=False)
        assert tester.broker.losses_reported == 0
        assert (await client.publish("lobby", "y"))["type"] == "ack"


async def test_broker_down_at_start_fails_the_tester(anyio_backend: str) -> None:
    """A broker that is down when the hub starts makes entering fail; the hub stays stopped."""
    hub = Hub(anonymous=True)
    tester = HubTester(hub)
    tester.broker.fail()
    with pytest.raises(BrokerUnavailable):
        async with tester:
            pass  # pragma: no cover - the hub does not start
    assert hub.state == "stopped" and not isinstance(hub.broker, FaultyBroker)


async def test_epoch_reset_starts_a_new_stream(anyio_backend: str) -> None:
    """After a stream is lost, publications carry a new epoch from offset 1; recovery says no."""
    async with HubTester(namespaces=[NEWS]) as tester:
        client = await tester.connect()
        await client.subscribe("news:1")
        await tester.hub.publish("news:1", "old")
        old = await client.receive()
        tester.reset_epoch("news:1")
        await tester.hub.publish("news:1", "new")
        new = await client.receive()
        assert new["offset"] == 1 and new["epoch"] != old["epoch"]
        late = await tester.connect()
        reply = await late.subscribe(
            "news:1", recover={"offset": old["offset"], "epoch": old["epoch"]}
        )
        assert reply["recovered"] is False and reply["epoch"] == new["epoch"]


async def test_epoch_reset_reported_as_loss_closes_subscribers(anyio_backend: str) -> None:
    """A lost stream reported through ``lost`` closes its subscribers 1013 so they recover."""
    async with HubTester(namespaces=[NEWS]) as tester:
        client = await tester.connect()
        await client.subscribe("news:1")
        await tester.hub.publish("news:1", "old")
        await client.receive()
        tester.reset_epoch("news:1")
        tester.broker.report_loss(["news:1"])
        await client.wait_closed()
        assert client.close_code == 1013


async def test_reset_epoch_needs_a_memory_broker(anyio_backend: str) -> None:
    """Another broker's streams live in its backend: reset_epoch says so."""
    with pytest.raises(TypeError, match="MemoryBroker"):
        FaultyBroker(FaultyBroker()).reset_epoch("a")
    with pytest.raises(RuntimeError, match="not started"):
        FaultyBroker().report_loss()


# -- the guide --------------------------------------------------------------------------------


async def test_the_guide_example_runs(anyio_backend: str, tmp_path: Path) -> None:
    """The first example of ``docs/testing.md`` imports and each of its tests passes."""
    guide = (Path(__file__).parent.parent / "docs" / "testing.md").read_text()
    code = guide.split("```python\n", 1)[1].split("```", 1)[0]
    source = tmp_path / "guide_example.py"
    source.write_text(code)
    spec = importlib.util.spec_from_file_location("guide_example", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [value for name, value in vars(module).items() if name.startswith("test_")]
    assert len(tests) == 3
    for test in tests:
        await test()
