"""``hub.sync``: the hub's server-side API for synchronous code in other threads.

Most code that wants to tell someone something is synchronous: a Django or
Flask view, a model signal, a worker thread. It cannot ``await hub.publish``,
and ``asyncio.run`` or ``async_to_sync`` would start a second event loop that
does not own the hub. While the hub runs it keeps an anyio ``BlockingPortal``
open on its own loop (:class:`LoopGate`, a task the hub starts first and
cancels when it stops); :class:`SyncHub` hands each call through it and blocks the
calling thread until the answer, so the call runs on the hub's loop exactly
as an ``await`` there would, whatever server started that loop (uvicorn,
hypercorn, asyncio or trio).

Three ways a blocking call could go wrong are closed here:

- **the loop's own thread**: blocking it would wait for itself for ever; the
  call raises ``RuntimeError`` at once instead (``await`` the hub there);
- **too many callers**: at most ``max_in_flight`` calls of one ``SyncHub``
  are in the hub at a time; a caller waits for a place until its deadline,
  then gets :class:`~hubbub.Unavailable`;
- **a stalled dependency** (Redis frozen, the loop overloaded): each call has
  one deadline, ``timeout`` seconds from the moment it was made; past it the
  hub-side call is cancelled and the caller gets :class:`~hubbub.Unavailable`.
  The hub's own ``broker_timeout`` usually answers first
  (:class:`~hubbub.BrokerUnavailable`), since the default ``timeout`` is twice it.

A hub that is not running (never started, draining or stopped) answers
:class:`~hubbub.HubNotRunning`; a stopping hub first shuts this gate and lets
the calls inside finish, so none is still on its way to a stopped broker.
One thread's calls run one after the other, so its publications into a
channel keep their order.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal

from ._errors import HubNotRunning, Unavailable

if TYPE_CHECKING:
    from .brokers import HistoryPage
    from .chat import Notification
    from .hub import Hub
    from .messages import ClientInfo, Position

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "LoopGate", "SyncHub"]

DEFAULT_MAX_IN_FLIGHT = 64
"""Calls of one :class:`SyncHub` inside the hub at a time (others wait for a place)."""

_T = TypeVar("_T")


class LoopGate:
    """The door other threads use into the hub's event loop; open only while the hub runs."""

    __slots__ = ("_portal", "_served", "thread")

    def __init__(self) -> None:
        self._portal: BlockingPortal | None = None
        self._served: anyio.Event | None = None
        self.thread: int | None = None
        """The id of the thread running the hub's event loop, while it runs."""

    async def serve(self, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED) -> None:
        """Keep the gate open until :meth:`close` (or the hub's task group is cancelled).

        A task of the hub's task group rather than a context around its body, so
        an exception raised in ``async with hub:`` never passes through the
        portal's own task group (it would arrive wrapped in an exception group).
        """
        self._served = anyio.Event()
        try:
            async with BlockingPortal() as portal:
                self._portal = portal
                self.thread = threading.get_ident()
                task_status.started()
                try:
                    await portal.sleep_until_stopped()
                finally:
                    self._portal = None
                    self.thread = None
                # Leaving the portal waits for the calls already inside.
        finally:
            self._served.set()

    async def close(self, grace: float) -> None:
        """Shut the gate: refuse new calls, let those inside finish for ``grace`` seconds.

        The hub closes it first when it stops, so no call is still on its way to
        a broker that is being stopped; what is left after ``grace`` is cancelled.
        """
        portal, served = self._portal, self._served
        if portal is None or served is None:
            return
        self._portal = None
        await portal.stop()
        with anyio.move_on_after(grace):
            await served.wait()
            return
        await portal.stop(cancel_remaining=True)
        await served.wait()

    def submit(
        self, func: Callable[..., Awaitable[_T]], *args: Any
    ) -> concurrent.futures.Future[_T]:
        """Start ``func(*args)`` on the hub's loop; raises HubNotRunning when the gate is shut."""
        portal = self._portal
        if portal is None:
            raise HubNotRunning("the hub is not running: start it before calling hub.sync")
        try:
            return portal.start_task_soon(func, *args)
        except RuntimeError:
            # The portal stopped (or the loop ended) between the check and the call.
            raise HubNotRunning("the hub stopped") from None


class SyncHub:
    """The hub's server-side API for synchronous code running in other threads.

    Get the hub's own as ``hub.sync``; :meth:`with_limits` gives another with
    its own bounds (a worker pool that must not starve request threads, say).
    Every method blocks the calling thread until the hub answered and returns
    or raises exactly what the awaited method of :class:`~hubbub.Hub` would.

    Raises (every method, besides the hub method's own errors):
        RuntimeError: called from the thread running the hub's event loop
            (an ``async def`` view, a hub hook): ``await`` the hub's method there.
        HubNotRunning: the hub is not running.
        Unavailable: no place among ``max_in_flight`` calls, or no answer, within
            ``timeout`` seconds.
    """

    __slots__ = ("_gate", "_hub", "_places", "max_in_flight", "timeout")

    def __init__(
        self,
        hub: Hub,
        gate: LoopGate,
        *,
        timeout: float | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError("timeout must be a positive number of seconds (or None)")
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError("max_in_flight must be an int")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._hub = hub
        self._gate = gate
        self.timeout = timeout
        """Seconds a call may take in all (waiting for a place included); ``None``:
        twice the hub's ``broker_timeout``, read at each call."""
        self.max_in_flight = max_in_flight
        self._places = threading.BoundedSemaphore(max_in_flight)

    def __repr__(self) -> str:
        return f"<SyncHub of {self._hub!r} max_in_flight={self.max_in_flight}>"

    def with_limits(
        self, *, timeout: float | None = None, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    ) -> SyncHub:
        """Another synchronous view of the same hub, with its own deadline and its own cap."""
        return SyncHub(self._hub, self._gate, timeout=timeout, max_in_flight=max_in_flight)

    def on_hub_thread(self) -> bool:
        """Whether the caller runs on the hub's event loop thread (``await`` the hub there)."""
        return self._gate.thread == threading.get_ident()

    # -- the hub's API -------------------------------------------------------------------------

    def publish(
        self,
        channel: str,
        data: Any = None,
        *,
        json: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> Position | None:
        """:meth:`Hub.publish <hubbub.Hub.publish>` from a synchronous caller."""
        hub = self._hub
        return self._call(
            lambda: hub.publish(channel, data, json=json, idempotency_key=idempotency_key)
        )

    def notify(self, user: str, notification: Notification) -> Position | None:
        """:meth:`Hub.notify <hubbub.Hub.notify>` from a synchronous caller."""
        hub = self._hub
        return self._call(lambda: hub.notify(user, notification))

    def history(
        self,
        channel: str,
        *,
        limit: int | None = 100,
        since: Position | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        """:meth:`Hub.history <hubbub.Hub.history>` from a synchronous caller."""
        hub = self._hub
        return self._call(lambda: hub.history(channel, limit=limit, since=since, reverse=reverse))

    def presence(self, channel: str) -> dict[str, ClientInfo]:
        """:meth:`Hub.presence <hubbub.Hub.presence>` from a synchronous caller."""
        hub = self._hub
        return self._call(lambda: hub.presence(channel))

    def disconnect(self, user: str, reason: str = "disconnected by the server") -> int:
        """:meth:`Hub.disconnect <hubbub.Hub.disconnect>` from a synchronous caller."""
        hub = self._hub
        return self._call(lambda: hub.disconnect(user, reason))

    def subscribe_user(self, user: str, channel: str) -> None:
        """:meth:`Hub.subscribe_user <hubbub.Hub.subscribe_user>` from a synchronous caller."""
        hub = self._hub
        return self._call(lambda: hub.subscribe_user(user, channel))

    def unsubscribe_user(self, user: str, channel: str) -> None:
        """:meth:`Hub.unsubscribe_user <hubbub.Hub.unsubscribe_user>` from a synchronous caller."""
        hub = self._hub
        return self._call(lambda: hub.unsubscribe_user(user, channel))

    # -- the one path every call takes -----------------------------------------------------------

    def _call(self, call: Callable[[], Awaitable[_T]]) -> _T:
        gate = self._gate
        if gate.thread == threading.get_ident():
            raise RuntimeError(
                "hub.sync was called from the thread running the hub's event loop, which "
                "would wait for itself for ever: `await` the hub's method there instead"
            )
        timeout = self.timeout if self.timeout is not None else 2 * self._hub.broker_timeout
        deadline = time.monotonic() + timeout
        if not self._places.acquire(timeout=timeout):
            raise Unavailable(
                f"{self.max_in_flight} synchronous hub calls were in flight for {timeout:g} s: "
                "the hub (or its broker) is not keeping up; retry later"
            )
        try:
            future: concurrent.futures.Future[_T] = gate.submit(self._run, call)
            try:
                return future.result(max(deadline - time.monotonic(), 0.0))
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise Unavailable(
                    f"the hub did not answer within {timeout:g} s (a stalled broker or an "
                    "overloaded event loop); the call was cancelled and may or may not have "
                    "taken effect"
                ) from None
            except concurrent.futures.CancelledError:
                raise HubNotRunning("the hub stopped before answering") from None
        finally:
            self._places.release()

    async def _run(self, call: Callable[[], Awaitable[_T]]) -> _T:
        # On the hub's loop: the state read here cannot race the hub's own start/stop.
        state = self._hub.state
        if state != "running":
            raise HubNotRunning(f"the hub is {state}")
        return await call()
