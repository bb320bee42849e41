"""The background task that keeps a networked broker's link up (Redis pub/sub, PostgreSQL LISTEN).

Both brokers run one long-lived task per node, always in a task group that
someone owns: the hub's, or the one :meth:`Broker.run` enters. There is no
fallback task of the broker's own (a task group entered in ``start`` could not
be exited from ``stop``: the caller's cancel scopes sit in between), so
``start`` without a task group raises. ``start`` returns once the first
connection attempt has succeeded or failed; ``stop`` cancels the task and
waits, bounded, for it to end.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

__all__ = ["LinkTask"]


class LinkTask:
    """One broker's link task: started once, stopped once, observable by the broker.

    Args:
        run: the link's loop (connect, read, reconnect, for ever); it calls
            :meth:`attempted` after its first connection attempt.
        what: names the task in the log line written if ``run`` fails with a bug.
        logger: the broker's logger.
    """

    def __init__(
        self, run: Callable[[], Awaitable[None]], what: str, logger: logging.Logger
    ) -> None:
        self._run = run
        self._what = what
        self._logger = logger
        self._scope: anyio.CancelScope | None = None
        self._attempted = self._done = anyio.Event()

    @property
    def running(self) -> bool:
        """Between :meth:`start` and :meth:`stop`."""
        return self._scope is not None

    def attempted(self) -> None:
        """The first connection attempt is over (either way): :meth:`start` may return."""
        self._attempted.set()

    async def start(self, task_group: TaskGroup | None, broker: str) -> None:
        """Start the task in ``task_group`` (the broker checked :attr:`running` first)
        and await the first attempt.

        Raises:
            RuntimeError: no task group: nobody would own the task.
        """
        if task_group is None:
            raise RuntimeError(
                f"{broker} runs a background task and needs a task group to own it: "
                f"use 'async with broker.run(handler, lost):' or pass one to start()"
            )
        assert self._scope is None, "the link task is already running"
        self._scope = anyio.CancelScope()
        self._attempted, self._done = anyio.Event(), anyio.Event()
        task_group.start_soon(self._service, self._scope)
        await self._attempted.wait()

    async def stop(self, grace: float) -> bool:
        """Cancel the task, wait up to ``grace`` seconds for it; ``False`` if it was not running."""
        scope, self._scope = self._scope, None
        if scope is None:
            return False
        scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
            await self._done.wait()
        return True

    async def _service(self, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await self._run()
        except Exception:  # pragma: no cover - a bug, not a backend fault
            self._logger.exception("the %s task failed; this node is deaf", self._what)
        finally:
            self._attempted.set()
            self._done.set()
