"""A real Redis Cluster for tests: 3 primaries and 3 replicas on free loopback ports.

Six ``redis-server --cluster-enabled yes`` processes (no persistence), joined by
``redis-cli --cluster create … --cluster-replicas 1``; ready once ``CLUSTER
INFO`` says ``cluster_state:ok`` on every node (bounded). Every process is
stopped by its PID when the block ends, even when the test failed. Without
``redis-server`` or ``redis-cli`` the tests that need them are skipped, except
when ``CI=true``: then a missing binary is a failure.

The nodes run with ``cluster-require-full-coverage no`` (a failed shard stops
only its own slots) and a short ``cluster-node-timeout`` so that a replica takes
over from a killed primary within seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from .redis_server import IN_CI, RedisServer, redis_server_binary
from .servers import free_port

NODE_TIMEOUT_MS: Final = 1000
"""``cluster-node-timeout``: a primary silent this long is failed over by its replica."""


def redis_cli_binary() -> str:
    """The path of ``redis-cli``; skips the test (fails it in CI) when there is none."""
    found = shutil.which("redis-cli")
    if found is None:
        message = "redis-cli is not installed (apt-get install redis-tools)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class RedisCluster:
    """Six cluster nodes this test session started (the first three created as primaries)."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node (any of them would do)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def slot_owner(self, slot: int) -> RedisServer:
        """The node serving ``slot`` now (asked of the first node that answers)."""
        for n in self.nodes:
            try:
                ranges = n.command("CLUSTER", "SLOTS", timeout=1.0)
            except (OSError, RuntimeError):
                continue
            for start, end, primary, *_ in ranges:
                if start <= slot <= end:
                    return self.node(int(primary[1]))
        raise RuntimeError(f"no node serves slot {slot}")

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now, by ``ROLE``."""
        found = []
        for n in self.nodes:
            if n.process is not None and n.process.poll() is None:
                with contextlib.suppress(OSError, RuntimeError):
                    if n.command("ROLE", timeout=1.0)[0] == b"master":
                        found.append(n)
        return found

    def state_ok(self, n: RedisServer) -> bool:
        """Whether ``n`` answers ``CLUSTER INFO`` with ``cluster_state:ok``."""
        try:
            info = n.command("CLUSTER", "INFO", timeout=1.0)
        except (OSError, RuntimeError):
            return False
        return isinstance(info, bytes) and b"cluster_state:ok" in info

    def wait_ok(self, timeout: float = 30.0, nodes: list[RedisServer] | None = None) -> None:
        """Wait (bounded) until every running node says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [
                n
                for n in (nodes or self.nodes)
                if n.process is not None and n.process.poll() is None
            ]
            if all(self.state_ok(n) for n in running):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster is not ok within {timeout} s")

    def stop(self) -> None:
        """Stop every node by its PID."""
        for n in self.nodes:
            n.stop()


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisCluster]:
    """A started cluster of 3 primaries and 3 replicas, every node stopped when the block ends."""
    binary = redis_server_binary()
    cli = redis_cli_binary()
    cluster = RedisCluster([])
    directory.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(6):
            port, bus = free_port(), free_port()
            server = RedisServer(
                binary,
                directory,
                port=port,
                extra=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(directory / f"nodes-{port}.conf"),
                    "--cluster-port",
                    str(bus),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--cluster-require-full-coverage",
                    "no",
                    "--cluster-replica-validity-factor",
                    "0",
                ),
            )
            cluster.nodes.append(server)
            server.start()
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster.wait_ok()
        # Every replica attached, so a primary killed later has someone to take over.
        deadline = time.monotonic() + 30
        while len(cluster.primaries()) != 3 or not all(
            n.command("ROLE")[0] == b"master" or n.command("ROLE")[3] == b"connected"
            for n in cluster.nodes
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the replicas did not attach within 30 s")
            time.sleep(0.1)
        yield cluster
    finally:
        cluster.stop()
