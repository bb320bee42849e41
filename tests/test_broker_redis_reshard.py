"""Resharding a busy channel's slot on a real Redis Cluster (3 primaries, 3 replicas).

The slot moves while a numbered publisher runs, either by ``redis-cli --cluster
reshard`` (every key of the slot moved by one ``MIGRATE``) or step by step by the
test (``CLUSTER SETSLOT … IMPORTING/MIGRATING``, one ``MIGRATE`` per key with pauses,
then ``SETSLOT … NODE``), which holds the slot half-migrated: some of the channel's
keys on each side (the server answers ``-TRYAGAIN``), then all on the new owner
while the old one still serves its pub/sub (commands follow ``-ASK``). Subscribers
on two hub nodes must end whole or be told (1013, then ``recovered: false``), never
with a silent gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskGroup
from redis.crc import key_slot

from hubbub import BrokerUnavailable
from hubbub.brokers._base import Idempotency, Publication
from hubbub.brokers._redis_format import key

from .broker_contract import (
    KEEP,
    offsets,
    publication,
    task_group_fixture,  # noqa: F401 (the task_group fixture)
)
from .e2e_cluster import run_fault, unique
from .redis_cluster import RedisCluster, redis_cli_binary, redis_cluster
from .redis_server import RedisServer
from .servers import run_server
from .test_broker_redis_cluster import started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster for this module; each test moves slots of its own channels."""
    with redis_cluster(tmp_path_factory.mktemp("reshard")) as running:
        yield running


@pytest.fixture
def anyio_backend() -> str:
    """The Redis brokers run on asyncio only."""
    return "asyncio"


def node_id(node: RedisServer) -> str:
    reply = node.command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def lowest_slot(cluster: RedisCluster, owner: RedisServer) -> int:
    """The lowest slot ``owner`` serves (the one ``redis-cli --cluster reshard`` moves first)."""
    ranges = owner.command("CLUSTER", "SLOTS")
    return min(int(start) for start, _, primary, *_ in ranges if int(primary[1]) == owner.port)


def channel_in_slot(prefix: str, slot: int, stem: str) -> str:
    """A new channel name whose keys hash to ``slot``."""
    for i in range(1_000_000):
        name = f"{stem}{i}"
        if key_slot(key(prefix, name, "pub").encode()) == slot:
            return name
    raise AssertionError(f"no channel name found for slot {slot}")


def other_primary(cluster: RedisCluster, source: RedisServer) -> RedisServer:
    return next(n for n in cluster.primaries() if n is not source)


def migrate_step_by_step(
    cluster: RedisCluster, slot: int, source: RedisServer, target: RedisServer, pause: float
) -> dict[str, int]:
    """Move ``slot`` by hand, holding each stage ``pause`` s: IMPORTING/MIGRATING, one
    ``MIGRATE`` per key (the channel's keys split between the two nodes meanwhile),
    then ``SETSLOT … NODE`` on every primary. Returns how many keys moved."""
    source_id, target_id = node_id(source), node_id(target)
    assert target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == "OK"
    assert source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == "OK"
    time.sleep(pause)
    moved = 0
    for _ in range(100):  # bounded: a few keys per channel
        keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        if not keys:
            break
        for k in keys:
            reply = source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", k)
            assert reply in ("OK", "NOKEY"), reply
            moved += reply == "OK"
            time.sleep(pause)
    else:
        raise AssertionError("the slot never emptied")
    for n in [target, source, *(p for p in cluster.primaries() if p not in (source, target))]:
        assert n.command("CLUSTER", "SETSLOT", slot, "NODE", target_id) == "OK"
    return {"keys": moved}


def reshard_with_redis_cli(source: RedisServer, target: RedisServer) -> str:
    """``redis-cli --cluster reshard``: one slot (the source's lowest) from source to target."""
    done = subprocess.run(
        [
            redis_cli_binary(),
            "--cluster",
            "reshard",
            f"127.0.0.1:{source.port}",
            "--cluster-from",
            node_id(source),
            "--cluster-to",
            node_id(target),
            "--cluster-slots",
            "1",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


async def wait_owner(cluster: RedisCluster, slot: int, owner: RedisServer) -> None:
    """Until every primary agrees that ``owner`` serves ``slot`` (bounded)."""
    with anyio.fail_after(20):
        while True:
            owners = set()
            for n in cluster.primaries():
                for start, end, primary, *_ in await asyncio.to_thread(
                    n.command, "CLUSTER", "SLOTS"
                ):
                    if start <= slot <= end:
                        owners.add(int(primary[1]))
            if owners == {owner.port}:
                return
            await anyio.sleep(0.1)


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["redis-cli", "step-by-step"])
async def test_resharding_a_busy_slot(tmp_path: Path, cluster: RedisCluster, how: str) -> None:
    """A history channel's slot moves to another primary while a numbered publisher runs
    and four subscribers listen through two hub nodes: each ends with every offset once,
    in order, or was told (1013, then ``recovered: false``); no publish is refused other
    than with 503."""
    prefix = "hubbub:"  # the test app's
    source = cluster.primaries()[0]
    target = other_primary(cluster, source)
    slot = lowest_slot(cluster, source)
    channel = channel_in_slot(prefix, slot, unique("feed:rs") + "-")
    argv = ["-m", "hubbub", "serve", "redis_cluster_app:app", "--port", "{port}"]
    env = {"HUBBUB_TEST_REDIS_CLUSTER_URL": cluster.url}

    async def fault() -> None:
        start = time.monotonic()
        if how == "redis-cli":
            out = await asyncio.to_thread(reshard_with_redis_cli, source, target)
            assert f"Moving slot {slot} from" in out, out
        else:
            moved = await asyncio.to_thread(
                migrate_step_by_step, cluster, slot, source, target, 0.6
            )
            assert moved["keys"] >= 2, moved  # the channel's meta and stream at least
        await wait_owner(cluster, slot, target)
        print(
            f"{how}: slot {slot} moved {source.port} -> {target.port} in "
            f"{time.monotonic() - start:.2f} s"
        )

    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(run_server(argv, tmp_path, env=env)) for _ in range(2)]
        subscribers, _ = await run_fault(nodes, fault, may_lose=True, channel=channel)
    told = sum(bool(s.unrecovered) for s in subscribers)
    print(f"{how}: {told} of {len(subscribers)} subscribers resumed without recovery")


@pytest.mark.anyio
async def test_an_idempotent_publish_across_a_half_migrated_slot(
    cluster: RedisCluster, task_group: TaskGroup
) -> None:
    """While a channel's keys are split between two primaries (``-TRYAGAIN``), a publish
    waits for the migration within ``timeout`` or fails with 503 (never another error);
    a retry with the same idempotency key, during or after the move, publishes nothing
    twice."""
    prefix = f"t{secrets.token_hex(3)}:"
    source = cluster.primaries()[0]
    target = other_primary(cluster, source)
    slot = lowest_slot(cluster, source)
    channel = channel_in_slot(prefix, slot, "idem")
    once = Idempotency("k1", 60.0)
    async with started(cluster.url, task_group, prefix=prefix, timeout=1.0) as (broker, rec):
        await broker.subscribe(channel)
        first = await broker.publish(publication(channel, b'"a"'), KEEP, once)
        source_id, target_id = node_id(source), node_id(target)
        assert target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == "OK"
        assert source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == "OK"
        meta = key(prefix, channel, "meta")
        assert source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", meta)
        # Split: the meta hash on the target, the stream and the key on the source.
        start = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await broker.publish(publication(channel, b'"b"'), KEEP, Idempotency("k2", 60.0))
        assert time.monotonic() - start < 1.6
        # A retry of the first publish while split waits for the migration to end (here
        # 0.3 s later, within the 1 s timeout), and publishes nothing twice.
        retried: list[Publication] = []

        async def retry() -> None:
            retried.append(await broker.publish(publication(channel, b'"a"'), KEEP, once))

        async with anyio.create_task_group() as tg:
            tg.start_soon(retry)
            await anyio.sleep(0.3)
            await asyncio.to_thread(migrate_step_by_step, cluster, slot, source, target, 0.0)
        assert [(p.epoch, p.offset) for p in retried] == [(first.epoch, first.offset)]
        await wait_owner(cluster, slot, target)
        # The server unsubscribed the channel on the old owner; once the broker has
        # subscribed it on the new one it reports it lost (what was published meanwhile
        # is the hub's to repair from history). From then on it is delivered live.
        with anyio.fail_after(10):
            while not any(channel in (r or ()) for r in rec.lost):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        again = await broker.publish(publication(channel, b'"a"'), KEEP, once)
        assert (again.epoch, again.offset) == (first.epoch, first.offset)
        after = await broker.publish(publication(channel, b'"c"'), KEEP)
        page = await broker.history(channel)
        assert [p.data for p in page.publications] == [b'"a"', b'"c"']
        print(f"after the move: {first.epoch}/{first.offset} -> {after.epoch}/{after.offset}")
        with anyio.fail_after(10):
            while after.data not in [p.data for p in rec.on(channel)]:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert offsets(rec.on(channel))[-1] == after.offset
