"""What the networked broker test modules share: their short fault-test timeouts, the
asyncio-only backend, one PostgreSQL per module, and a broker started with a recorder.

Each module keeps its own ``new_broker`` (the class and the URL differ), built from
:func:`redis_options` or :func:`postgres_options` so the timeouts are set in one place.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import anyio
import pytest
from anyio.abc import TaskGroup

from hubbub.brokers import Broker

from .broker_contract import Recorder
from .pg_server import PgServer, pg_server

__all__ = [
    "asyncio_backend_fixture",
    "pg_fixture",
    "postgres_options",
    "redis_options",
    "running",
]

B = TypeVar("B", bound=Broker)


@pytest.fixture(name="anyio_backend")
def asyncio_backend_fixture() -> str:
    """The networked brokers' clients (redis-py's and psycopg's async APIs) run on asyncio
    only."""
    return "asyncio"


@pytest.fixture(name="pg", scope="module")
def pg_fixture() -> Iterator[PgServer]:
    """One PostgreSQL cluster for this module."""
    with pg_server() as server:
        yield server


def redis_options(**options: Any) -> dict[str, Any]:
    """A Redis broker's options for fault tests: a fresh key prefix and short timeouts, each
    overridden by ``options``."""
    return {
        "prefix": f"t{secrets.token_hex(3)}:",
        "timeout": 1.0,
        "health_check_interval": 0.25,
        "reconnect_delay": 0.05,
        "max_reconnect_delay": 0.5,
        **options,
    }


def postgres_options(**options: Any) -> dict[str, Any]:
    """A PostgreSQL broker's options for fault tests: short timeouts and intervals, each
    overridden by ``options``."""
    return {
        "timeout": 2.0,
        "health_check_interval": 0.25,
        "poll_interval": 0.5,
        "reconnect_delay": 0.05,
        "max_reconnect_delay": 0.5,
        **options,
    }


@contextlib.asynccontextmanager
async def running(
    broker: B, task_group: TaskGroup, *, stop_within: float = 5.0
) -> AsyncIterator[tuple[B, Recorder]]:
    """``broker`` started with a recorder, stopped (within ``stop_within`` seconds) when the
    block ends."""
    recorder = Recorder()
    await broker.start(recorder.handler, recorder.on_lost, task_group)
    try:
        yield broker, recorder
    finally:
        with anyio.fail_after(stop_within):
            await broker.stop()
