"""Limits: liveness, sizes, queue bounds, rates and connection caps.

Every limit has a safe default from the protocol (``docs/protocol.md`` §6) and
is checked when :class:`Limits` is built. Every rate is a :class:`TokenBucket`
with an injected clock: per connection, per command type, per IP for
handshakes. :class:`Admission` decides, without I/O, whether a new connection
may open (handshake rate per IP, open connections per IP and per user).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = [
    "Admission",
    "Limits",
    "LocalRateLimiter",
    "RateLimiter",
    "TokenBucket",
    "client_ip",
]

COMMAND_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "history", "presence", "refresh"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to every client connection.

    Args:
        ping_interval: seconds between server ``ping`` messages.
        pong_timeout: extra seconds of silence tolerated after a ping interval;
            a client silent for ``ping_interval + pong_timeout`` is closed 4408.
        max_message_size: largest client frame in bytes; larger closes 1009.
        max_invalid: the Nth invalid message in a row closes the connection 1008
            (after its ``error`` 400 is sent).
        max_channels: subscriptions per client (the personal channel does not
            count); beyond it ``subscribe`` gets ``error`` 429.
        queue_messages: messages a client's send queue may hold.
        queue_bytes: bytes a client's send queue may hold.
        close_timeout: seconds allowed for flushing and closing a connection
            before it is dropped (a client that stopped reading cannot hold it open).
        batch_bytes: the largest frame built when a client asked for batching.
        command_rate: commands per second a client may sustain (token bucket);
            beyond it a command gets ``error`` 429 and is not executed.
        command_burst: commands a client may send at once (the bucket's size).
        flood_refusals: this many 429 refusals within ``flood_window`` seconds
            close the connection 4429.
        flood_window: see ``flood_refusals``.
        command_limits: separate budgets per command type on top of ``command_rate``,
            as ``{"publish": (rate, burst)}`` (e.g. publish tighter than subscribe).
        expiry_grace: seconds a connection stays open past its token's ``exp``
            without a ``refresh``; then it is closed 4401.
        first_message_timeout: seconds after accept within which the client must
            send its first message, or be closed 4408; ``None`` (the default) leaves
            it to the idle deadline. uvicorn has no deadline of its own for a
            slow handshake, so set it where idle sockets are a cost.
        handshake_rate: WebSocket handshakes per second allowed from one IP
            (token bucket); beyond it the handshake is refused 429 with
            ``Retry-After``. ``None`` (the default): not limited. Many users may
            share an address (NAT, a proxy that is not trusted), so size it for them.
        handshake_burst: handshakes one IP may make at once (with ``handshake_rate``).
        max_connections_per_ip: open connections allowed from one IP on this node
            (429 beyond); ``None``: no cap.
        max_connections_per_user: open connections allowed for one user on this
            node (429 beyond); ``None``: no cap.
        trusted_proxies: addresses or networks of reverse proxies whose
            ``X-Forwarded-For``/``Forwarded`` headers name the client; from any
            other peer these headers are ignored.
    """

    ping_interval: float = 25.0
    pong_timeout: float = 10.0
    max_message_size: int = 64 * 1024
    max_invalid: int = 10
    max_channels: int = 128
    queue_messages: int = 1000
    queue_bytes: int = 1024 * 1024
    close_timeout: float = 5.0
    batch_bytes: int = 64 * 1024
    command_rate: float = 50.0
    command_burst: int = 100
    flood_refusals: int = 50
    flood_window: float = 10.0
    command_limits: Mapping[str, tuple[float, int]] = field(default_factory=dict, hash=False)
    expiry_grace: float = 30.0
    first_message_timeout: float | None = None
    handshake_rate: float | None = None
    handshake_burst: int = 20
    max_connections_per_ip: int | None = None
    max_connections_per_user: int | None = None
    trusted_proxies: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in (
            "ping_interval",
            "pong_timeout",
            "close_timeout",
            "command_rate",
            "flood_window",
            "expiry_grace",
        ):
            check_positive_number(f"Limits.{name}", getattr(self, name))
        if self.first_message_timeout is not None:
            check_positive_number("Limits.first_message_timeout", self.first_message_timeout)
        if not isinstance(self.command_limits, Mapping):
            raise TypeError(
                "Limits.command_limits must be a mapping of command type to (rate, burst)"
            )
        for kind, budget in self.command_limits.items():
            if kind not in COMMAND_TYPES:
                raise ValueError(
                    f"Limits.command_limits: unknown command type {kind!r} "
                    f"(one of {', '.join(sorted(COMMAND_TYPES))})"
                )
            if not isinstance(budget, tuple) or len(budget) != 2:
                raise TypeError(f"Limits.command_limits[{kind!r}] must be a (rate, burst) tuple")
            check_positive_number(f"Limits.command_limits[{kind!r}] rate", budget[0])
            check_positive_int(f"Limits.command_limits[{kind!r}] burst", budget[1])
        if isinstance(self.trusted_proxies, str):
            raise TypeError("Limits.trusted_proxies must be a sequence of addresses, not a str")
        object.__setattr__(self, "trusted_proxies", tuple(self.trusted_proxies))
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"Limits.trusted_proxies: not an address: {proxy!r}") from None
        for name in (
            "max_message_size",
            "max_invalid",
            "max_channels",
            "queue_messages",
            "queue_bytes",
            "batch_bytes",
            "command_burst",
            "flood_refusals",
            "handshake_burst",
        ):
            check_positive_int(f"Limits.{name}", getattr(self, name))
        if self.handshake_rate is not None:
            check_positive_number("Limits.handshake_rate", self.handshake_rate)
        for name in ("max_connections_per_ip", "max_connections_per_user"):
            if getattr(self, name) is not None:
                check_positive_int(f"Limits.{name}", getattr(self, name))

    @property
    def idle_timeout(self) -> float:
        """Seconds of client silence after which the connection is closed 4408."""
        return self.ping_interval + self.pong_timeout


class TokenBucket:
    """A token bucket with an injected clock: ``rate`` tokens per second, at most ``burst``."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> bool:
        """Take one token at ``now``; False (and nothing taken) when the bucket is empty."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


class RateLimiter(Protocol):
    """Decides whether one more event may happen for ``key`` (an IP, a user).

    The default, :class:`LocalRateLimiter`, counts per process; an implementation
    shared between processes (Redis) fits the same seam. ``hit`` must not raise
    for a well-formed key and must be cheap: it runs on every handshake.
    """

    async def hit(self, key: str) -> float:
        """Count one event: ``0.0`` when allowed, else the seconds until one would be."""
        ...


class LocalRateLimiter:
    """A :class:`RateLimiter` keeping one :class:`TokenBucket` per key in this process.

    At most ``max_keys`` buckets are kept (the least recently used go first), so a
    stream of new addresses cannot grow memory without bound.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        check_positive_number("rate", rate)
        check_positive_int("burst", burst)
        check_positive_int("max_keys", max_keys)
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> float:
        """The synchronous core of :meth:`hit`."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return 0.0
        return (1 - bucket.tokens) / self.rate

    async def hit(self, key: str) -> float:
        """Count one event for ``key``; see :class:`RateLimiter`."""
        return self.take(key)


ADMITTED: Final = "hubbub.admitted"
"""Scope key set once a handshake holds a per-IP place (value: the IP; ``.by``: the Admission)."""


class Admission:
    """Who may open a connection: handshake rate per IP and open connections per IP/user.

    Free of I/O: the connection layer asks :meth:`check_ip` before authenticating,
    which holds a place for the address at once, :meth:`check_user` after, and
    gives the place back with :meth:`closed` when the handshake is refused or the
    connection ends.
    """

    def __init__(self, limits: Limits, limiter: RateLimiter | None = None) -> None:
        self.limits = limits
        self.limiter: RateLimiter | None = limiter
        self._own_limiter = limiter is None
        if limiter is None and limits.handshake_rate is not None:
            self.limiter = LocalRateLimiter(limits.handshake_rate, limits.handshake_burst)
        self._per_ip: dict[str, int] = {}

    def set_limits(self, limits: Limits) -> None:
        """Apply new limits from the next handshake on (a configuration reload).

        The open connections counted per address are kept, so a lower cap applies
        to new handshakes without closing anyone. The handshake rate limiter is
        rebuilt (its buckets start full) when the rate or burst changed, unless
        it was given to the constructor: a custom limiter is the caller's. Call it
        from the event loop's thread, like every other method here.
        """
        if not isinstance(limits, Limits):
            raise TypeError("limits must be a hubbub.Limits")
        old, self.limits = self.limits, limits
        if self._own_limiter and (
            (old.handshake_rate, old.handshake_burst)
            != (limits.handshake_rate, limits.handshake_burst)
        ):
            self.limiter = (
                LocalRateLimiter(limits.handshake_rate, limits.handshake_burst)
                if limits.handshake_rate is not None
                else None
            )

    async def check_ip(self, ip: str) -> tuple[str, int] | None:
        """``None`` when ``ip`` may try a handshake, else why not and ``Retry-After`` seconds.

        Counts the attempt against the handshake rate. On ``None`` the handshake
        holds one of the address's places from now on (checked and taken without
        an await between, so concurrent handshakes that then wait for their
        authenticator cannot all pass the cap): the caller must call
        :meth:`closed` once, whether the handshake is refused later or the
        connection ends.
        """
        cap = self.limits.max_connections_per_ip
        if cap is not None and self._per_ip.get(ip, 0) >= cap:
            return f"too many open connections from this address (at most {cap})", 5
        self.opened(ip)
        if self.limiter is None:
            return None
        try:
            wait = await self.limiter.hit("ip:" + ip)
        except BaseException:
            self.closed(ip)
            raise
        if wait > 0:
            self.closed(ip)
            return "too many connection attempts from this address", max(1, math.ceil(wait))
        return None

    async def admit(
        self, scope: MutableMapping[str, Any]
    ) -> tuple[str, bool, tuple[str, int] | None]:
        """Admit a handshake's address: the one per-IP check of AuthMiddleware, WebSocket and SSE.

        Returns the client's address, whether this call took one of its places
        (then the caller gives it back with :meth:`closed`, whatever happens),
        and ``None`` or why the handshake is refused with its ``Retry-After``.
        A scope this admission already admitted (AuthMiddleware in front of the
        hub) is not counted twice.
        """
        ip = scope.get(ADMITTED)
        if isinstance(ip, str) and scope.get(ADMITTED + ".by") is self:
            return ip, False, None
        peer = scope.get("client")
        ip = client_ip(
            peer[0] if peer else None, scope.get("headers") or (), self.limits.trusted_proxies
        )
        refused = await self.check_ip(ip)
        if refused is not None:
            return ip, False, refused
        scope[ADMITTED] = ip
        scope[ADMITTED + ".by"] = self
        return ip, True, None

    def check_user(self, open_connections: int) -> tuple[str, int] | None:
        """``None`` when a user holding ``open_connections`` may open one more.

        Call it with no await between it and registering the connection, so
        the count it is given is still true when the connection opens.
        """
        cap = self.limits.max_connections_per_user
        if cap is not None and open_connections >= cap:
            return f"too many open connections for this user (at most {cap})", 5
        return None

    def opened(self, ip: str) -> None:
        """Count a connection from ``ip`` (:meth:`check_ip` already does, when it admits)."""
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1

    def closed(self, ip: str) -> None:
        """Give back a place of ``ip``: a refused handshake, or a connection that ended."""
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


def client_ip(
    peer: str | None, headers: Iterable[tuple[bytes, bytes]], trusted: Sequence[str]
) -> str:
    """The client's address: the socket peer, or what a trusted proxy says it is.

    ``X-Forwarded-For`` (then ``Forwarded: for=``) is read only when ``peer`` is
    one of ``trusted``; the rightmost address not itself a trusted proxy wins, so
    a client cannot pick its address by sending the header itself.
    """
    if not peer:
        return "unknown"
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    forwarded: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-forwarded-for":
            forwarded.extend(v.strip() for v in value.decode("latin-1").split(","))
    if not forwarded:
        for name, value in headers:
            if name.lower() == b"forwarded":
                for element in value.decode("latin-1").split(","):
                    for pair in element.split(";"):
                        key, _, val = pair.strip().partition("=")
                        if key.lower() == "for":
                            val = val.strip('"')
                            if val.startswith("["):
                                val = val[1 : val.find("]")]
                            elif val.count(":") == 1:
                                val = val.split(":")[0]
                            forwarded.append(val)
    for candidate in reversed(forwarded):
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            return peer
        if not _is_trusted(candidate, trusted):
            return candidate
    return forwarded[0] if forwarded else peer


def _is_trusted(address: str, trusted: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in trusted)


def check_positive_number(name: str, value: object) -> None:
    """Raise a clear error unless ``value`` is a finite number above zero (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number, not {value!r}")


def check_positive_int(name: str, value: object, *, zero: bool = False) -> None:
    """Raise a clear error unless ``value`` is an int above zero (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    if value < (0 if zero else 1):
        raise ValueError(f"{name} must be {'>= 0' if zero else 'positive'}, not {value!r}")
