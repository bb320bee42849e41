"""The admin page at ``<prefix>/admin``: off without a key, its key, its stats and its rate samples.

The HTTP behaviour is tested through real uvicorn processes (``hubbub serve``
with ``HUBBUB_ADMIN_KEY``, and ``tests/apps/admin_app.py`` sampling every 0.2 s);
the sampler's arithmetic is tested with a hand-driven clock.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from hubbub import Hub, HubApp
from hubbub._admin import MAX_TOP_CHANNELS, AdminPage, RateSampler
from hubbub.brokers.redis import RedisBroker
from hubbub.cli import _build_app, _parser
from hubbub.testing import FaultyBroker

from .apps.admin_app import ADMIN_KEY, API_KEY
from .servers import Server, run_server

KEY = "s3cret-admin-key"
ODD = "odd-name_1.2@x=y/z"  # every punctuation a channel name may hold
AUTH = {"Authorization": f"apikey {KEY}"}


@pytest.fixture
def admin_server(tmp_path: Path) -> Iterator[Server]:
    """``hubbub serve`` (the demo hub) with the admin key from ``HUBBUB_ADMIN_KEY``."""
    argv = ["-m", "hubbub", "serve", "--port", "{port}"]
    with run_server(argv, tmp_path, env={"HUBBUB_ADMIN_KEY": KEY}) as server:
        yield server


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[Server]:
    """``tests/apps/admin_app.py``: samples every 0.2 s, keeps 11."""
    argv = ["-m", "hubbub", "serve", "admin_app:app", "--port", "{port}"]
    with run_server(argv, tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One ``admin_app`` server for the tests that only read (keys, bad requests)."""
    argv = ["-m", "hubbub", "serve", "admin_app:app", "--port", "{port}"]
    with run_server(argv, tmp_path_factory.mktemp("admin")) as server:
        yield server


def stats(server: Server, key: str = KEY, **params: Any) -> dict[str, Any]:
    response = httpx.get(
        server.url + "/admin/stats",
        headers={"Authorization": f"apikey {key}"},
        params=params,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    result: dict[str, Any] = response.json()
    return result


def wait_for(
    server: Server, key: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """Poll the stats until ``check`` holds (at most ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        current = stats(server, key)
        if check(current):
            return current
        assert time.monotonic() < deadline, f"never reached; last stats: {current}"
        time.sleep(0.1)


@contextlib.contextmanager
def clients(server: Server, n: int) -> Iterator[list[ClientConnection]]:
    """``n`` WebSocket clients that got their ``welcome``."""
    with contextlib.ExitStack() as stack:
        opened = []
        for i in range(n):
            url = f"{server.ws_url}/ws?name=client{i}"
            ws = stack.enter_context(ws_connect(url, open_timeout=10, proxy=None))
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            opened.append(ws)
        yield opened


def command(ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    """Send a command and return its reply (skipping deliveries and pings)."""
    ws.send(json.dumps(message))
    for _ in range(1000):
        reply: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if reply.get("id") == message["id"]:
            assert reply["type"] != "error", reply
            return reply
    raise AssertionError("no reply")


# -- off, on, keys ----------------------------------------------------------------------------


def test_admin_is_404_without_a_key(demo_server: Server) -> None:
    """Without an admin key the page and its stats do not exist, whatever key is sent."""
    for path in ("/admin", "/admin/", "/admin/stats"):
        response = httpx.get(demo_server.url + path, headers=AUTH, timeout=10)
        assert response.status_code == 404
        assert response.json() == {"code": 404, "reason": "not found"}


def test_page_is_one_self_contained_file_with_security_headers(admin_server: Server) -> None:
    """The page: no external asset, inline code allowed by hash only, no framing, no caching."""
    response = httpx.get(admin_server.url + "/admin", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    page = response.text
    assert re.findall(r"""\b(?:src|href)\s*=\s*["'](?!data:)""", page) == []
    policy = dict(
        [*part.split(" ", 1), ""][:2]
        for part in (p.strip() for p in response.headers["content-security-policy"].split(";"))
    )
    assert policy["default-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["form-action"] == "'none'"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (block,) = re.findall(f"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert policy[directive] == f"'sha256-{digest}'"
    assert "unsafe-inline" not in response.headers["content-security-policy"]

    slash = httpx.get(admin_server.url + "/admin/", timeout=10)
    assert slash.status_code == 200 and slash.text == page
    head = httpx.head(admin_server.url + "/admin", timeout=10)
    assert head.status_code == 200 and head.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "apikey",
        "apikey wrong-key",
        f"Bearer {KEY}",
        f"apikey {KEY}x",
        f"apikey {API_KEY}",
    ],
)
def test_stats_without_the_right_key_is_401(
    shared_server: Server, authorization: str | None
) -> None:
    """Missing, wrong, longer, other-scheme and HTTP-API keys are refused 401 with a challenge."""
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(shared_server.url + "/admin/stats", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "apikey"
    assert response.json()["code"] == 401
    assert "node" not in response.text


def test_bad_requests_get_documented_answers(shared_server: Server) -> None:
    """Wrong methods are 405 with Allow, unknown paths 404, a ``top`` out of range 400."""
    url = shared_server.url + "/admin"
    auth = {"Authorization": f"apikey {ADMIN_KEY}"}
    posted = httpx.post(url + "/stats", headers=auth, timeout=10)
    assert (posted.status_code, posted.headers["allow"]) == (405, "GET")
    page = httpx.post(url, timeout=10)
    assert (page.status_code, page.headers["allow"]) == (405, "GET, HEAD")
    assert httpx.get(url + "/nothing", headers=auth, timeout=10).status_code == 404
    # These pass str.isdigit(); int() refuses superscripts and 5000 digits, and
    # Arabic-Indic digits are not the documented ASCII integer.
    odd = ("²", "1²", "9" * 5000, "\u0661\u0662")
    for top in ("0", "-1", "abc", "1.5", "", str(MAX_TOP_CHANNELS + 1), *odd):
        response = httpx.get(url + "/stats", headers=auth, params={"top": top}, timeout=10)
        assert response.status_code == 400, top
        assert response.json()["reason"] == f"top must be an integer from 1 to {MAX_TOP_CHANNELS}"
    assert stats(shared_server, ADMIN_KEY, top=MAX_TOP_CHANNELS)["channels"]["total"] == 0
    bad_query = httpx.get(url + "/stats?top=%ff", headers=auth, timeout=10)
    assert bad_query.status_code == 400


# -- the figures ------------------------------------------------------------------------------


def test_stats_show_the_hub_and_move_with_traffic(fast_server: Server) -> None:
    """Connections, subscriptions, channels by subscribers, counters and rates follow traffic."""
    before = stats(fast_server, ADMIN_KEY)
    assert before["state"] == "running"
    assert before["broker"] == {"name": "MemoryBroker", "ready": True}
    assert before["connections"] == 0 and before["subscriptions"] == 0
    assert before["channels"] == {"total": 0, "top": []}
    assert before["rates"]["interval"] == 0.2
    assert before["rates"]["window"] == pytest.approx(2.0)
    assert before["counters"]["publications"] == 0

    with clients(fast_server, 3) as (a, b, c):
        for n, ws in enumerate((a, b, c)):
            command(ws, {"type": "subscribe", "channel": "news", "id": n + 1})
        command(a, {"type": "subscribe", "channel": ODD, "id": 10})
        command(b, {"type": "subscribe", "channel": "quiet", "id": 11})
        command(c, {"type": "subscribe", "channel": "quiet", "id": 12})
        for n in range(5):
            command(a, {"type": "publish", "channel": "news", "data": {"n": n}, "id": 20 + n})

        now = wait_for(fast_server, ADMIN_KEY, lambda s: s["counters"]["deliveries"] >= 15)
        assert now["connections"] == 3
        assert now["subscriptions"] == 6
        assert now["channels"] == {
            "total": 3,
            "top": [
                {"channel": "news", "subscribers": 3},
                {"channel": "quiet", "subscribers": 2},
                {"channel": ODD, "subscribers": 1},
            ],
        }
        assert now["counters"]["connections_total"] == 3
        assert now["counters"]["publications"] == 5
        assert now["counters"]["deliveries"] == 15
        assert now["queued_messages"] >= 0
        one = stats(fast_server, ADMIN_KEY, top=1)["channels"]
        assert one == {"total": 3, "top": [{"channel": "news", "subscribers": 3}]}

        # The interval holding the traffic shows non-zero rates (five publications in
        # one 0.2 s sample interval, or spread over a few).
        busy = wait_for(
            fast_server,
            ADMIN_KEY,
            lambda s: any(p["deliveries"] > 0 for p in s["rates"]["points"]),
        )
        points = busy["rates"]["points"]
        assert sum(p["publications"] > 0 for p in points) >= 1
        assert points[-1]["connections"] == 3

    gone = wait_for(fast_server, ADMIN_KEY, lambda s: s["connections"] == 0)
    assert gone["subscriptions"] == 0 and gone["channels"]["total"] == 0
    assert gone["counters"]["deliveries"] == 15


def test_samples_are_taken_while_nobody_looks_and_the_ring_is_bounded(fast_server: Server) -> None:
    """The first look already shows past intervals; only ``kept`` samples and the window remain."""
    time.sleep(1.5)  # nobody asks for stats meanwhile: only the lifespan's sampler runs
    first = stats(fast_server, ADMIN_KEY)["rates"]
    # One lazy sample at most, and one live point: more than that were sampled unasked.
    assert len(first["points"]) >= 4
    ages = [p["age"] for p in first["points"]]
    assert ages == sorted(ages, reverse=True)

    time.sleep(2.5)  # longer than the 2 s window
    later = stats(fast_server, ADMIN_KEY)["rates"]
    assert 5 <= len(later["points"]) <= 11  # 10 stored intervals and the live point
    assert all(p["age"] <= later["window"] for p in later["points"])


# -- configuration ----------------------------------------------------------------------------


def test_cli_admin_key_from_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--admin-key`` or ``HUBBUB_ADMIN_KEY`` turns the page on; bad keys and targets exit."""
    assert _build_app(_parser().parse_args(["serve"])).admin is None
    app = _build_app(_parser().parse_args(["serve", "--admin-key", "k1-0123456789abcdef"]))
    assert isinstance(app.admin, AdminPage) and app.admin.hub is app.hub
    monkeypatch.setenv("HUBBUB_ADMIN_KEY", "k2-0123456789abcdef")
    from_env = _build_app(_parser().parse_args(["serve", "tests.apps.small_limits:hub"]))
    assert isinstance(from_env.admin, AdminPage)
    hub_app = _build_app(_parser().parse_args(["serve", "tests.apps.admin_app:app"]))
    assert isinstance(hub_app.admin, AdminPage) and hub_app.admin.sampler.interval == 5.0
    monkeypatch.delenv("HUBBUB_ADMIN_KEY")
    with pytest.raises(SystemExit, match="--admin-key: the admin key must be"):
        _build_app(_parser().parse_args(["serve", "--admin-key", "two words"]))
    with pytest.raises(SystemExit, match="--admin-key: the admin key must be at least 16"):
        _build_app(_parser().parse_args(["serve", "--admin-key", "fifteen-chars15"]))
    with pytest.raises(SystemExit, match="--admin-key needs a target naming a Hub or a HubApp"):
        _build_app(_parser().parse_args(["serve", "tests.apps.auth_app:app", "--admin-key", KEY]))


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("", ValueError),
        ("has space-0123456789", ValueError),
        ("clé-0123456789abcdef", ValueError),
        (b"bytes-0123456789abcdef", TypeError),
        ("short-key-15chr", ValueError),
    ],
)
def test_bad_admin_keys_raise_at_construction(key: Any, error: type[Exception]) -> None:
    """An admin key no header could carry, or under 16 characters, is refused when built."""
    with pytest.raises(error):
        HubApp(Hub(), admin_key=key)


@pytest.mark.parametrize(("interval", "kept"), [(0, 10), (-1.0, 10), (True, 10), (1.0, 1)])
def test_bad_sampler_settings_raise(interval: Any, kept: Any) -> None:
    """A sampler needs a positive interval and room for two samples."""
    with pytest.raises(ValueError):
        RateSampler(Hub(), interval=interval, kept=kept)


# -- the sampler ------------------------------------------------------------------------------


def point(
    age: float, span: float, publications: float, deliveries: float, connects: float
) -> dict[str, float]:
    """A rate point of a hub without open connections."""
    return {
        "age": age,
        "span": span,
        "publications": publications,
        "deliveries": deliveries,
        "connects": connects,
        "connections": 0,
    }


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_are_differences_over_the_real_time_between_samples() -> None:
    """Irregular samples give correct rates; a trailing live point ends the series."""
    hub, clock = Hub(), Clock()
    sampler = RateSampler(hub, interval=5.0, kept=4, clock=clock)
    assert sampler.window == 15.0
    assert sampler.points() == []  # nothing sampled yet

    sampler.sample()  # t=0
    clock.now += 5.0
    hub.stats.publications += 10
    hub.stats.deliveries += 40
    hub.stats.connections_total += 5
    sampler.sample()  # t=5
    clock.now += 2.5  # a late sample: the rate divides by the real 2.5 s
    hub.stats.publications += 10
    sampler.sample()  # t=7.5
    clock.now += 0.5  # now t=8: the live point runs from t=0, the newest sample >= 5 s old
    assert sampler.points() == [
        {
            "age": 3.0,
            "span": 5.0,
            "publications": 2.0,
            "deliveries": 8.0,
            "connects": 1.0,
            "connections": 0,
        },
        {
            "age": 0.5,
            "span": 2.5,
            "publications": 4.0,
            "deliveries": 0.0,
            "connects": 0.0,
            "connections": 0,
        },
        {
            "age": 0.0,
            "span": 8.0,
            "publications": 2.5,
            "deliveries": 5.0,
            "connects": 0.625,
            "connections": 0,
        },
    ]
    clock.now += 2.0  # t=10: the live point now runs from t=5
    hub.stats.deliveries += 20
    assert sampler.points()[-1] == point(0.0, 5.0, 2.0, 4.0, 0.0)
    clock.now += 20.0  # every stored interval is older than the window: only the live point
    assert [p["age"] for p in sampler.points()] == [0.0]


def test_no_live_point_over_too_short_a_span() -> None:
    """A single sample younger than a second gives no rate; a second later it does."""
    hub, clock = Hub(), Clock()
    sampler = RateSampler(hub, interval=5.0, kept=4, clock=clock)
    sampler.sample()
    clock.now += 0.5
    hub.stats.publications += 3
    assert sampler.points() == []
    clock.now += 0.5
    assert sampler.points() == [
        {
            "age": 0.0,
            "span": 1.0,
            "publications": 3.0,
            "deliveries": 0.0,
            "connects": 0.0,
            "connections": 0,
        }
    ]


def test_the_ring_keeps_only_kept_samples_and_lazy_sampling_waits_an_interval() -> None:
    """``kept`` bounds memory; ``sample_if_due`` samples at most once per interval."""
    clock = Clock()
    sampler = RateSampler(Hub(), interval=5.0, kept=4, clock=clock)
    for _ in range(10):
        sampler.sample()
        clock.now += 5.0
    assert len(sampler) == 4
    fresh = RateSampler(Hub(), interval=5.0, kept=4, clock=clock)
    fresh.sample_if_due()
    fresh.sample_if_due()
    clock.now += 4.9
    fresh.sample_if_due()
    assert len(fresh) == 1
    clock.now += 0.1
    fresh.sample_if_due()
    assert len(fresh) == 2


def test_counters_that_went_backwards_give_zero_not_negative_rates() -> None:
    """A negative difference (counters replaced) never shows as a negative rate."""
    hub, clock = Hub(), Clock()
    sampler = RateSampler(hub, interval=1.0, kept=3, clock=clock)
    hub.stats.publications = 50
    sampler.sample()
    clock.now += 2.0
    hub.stats.publications = 10
    assert sampler.points()[-1]["publications"] == 0.0


# -- in-process: the lifespan's sampler and a mounted app --------------------------------------


def test_the_lifespan_runs_the_sampler_and_stops_it() -> None:
    """A top-level HubApp samples from startup without being asked; the task ends with it."""
    hub = Hub(anonymous=True)
    app = HubApp(hub, admin_key=KEY)
    app.admin = admin = AdminPage(hub, key=KEY, sample_interval=0.01, samples_kept=1000)
    with TestClient(app, backend="asyncio") as client:
        deadline = time.monotonic() + 10
        while len(admin.sampler) < 5:  # nobody asks for stats meanwhile
            assert time.monotonic() < deadline, "the lifespan's sampler did not run"
            time.sleep(0.01)
        assert client.get("/admin/stats", headers=AUTH).json()["state"] == "running"
    assert hub.state == "stopped"
    taken = len(admin.sampler)
    time.sleep(0.1)  # ten intervals: a task still running would have sampled again
    assert len(admin.sampler) == taken


def test_a_mounted_app_samples_lazily_on_each_look() -> None:
    """Mounted (no lifespan reaches it), the stats request itself takes the first sample."""
    hub = Hub(anonymous=True)
    admin_app = HubApp(hub, admin_key=KEY)
    parent = Starlette(lifespan=hub.lifespan, routes=[Mount("/rt", admin_app)])
    assert admin_app.admin is not None
    with TestClient(parent, backend="trio") as client:
        assert client.get("/rt/admin").status_code == 200
        assert len(admin_app.admin.sampler) == 0
        body = client.get("/rt/admin/stats", headers=AUTH).json()
        assert len(admin_app.admin.sampler) == 1
        assert body["rates"]["points"] == []  # no span yet: the page says "collecting samples"
        assert client.get("/rt/admin/stats").status_code == 401


@pytest.mark.anyio
async def test_broker_readiness_follows_the_broker() -> None:
    """A broker that goes down shows as not ready, and ready again once it is back."""
    broker = FaultyBroker()
    admin = AdminPage(Hub(broker=broker), key=KEY)
    async with admin.hub:
        assert (await admin.stats())["broker"] == {"name": "FaultyBroker", "ready": True}
        broker.fail()
        body = await admin.stats()
        assert body["broker"]["ready"] is False and body["state"] == "running"
        broker.restore()
        assert (await admin.stats())["broker"]["ready"] is True


@pytest.mark.anyio
async def test_stats_of_a_stopped_hub_with_an_unreachable_broker() -> None:
    """The page still answers when the hub is down: state stopped, broker not ready."""
    hub = Hub(broker=RedisBroker.from_url("redis://127.0.0.1:9/0"))
    body = await AdminPage(hub, key=KEY).stats()
    assert body["state"] == "stopped"
    assert body["broker"] == {"name": "RedisBroker", "ready": False}
