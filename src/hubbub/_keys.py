"""``Authorization: apikey <key>``: one reading and one comparison for every keyed endpoint.

The HTTP API, the admin page and ``/metrics`` all take a key this way; reading
it in one place keeps them agreeing on the details (scheme case, whitespace),
and comparing against every key without stopping early keeps the time taken
from telling which key, or how much of one, matched.

Keys are at least :data:`MIN_KEY_LENGTH` characters, refused at construction
otherwise, and a :class:`KeyGuard` refuses (429) a client address that sent
:data:`MAX_KEY_FAILURES` wrong keys within :data:`KEY_FAILURE_WINDOW` seconds,
its right key included, until that window ends: guessing a key online then
takes longer than any key worth the name allows.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .limits import client_ip

_logger = logging.getLogger("hubbub.auth")

__all__ = [
    "KEY_FAILURE_WINDOW",
    "MAX_KEY_FAILURES",
    "MIN_KEY_LENGTH",
    "KeyCheck",
    "KeyGuard",
    "check_key",
    "key_matches",
    "presented_key",
    "validate_key",
]

MIN_KEY_LENGTH: Final = 16
"""The shortest API, admin or metrics key accepted (characters of printable ASCII)."""
MAX_KEY_FAILURES: Final = 10
"""Wrong keys one client address may send within :data:`KEY_FAILURE_WINDOW` seconds."""
KEY_FAILURE_WINDOW: Final = 60.0
"""Seconds over which wrong keys are counted; an address over the limit waits them out."""
MAX_TRACKED_ADDRESSES: Final = 10_000
"""Addresses a :class:`KeyGuard` remembers at once (the oldest are forgotten first)."""


def validate_key(key: object, what: str) -> bytes:
    """``key`` as bytes, or ValueError/TypeError naming ``what`` (``"an API key"``).

    Printable ASCII without spaces (it travels in a header), at least
    :data:`MIN_KEY_LENGTH` characters (a short key can be guessed online).
    """
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str")
    if not key or not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError(f"{what} must be non-empty printable ASCII without spaces")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"{what} must be at least {MIN_KEY_LENGTH} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return key.encode()


def presented_key(scope: Any) -> bytes:
    """The key of the request's ``Authorization: apikey <key>`` header; ``b""`` without one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"authorization":
            scheme, _, rest = bytes(value).strip().partition(b" ")
            return rest.strip() if scheme.lower() == b"apikey" else b""
    return b""


def key_matches(given: bytes, keys: Iterable[bytes]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of which one."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched and bool(given)


class KeyGuard:
    """Counts wrong keys per client address and refuses an address that sent too many.

    A fixed window per address: the first wrong key starts it, and once
    ``max_failures`` wrong keys arrived within it every keyed request from that
    address is refused until it ends (the right key too, or guessing would go
    on). A missing key is not counted: the admin page asks for one that way.
    At most ``max_addresses`` addresses are remembered; the oldest window is
    forgotten first, so memory stays bounded under a flood of addresses.

    The wrong key that locks an address out is logged once, at WARNING on
    ``hubbub.auth`` (event ``key_lockout``, fields ``ip`` and ``keyed``: which
    endpoint), so a guessing attempt is visible without one line per guess.

    Args:
        keyed: what the key opens (``api``, ``admin``, ``metrics``), for the log.
        max_failures: wrong keys allowed per window and address.
        window: seconds of the window.
        trusted_proxies: proxies whose ``X-Forwarded-For`` names the client
            (``Limits.trusted_proxies``); otherwise the socket peer is the client.
        max_addresses: addresses remembered at once.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self,
        keyed: str,
        *,
        max_failures: int = MAX_KEY_FAILURES,
        window: float = KEY_FAILURE_WINDOW,
        trusted_proxies: Sequence[str] = (),
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 1:
            raise ValueError("max_failures must be a positive integer")
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ValueError("window must be a positive number of seconds")
        if isinstance(max_addresses, bool) or not isinstance(max_addresses, int):
            raise ValueError("max_addresses must be a positive integer")
        if max_addresses < 1:
            raise ValueError("max_addresses must be a positive integer")
        self.keyed = keyed
        self.max_failures = max_failures
        self.window = float(window)
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_addresses = max_addresses
        self.clock = clock
        # address -> (start of its window, wrong keys in it), oldest window first
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def address(self, scope: Any) -> str:
        """The client address of a request, as the guard counts it."""
        peer = scope.get("client")
        headers = scope.get("headers") or ()
        return client_ip(peer[0] if peer else None, headers, self.trusted_proxies)

    def retry_after(self, address: str) -> int | None:
        """Seconds ``address`` must wait (for ``Retry-After``), or None when it may try."""
        entry = self._failures.get(address)
        if entry is None:
            return None
        started, failures = entry
        left = started + self.window - self.clock()
        if left <= 0:
            del self._failures[address]
            return None
        return max(1, math.ceil(left)) if failures >= self.max_failures else None

    def failed(self, address: str) -> None:
        """Count one wrong key from ``address``."""
        now = self.clock()
        entry = self._failures.get(address)
        if entry is None or now - entry[0] >= self.window:
            self._failures.pop(address, None)
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            entry = (now, 0)
        failures = entry[1] + 1
        self._failures[address] = (entry[0], failures)
        if failures == self.max_failures:
            _logger.warning(
                "%d wrong %s keys from %s: refused (429) until the window ends",
                failures,
                self.keyed,
                address,
                extra={"event": "key_lockout", "ip": address, "keyed": self.keyed},
            )

    def __len__(self) -> int:
        return len(self._failures)


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What :func:`check_key` found: ``ok``, or why not (and how long to wait when locked)."""

    outcome: Literal["ok", "missing", "wrong", "locked"]
    retry_after: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def check_key(scope: Any, keys: Iterable[bytes], guard: KeyGuard) -> KeyCheck:
    """The request's key against ``keys``, refused while its address is locked out."""
    address = guard.address(scope)
    wait = guard.retry_after(address)
    if wait is not None:
        return KeyCheck("locked", wait)
    given = presented_key(scope)
    if not given:
        return KeyCheck("missing")
    if not key_matches(given, keys):
        guard.failed(address)
        return KeyCheck("wrong")
    return KeyCheck("ok")
