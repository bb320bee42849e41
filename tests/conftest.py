"""Shared fixtures: both event loops for async tests, and real servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import Server, run_server

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve`` (the demo hub: uvicorn with hubbub's protocol class), one per module.

    For the modules that share one demo hub among their tests; a module that serves
    another app, or wants a fresh server per test, defines its own ``server``.
    """
    with run_server(
        ["-m", "hubbub", "serve", "--port", "{port}"], tmp_path_factory.mktemp("demo")
    ) as s:
        yield s


@pytest.fixture
def demo_server(tmp_path: Path) -> Iterator[Server]:
    """``hubbub serve`` (the demo hub) in a real uvicorn process on a free port."""
    with run_server(["-m", "hubbub", "serve", "--port", "{port}"], tmp_path) as server:
        yield server
