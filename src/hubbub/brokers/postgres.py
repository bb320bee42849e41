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

import contextlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar, get_args

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
    PublicationKind,
    publisher,
)
from ._link import LinkTask
from ._postgres_sql import check_schema_name, schema_sql

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from ..namespaces import Namespace

__all__ = ["PostgresBroker"]

logger = logging.getLogger("hubbub.postgres")

_T = TypeVar("_T")

# A stream first created by a read (a subscribe before any publish) keeps its
# epoch this long without publications, as in the other brokers.
_EMPTY_STREAM_TTL: Final = timedelta(seconds=300)
_SWEEP_TIMEOUT: Final = 30.0
_BUSY_LOG_EVERY: Final = 10.0  # seconds between "busy" warnings (one per burst, not per call)
_KINDS: Final = frozenset(get_args(PublicationKind))
_ENCODER: Final = msgspec.msgpack.Encoder()
_CLIENT_INFO: Final = msgspec.msgpack.Decoder(ClientInfo)
_COLUMNS: Final = "data, codec, ts, sender, exclude, kind"


class _Wire(msgspec.Struct, frozen=True):
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


_WIRE: Final = msgspec.json.Decoder(_Wire)


class _LinkDown(Exception):
    """The LISTEN connection failed its health check; the link reconnects."""


class PostgresBroker(Broker):
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

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBroker:
        """A broker for ``postgresql://user:password@host:port/db`` (or ``postgres://``).

        Query parameters ``schema``, ``timeout``, ``pool_size``, ``poll_interval``
        and ``idempotency_keys`` set the options of the same name; the others go
        to libpq.
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
                await _close(conn)

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
                None if publication.sender is None else _ENCODER.encode(publication.sender),
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

    async def _rows(
        self,
        conn: AsyncConnection[Any],
        channel: str,
        epoch: str,
        after: int,
        upto: int,
        limit: int | None = None,
        *,
        newest: bool = False,
    ) -> list[Publication]:
        """Kept publications of the stream with ``after < offset <= upto``, in offset order
        (newest first with ``newest``), at most ``limit``."""
        cursor = await conn.execute(
            f'SELECT "offset", {_COLUMNS} FROM {self._schema}.publications'
            ' WHERE channel = %s AND epoch = %s AND "offset" > %s AND "offset" <= %s'
            f' ORDER BY "offset" {"DESC" if newest else "ASC"} LIMIT %s',
            (channel, epoch, max(after, 0), upto, limit),
        )
        publications = []
        for offset, *fields in await cursor.fetchall():
            publication = _publication(channel, epoch, offset, fields)
            if publication is not None:
                publications.append(publication)
        return publications

    async def _top(
        self, conn: AsyncConnection[Any], channels: Sequence[str]
    ) -> dict[str, tuple[str, int]]:
        """The living streams' positions among ``channels`` (a missing one: no stream)."""
        cursor = await conn.execute(
            f"SELECT channel, epoch, top FROM {self._schema}.streams"
            " WHERE channel = ANY(%s) AND expires_at > clock_timestamp()",
            (list(channels),),
        )
        return {str(c): (str(e), int(t)) for c, e, t in await cursor.fetchall()}

    # -- presence ----------------------------------------------------------------------------

    async def presence_set(self, channel: str, client: str, info: ClientInfo, ttl: float) -> None:
        await self._run(
            lambda conn: conn.execute(
                f"INSERT INTO {self._schema}.presence AS p (channel, client, info, expires_at)"
                " VALUES (%s, %s, %s, clock_timestamp() + %s)"
                " ON CONFLICT (channel, client) DO UPDATE"
                " SET info = EXCLUDED.info, expires_at = EXCLUDED.expires_at",
                (channel, client, _ENCODER.encode(info), timedelta(seconds=max(ttl, 0.001))),
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
                clients[str(client)] = _CLIENT_INFO.decode(info)
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

    # -- internals: connections --------------------------------------------------------------

    async def _connect(self, name: str = "hubbub") -> AsyncConnection[Any]:
        from psycopg import AsyncConnection

        options: dict[str, Any] = {
            "connect_timeout": max(int(self._timeout + 0.999), 1),
            "application_name": name,
        }
        options.update(self._connect_options)
        # The server gives up on a statement a little before the client does: a call
        # the client abandoned (a publish stuck behind a channel's lock) must not run
        # later on its own and publish after the caller was told 503.
        server_timeout = f"-c statement_timeout={max(int(self._timeout * 900), 1)}"
        options["options"] = f"{server_timeout} {options.get('options', '')}".strip()
        conn: AsyncConnection[Any] = await AsyncConnection.connect(
            self._conninfo, autocommit=True, **options
        )
        return conn

    @contextlib.asynccontextmanager
    async def _connection(
        self, waiting: list[bool], link: bool
    ) -> AsyncIterator[tuple[AsyncConnection[Any], bool]]:
        """A pooled autocommit connection (and whether it was reused); broken ones are
        closed. ``waiting[0]`` stays true while every pooled connection is in use.
        ``link``: the LISTEN link's own connection instead of the pool's."""
        slots, idle = (self._link_slot, self._link_idle) if link else (self._slots, self._idle)
        async with slots:
            waiting[0] = False
            conn = idle.pop() if idle else None
            reused = conn is not None and not conn.closed
            if conn is None or conn.closed:
                conn = await self._connect()
            ok = False
            try:
                yield conn, reused
                ok = True
            finally:
                if ok and not conn.closed and not conn.broken and self._link_task.running:
                    idle.append(conn)
                else:
                    with anyio.CancelScope(shield=True):
                        await _close(conn)

    async def _run(
        self,
        work: Callable[[AsyncConnection[Any]], Awaitable[_T]],
        bound: float | None = None,
        *,
        link: bool = False,
    ) -> _T:
        """Run ``work`` on a pooled connection within ``bound`` seconds (default:
        ``timeout``); database trouble becomes BrokerUnavailable. A reused
        connection found dead (the database restarted) is replaced once at once,
        and the other idle ones are dropped with it.
        ``link``: on the LISTEN link's own connection (only the link task uses it)."""
        import psycopg

        timeout = self._timeout if bound is None else bound
        for attempt in range(2):
            reused = False
            waiting = [True]
            try:
                with anyio.fail_after(timeout):
                    async with self._connection(waiting, link) as (conn, reused):
                        return await work(conn)
            except TimeoutError:
                if waiting[0]:
                    # Load, not an outage: every pooled connection was busy all along.
                    now = anyio.current_time()
                    if now >= self._busy_logged + _BUSY_LOG_EVERY:
                        self._busy_logged = now
                        logger.warning(
                            "PostgreSQL broker busy: no pooled connection free within %s s "
                            "(pool_size=%d)",
                            timeout,
                            self._pool_size,
                            extra={"event": "broker_busy"},
                        )
                    raise BrokerUnavailable(
                        f"the PostgreSQL broker is busy: no pooled connection free within "
                        f"{timeout} s"
                    ) from None
                raise BrokerUnavailable(f"PostgreSQL did not answer within {timeout} s") from None
            except psycopg.errors.QueryCanceled:
                raise BrokerUnavailable(f"PostgreSQL did not answer within {timeout} s") from None
            except psycopg.OperationalError as exc:
                if reused and attempt == 0:
                    # The database restarted: every idle connection of that pool is as
                    # dead as this one. Retry once on a new connection.
                    idle = self._link_idle if link else self._idle
                    stale, idle[:] = list(idle), []
                    with anyio.CancelScope(shield=True):
                        for conn in stale:
                            await _close(conn)
                    continue
                logger.debug("PostgreSQL is unreachable: %s", exc)
                raise BrokerUnavailable("PostgreSQL is unreachable") from None
            except psycopg.Error as exc:
                logger.warning("PostgreSQL refused a command: %s", exc)
                raise InternalError("PostgreSQL refused a command") from None
            except OSError as exc:
                logger.debug("PostgreSQL is unreachable: %s", exc)
                raise BrokerUnavailable("PostgreSQL is unreachable") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- internals: the LISTEN link ----------------------------------------------------------

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
                            await conn.execute(self.schema_sql(self._schema))
                        self._schema_ready = True
                    await conn.execute(f"LISTEN {self._schema}")
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
            except (_LinkDown, TimeoutError, psycopg.Error, OSError, BrokerUnavailable) as exc:
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
                        await _close(conn)
            self._link_task.attempted()
            delay = min(self._max_delay, self._delay * 2**attempt)
            attempt = min(attempt + 1, 30)
            await anyio.sleep(delay * random.uniform(0.5, 1.0))

    async def _listen(self, conn: AsyncConnection[Any]) -> None:
        """Deliver notifications; check the link and poll every stream now and then."""
        await self._check_streams(reconnected=True)  # notifications sent while down are gone
        next_poll = anyio.current_time() + self._poll
        while True:
            async for notify in conn.notifies(timeout=self._health):
                await self._on_notify(notify.payload)
            try:
                with anyio.fail_after(self._timeout):
                    await conn.execute("SELECT 1")
            except TimeoutError:
                raise _LinkDown(f"no answer within {self._timeout} s") from None
            if anyio.current_time() >= next_poll:
                await self._check_streams()
                next_poll = anyio.current_time() + self._poll

    async def _on_notify(self, payload: str) -> None:
        try:
            wire = _WIRE.decode(payload)
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
            publication = _publication(
                wire.c, wire.e, wire.o, [wire.d, wire.f, wire.t, wire.s, wire.x, wire.k]
            )
        if publication is not None:
            self._pass_on(publication)

    async def _relayed(self, relay_id: int) -> Publication | None:
        async def read(conn: AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cursor = await conn.execute(
                f'SELECT channel, epoch, "offset", {_COLUMNS} FROM {self._schema}.relay'
                " WHERE id = %s",
                (relay_id,),
            )
            return await cursor.fetchone()

        row = await self._run(read, link=True)
        if row is None:
            logger.warning("relayed publication %d is gone (swept)", relay_id)
            return None
        channel, epoch, offset, *fields = row
        return _publication(str(channel), epoch, offset, fields)

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


async def _close(conn: AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception), anyio.move_on_after(1.0):
        await conn.close()


def _publication(
    channel: str, epoch: Any, offset: Any, fields: Sequence[Any]
) -> Publication | None:
    """A publication from a row's ``data, codec, ts, sender, exclude, kind``, or None (logged)."""
    data, codec, ts, sender, exclude, kind = fields
    try:
        if codec not in CODECS_BY_NAME or kind not in _KINDS:
            raise ValueError(f"codec {codec!r} or kind {kind!r} is not hubbub's")
        kind_: PublicationKind = kind
        return Publication(
            channel=channel,
            data=bytes(data),
            codec=str(codec),
            ts=int(ts),
            sender=None if sender is None else _CLIENT_INFO.decode(bytes(sender)),
            exclude=exclude,
            offset=None if offset is None else int(offset),
            epoch=None if epoch is None else str(epoch),
            kind=kind_,
        )
    except (ValueError, TypeError, RecursionError, msgspec.DecodeError) as exc:
        logger.warning("dropped an unreadable publication of %r: %s", channel, exc)
        return None
