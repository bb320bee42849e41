"""The PostgreSQL broker's connections: a small pool of autocommit connections for
commands, one more for the ``LISTEN`` link's own reads, and the reads both share.

A call runs within the broker's ``timeout``; database trouble becomes
:class:`hubbub.BrokerUnavailable`, a full pool *busy* rather than *unreachable*,
and a pooled connection found dead (the database restarted) is replaced once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, get_args

import anyio
import msgspec

from .._errors import BrokerUnavailable, InternalError
from ..messages import CODECS_BY_NAME, ClientInfo
from ._base import Publication, PublicationKind
from ._link import LinkTask

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "CLIENT_INFO",
    "COLUMNS",
    "ENCODER",
    "Connections",
    "close",
    "publication_of",
]

logger = logging.getLogger("hubbub.postgres")

_T = TypeVar("_T")

BUSY_LOG_EVERY: Final = 10.0  # seconds between "busy" warnings (one per burst, not per call)
KINDS: Final = frozenset(get_args(PublicationKind))
ENCODER: Final = msgspec.msgpack.Encoder()
CLIENT_INFO: Final = msgspec.msgpack.Decoder(ClientInfo)
COLUMNS: Final = "data, codec, ts, sender, exclude, kind"


class Connections:
    """The connection half of :class:`~hubbub.brokers.postgres.PostgresBroker`.

    A mixin: it shares the broker's state (declared below, set by the broker's
    ``__init__``).
    """

    _conninfo: str
    _schema: str
    _timeout: float
    _connect_options: dict[str, Any]
    _slots: anyio.Semaphore
    _pool_size: int
    _idle: list[AsyncConnection[Any]]
    _link_slot: anyio.Semaphore
    _link_idle: list[AsyncConnection[Any]]
    _busy_logged: float
    _link_task: LinkTask

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
                        await close(conn)

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
                    if now >= self._busy_logged + BUSY_LOG_EVERY:
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
                            await close(conn)
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
            f'SELECT "offset", {COLUMNS} FROM {self._schema}.publications'
            ' WHERE channel = %s AND epoch = %s AND "offset" > %s AND "offset" <= %s'
            f' ORDER BY "offset" {"DESC" if newest else "ASC"} LIMIT %s',
            (channel, epoch, max(after, 0), upto, limit),
        )
        publications = []
        for offset, *fields in await cursor.fetchall():
            publication = publication_of(channel, epoch, offset, fields)
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


async def close(conn: AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception), anyio.move_on_after(1.0):
        await conn.close()


def publication_of(
    channel: str, epoch: Any, offset: Any, fields: Sequence[Any]
) -> Publication | None:
    """A publication from a row's ``data, codec, ts, sender, exclude, kind``, or None (logged)."""
    data, codec, ts, sender, exclude, kind = fields
    try:
        if codec not in CODECS_BY_NAME or kind not in KINDS:
            raise ValueError(f"codec {codec!r} or kind {kind!r} is not hubbub's")
        kind_: PublicationKind = kind
        return Publication(
            channel=channel,
            data=bytes(data),
            codec=str(codec),
            ts=int(ts),
            sender=None if sender is None else CLIENT_INFO.decode(bytes(sender)),
            exclude=exclude,
            offset=None if offset is None else int(offset),
            epoch=None if epoch is None else str(epoch),
            kind=kind_,
        )
    except (ValueError, TypeError, RecursionError, msgspec.DecodeError) as exc:
        logger.warning("dropped an unreadable publication of %r: %s", channel, exc)
        return None
