"""History, recovery, chat, presence and notifications end to end (PROTOCOL.md §3-§5, §9).

Real ``websockets`` clients against ``python -m hubbub serve streams_app:app``
(uvicorn, memory broker). One server is shared by the module; every test uses
its own channel and user names so tests do not see each other. The restart
test runs its own two servers.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest

from .apps.wsclient import Client, open_client
from .servers import Server, run_server

pytestmark = pytest.mark.anyio

ARGV = ["-m", "hubbub", "serve", "streams_app:app", "--port", "{port}"]
_names = count(1)


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``streams_app:app`` served by uvicorn, shared by this module."""
    with run_server(ARGV, tmp_path_factory.mktemp("streams")) as running:
        yield running


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}{next(_names)}"


def client(server: Server, user: str | None = None, name: str | None = None) -> Any:
    """Open a client as ``user`` (anonymous without one)."""
    query = {k: v for k, v in {"user": user, "name": name}.items() if v}
    return open_client(server.ws_url, path="/ws" + (f"?{urlencode(query)}" if query else ""))


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        result: dict[str, Any] = json.loads(response.read())
        return result


async def notify(server: Server, user: str, title: str, message: str = "") -> dict[str, Any]:
    """``hub.notify`` through the test app's ``POST /notify``; the new position."""
    body = {"user": user, "title": title, "message": message}
    return await asyncio.to_thread(_post, server.url + "/notify", body)


async def fill(c: Client, channel: str, n: int, start: int = 1) -> list[dict[str, Any]]:
    """Publish ``{"n": start}`` … ``{"n": start + n - 1}``; their acks."""
    return await c.publish_pipelined(channel, [{"n": i} for i in range(start, start + n)])


def offsets(messages: list[dict[str, Any]]) -> list[int]:
    return [m["offset"] for m in messages]


def personal(welcome: dict[str, Any], user: str) -> dict[str, Any]:
    """The personal channel's entry in ``welcome.subscribed``."""
    found = [s for s in welcome["subscribed"] if s["channel"] == f"#{user}"]
    assert len(found) == 1, welcome
    return found[0]


async def barrier(c: Client) -> list[dict[str, Any]]:
    """A round trip; what arrived before its reply (left queued for ``recv`` too)."""
    reply = await c.request({"type": "history", "channel": "hist:barrier", "limit": 1})
    assert reply["type"] == "history", reply
    return list(c.pending)


def events(c: Client, kind: str) -> list[dict[str, Any]]:
    """Queued messages of type ``kind``."""
    return [m for m in c.pending if m["type"] == kind]


# -- offsets and epochs ------------------------------------------------------------------------


async def test_offsets_start_at_one_and_carry_the_epoch(server: Server) -> None:
    """A new stream is at offset 0; ``ack`` and ``message`` carry offsets 1, 2, 3 and its epoch."""
    channel = unique("hist:offsets")
    async with client(server) as c:
        subscribed = await c.subscribe(channel)
        assert subscribed["offset"] == 0
        epoch = subscribed["epoch"]
        assert isinstance(epoch, str) and epoch
        assert subscribed["publications"] == []
        assert "recovered" not in subscribed
        acks = await fill(c, channel, 3)
        assert [a["offset"] for a in acks] == [1, 2, 3]
        for ack in acks:
            assert ack.get("epoch", epoch) == epoch
        messages = await c.messages(3)
    assert offsets(messages) == [1, 2, 3]
    assert {m["epoch"] for m in messages} == {epoch}
    assert [m["data"] for m in messages] == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_channels_without_history_have_no_offsets(server: Server) -> None:
    """In a namespace without history, ``subscribed``, ``ack`` and ``message`` carry no position."""
    channel = unique("plain")
    async with client(server) as c:
        subscribed = await c.subscribe(channel)
        assert "offset" not in subscribed and "epoch" not in subscribed
        ack = await c.publish(channel, {"x": 1})
        assert "offset" not in ack
        (message,) = await c.messages(1)
    assert "offset" not in message and "epoch" not in message


async def test_subscribe_with_history_returns_the_last_n(server: Server) -> None:
    """``history: n`` puts the newest n publications in ``subscribed``, oldest first."""
    channel = unique("hist:last")
    async with client(server) as publisher:
        await fill(publisher, channel, 4)
        async with client(server) as c:
            subscribed = await c.subscribe(channel, history=2)
            assert offsets(subscribed["publications"]) == [3, 4]
            assert [p["data"] for p in subscribed["publications"]] == [{"n": 3}, {"n": 4}]
            assert subscribed["offset"] == 4
            assert {p["epoch"] for p in subscribed["publications"]} == {subscribed["epoch"]}
            assert all(p["type"] == "message" for p in subscribed["publications"])
            assert all(p["channel"] == channel for p in subscribed["publications"])
        await fill(publisher, channel, 3, start=5)  # 7 published, 5 kept
        async with client(server) as c:
            subscribed = await c.subscribe(channel, history=50)
            assert offsets(subscribed["publications"]) == [3, 4, 5, 6, 7]


async def test_subscribe_without_history_gets_only_the_position(server: Server) -> None:
    """A plain subscribe to a stream that has publications replays none (no ``replay`` set)."""
    channel = unique("hist:plain")
    async with client(server) as c:
        await fill(c, channel, 2)
    async with client(server) as c:
        subscribed = await c.subscribe(channel)
    assert subscribed["publications"] == []
    assert subscribed["offset"] == 2


# -- recovery ----------------------------------------------------------------------------------


async def test_recover_gets_exactly_the_missed_publications(server: Server) -> None:
    """After a disconnect, ``recover`` returns what was missed; live ones follow, no gap."""
    channel = unique("hist:recover")
    async with client(server) as publisher:
        async with client(server) as c:
            await c.subscribe(channel)
            await fill(publisher, channel, 2)
            seen = await c.messages(2)
        last = seen[-1]
        await fill(publisher, channel, 3, start=3)
        async with client(server) as c:
            recover = {"offset": last["offset"], "epoch": last["epoch"]}
            subscribed = await c.subscribe(channel, recover=recover)
            assert subscribed["recovered"] is True
            assert offsets(subscribed["publications"]) == [3, 4, 5]
            assert [p["data"]["n"] for p in subscribed["publications"]] == [3, 4, 5]
            assert subscribed["offset"] == 5
            assert subscribed["epoch"] == last["epoch"]
            await fill(publisher, channel, 1, start=6)
            (live,) = await c.messages(1)
            assert live["offset"] == 6
            assert [m for m in await barrier(c) if m["type"] == "message"] == []


async def test_recover_under_concurrent_publishing_has_no_gap_or_duplicate(
    server: Server,
) -> None:
    """Publications racing a recovering subscribe arrive once each, in order, in one epoch."""
    channel = unique("feed:race")
    async with client(server) as publisher, client(server) as c:
        subscribed = await c.subscribe(channel)
        epoch = subscribed["epoch"]
        await fill(publisher, channel, 5)
        assert offsets(await c.messages(5)) == [1, 2, 3, 4, 5]
    async with client(server) as publisher:
        await fill(publisher, channel, 10, start=6)

        async def keep_publishing() -> None:
            for n in range(16, 76):
                await publisher.send({"type": "publish", "channel": channel, "data": {"n": n}})
                await asyncio.sleep(0)

        async with client(server) as c:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_publishing)
                subscribed = await c.subscribe(channel, recover={"offset": 5, "epoch": epoch})
            assert subscribed["recovered"] is True
            got = subscribed["publications"]
            got += await c.messages(75 - subscribed["offset"])
            assert offsets(got) == list(range(6, 76))
            assert [m["data"]["n"] for m in got] == list(range(6, 76))
            assert {m["epoch"] for m in got} == {epoch}
            assert [m for m in await barrier(c) if m["type"] == "message"] == []


async def test_recover_past_the_kept_history_is_not_recovered(server: Server) -> None:
    """Publications after ``offset`` fell out of history: ``recovered: false``, nothing sent."""
    channel = unique("hist:lost")
    async with client(server) as c:
        subscribed = await c.subscribe(channel)
        epoch = subscribed["epoch"]
        await fill(c, channel, 8)  # only offsets 4-8 are kept
        await c.messages(8)
    async with client(server) as c:
        subscribed = await c.subscribe(channel, recover={"offset": 1, "epoch": epoch})
        assert subscribed["recovered"] is False
        assert subscribed["publications"] == []
        assert subscribed["offset"] == 8
        assert subscribed["epoch"] == epoch
        await fill(c, channel, 1, start=9)
        (live,) = await c.messages(1)
        assert live["offset"] == 9
    async with client(server) as c:  # just inside the kept history: recovered
        subscribed = await c.subscribe(channel, recover={"offset": 4, "epoch": epoch})
        assert subscribed["recovered"] is True
        assert offsets(subscribed["publications"]) == [5, 6, 7, 8, 9]


async def test_recover_with_a_wrong_epoch_is_not_recovered(server: Server) -> None:
    """``recover`` naming another epoch: ``recovered: false`` and no publications."""
    channel = unique("hist:epoch")
    async with client(server) as c:
        await fill(c, channel, 2)
        subscribed = await c.subscribe(channel, recover={"offset": 1, "epoch": "not-this-one"})
    assert subscribed["recovered"] is False
    assert subscribed["publications"] == []
    assert subscribed["offset"] == 2
    assert subscribed["epoch"] != "not-this-one"


async def test_recover_when_nothing_was_missed(server: Server) -> None:
    """Recovering from the newest position is ``recovered: true`` with no publications."""
    channel = unique("hist:uptodate")
    async with client(server) as c:
        subscribed = await c.subscribe(channel)
        await fill(c, channel, 2)
        await c.messages(2)
    async with client(server) as c:
        again = await c.subscribe(channel, recover={"offset": 2, "epoch": subscribed["epoch"]})
    assert again["recovered"] is True
    assert again["publications"] == []
    assert again["offset"] == 2


# -- the history command -----------------------------------------------------------------------


async def test_history_command_limit_since_and_reverse(server: Server) -> None:
    """``history``: the newest ``limit``, or the first ``limit`` after ``since``; ``reverse``."""
    channel = unique("hist:cmd")
    async with client(server) as c:
        await fill(c, channel, 5)

        async def history(**options: Any) -> dict[str, Any]:
            reply = await c.request({"type": "history", "channel": channel, **options})
            assert reply["type"] == "history", reply
            assert reply["channel"] == channel
            assert reply["offset"] == 5
            return reply

        everything = await history()
        epoch = everything["epoch"]
        assert offsets(everything["publications"]) == [1, 2, 3, 4, 5]
        assert {p["epoch"] for p in everything["publications"]} == {epoch}
        assert [p["data"]["n"] for p in everything["publications"]] == [1, 2, 3, 4, 5]
        assert offsets((await history(limit=2))["publications"]) == [4, 5]
        assert offsets((await history(limit=2, reverse=True))["publications"]) == [5, 4]
        assert offsets((await history(reverse=True))["publications"]) == [5, 4, 3, 2, 1]
        since = {"offset": 1, "epoch": epoch}
        assert offsets((await history(since=since, limit=2))["publications"]) == [2, 3]
        assert offsets((await history(since=since))["publications"]) == [2, 3, 4, 5]
        assert offsets((await history(since={"offset": 5, "epoch": epoch}))["publications"]) == []
        gone = await c.request(
            {"type": "history", "channel": channel, "since": {"offset": 1, "epoch": "other"}}
        )
        assert gone["type"] == "error", gone
        assert gone["code"] == 410
        assert gone["id"]


async def test_history_command_on_an_empty_stream(server: Server) -> None:
    """``history`` of a channel nobody published into: no publications, offset 0."""
    async with client(server) as c:
        reply = await c.request({"type": "history", "channel": unique("hist:empty")})
    assert reply["type"] == "history", reply
    assert reply["publications"] == []
    assert reply["offset"] == 0
    assert reply["epoch"]


# -- chat --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [{"text": ""}, {"text": "x" * 21}, {"text": 42}, {"text": None}, {"nonce": "n"}, "hello"],
    ids=["empty", "too-long", "number", "null", "missing", "not-an-object"],
)
async def test_chat_refuses_bad_data_with_422(server: Server, data: Any) -> None:
    """Data that fails the chat schema gets ``error`` 422 naming the field; nothing is published."""
    channel = unique("chat:bad")
    async with client(server, unique("u-bad")) as c:
        await c.subscribe(channel)
        reply = await c.request({"type": "publish", "channel": channel, "data": data})
        assert reply["type"] == "error", reply
        assert reply["code"] == 422
        if isinstance(data, dict):
            assert "text" in reply["reason"], reply
        history = await c.request({"type": "history", "channel": channel})
    assert history["publications"] == []


async def test_chat_stamps_the_sender_and_echoes_the_nonce(server: Server) -> None:
    """The server stamps ``sender`` (a client's forged one is ignored) and keeps the ``nonce``."""
    channel = unique("chat:stamp")
    user = unique("u-ada")
    async with client(server, user, "Ada") as ada, client(server, unique("u-bob")) as bob:
        await ada.subscribe(channel)
        await bob.subscribe(channel)
        forged = {"user": "mallory", "client": "x.1", "name": "Mallory"}
        reply = await ada.request(
            {
                "type": "publish",
                "channel": channel,
                "data": {"text": "hi all", "nonce": "n-1"},
                "sender": forged,
            }
        )
        assert reply["type"] == "ack", reply
        assert reply["offset"] == 1
        for c in (ada, bob):
            (message,) = await c.messages(1)
            assert message["sender"]["user"] == user
            assert message["sender"]["client"] == ada.welcome["client"]
            assert message["sender"]["name"] == "Ada"
            assert message["data"]["text"] == "hi all"
            assert message["data"]["nonce"] == "n-1"
            assert isinstance(message["ts"], int)
        text_max = await ada.publish(channel, {"text": "y" * 20})
        assert text_max["offset"] == 2


async def test_chat_replays_the_last_messages_on_join(server: Server) -> None:
    """A plain subscribe to a chat room replays its kept messages (5 here), oldest first."""
    channel = unique("chat:replay")
    async with client(server, unique("u-talk")) as talker:
        await talker.publish_pipelined(channel, [{"text": f"m{i}"} for i in range(1, 8)])
        async with client(server, unique("u-late")) as late:
            subscribed = await late.subscribe(channel)
    assert [p["data"]["text"] for p in subscribed["publications"]] == [f"m{i}" for i in range(3, 8)]
    assert offsets(subscribed["publications"]) == [3, 4, 5, 6, 7]
    assert all(
        p["sender"]["client"] == talker.welcome["client"] for p in subscribed["publications"]
    )
    assert subscribed["offset"] == 7


async def test_chat_join_and_leave_are_announced_to_others_only(server: Server) -> None:
    """Subscribers see others' ``join``/``leave`` (per connection), never their own."""
    channel = unique("chat:joins")
    a_user, b_user = unique("u-a"), unique("u-b")
    async with client(server, a_user) as a:
        await a.subscribe(channel)
        async with client(server, b_user, "Bee") as b:
            await b.subscribe(channel)
            await barrier(b)
            assert events(b, "join") == []
            (joined,) = [m for m in await barrier(a) if m["type"] == "join"]
            assert joined["channel"] == channel
            assert joined["user"] == b_user
            assert joined["client"] == b.welcome["client"]
            a.pending.clear()
            reply = await b.request({"type": "unsubscribe", "channel": channel})
            assert reply == {"type": "unsubscribed", "channel": channel, "id": reply["id"]}
            left = await _next(a, "leave")
            assert left["user"] == b_user
            assert left["client"] == b.welcome["client"]


async def _next(c: Client, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next message of type ``kind`` (others are skipped)."""
    async with asyncio.timeout(within):
        while True:
            message = await c.recv(within)
            if message["type"] == kind:
                return message


# -- presence ----------------------------------------------------------------------------------


async def test_presence_counts_a_user_with_three_connections_once(server: Server) -> None:
    """``presence`` lists every client but counts distinct users."""
    channel = unique("room:count")
    one, two = unique("u-one"), unique("u-two")
    async with (
        client(server, one, "One") as a1,
        client(server, one, "One") as a2,
        client(server, one, "One") as a3,
        client(server, two) as b,
    ):
        for c in (a1, a2, a3, b):
            await c.subscribe(channel)
        reply = await b.request({"type": "presence", "channel": channel})
    assert reply["type"] == "presence", reply
    assert reply["users"] == 2
    clients = reply["clients"]
    assert set(clients) == {c.welcome["client"] for c in (a1, a2, a3, b)}
    assert clients[a1.welcome["client"]]["user"] == one
    assert clients[a1.welcome["client"]]["name"] == "One"
    assert clients[b.welcome["client"]]["user"] == two


async def test_presence_in_a_namespace_without_it_is_403(server: Server) -> None:
    """``presence`` where the namespace does not track it: ``error`` 403."""
    async with client(server) as c:
        reply = await c.request({"type": "presence", "channel": unique("hist:nopresence")})
    assert reply["type"] == "error" and reply["code"] == 403, reply


async def test_per_user_join_leave_announces_first_join_and_last_leave(server: Server) -> None:
    """Per-user join/leave: a ``join`` for a user's first connection, a ``leave`` for its last."""
    channel = unique("room:peruser")
    user = unique("u-multi")
    async with client(server, unique("u-watch")) as watcher:
        await watcher.subscribe(channel)
        async with (
            client(server, user) as c1,
            client(server, user) as c2,
            client(server, user) as c3,
        ):
            await c1.subscribe(channel)
            await barrier(c1)
            (joined,) = [m for m in await barrier(watcher) if m["type"] == "join"]
            assert joined["user"] == user and joined["client"] == c1.welcome["client"]
            watcher.pending.clear()
            for c in (c2, c3):
                await c.subscribe(channel)
                await barrier(c)
            assert [m for m in await barrier(watcher) if m["type"] in ("join", "leave")] == []
            assert events(c1, "join") == []  # not to another connection of the same user
            await c2.request({"type": "unsubscribe", "channel": channel})
            await c1.request({"type": "unsubscribe", "channel": channel})
            await c3.request({"type": "unsubscribe", "channel": channel})
            left = await _next(watcher, "leave")
            assert left["user"] == user
            assert left["client"] == c3.welcome["client"]
            assert [m for m in await barrier(watcher) if m["type"] in ("join", "leave")] == []
            presence = await watcher.request({"type": "presence", "channel": channel})
            assert presence["users"] == 1


# -- personal channels and notifications -------------------------------------------------------


async def test_personal_channel_is_listed_in_welcome(server: Server) -> None:
    """A user's client is subscribed to ``#<user>`` on connect, with its position."""
    user = unique("u-welcome")
    async with client(server, user) as c:
        assert c.welcome["user"] == user
        entry = personal(c.welcome, user)
    assert entry["type"] == "subscribed"
    assert entry["offset"] == 0
    assert isinstance(entry["epoch"], str) and entry["epoch"]
    assert entry["publications"] == []


async def test_anonymous_clients_have_no_personal_channel(server: Server) -> None:
    """An anonymous client has ``user: ""`` and no server-side subscriptions."""
    async with client(server) as c:
        assert c.welcome["user"] == ""
        assert c.welcome["subscribed"] == []


async def test_personal_channel_is_only_for_its_user_and_only_the_server_publishes(
    server: Server,
) -> None:
    """Others cannot subscribe to or read ``#<user>`` (403); no client may publish there (403)."""
    owner, other = unique("u-owner"), unique("u-other")
    channel = f"#{owner}"
    async with (
        client(server, owner) as mine,
        client(server, other) as theirs,
        client(server) as anon,
    ):
        for c in (theirs, anon):
            reply = await c.request({"type": "subscribe", "channel": channel})
            assert reply["type"] == "error" and reply["code"] == 403, reply
            reply = await c.request({"type": "history", "channel": channel})
            assert reply["type"] == "error" and reply["code"] == 403, reply
        for c in (mine, theirs, anon):
            reply = await c.request({"type": "publish", "channel": channel, "data": {"x": 1}})
            assert reply["type"] == "error" and reply["code"] == 403, reply
        again = await mine.request({"type": "subscribe", "channel": channel})
        assert again["type"] == "error" and again["code"] == 409, again
        history = await mine.request({"type": "history", "channel": channel})
        assert history["type"] == "history" and history["publications"] == []


async def test_notification_reaches_every_connection_of_the_user(server: Server) -> None:
    """``hub.notify`` is a ``message`` on ``#<user>`` with the notification, to each client."""
    user = unique("u-notified")
    async with client(server, user) as c1, client(server, user) as c2:
        epoch = personal(c1.welcome, user)["epoch"]
        sent = await notify(server, user, "Hello", "You have mail")
        assert sent["offset"] == 1 and sent["epoch"] == epoch
        for c in (c1, c2):
            (message,) = await c.messages(1)
            assert message["channel"] == f"#{user}"
            assert message["offset"] == 1 and message["epoch"] == epoch
            assert "sender" not in message
            data = message["data"]
            assert set(data) == {"id", "type", "title", "message", "data", "ts", "read"}
            assert data["id"] == sent["id"]
            assert (data["type"], data["title"], data["message"]) == (
                "test",
                "Hello",
                "You have mail",
            )
            assert data["read"] is False
            assert isinstance(data["ts"], int)


async def test_notification_sent_while_offline_is_recovered(server: Server) -> None:
    """Notifications sent while offline are recovered from the last ``welcome`` position."""
    user = unique("u-offline")
    async with client(server, user) as c:
        before = personal(c.welcome, user)
        await notify(server, user, "first")
        (first,) = await c.messages(1)
    position = {"offset": first["offset"], "epoch": first["epoch"]}
    assert position == {"offset": 1, "epoch": before["epoch"]}
    titles = ["missed one", "missed two"]
    for title in titles:
        await notify(server, user, title)
    async with client(server, user) as c:
        now = personal(c.welcome, user)
        assert now["offset"] == 3 and now["epoch"] == before["epoch"]
        reply = await c.subscribe(f"#{user}", recover=position)
        assert reply["recovered"] is True
        assert offsets(reply["publications"]) == [2, 3]
        assert [p["data"]["title"] for p in reply["publications"]] == titles
        assert all(p["data"]["read"] is False for p in reply["publications"])
        # Live delivery goes on while the personal channel is recovered.
        await notify(server, user, "live")
        (live,) = await c.messages(1)
        assert live["offset"] == 4 and live["data"]["title"] == "live"
        stale = await c.subscribe(f"#{user}", recover={"offset": 0, "epoch": "gone"})
        assert stale["recovered"] is False and stale["publications"] == []


# -- idempotent publish ------------------------------------------------------------------------


async def test_idempotent_publish_is_delivered_once(server: Server) -> None:
    """The same ``idempotency_key`` twice: one delivery, both acks with the same offset."""
    channel = unique("hist:idem")
    async with client(server) as publisher, client(server) as subscriber:
        await subscriber.subscribe(channel)
        command = {"type": "publish", "channel": channel, "data": {"n": 1}, "echo": False}
        first = await publisher.request({**command, "idempotency_key": "k-1"})
        second = await publisher.request({**command, "idempotency_key": "k-1"})
        assert first["type"] == second["type"] == "ack", (first, second)
        assert first["offset"] == second["offset"] == 1
        other = await publisher.request({**command, "idempotency_key": "k-2", "data": {"n": 2}})
        assert other["offset"] == 2
        got = await subscriber.messages(2)
        assert offsets(got) == [1, 2]
        assert [m["data"]["n"] for m in got] == [1, 2]
        history = await subscriber.request({"type": "history", "channel": channel})
        assert offsets(history["publications"]) == [1, 2]


# -- a server restart --------------------------------------------------------------------------


async def test_restart_starts_a_new_epoch_and_recovery_fails(tmp_path: Path) -> None:
    """A restarted server process (memory broker) has new epochs: ``recovered: false``."""
    channel = "hist:restart"
    user = "u-restart"
    with run_server(ARGV, tmp_path) as first:
        async with client(first, user) as c:
            subscribed = await c.subscribe(channel)
            await fill(c, channel, 2)
            old = {"offset": 2, "epoch": subscribed["epoch"]}
            old_personal = personal(c.welcome, user)
    with run_server(ARGV, tmp_path) as second:
        async with client(second, user) as c:
            reply = await c.subscribe(channel, recover=old)
            assert reply["recovered"] is False
            assert reply["publications"] == []
            assert reply["epoch"] != old["epoch"]
            assert reply["offset"] == 0
            new_personal = personal(c.welcome, user)
            assert new_personal["epoch"] != old_personal["epoch"]
            stale = {"offset": old_personal["offset"], "epoch": old_personal["epoch"]}
            again = await c.subscribe(f"#{user}", recover=stale)
            assert again["recovered"] is False and again["publications"] == []
