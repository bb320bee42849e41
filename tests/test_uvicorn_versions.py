"""``hubbub serve`` on the oldest uvicorn that pyproject.toml allows.

The rest of the suite runs on the uvicorn the environment resolves (the newest
allowed). Pre-framed fan-out (:mod:`hubbub._uvicorn_ws`) subclasses uvicorn's
websockets-sansio protocol and reads its internals, so this module also serves
hubbub on the lower bound of the ``standard`` extra: that one wheel is installed
with pip into a temporary directory (``--no-deps``: its own requirements are
the environment's, which the first test checks) and put first on the server's
``PYTHONPATH``. A raw client then sees frames as hubbub built them, and fan-out,
a frozen subscriber and the drain on SIGTERM behave as on the newest uvicorn.

It needs the package index: with ``CI=true`` a failed download is a failure,
elsewhere the module is skipped.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from hubbub._uvicorn_ws import SUPPORTED, has_flow_control

from .apps.wsclient import Client, open_client, open_clients
from .servers import ROOT, Server, run_server
from .test_e2e_limits import _check_healthy, _payload, _publish_windowed
from .test_e2e_shutdown import GRACEFUL, _check_restart_goodbye, _wait_exit
from .test_preframed import _RawClient

IN_CI = os.environ.get("CI") == "true"
PROBE = "uvicorn-probe: "
"""The line tests/apps/uvicorn_probe.py logs: the version and file of the uvicorn serving."""


@pytest.fixture
def anyio_backend() -> str:
    """The websockets client is asyncio-only."""
    return "asyncio"


def oldest_allowed() -> Version:
    """The lower bound of uvicorn in the ``standard`` extra (what ``hubbub serve`` needs)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["optional-dependencies"]["standard"]:
        requirement = Requirement(line)
        if requirement.name == "uvicorn":
            bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
            assert bounds, f"pyproject.toml's uvicorn requirement has no lower bound: {line}"
            return max(bounds)
    raise AssertionError("pyproject.toml's standard extra does not require uvicorn")


@dataclass(frozen=True)
class Installed:
    """The oldest allowed uvicorn, installed alone into ``target``."""

    version: Version
    target: Path
    seconds: float

    @property
    def env(self) -> dict[str, str]:
        """The server's environment: this uvicorn before everything else."""
        rest = os.environ.get("PYTHONPATH", "")
        return {"PYTHONPATH": os.pathsep.join(p for p in (str(self.target), rest) if p)}


@pytest.fixture(scope="module")
def oldest(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """``pip install --target DIR uvicorn==<lower bound> --no-deps`` (one wheel)."""
    version = oldest_allowed()
    target = tmp_path_factory.mktemp("uvicorn-oldest")
    argv = [sys.executable, "-m", "pip", "install", "--target", str(target)]
    argv += [f"uvicorn=={version}", "--no-deps", "--only-binary=:all:"]
    argv += ["--disable-pip-version-check", "--no-input", "--quiet"]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        failure = done.stderr.strip()[-2000:] if done.returncode else ""
    except subprocess.TimeoutExpired:
        failure = "pip did not finish within 180 s"
    if failure:
        message = f"could not install uvicorn=={version} from the package index: {failure}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return Installed(version, target, time.monotonic() - started)


def test_oldest_uvicorn_needs_nothing_the_environment_lacks(oldest: Installed) -> None:
    """Every requirement of the old wheel (with ``standard``) is met here, and it imports first."""
    [info] = oldest.target.glob("uvicorn-*.dist-info")
    metadata = Parser().parsestr((info / "METADATA").read_text())
    assert Version(metadata["Version"]) == oldest.version
    unmet = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is not None and not any(
            marker.evaluate({"extra": extra}) for extra in ("", "standard")
        ):
            continue
        try:
            have = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{line} (not installed)")
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            unmet.append(f"{line} (have {have})")
    assert not unmet, f"uvicorn {oldest.version} needs what --no-deps did not bring: {unmet}"
    # The copy in the target directory is the one a process with its PYTHONPATH imports,
    # and hubbub's protocol class accepts it (write flow control present).
    code = (
        "import uvicorn, hubbub._uvicorn_ws as w; "
        "print(uvicorn.__version__, uvicorn.__file__, w.SUPPORTED)"
    )
    env = {**os.environ, **oldest.env}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    version, path, supported = out.stdout.split()
    assert Version(version) == oldest.version
    assert Path(path).is_relative_to(oldest.target)
    assert supported == "True"


def test_flow_control_is_the_class_own_not_asyncio_default() -> None:
    """A class that only inherits asyncio's no-op ``pause_writing`` gets the standard path.

    uvicorn's class before 0.52.1 is one (0.40.0 and 0.52.0 checked): with it, the fast
    path would fail every fan-out on the missing ``disconnected`` flag.
    """

    class Before(asyncio.Protocol):  # what uvicorn's class was until 0.52.0
        async def send(self, message: object) -> None: ...

    assert callable(Before.pause_writing)  # inherited: asyncio's no-op
    assert not has_flow_control(Before)
    assert has_flow_control(WebSocketsSansIOProtocol)  # the installed (newest) uvicorn
    assert SUPPORTED


def _served_by_oldest(server: Server, oldest: Installed) -> None:
    """The server process logged the old uvicorn's version and path, and no error."""
    log = server.log()
    [line] = [x for x in log.splitlines() if x.startswith(PROBE)]
    version, path = line[len(PROBE) :].split(" ", 1)
    assert Version(version) == oldest.version, line
    assert Path(path).is_relative_to(oldest.target), line
    assert "Traceback" not in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]


@pytest.fixture(scope="module")
def server(oldest: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``hubbub serve uvicorn_probe:hub`` on the oldest allowed uvicorn."""
    argv = ["-m", "hubbub", "serve", "uvicorn_probe:hub", "--port", "{port}"]
    with run_server(argv, tmp_path_factory.mktemp("old-uvicorn"), env=oldest.env) as running:
        yield running


@pytest.mark.anyio
async def test_frames_go_out_as_hubbub_built_them(server: Server, oldest: Installed) -> None:
    """On a deflate connection a small publication arrives uncompressed: the shared frame.

    uvicorn's own class compresses every frame of such a connection (the welcome
    here, sent before the hub's writer runs); only hubbub's pre-framed path writes
    a small one plain, and a large one compressed once for everyone.
    """
    raw = await _RawClient.open(server.port)
    try:
        await raw.until(1)
        assert raw.messages[0]["type"] == "welcome"
        assert raw.protocol.extensions, "permessage-deflate was not negotiated"
        assert raw.protocol.extensions[0].remote_no_context_takeover is True
        await raw.send({"type": "subscribe", "channel": "old-wire", "id": 1})
        await raw.until(2)
        small, large = {"n": 1}, {"text": "many repeated words " * 100}
        async with open_client(server.ws_url) as publisher:
            for data in (small, large, small):
                await publisher.publish("old-wire", data)
            await raw.until(5)
        assert [m["data"] for m in raw.messages[2:]] == [small, large, small]
        # welcome, subscribed, then the publications: small plain, large compressed.
        assert len(raw.rsv1) == 5
        assert raw.rsv1[0] is True
        assert raw.rsv1[2:] == [False, True, False]
    finally:
        await raw.close()
    _served_by_oldest(server, oldest)


@pytest.mark.anyio
async def test_fan_out_reaches_every_subscriber_in_order(server: Server, oldest: Installed) -> None:
    """100 subscribers (half offering deflate) get 50 publications each, in order, same text."""
    n, channel = 50, "old-fan-out"
    plain, stack = await open_clients(server.ws_url, 50)
    try:
        deflating, more = await open_clients(server.ws_url, 50, compression="deflate")
        stack.push_async_exit(more)
        everyone = [*plain, *deflating]
        await asyncio.gather(*(c.subscribe(channel) for c in everyone))
        items = [{"seq": i, "pad": "z" * (9 * i * i)} for i in range(n)]  # up to ~22 KB
        async with open_client(server.ws_url) as publisher, asyncio.timeout(60):
            _, *received = await asyncio.gather(
                publisher.publish_pipelined(channel, items, within=60),
                *(c.messages(n, 60) for c in everyone),
            )
        for messages in received:
            assert [m["data"] for m in messages] == items
    finally:
        await stack.aclose()
    _served_by_oldest(server, oldest)


@pytest.mark.anyio
async def test_frozen_subscriber_is_closed_and_the_others_get_everything(
    server: Server, oldest: Installed
) -> None:
    """A subscriber that stops reading is ended by the slow-consumer policy; nobody stalls."""
    n = 200
    payload = _payload(24 * 1024)
    url = server.ws_url
    async with (
        open_client(url) as frozen,
        open_client(url) as first,
        open_client(url, compression="deflate") as second,
        open_client(url) as publisher,
    ):
        for client in (frozen, first, second):
            await client.subscribe("old-firehose")
        frozen.ws.transport.pause_reading()

        async def receive_all(client: Client) -> list[int]:
            return [m["data"]["seq"] for m in await client.messages(n, 60)]

        async with asyncio.timeout(60):
            got_first, got_second, acks = await asyncio.gather(
                receive_all(first),
                receive_all(second),
                _publish_windowed(publisher, "old-firehose", n, payload),
            )
        assert got_first == got_second == list(range(n))
        assert [a["id"] for a in acks] == list(range(1, n + 1))
        frozen.ws.transport.resume_reading()
        ending = await frozen.until_closed(20)
    seqs = [m["data"]["seq"] for m in ending.messages if m["type"] == "message"]
    assert len(seqs) < n  # ended, not waited for
    assert seqs == list(range(len(seqs)))  # and no gap in what it got
    if ending.code is not None:  # the close frame got through before the close timeout
        assert ending.code == 1013
        assert ending.disconnect is not None
        assert ending.disconnect["code"] == 1013
    await _check_healthy(server)
    _served_by_oldest(server, oldest)


@pytest.mark.anyio
async def test_sigterm_drains_with_1012_on_the_oldest_uvicorn(
    oldest: Installed, tmp_path: Path
) -> None:
    """SIGTERM: every client hears ``disconnect`` 1012 before a 1012 close; the process ends."""
    argv = ["-m", "hubbub", "serve", "uvicorn_probe:hub", "--port", "{port}"]
    with run_server(argv, tmp_path, env=oldest.env) as server:
        async with (
            open_client(server.ws_url) as a,
            open_client(server.ws_url, compression="deflate") as b,
        ):
            for client in (a, b):
                await client.subscribe("old-drain")
            await a.publish("old-drain", "before shutdown", echo=False)
            assert [m["data"] for m in await b.messages(1)] == ["before shutdown"]
            server.process.send_signal(signal.SIGTERM)
            for ending in await asyncio.gather(a.until_closed(15), b.until_closed(15)):
                _check_restart_goodbye(ending)
        assert await _wait_exit(server) == GRACEFUL
        _served_by_oldest(server, oldest)
