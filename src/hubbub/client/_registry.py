"""The client's subscription registry and how each subscription is kept in sync.

:class:`Subscriptions` is the registry the :class:`~hubbub.client.Subscription`
objects talk to (through the small ``SubscriptionHost`` interface they declare,
so the dependency runs one way: this module knows subscriptions, a
subscription knows only that interface). It owns the channel → subscription
map, the queue of channels to (re)subscribe and the task per channel that does
it, and the rule that puts every publication in its place: live publications
of a channel wait while its ``subscribed`` is outstanding, the replay in the
reply comes first, then what waited, each judged against the last position
delivered (``_stream.classify``); a gap, a new epoch or an overflowing buffer
sends the channel back to the queue with ``recover``.

The session (``_client``) drives it: it announces each new session
(:meth:`Subscriptions.begin`), runs :meth:`Subscriptions.syncer` in the
session's task group and hands it the publications, presence events and
server-made (un)subscriptions it reads, in frame order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from ..messages import (
    Join,
    Leave,
    Message,
    Position,
    ServerMessage,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)
from ._errors import ClientError, ConnectionLost, RequestFailed, RequestTimeout
from ._requests import Requests
from ._stream import Verdict, classify
from ._subscription import Subscription
from ._types import Backoff, Unrecovered
from ._wire import Wire

__all__ = ["Subscriptions", "subscribed_position"]

logger = logging.getLogger("hubbub.client")


def subscribed_position(subscribed: Subscribed) -> Position | None:
    """The stream's newest position a ``subscribed`` reports (``None`` without history)."""
    if subscribed.offset is None or subscribed.epoch is None:
        return None
    return Position(offset=subscribed.offset, epoch=subscribed.epoch)


class Subscriptions:
    """The open subscriptions of one client, kept in sync across sessions.

    Args:
        requests: the client's commands (``subscribe`` and ``unsubscribe`` go there).
        wire: decodes publications for the application.
        backoff: the pause before retrying a refused or fruitless resubscription.
        buffer_size: live publications held per channel while its ``subscribed``
            is outstanding (what is cut off is recovered from history).
        abort_session: ends the session in progress, so that the next one
            starts clean (a ``subscribed`` that did not come in time).
    """

    def __init__(
        self,
        requests: Requests,
        wire: Wire,
        *,
        backoff: Backoff | None,
        buffer_size: int,
        abort_session: Callable[[], None],
    ) -> None:
        self._requests = requests
        self._wire = wire
        self._backoff = backoff
        self._buffer_size = buffer_size
        self._abort_session = abort_session
        self._subs: dict[str, Subscription] = {}
        self._to_sync: dict[str, None] = {}  # ordered set of channels to (re)subscribe
        self._sync_wake = anyio.Event()
        # Channels the server subscribed this connection to, with the position it gave.
        self._server_side: dict[str, Position | None] = {}
        self.gaps = 0
        """Gaps, epoch changes and buffer overflows seen while connected (each one recovered)."""

    def get(self, channel: str) -> Subscription | None:
        """The open subscription to ``channel``, if any."""
        return self._subs.get(channel)

    def finish_all(self, error: BaseException | None) -> None:
        """End every subscription with ``error`` (their iterators raise it once drained)."""
        for sub in list(self._subs.values()):
            sub.finish(error)

    def clear(self) -> None:
        """Forget every subscription (the client is closed)."""
        self._subs.clear()

    # -- the subscriptions' side (``SubscriptionHost``) ----------------------------------------

    async def open(self, sub: Subscription) -> None:
        """Subscribe ``sub`` and wait for its first ``subscribed``, within the request timeout.

        Raises:
            RequestFailed: refused (409 already subscribed, without a round trip).
            RequestTimeout: no ``subscribed`` in time.
            ClientError: the client is closed or has failed.
        """
        self._requests.check()
        if sub.channel in self._subs:
            # The server would answer 409 (one subscription per channel and
            # connection): refuse the same way without a round trip.
            raise RequestFailed(409, f"already subscribed to {sub.channel!r}")
        self._subs[sub.channel] = sub
        self.resync(sub)
        timeout = self._requests.timeout
        with anyio.move_on_after(timeout):
            await sub.ready.wait()
        if sub.ready.is_set() and sub.error is None:
            return
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        error = sub.error
        sub.finish(error)
        if error is None:
            raise RequestTimeout(f"no subscribed reply within {timeout} s")
        raise error

    async def close(self, sub: Subscription) -> None:
        """End ``sub`` and tell the server, if it still holds the subscription."""
        if self._subs.get(sub.channel) is not sub:
            sub.finish()
            return
        del self._subs[sub.channel]
        self._to_sync.pop(sub.channel, None)
        # A subscribe may be in flight: the unsubscribe follows it in command order.
        held = sub.held or sub.syncing
        sub.finish()
        if held and self._requests.connected:
            with contextlib.suppress(ClientError):
                await self._requests.call(
                    lambda id: Unsubscribe(channel=sub.channel, id=id), Unsubscribed
                )

    def resync(self, sub: Subscription) -> None:
        """(Re)subscribe ``sub`` with ``recover``; its live messages wait meanwhile."""
        if self._subs.get(sub.channel) is not sub or sub.closed:
            return
        if sub.first_done and not sub.syncing:
            self.gaps += 1
        sub.overflowed = False
        sub.syncing = True
        sub.attempts += 1
        self._to_sync[sub.channel] = None
        self._sync_wake.set()

    # -- the session's side --------------------------------------------------------------------

    def begin(self, server_side: dict[str, Position | None]) -> None:
        """A session was welcomed, already subscribed to ``server_side``: resync everything.

        Call :meth:`wake` once the session can send (its socket is attached).
        """
        self._server_side = server_side
        for sub in self._subs.values():
            sub.held = sub.channel in server_side
            sub.server_side = sub.held
            sub.syncing = True
            sub.backlog = []
            self._to_sync[sub.channel] = None

    def wake(self) -> None:
        """Let the syncer look at its queue."""
        self._sync_wake.set()

    def own_publication(self, channel: str, position: Position) -> None:
        """This client published at ``position`` on ``channel`` (its copy may never come)."""
        sub = self._subs.get(channel)
        if sub is not None:
            sub.own_publication(position.offset, position.epoch)

    def on_message(self, message: Message) -> None:
        """A publication read from the session, in frame order."""
        sub = self._subs.get(message.channel)
        if sub is None or sub.closed:
            return
        if sub.syncing:
            # Held until its `subscribed` arrives; bounded: what is cut off is recovered.
            if len(sub.backlog) < self._buffer_size:
                sub.backlog.append(message)
            return
        self._accept(sub, message)

    def on_presence(self, event: Join | Leave) -> None:
        """A ``join``/``leave`` read from the session (dropped when the buffer is full)."""
        sub = self._subs.get(event.channel)
        if sub is not None and not sub.push(self._wire.presence_event(event)):
            sub.dropped += 1

    def on_server_subscription(self, message: Subscribed | Unsubscribed) -> None:
        """The server (un)subscribed this connection on its own (no ``id``)."""
        if isinstance(message, Unsubscribed):
            self._server_side.pop(message.channel, None)
        else:
            self._server_side[message.channel] = subscribed_position(message)
        sub = self._subs.get(message.channel)
        if sub is None:
            return
        if isinstance(message, Unsubscribed):
            # The server removed it (API unsubscribe, permission change): the iterator ends.
            del self._subs[message.channel]
            sub.held = False
            sub.finish()
        else:
            sub.held = True
            sub.server_side = True

    async def syncer(self, tg: TaskGroup) -> None:
        """Start a (re)subscription per queued channel: overlapping, one at a time per channel."""
        while True:
            for channel in list(self._to_sync):
                sub = self._subs.get(channel)
                if sub is None:
                    del self._to_sync[channel]
                elif not sub.in_sync:  # else it stays queued; its task wakes us when done
                    del self._to_sync[channel]
                    sub.in_sync = True
                    tg.start_soon(self._sync_task, sub)
            self._sync_wake = anyio.Event()
            await self._sync_wake.wait()

    # -- one (re)subscription ------------------------------------------------------------------

    def _pause(self, attempt: int) -> float:
        return (self._backoff or Backoff()).delay(attempt)

    async def _sync_task(self, sub: Subscription) -> None:
        try:
            if sub.attempts > 2:
                # Recovering again and again without progress: something is wrong upstream;
                # do not hammer the server meanwhile.
                await anyio.sleep(self._pause(sub.attempts))
            await self._sync(sub)
        finally:
            sub.in_sync = False
            if sub.channel in self._to_sync:
                self._sync_wake.set()

    async def _sync(self, sub: Subscription) -> None:
        recover = sub.position if sub.first_done else None
        if sub.channel in self._server_side:
            sub.held = sub.server_side = True
        timeout = self._requests.timeout
        try:
            if sub.held and not sub.server_side:
                # A client-made subscription cannot be re-asked (409): leave it first.
                with contextlib.suppress(RequestFailed):
                    with anyio.fail_after(timeout):
                        await self._requests.request(
                            lambda id: Unsubscribe(channel=sub.channel, id=id)
                        )
                sub.held = False
            if sub.held and recover is None:
                # Server-made and never positioned: start from where the server put it.
                recover = self._server_side.get(sub.channel)
                if recover is None:  # no history: nothing to ask, it is live already
                    self._apply_subscribed(
                        sub, Subscribed(channel=sub.channel, publications=[]), None
                    )
                    return

            asked = recover

            def apply(reply: ServerMessage) -> None:
                if isinstance(reply, Subscribed):
                    self._apply_subscribed(sub, reply, asked)

            with anyio.fail_after(timeout):
                await self._requests.request(
                    lambda id: Subscribe(
                        channel=sub.channel,
                        id=id,
                        recover=asked,
                        history=None if asked is not None or sub.first_done else sub.history,
                        token=sub.token,
                    ),
                    apply,
                )
        except RequestFailed as exc:
            if exc.code == 409 and sub.channel in self._server_side:
                # The server subscribed us meanwhile (its `subscribed` came before this 409):
                # ask again, now as a server-made subscription.
                self.resync(sub)
                return
            if exc.code in (429, 503) and sub.first_done:
                # Not executed; try again after a pause (the session goes on meanwhile).
                await anyio.sleep(self._pause(2))
                self.resync(sub)
                return
            logger.warning("subscribe %s refused: %s", sub.channel, exc)
            if self._subs.get(sub.channel) is sub:
                del self._subs[sub.channel]
            sub.finish(exc)
        except TimeoutError:
            # The reply may still come, to nobody: only a new session is sure to be clean.
            logger.warning("no reply to subscribe %s: reconnecting", sub.channel)
            self._abort_session()
        except ConnectionLost:
            pass  # the next session resubscribes everything

    def _apply_subscribed(
        self, sub: Subscription, reply: Subscribed, asked: Position | None
    ) -> None:
        """Take a ``subscribed`` in frame order: replayed publications, then held live ones."""
        if self._subs.get(sub.channel) is not sub:
            return
        top = subscribed_position(reply)
        sub.held = True
        sub.overflowed = False
        if asked is not None and not reply.recovered:
            if sub.first_done:  # else the position was the server's, not one the app had seen
                sub.push(Unrecovered(channel=sub.channel, previous=asked, position=top), force=True)
            sub.position = top
        elif asked is not None:
            sub.position = asked
            for message in reply.publications:
                self._accept(sub, message, replay=True)
        else:
            for message in reply.publications:
                if sub.overflowed:
                    break
                self._deliver(sub, message)
            if not sub.overflowed:
                sub.position = top
        sub.first_done = True
        sub.ready.set()
        if sub.channel in self._to_sync:
            return  # the replay itself had a hole: keep holding live messages for the next try
        sub.syncing = False
        backlog, sub.backlog = sub.backlog, []
        for message in backlog:
            if sub.syncing:
                sub.backlog.append(message)
            else:
                self._accept(sub, message)

    def _accept(self, sub: Subscription, message: Message, *, replay: bool = False) -> None:
        """A publication for a positioned subscription: deliver, drop a duplicate, or recover."""
        verdict = classify(sub.position, message)
        if verdict is Verdict.DUPLICATE:
            return
        if sub.overflowed and message.offset is not None:
            return  # recovered from history once the application has caught up
        if verdict is Verdict.GAP and sub.explains(message):
            verdict = Verdict.DELIVER  # the hole is our own publications, not echoed to us
        if verdict is Verdict.GAP:
            logger.info(
                "%s: %s at offset %s (epoch %s) after %s: recovering",
                sub.channel,
                "gap" if replay else "gap or new epoch",
                message.offset,
                message.epoch,
                sub.position,
            )
            self.resync(sub)
            sub.backlog.append(message)
            return
        self._deliver(sub, message)

    def _deliver(self, sub: Subscription, message: Message) -> None:
        if not sub.push(self._wire.publication(message)):
            if message.offset is None:
                sub.dropped += 1
            else:
                sub.overflowed = True
            return
        sub.attempts = 0
        if message.offset is not None and message.epoch is not None:
            sub.position = Position(offset=message.offset, epoch=message.epoch)
