"""The live admin page at ``<prefix>/admin`` and the JSON it refreshes from.

Off unless an admin key is configured (``HubApp(hub, admin_key=...)``): then
``GET <prefix>/admin`` serves one static HTML page (inline CSS and JS, allowed
by hash in a strict ``Content-Security-Policy``) that asks for the key, keeps
it in ``sessionStorage`` and polls ``GET <prefix>/admin/stats`` every two
seconds with ``Authorization: apikey <key>`` (compared in constant time).

Message rates come from :class:`RateSampler`, a ring buffer of counter
samples. See its docstring for why sampling is a background task and not only
lazy.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import heapq
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import pairwise
from typing import Any, Final
from urllib.parse import parse_qsl

import anyio
import msgspec

from ._errors import (
    AuthenticationFailed,
    HubbubError,
    InvalidMessage,
    MethodNotAllowed,
    NotFound,
    RateLimited,
)
from ._http import APIKEY_CHALLENGE, JSON_TYPE, Receive, Scope, SendCallable, respond, send_error
from ._keys import KeyGuard, check_key, validate_key
from .hub import Hub

__all__ = ["MAX_TOP_CHANNELS", "SAMPLES_KEPT", "SAMPLE_INTERVAL", "AdminPage", "RateSampler"]


SAMPLE_INTERVAL: Final = 5.0
"""Seconds between two samples of the hub's counters."""
SAMPLES_KEPT: Final = 121
"""Samples kept: 120 intervals of 5 s, the last ten minutes."""
TOP_CHANNELS: Final = 20
"""Channels listed by default (the most subscribed)."""
MAX_TOP_CHANNELS: Final = 500
"""The most channels one stats answer lists (``?top=`` above it is 400)."""

_TOP: Final = re.compile(r"[0-9]{1,4}")
# Every JSON answer of the admin page, figures and refusals alike, is never cached.
_JSON_HEADERS: Final = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))
_PAGE_HEADERS: Final = (
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float  # the sampler's clock (monotonic)
    publications: int
    deliveries: int
    connections_total: int
    connections: int


class RateSampler:
    """The last few minutes of a hub's counters, as a ring buffer of samples.

    Rates are differences between samples divided by the time between them,
    so samples taken at irregular moments still give correct rates. A sample
    is four integer reads, never a walk over connections or channels.

    :meth:`run` takes one every ``interval`` seconds for as long as the app's
    lifespan runs, so a page opened now still shows the minutes before it was
    opened; at one sample per five seconds that costs nothing measurable,
    and the sampler only exists when the admin page is on. A ``HubApp``
    mounted inside another app never sees lifespan events: there
    :meth:`sample_if_due`, called on each stats request, is the only sampler,
    so the chart starts when someone first looks. Sampling only lazily would
    cost even less, but could never show what happened before the first look.

    Args:
        hub: the hub whose counters are sampled.
        interval: seconds between samples.
        kept: samples kept (the oldest is dropped first); ``kept - 1`` intervals
            make the chart's window.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        interval: float = SAMPLE_INTERVAL,
        kept: int = SAMPLES_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError("interval must be a positive number of seconds")
        if isinstance(kept, bool) or not isinstance(kept, int) or kept < 2:
            raise ValueError("kept must be an integer of at least 2")
        self.hub = hub
        self.interval = float(interval)
        self.kept = kept
        self.clock = clock
        self._samples: deque[_Sample] = deque(maxlen=kept)

    @property
    def window(self) -> float:
        """The seconds of history the chart spans."""
        return self.interval * (self.kept - 1)

    def __len__(self) -> int:
        return len(self._samples)

    def _take(self) -> _Sample:
        stats = self.hub.stats
        return _Sample(
            at=self.clock(),
            publications=stats.publications,
            deliveries=stats.deliveries,
            connections_total=stats.connections_total,
            connections=self.hub.connection_count,
        )

    def sample(self) -> None:
        """Record the counters now."""
        self._samples.append(self._take())

    def sample_if_due(self) -> None:
        """Record the counters unless the newest sample is younger than ``interval``."""
        if not self._samples or self.clock() - self._samples[-1].at >= self.interval:
            self.sample()

    async def run(self) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            self.sample()
            await anyio.sleep(self.interval)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run :meth:`run` in a task of its own for the duration of the block."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    def points(self) -> list[dict[str, float]]:
        """Rates between consecutive samples, then one live point ending now.

        Each point is the interval of ``span`` seconds that ends ``age`` seconds
        ago: publications and deliveries per second, connections opened per
        second, and the open connections at its end. Points older than :attr:`window` are left out.

        The live point (the counters now, not stored) is the rate since the
        newest sample at least ``interval`` old, a trailing average over one to
        two intervals: the chart moves between samples, and a burst stays
        visible for at least an interval instead of vanishing at the next
        sample. It is left out while the only samples are younger than
        ``min(interval, 1 s)``, where a rate would be noise.
        """
        now = self._take()
        stored = list(self._samples)
        result = [
            _point(before, after, now.at - after.at)
            for before, after in pairwise(stored)
            if after.at > before.at and now.at - after.at <= self.window
        ]
        if stored:
            base = next((s for s in reversed(stored) if now.at - s.at >= self.interval), stored[0])
            if now.at - base.at >= min(self.interval, 1.0):
                result.append(_point(base, now, 0.0))
        return result


def _point(before: _Sample, after: _Sample, age: float) -> dict[str, float]:
    elapsed = after.at - before.at
    return {
        "age": round(age, 3),
        "span": round(elapsed, 3),
        "publications": _rate(before.publications, after.publications, elapsed),
        "deliveries": _rate(before.deliveries, after.deliveries, elapsed),
        "connects": _rate(before.connections_total, after.connections_total, elapsed),
        "connections": after.connections,
    }


def _rate(before: int, after: int, elapsed: float) -> float:
    return round(max(0, after - before) / elapsed, 3)


class AdminPage:
    """Serves the admin page and its stats under ``<prefix>/admin`` (see the module docstring).

    Args:
        hub: the hub shown.
        key: the admin key (printable ASCII without spaces, at least 16
            characters); the page itself is public, every figure needs
            ``Authorization: apikey <key>``; 10 wrong keys within a minute from
            one address get 429 until that minute ends.
        sample_interval: seconds between samples of the counters.
        samples_kept: samples kept for the rate chart.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        key: str,
        sample_interval: float = SAMPLE_INTERVAL,
        samples_kept: int = SAMPLES_KEPT,
    ) -> None:
        if not isinstance(hub, Hub):
            raise TypeError("AdminPage needs a hubbub.Hub")
        self._key = validate_key(key, "the admin key")
        self.hub = hub
        self.sampler = RateSampler(hub, interval=sample_interval, kept=samples_kept)
        self.guard = KeyGuard("admin", trusted_proxies=hub.limits.trusted_proxies)
        """Counts wrong keys per client address (429 after too many)."""

    def set_key(self, key: str) -> None:
        """Replace the admin key (``hubbub serve``'s SIGHUP reload); checked first."""
        self._key = validate_key(key, "the admin key")

    async def handle(
        self, subpath: str, scope: Scope, receive: Receive, send: SendCallable
    ) -> None:
        """Answer one HTTP request for ``<prefix>/admin<subpath>``."""
        method = scope.get("method", "GET")
        retry_after: int | None = None
        try:
            if subpath == "":
                if method not in ("GET", "HEAD"):
                    raise MethodNotAllowed("use GET", allow="GET, HEAD")
                await respond(send, 200, _page(), b"text/html; charset=utf-8", _page_headers())
                return
            if subpath != "/stats":
                raise NotFound("not found")
            if method != "GET":
                raise MethodNotAllowed("use GET", allow="GET")
            check = check_key(scope, (self._key,), self.guard)
            retry_after = check.retry_after
            _refuse_key(check.outcome)
            body = msgspec.json.encode(await self.stats(_top(scope)))
        except HubbubError as exc:
            await send_error(
                send,
                exc,
                retry_after=retry_after,
                challenge=APIKEY_CHALLENGE,
                headers=_JSON_HEADERS,
            )
            return
        await respond(send, 200, body, JSON_TYPE, _JSON_HEADERS)

    async def stats(self, top: int = TOP_CHANNELS) -> dict[str, Any]:
        """What the page shows, as one JSON-ready dict (``GET <prefix>/admin/stats``)."""
        hub = self.hub
        self.sampler.sample_if_due()
        channels = hub.channels()
        listed = heapq.nsmallest(top, channels.items(), key=lambda item: (-item[1], item[0]))
        return {
            "node": hub.node,
            "state": hub.state,
            "broker": {"name": type(hub.broker).__name__, "ready": await hub.broker_ready()},
            "connections": hub.connection_count,
            "subscriptions": sum(channels.values()),
            "queued_messages": hub.queued_messages(),
            "channels": {
                "total": len(channels),
                "top": [{"channel": name, "subscribers": n} for name, n in listed],
            },
            "counters": _counters(hub),
            "rates": {
                "interval": self.sampler.interval,
                "window": self.sampler.window,
                "points": self.sampler.points(),
            },
        }


def _refuse_key(outcome: str) -> None:
    """Raise the refusal for a key check that did not pass (429 while locked out, else 401)."""
    if outcome == "locked":
        raise RateLimited("too many wrong admin keys from this address; retry later")
    if outcome == "missing":
        raise AuthenticationFailed("send Authorization: apikey <admin key>")
    if outcome == "wrong":
        raise AuthenticationFailed("wrong admin key")


def _counters(hub: Hub) -> dict[str, int]:
    """The hub's plain counters (the per-type tallies are on ``/metrics``)."""
    counters: dict[str, int] = {}
    for field in dataclasses.fields(hub.stats):
        value = getattr(hub.stats, field.name)
        if isinstance(value, int) and not isinstance(value, bool):
            counters[field.name] = value
    return counters


def _top(scope: Scope) -> int:
    raw: bytes = scope.get("query_string", b"")
    try:
        query = dict(parse_qsl(raw.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        raise InvalidMessage("the query string is not UTF-8") from None
    value = query.get("top")
    if value is None:
        return TOP_CHANNELS
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses.
    if not _TOP.fullmatch(value) or not 1 <= int(value) <= MAX_TOP_CHANNELS:
        raise InvalidMessage(f"top must be an integer from 1 to {MAX_TOP_CHANNELS}")
    return int(value)


@cache
def _page() -> bytes:
    return (resources.files("hubbub") / "static" / "admin.html").read_bytes()


@cache
def _page_headers() -> tuple[tuple[bytes, bytes], ...]:
    """The page's security headers; its inline script and style are allowed by hash only."""
    page = _page()

    def hashes(tag: bytes) -> str:
        blocks = re.findall(b"<" + tag + b">(.*?)</" + tag + b">", page, re.DOTALL)
        return " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(block).digest()).decode()}'"
            for block in blocks
        )

    policy = (
        f"default-src 'self'; script-src {hashes(b'script')}; style-src {hashes(b'style')}; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return ((b"content-security-policy", policy.encode()), *_PAGE_HEADERS)
