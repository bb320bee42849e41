"""The PostgreSQL broker: many hub nodes on one database, and publishing from the
application's own transactions (asyncio only).

Install with ``pip install 'hubbub[postgres]'`` (psycopg 3). Why psycopg 3 and
not asyncpg: :meth:`PostgresBroker.publish_in` must publish inside the
*application's* transaction, and Python applications on PostgreSQL mostly hold
psycopg connections (directly, or under SQLAlchemy's ``postgresql+psycopg``
dialect and Django); asyncpg connections are a different type that those
transactions cannot be handed to. psycopg 3 is maintained by the PostgreSQL
driver's long-time authors, has a native asyncio API and
``AsyncConnection.notifies()`` for ``LISTEN``.

Everything lives in one schema per deployment (default ``hubbub``; see
:func:`~hubbub.brokers._postgres_sql.schema_sql` for the tables and functions):
``streams`` (epoch and newest offset per channel), ``publications`` (the kept
history), ``idempotency``, ``presence`` (leases) and ``relay`` (publications too
large for a notification). One SQL function, ``<schema>._publish``, is the only
publish path: it takes the channel's stream row lock, assigns the next offset,
stores and trims the history and calls ``pg_notify`` — all inside the
publishing transaction, so a publication exists, and is announced, exactly when
that transaction commits.

Delivery: each node holds one ``LISTEN`` connection on the channel named like
the schema. A notification carries the whole publication (JSON, payload base64)
when it fits in :data:`~hubbub.brokers._postgres_sql.NOTIFY_LIMIT` bytes, so a
node needs no query per publication; a larger one carries an id into ``relay``
and is fetched. Publications are handed to the hub as they arrive, in commit
order, which is offset order per channel (``_publish`` holds the stream's row
lock until commit).

Order and gap repair belong to the hub, as with every broker: this broker only
*reports* that publications may have been lost (``lost``), and the hub reads
what its clients missed from the history. To know when to report, the node
remembers the newest offset it has seen per subscribed channel (read from the
stream when it subscribes, then advanced by each notification) and compares it
with each stream's top: after every reconnect of the ``LISTEN`` connection
(notifications sent while it was down are gone) and every ``poll_interval``,
where only a stream still behind one interval later is reported, so a
notification merely in flight is never mistaken for a lost one (a row written
without its notification, a relayed publication swept before it was read).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup

from .._errors import BrokerUnavailable, InternalError, RateLimited, StreamGone
from ..messages import CODECS_BY_NAME, ClientInfo, Position
from ._base import (
    IDEMPOTENCY_KEYS,
    Broker,
    Capability,
    HistoryOptions,
    HistoryPage,
    Idempotency,
    LossHandler,
    Publication,
    PublicationHandler,
    publisher,
)
from ._link import LinkTask
from ._postgres_conn import CLIENT_INFO, ENCODER, close
from ._postgres_listen import ListenLink
from ._postgres_sql import MAX_NOTIFY_SHARDS, check_schema_name, schema_sql

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from ..namespaces import Namespace

__all__ = ["PostgresBroker"]

logger = logging.getLogger("hubbub.postgres")


# A stream first created by a read (a subscribe before any publish) keeps its
# epoch this long without publications, as in the other brokers.
_EMPTY_STREAM_TTL: Final = timedelta(seconds=300)
_SWEEP_TIMEOUT: Final = 30.0


class PostgresBroker(ListenLink, Broker):
    """Carries publications between hub nodes through one PostgreSQL database.

    Every database call is bounded by ``timeout`` and raises
    :class:`hubbub.BrokerUnavailable` when the database cannot be reached in
    time. The hub starts while the database is down: :meth:`ready` reports it
    and the ``LISTEN`` connection keeps reconnecting with back-off.

    Args:
        conninfo: a libpq connection string or ``postgresql://`` URL.
        schema: the schema of this deployment's tables, functions and
            notification channel (a lower-case SQL identifier).
        create_schema: create (or upgrade) the schema when the broker starts;
            ``False`` when you run :meth:`schema_sql` in your own migrations.
        pool_size: connections used for publishing, history and presence.
        timeout: seconds any database call may take (connecting included).
        health_check_interval: seconds between checks of the ``LISTEN`` connection.
        poll_interval: seconds between the safety-net reads of every
            subscribed stream's top offset.
        sweep_interval: seconds between deletions of expired streams,
            idempotency keys, leases and relayed publications.
        relay_ttl: seconds a publication too large for a notification is kept
            in ``relay`` for the nodes to fetch (a node later than that reads
            it from the history, or reports it lost).
        reconnect_delay: first back-off delay after the ``LISTEN`` connection drops.
        max_reconnect_delay: the longest back-off delay.
        connect_options: more keyword arguments for ``psycopg.AsyncConnection.connect``.
        idempotency_keys: idempotency keys one publisher (a user, an anonymous
            connection, or the server) may hold per channel within the window,
            through :meth:`publish`; a publish with a new key beyond it raises
            :class:`hubbub.RateLimited` (429) and publishes nothing.
            :meth:`publish_in` and ``<schema>.publish`` (the application's own
            transactions) are not capped.
        notify_shards: spread the schema's notifications over this many
            channels (``<schema>:<k>``) so that each node hears only those of
            the channels it serves; written into ``<schema>.notify_shards`` when
            the broker creates or upgrades the schema (``None``: keep the
            stored count, 1 for a new schema). Every node follows the stored
            count within ``health_check_interval``; see docs/postgres.md.
    """

    capabilities = frozenset({Capability.HISTORY, Capability.PRESENCE, Capability.IDEMPOTENCY})

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "hubbub",
        create_schema: bool = True,
        pool_size: int = 4,
        timeout: float = 2.0,
        health_check_interval: float = 1.0,
        poll_interval: float = 2.0,
        sweep_interval: float = 10.0,
        relay_ttl: float = 60.0,
        reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        connect_options: Mapping[str, Any] | None = None,
        idempotency_keys: int = IDEMPOTENCY_KEYS,
        notify_shards: int | None = None,
    ) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"the PostgreSQL broker needs psycopg: pip install 'hubbub[postgres]' ({exc})"
            ) from None
        self._schema = check_schema_name(schema)
        if pool_size < 1 or idempotency_keys < 1:
            raise ValueError("pool_size and idempotency_keys must be at least 1")
        if min(timeout, health_check_interval, poll_interval, sweep_interval, relay_ttl) <= 0:
            raise ValueError("timeout and the intervals must be positive")
        if reconnect_delay <= 0 or max_reconnect_delay < reconnect_delay:
            raise ValueError("need 0 < reconnect_delay <= max_reconnect_delay")
        self._conninfo = conninfo
        self._create_schema = create_schema
        self._timeout = timeout
        self._health = health_check_interval
        self._poll = poll_interval
        self._sweep_every = sweep_interval
        self._relay_ttl = timedelta(seconds=relay_ttl)
        self._delay = reconnect_delay
        self._max_delay = max_reconnect_delay
        self._connect_options = dict(connect_options or {})
        # Calls beyond pool_size wait for a free connection, within their timeout.
        self._slots = anyio.Semaphore(pool_size)
        self._pool_size = pool_size
        # The LISTEN link's own reads (relayed publications, holes, polls) run on a
        # connection of their own: a pool busy with publishes must not stall
        # delivery, nor time out as an outage and tear the link down.
        self._link_slot = anyio.Semaphore(1)
        self._busy_logged = -math.inf
        self._link_idle: list[AsyncConnection[Any]] = []
        self._idempotency_keys = idempotency_keys
        self._idle: list[AsyncConnection[Any]] = []
        self._handler: PublicationHandler | None = None
        self._lost: LossHandler | None = None
        self._link_task = LinkTask(self._service, "PostgreSQL LISTEN", logger)
        self._up = False
        self._schema_ready = not create_schema
        # Subscribed channels → (epoch, newest offset seen); None while subscribe()
        # reads the stream's position.
        self._channels: dict[str, tuple[str, int] | None] = {}
        # Publications of channels whose subscribe() is still reading the position.
        self._held: dict[str, list[Publication]] = {}
        # Stream tops the last poll found ahead of this node: reported lost at the
        # next poll if their notifications still have not arrived by then.
        self._suspects: dict[str, tuple[str, int]] = {}
        # Notification shards (see ``<schema>.notify_shards``): the count last read, the
        # names the LISTEN connection listens to, and those subscribe() waits for.
        if notify_shards is not None and not 1 <= notify_shards <= MAX_NOTIFY_SHARDS:
            raise ValueError(f"notify_shards must be in 1-{MAX_NOTIFY_SHARDS}")
        if notify_shards is not None and len(f"{schema}:{notify_shards - 1}") > 63:
            raise ValueError("notify_shards: the schema name is too long for sharded channels")
        self._notify_shards_option = notify_shards
        self._shards = 1
        self._listening: set[str] = set()
        self._wanted: dict[str, anyio.Event] = {}
        self._wake: anyio.CancelScope | None = None
        self.notifications = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBroker:
        """A broker for ``postgresql://user:password@host:port/db`` (or ``postgres://``).

        Query parameters ``schema``, ``timeout``, ``pool_size``, ``poll_interval``,
        ``idempotency_keys`` and ``notify_shards`` set the options of the same
        name; the others go to libpq.
        """
        from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        for name, convert in (
            ("schema", str),
            ("timeout", float),
            ("pool_size", int),
            ("poll_interval", float),
            ("idempotency_keys", int),
            ("notify_shards", int),
        ):
            if name in query:
                options.setdefault(name, convert(query.pop(name)))
        return cls(urlunsplit(parts._replace(query=urlencode(query))), **options)

    @staticmethod
    def schema_sql(schema: str = "hubbub") -> str:
        """The SQL that creates or upgrades the broker's schema, for your own migrations.

        Idempotent; run it in one transaction. It defines the tables, the
        internal ``<schema>._publish`` and ``<schema>.publish(channel text, data
        jsonb, history_size integer, history_ttl interval, idempotency_key text,
        idempotency_window interval) returns bigint`` for publishing from SQL.
        """
        return schema_sql(schema)

    def __repr__(self) -> str:
        return f"<PostgresBroker schema={self._schema!r}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self,
        handler: PublicationHandler,
        lost: LossHandler,
        task_group: TaskGroup | None = None,
    ) -> None:
        """Connect the ``LISTEN`` connection (creating the schema first) and keep it up.

        Returns once the first connection attempt succeeded or failed. The
        link runs in ``task_group`` (the hub's); used on its own, enter ``async
        with broker.run(handler, lost):`` instead.

        Raises:
            RuntimeError: already started, or no ``task_group``.
        """
        if self._link_task.running:
            raise RuntimeError("PostgresBroker is already started (one hub per broker)")
        self._handler, self._lost = handler, lost
        try:
            await self._link_task.start(task_group, "PostgresBroker")
        except RuntimeError:
            self._handler = self._lost = None
            raise

    async def stop(self) -> None:
        self._handler = self._lost = None
        self._channels.clear()
        self._suspects.clear()
        self._held.clear()
        if not await self._link_task.stop(self._timeout + 1.0):
            return
        with anyio.CancelScope(shield=True):
            idle, self._idle = self._idle + self._link_idle, []
            self._link_idle = []
            for conn in idle:
                await close(conn)

    async def ready(self) -> bool:
        """Whether the ``LISTEN`` connection is up and the database answers in time."""
        if not self._up:
            return False
        try:
            await self._run(lambda conn: conn.execute("SELECT 1"))
        except BrokerUnavailable:
            return False
        return True

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None = None,
    ) -> Publication:
        if not self._link_task.running:
            raise RuntimeError("PostgresBroker is not started")
        owner = publisher(publication)
        return await self._run(
            lambda conn: self._publish_on(
                conn, publication, history, idempotency, owner, self._idempotency_keys
            )
        )

    async def publish_in(
        self,
        conn: Any,
        channel: str,
        data: Any,
        *,
        history: HistoryOptions | Namespace | None,
        idempotency: Idempotency | None = None,
        codec: str = "json",
    ) -> Publication:
        """Publish inside the caller's transaction: delivered if and only if it commits.

        The outbox pattern without an outbox: the publication is written (offset
        assigned, history kept) by the caller's own transaction, and PostgreSQL
        sends the notification that wakes the hub nodes only at its commit; a
        rollback leaves no trace. The channel's stream row stays locked until
        the transaction ends, so keep such transactions short: other publishers
        of the channel wait for it.

        Args:
            conn: a psycopg ``AsyncConnection`` in a transaction (or an
                ``AsyncCursor``/``AsyncTransaction`` of one; with SQLAlchemy's
                ``postgresql+psycopg`` dialect, the ``driver_connection`` of
                ``await sa_conn.get_raw_connection()``). In autocommit mode the
                publication commits at once.
            channel: the channel.
            data: the payload: bytes already encoded in ``codec``, or a value
                encoded here as JSON.
            history: the channel's history options; a :class:`~hubbub.Namespace`
                (``hub.namespaces.resolve(channel)``) stands for its
                ``history_size``/``history_ttl``; ``None``: no history.
            idempotency: publish at most once per key within its window.
            codec: ``"json"`` or ``"msgpack"``: how ``data`` bytes are encoded.

        Returns:
            The publication with its offset and epoch (those of the first one
            published under the idempotency key when the key was already used).

        Raises:
            TypeError: ``conn`` is not an asyncio psycopg connection.
            ValueError: an unknown ``codec``.
            psycopg.Error: what the caller's connection raises (its transaction,
                its timeouts: the broker's ``timeout`` does not apply here).
        """
        import time

        if codec not in CODECS_BY_NAME:
            raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")
        if not isinstance(data, bytes):
            data, codec = msgspec.json.encode(data), "json"
        if history is not None and not isinstance(history, HistoryOptions):
            size, ttl = history.history_size, history.history_ttl
            history = HistoryOptions(size, ttl) if size > 0 else None
        from psycopg import AsyncConnection

        raw = getattr(conn, "connection", conn)  # a cursor or transaction: its connection
        if not isinstance(raw, AsyncConnection):
            raise TypeError(
                "publish_in needs a psycopg AsyncConnection (or an AsyncCursor or "
                f"AsyncTransaction of one), not {type(conn).__name__}"
            )
        publication = Publication(
            channel=channel, data=data, codec=codec, ts=time.time_ns() // 1_000_000
        )
        return await self._publish_on(raw, publication, history, idempotency)

    async def _publish_on(
        self,
        conn: AsyncConnection[Any],
        publication: Publication,
        history: HistoryOptions | None,
        idempotency: Idempotency | None,
        owner: str | None = None,
        cap: int | None = None,
    ) -> Publication:
        cursor = await conn.execute(
            f"SELECT * FROM {self._schema}._publish("
            "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text, %s::integer)",
            (
                publication.channel,
                publication.data,
                publication.codec,
                publication.ts,
                None if publication.sender is None else ENCODER.encode(publication.sender),
                publication.exclude,
                publication.kind,
                None if history is None else max(history.size, 1),
                None if history is None else timedelta(seconds=max(history.ttl, 0.001)),
                None if idempotency is None else idempotency.key,
                None if idempotency is None else timedelta(seconds=max(idempotency.window, 0.001)),
                owner,
                cap,
            ),
        )
        row = await cursor.fetchone()
        if row is None:  # pragma: no cover - the function always returns one row
            raise InternalError("the publish function returned nothing")
        hit, epoch, offset, *_ = row
        if hit is None:
            raise RateLimited(
                f"at most {cap} idempotency keys per publisher in a channel within the "
                "idempotency window; nothing was published"
            )
        if offset is None:
            return publication
        return msgspec.structs.replace(publication, offset=int(offset), epoch=epoch)

    # -- node subscriptions ------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        if not self._link_task.running:
            raise RuntimeError("PostgresBroker is not started")
        if not self._up:
            raise BrokerUnavailable("the PostgreSQL LISTEN connection is down")
        # The subscription starts at the stream's position read here, as a Redis
        # SUBSCRIBE starts at its confirmation: LISTEN hears every channel, so a
        # notification of a publication from before it may still be in flight.
        self._channels.setdefault(channel, None)
        try:
            await self._listened(channel)
            position = await self._run(lambda conn: self._top(conn, [channel]))
        except BaseException:
            if self._channels.get(channel, ()) is None:
                del self._channels[channel]
            self._held.pop(channel, None)
            raise
        if channel in self._channels and self._channels[channel] is None:
            self._channels[channel] = position.get(channel, ("", 0))
            for held in self._held.pop(channel, []):
                self._pass_on(held)
        self._held.pop(channel, None)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._suspects.pop(channel, None)
        self._held.pop(channel, None)

    # -- history -----------------------------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        reverse: bool = False,
    ) -> HistoryPage:
        async def read(conn: AsyncConnection[Any]) -> HistoryPage:
            cursor = await conn.execute(
                f"SELECT o_epoch, o_top FROM {self._schema}._position(%s, %s)",
                (channel, _EMPTY_STREAM_TTL),
            )
            row = await cursor.fetchone()
            assert row is not None
            epoch, top = str(row[0]), int(row[1])
            if since is not None and since.epoch != epoch:
                raise StreamGone(f"epoch {since.epoch!r} is not the stream's epoch")
            position = Position(offset=top, epoch=epoch)
            if limit is not None and limit <= 0:
                return HistoryPage([], position)
            if since is not None:
                rows = await self._rows(conn, channel, epoch, since.offset, top, limit)
                if reverse:
                    rows.reverse()
            else:
                rows = await self._rows(conn, channel, epoch, 0, top, limit, newest=True)
                if not reverse:
                    rows.reverse()
            return HistoryPage(rows, position)

        return await self._run(read)

    # -- presence ----------------------------------------------------------------------------

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                f"INSERT INTO {self._schema}.presence AS p (channel, client, info, expires_at)"
                " VALUES (%s, %s, %s, clock_timestamp() + %s)"
                " ON CONFLICT (channel, client) DO UPDATE"
                " SET info = EXCLUDED.info, expires_at = EXCLUDED.expires_at",
                (channel, client, ENCODER.encode(info), timedelta(seconds=max(ttl, 0.001))),
            )
        )

    async def presence_remove(self, channel: str, client: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                f"DELETE FROM {self._schema}.presence WHERE channel = %s AND client = %s",
                (channel, client),
            )
        )

    async def presence(self, channel: str) -> Mapping[str, ClientInfo]:
        async def read(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await conn.execute(
                f"SELECT client, info FROM {self._schema}.presence"
                " WHERE channel = %s AND expires_at > clock_timestamp()",
                (channel,),
            )
            return await cursor.fetchall()

        clients: dict[str, ClientInfo] = {}
        for client, info in await self._run(read):
            try:
                clients[str(client)] = CLIENT_INFO.decode(info)
            except (msgspec.DecodeError, RecursionError):
                logger.warning("dropped an unreadable presence entry in %r", channel)
        return clients

    # -- housekeeping ------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Delete expired streams (with their history), idempotency keys and leases, and
        relayed publications older than ``relay_ttl``. Every node runs it every
        ``sweep_interval``; it is idempotent. Large deletions may take longer than
        ``timeout``, so the sweep has a bound of its own (``_SWEEP_TIMEOUT``)."""
        s = self._schema
        statements = [
            f"DELETE FROM {s}.publications p USING {s}.streams st"
            " WHERE p.channel = st.channel AND st.expires_at <= clock_timestamp()",
            f"DELETE FROM {s}.streams WHERE expires_at <= clock_timestamp()",
            f"DELETE FROM {s}.idempotency WHERE expires_at <= clock_timestamp()",
            f"DELETE FROM {s}.presence WHERE expires_at <= clock_timestamp()",
        ]

        async def work(conn: AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (str(int(_SWEEP_TIMEOUT * 900)),),
                )
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(
                    f"DELETE FROM {s}.relay WHERE created_at < clock_timestamp() - %s",
                    (self._relay_ttl,),
                )

        await self._run(work, bound=_SWEEP_TIMEOUT)
