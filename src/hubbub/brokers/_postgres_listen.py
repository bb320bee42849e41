"""The PostgreSQL broker's ``LISTEN`` link: one connection per node, kept up for the
broker's life, and the periodic sweep beside it.

The link hands notifications to the hub in arrival order (commit order, which is
offset order per channel), fetches publications too large for a notification
from ``relay``, and reports through ``lost`` the streams that moved past what it
saw: after a reconnect, and on a poll when still behind one interval later. It
orders and repairs nothing: the hub does.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from .._errors import BrokerUnavailable, InternalError
from ._base import LossHandler, Publication, PublicationHandler
from ._postgres_conn import COLUMNS, Connections, close, publication_of
from ._postgres_sql import notify_channel, schema_sql

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = ["LinkDown", "ListenLink", "Wire"]

logger = logging.getLogger("hubbub.postgres")


class Wire(msgspec.Struct, frozen=True):
    """A notification's payload, as ``<schema>._publish`` builds it."""

    c: str
    e: str | None = None
    o: int | None = None
    d: bytes = b""
    f: str = "json"
    t: int = 0
    s: bytes | None = None
    x: str | None = None
    k: str = "message"
    r: int | None = None  # an id in <schema>.relay: the publication was too large


WIRE: Final = msgspec.json.Decoder(Wire)


class LinkDown(Exception):
    """The LISTEN connection failed its health check; the link reconnects."""


class ListenLink(Connections):
    """The ``LISTEN`` half of :class:`~hubbub.brokers.postgres.PostgresBroker`.

    A mixin: it shares the broker's state (declared below, set by the broker's
    ``__init__``), so the broker's subscribe and the link's loss detection see
    one set of channels.
    """

    _health: float
    _poll: float
    _sweep_every: float
    _delay: float
    _max_delay: float
    _handler: PublicationHandler | None
    _lost: LossHandler | None
    _up: bool
    _schema_ready: bool
    _channels: dict[str, tuple[str, int] | None]
    _suspects: dict[str, tuple[str, int]]
    _held: dict[str, list[Publication]]
    _notify_shards_option: int | None
    _shards: int
    _listening: set[str]
    _wanted: dict[str, anyio.Event]
    _wake: anyio.CancelScope | None
    notifications: int
    """Notifications this node's LISTEN connection received (subscribed here or not)."""

    async def sweep(self) -> None:
        """Delete expired rows (the broker implements it)."""
        raise NotImplementedError

    async def _service(self) -> None:
        """The LISTEN link and, beside it, the periodic sweep of expired rows."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sweeper)
                await self._run_link()
        finally:
            self._up = False

    async def _sweeper(self) -> None:
        while True:
            await anyio.sleep(self._sweep_every * random.uniform(0.5, 1.0))
            if not self._schema_ready:
                continue
            try:
                await self.sweep()
            except (BrokerUnavailable, InternalError) as exc:
                logger.info("PostgreSQL sweep skipped: %s", exc)

    async def _run_link(self) -> None:
        """Keep the LISTEN connection up: connect, listen, catch up, deliver, check, repeat."""
        import psycopg

        attempt = 0
        outage: float | None = None
        while True:
            conn: AsyncConnection[Any] | None = None
            try:
                with anyio.fail_after(self._timeout * 2):
                    conn = await self._connect(f"hubbub-listen:{self._schema}")
                    if not self._schema_ready:
                        async with conn.transaction():
                            await conn.execute(schema_sql(self._schema))
                            if self._notify_shards_option is not None:
                                await conn.execute(
                                    f"UPDATE {self._schema}.notify_shards SET shards = %s",
                                    (self._notify_shards_option,),
                                )
                        self._schema_ready = True
                    self._listening = set()
                    await self._sync_listens(conn)
                self._up = True
                self._link_task.attempted()
                if outage is not None:
                    logger.warning(
                        "PostgreSQL LISTEN link restored after %.1f s; checking %d channel(s)",
                        anyio.current_time() - outage,
                        len(self._channels),
                    )
                    outage = None
                else:
                    logger.info("PostgreSQL LISTEN link up")
                attempt = 0
                await self._listen(conn)
            except (LinkDown, TimeoutError, psycopg.Error, OSError, BrokerUnavailable) as exc:
                if outage is None:
                    outage = anyio.current_time()
                    logger.warning(
                        "PostgreSQL LISTEN link down (%s); "
                        "publications may be lost until it is back",
                        str(exc).strip() or type(exc).__name__,
                    )
            except Exception:
                # A bug (or a refused catch-up query) must not leave the node deaf.
                outage = outage if outage is not None else anyio.current_time()
                logger.exception("PostgreSQL LISTEN link failed unexpectedly; reconnecting")
            finally:
                self._up = False
                if conn is not None:
                    with anyio.CancelScope(shield=True):
                        await close(conn)
            self._link_task.attempted()
            delay = min(self._max_delay, self._delay * 2**attempt)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay * random.uniform(0.5, 1.0))

    async def _listen(self, conn: AsyncConnection[Any]) -> None:
        """Deliver notifications; check the link and poll every stream now and then."""
        await self._check_streams(reconnected=True)  # notifications sent while down are gone
        next_poll = anyio.current_time() + self._poll
        while True:
            # subscribe() cancels the wait (never a notification being handled: the
            # handling is shielded, and the wait has consumed nothing when cancelled)
            # to have this loop LISTEN to a new shard at once.
            with anyio.CancelScope() as self._wake:
                if self._wanted:
                    self._wake.cancel()
                async for notify in conn.notifies(timeout=self._health):
                    self.notifications += 1
                    with anyio.CancelScope(shield=True):
                        await self._on_notify(notify.payload)
            self._wake = None
            try:
                with anyio.fail_after(self._timeout):
                    changed = await self._sync_listens(conn)
            except TimeoutError:
                raise LinkDown(f"no answer within {self._timeout} s") from None
            if changed:
                # Publications of the channels whose shard changed were notified where
                # this node did not listen: catch up from the streams now.
                await self._check_streams(reconnected=True)
            if anyio.current_time() >= next_poll:
                await self._check_streams()
                next_poll = anyio.current_time() + self._poll

    def _notify_name(self, channel: str) -> str:
        return notify_channel(self._schema, self._shards, channel)

    async def _sync_listens(self, conn: AsyncConnection[Any]) -> bool:
        """Read the schema's number of notification shards (the link's health check too),
        LISTEN to the shards of the subscribed and wanted channels, UNLISTEN the others.
        True when the number of shards changed."""
        import psycopg

        try:
            cursor = await conn.execute(f"SELECT shards FROM {self._schema}.notify_shards")
            row = await cursor.fetchone()
            shards = int(row[0]) if row else 1
        except psycopg.errors.UndefinedTable:
            shards = 1  # a schema not upgraded yet (create_schema=False): one channel
        changed = shards != self._shards
        self._shards = shards
        if shards <= 1:
            needed = {self._schema}
        else:
            needed = {notify_channel(self._schema, shards, c) for c in self._channels}
        for name in sorted(needed - self._listening):
            await conn.execute(f'LISTEN "{name}"')
            self._listening.add(name)
        for name in sorted(self._listening - needed):
            await conn.execute(f'UNLISTEN "{name}"')
            self._listening.discard(name)
        # Wake every waiting subscribe(): each checks its own shard name again (the
        # count may have changed; a channel unsubscribed meanwhile is not listened to).
        wanted, self._wanted = self._wanted, {}
        for event in wanted.values():
            event.set()
        return changed

    async def _listened(self, channel: str) -> None:
        """Wait until the link LISTENs to the notification shard of ``channel`` (already
        in ``_channels``: that is what the link listens for)."""
        for _ in range(3):  # the number of shards may change meanwhile
            if not self._up:
                raise BrokerUnavailable("the PostgreSQL LISTEN connection is down")
            name = self._notify_name(channel)
            if name in self._listening:
                return
            event = self._wanted.setdefault(name, anyio.Event())
            if self._wake is not None:
                self._wake.cancel()
            with anyio.move_on_after(self._timeout):
                await event.wait()
        if self._notify_name(channel) not in self._listening:
            raise BrokerUnavailable("the PostgreSQL LISTEN link did not start listening in time")

    async def _on_notify(self, payload: str) -> None:
        try:
            wire = WIRE.decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            logger.warning("dropped an unreadable notification: %s", exc)
            return
        if wire.c not in self._channels and (wire.r is None or len(wire.c) < 1000):
            return  # not subscribed here (a relayed one carries at most 1000 characters)
        if wire.r is not None:
            publication = await self._relayed(wire.r)
            if publication is None:
                self._report_lost([wire.c] if wire.c in self._channels else None)
                return
        else:
            publication = publication_of(
                wire.c, wire.e, wire.o, [wire.d, wire.f, wire.t, wire.s, wire.x, wire.k]
            )
        if publication is not None:
            self._pass_on(publication)

    async def _relayed(self, relay_id: int) -> Publication | None:
        async def read(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cursor = await conn.execute(
                f'SELECT channel, epoch, "offset", {COLUMNS} FROM {self._schema}.relay'
                " WHERE id = %s",
                (relay_id,),
            )
            return await cursor.fetchone()

        row = await self._run(read, link=True)
        if row is None:
            logger.warning("relayed publication %d is gone (swept)", relay_id)
            return None
        channel, epoch, offset, *fields = row
        return publication_of(str(channel), epoch, offset, fields)

    def _pass_on(self, publication: Publication) -> None:
        """Hand a publication to the hub in arrival order, noting the newest offset seen.

        Nothing here orders or repairs (the hub does): notifications arrive in
        offset order, and one at or below the newest offset seen is from before
        the subscription started, or was already reported lost, and is dropped.
        """
        channel = publication.channel
        if channel not in self._channels:
            return
        offset, epoch = publication.offset, publication.epoch
        if offset is not None and epoch is not None:
            seen = self._channels[channel]
            if seen is None:  # subscribe() is still reading where the subscription starts
                self._held.setdefault(channel, []).append(publication)
                return
            if seen[0] == epoch and offset <= seen[1]:
                return
            self._channels[channel] = (epoch, offset)
        self._deliver(publication)

    async def _check_streams(self, *, reconnected: bool = False) -> None:
        """Compare every subscribed stream's top with the newest offset seen; report loss.

        After a reconnect every stream ahead is reported at once. On a periodic
        poll a stream ahead of this node is only noted: its notifications may be
        on their way (a busy node lags). One still behind what was noted at the
        next poll, one ``poll_interval`` later, is reported. Either way the hub
        repairs from the history; the seen offset moves to the reported top so
        one loss is reported once.
        """
        suspects, self._suspects = self._suspects, {}
        known = [c for c, state in self._channels.items() if state is not None]
        if not known:
            return
        tops = await self._run(lambda conn: self._top(conn, known), link=True)
        lost = []
        for channel, (epoch, top) in tops.items():
            state = self._channels.get(channel)
            if state is None:
                continue
            seen = state[1] if state[0] == epoch else 0
            if top <= seen:
                continue
            if reconnected:
                lost.append(channel)
                self._channels[channel] = (epoch, top)
                continue
            noted = suspects.get(channel)
            if noted is not None and noted[0] == epoch and noted[1] > seen:
                lost.append(channel)
                self._channels[channel] = (epoch, noted[1])
            self._suspects[channel] = (epoch, top)
        if lost:
            logger.warning(
                "publications of %d channel(s) may have been lost on their way here; "
                "the hub repairs them from history",
                len(lost),
            )
            self._report_lost(lost)

    def _report_lost(self, channels: list[str] | None) -> None:
        lost = self._lost
        if lost is None:
            return
        try:
            lost(channels)
        except Exception:
            logger.exception("the hub's loss handler failed")

    def _deliver(self, publication: Publication) -> None:
        handler = self._handler
        if handler is None:
            return
        try:
            handler(publication)
        except Exception:
            logger.exception("the hub's handler failed on a publication of %r", publication.channel)
