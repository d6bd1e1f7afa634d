"""The MetadataStore on PostgreSQL: shared by every cache replica, deletions told by NOTIFY."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from cache.metadata import (
    FIELDS,
    ImageRecord,
    IntentLost,
    Page,
    page_of,
    page_query,
)
from cache.metadata.fanout import DeletionFanout
from cache.metadata.migrate import migrate
from cache.storage import StorageFull, StorageUnavailable
from common.ids import parse_image_id

log = logging.getLogger("metadata")

ENGINE = "PostgreSQL"
CHANNEL = "imagesvc_deletions"
# How long opening waits for PostgreSQL to answer: replicas and the database often start
# together, and a database a few seconds late should not cost a crash and a restart.
START_TIMEOUT = 30.0
# What a database that is down, restarting, cut off or failed over to a read-only
# standby raises: the call may succeed later (UNAVAILABLE), it is no bug of ours.
_ENGINE_DOWN = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
    TimeoutError,
)
# Every call gives up after CALL_TIMEOUT, so a database that is down or cut off costs a
# caller a few seconds and an UNAVAILABLE, never a hang.
CALL_TIMEOUT = 5.0
POOL_TIMEOUT = 4.0
MAX_CONNECTIONS = 10
# The pool backs off between attempts to replace a lost connection (1 s, 2 s, 4 s...);
# giving up after this long lets the next call start again from an immediate attempt,
# so a database back after a long outage is used within seconds, not minutes.
RECONNECT_SECONDS = 10.0
# The LISTEN connection is otherwise silent: it is pinged this often, so a connection cut
# off without a word (no reset) is noticed within PING_SECONDS + CALL_TIMEOUT.
PING_SECONDS = 10.0

# The URL's own parameters win over these.
_DEFAULTS = {
    "connect_timeout": "2",  # libpq's least
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "imageservice-cache",
}

_COLUMNS = ", ".join(FIELDS)
_INSERT = (
    "WITH cleared AS (DELETE FROM intents WHERE id = %s AND kind = 'put' RETURNING id) "
    f"INSERT INTO images ({_COLUMNS}) "
    f"SELECT {', '.join(['%s'] * len(FIELDS))} FROM cleared"
)
_DELETE = (
    "WITH gone AS (DELETE FROM images WHERE id = %(id)s RETURNING id), "
    "intent AS (INSERT INTO intents (id, kind, created_ns) SELECT id, 'delete', %(now)s "
    "FROM gone ON CONFLICT (id) DO UPDATE SET kind = 'delete', created_ns = EXCLUDED.created_ns) "
    # NOTIFY inside the statement's transaction: PostgreSQL sends it on commit, never
    # for a delete that rolled back.
    "SELECT pg_notify(%(channel)s, id) FROM gone"
)
_UNFINISHED = (
    "WITH swept AS (UPDATE intents SET kind = 'delete' WHERE kind = 'put' AND created_ns < %s "
    "RETURNING id, created_ns) "
    "SELECT id, created_ns FROM swept "
    "UNION ALL SELECT id, created_ns FROM intents WHERE kind = 'delete' "
    "ORDER BY created_ns"
)

Connection = psycopg.AsyncConnection[TupleRow]


def conninfo(url: str) -> str:
    """libpq's connection string for a postgresql:// or postgres:// URL, with this
    store's timeouts and keepalives; psycopg.ProgrammingError if libpq cannot parse it."""
    params: dict[str, Any] = {**_DEFAULTS, **conninfo_to_dict(url)}
    return make_conninfo(**params)


def _where(info: str) -> str:
    """host:port/dbname, for messages: never the password."""
    params = conninfo_to_dict(info)
    return (
        f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
    )


def _detail(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


class PostgresMetadataStore:
    """PostgreSQL through a pool that reconnects by itself; open it with `open`.

    Every engine failure (no connection, a lost one, a pool or call timeout) surfaces
    as StorageUnavailable within CALL_TIMEOUT seconds. Deletions reach every replica by
    NOTIFY on one dedicated LISTEN connection per store, fanned out in process.
    """

    def __init__(self, pool: AsyncConnectionPool[Connection], info: str) -> None:
        self._pool = pool
        self._info = info
        self._where = _where(info)
        self._fanout = DeletionFanout(live=False)
        self._listening = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, start_timeout: float = START_TIMEOUT) -> PostgresMetadataStore:
        """Connect, apply pending migrations and start listening for deletions.

        PostgreSQL not answering yet is retried for start_timeout seconds; after that,
        StorageUnavailable names the server and the last error, and the service fails to
        start (the launcher or orchestrator restarts it).
        """
        info = conninfo(url)
        where = _where(info)
        deadline = asyncio.get_running_loop().time() + start_timeout
        first = await _connect_until(info, where, deadline, start_timeout)
        async with first:
            try:
                applied = await migrate(first)
            except psycopg.OperationalError as e:
                raise StorageUnavailable(ENGINE, f"{where}: migrating: {_detail(e)}") from e
        if applied:
            log.info("applied migrations", extra={"versions": applied, "database": where})
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            info,
            min_size=1,
            max_size=MAX_CONNECTIONS,
            open=False,
            timeout=POOL_TIMEOUT,
            reconnect_timeout=RECONNECT_SECONDS,
            kwargs={"autocommit": True},
            # A pooled connection the server dropped (a restart, a failover) is replaced
            # before use instead of failing one call each.
            check=AsyncConnectionPool.check_connection,
            name="metadata",
        )
        store = cls(pool, info)
        try:
            await pool.open(wait=True, timeout=_remaining(deadline))
            store._listener = asyncio.create_task(store._listen(), name="metadata-listen")
            async with asyncio.timeout(_remaining(deadline)):
                await store._listening.wait()
        except (psycopg.OperationalError, TimeoutError) as e:
            await store.close()
            raise StorageUnavailable(ENGINE, f"{where}: {_detail(e)}") from e
        except BaseException:
            await store.close()
            raise
        return store

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        try:
            async with asyncio.timeout(CALL_TIMEOUT), self._pool.connection() as conn:
                yield conn
        except psycopg.errors.DiskFull as e:
            # An OperationalError too, but no retry helps until someone makes room.
            raise StorageFull(ENGINE, f"{self._where}: {_detail(e)}") from e
        except _ENGINE_DOWN as e:
            raise StorageUnavailable(ENGINE, f"{self._where}: {_detail(e)}") from e

    async def intend(self, image_id: str, now_ns: int) -> None:
        """Record that image_id's blob is about to be written."""
        # DO NOTHING: ids are random, so an intent already there is this upload's own
        # (kept with its first time) or a delete's, which insert then refuses.
        sql = (
            "INSERT INTO intents (id, kind, created_ns) VALUES (%s, 'put', %s) "
            "ON CONFLICT (id) DO NOTHING"
        )
        async with self._connection() as conn:
            await conn.execute(sql, (image_id, now_ns))

    async def insert(self, record: ImageRecord) -> None:
        """Insert record and clear its put intent in one statement; IntentLost if none."""
        values = (record.id, *(getattr(record, name) for name in FIELDS))
        async with self._connection() as conn:
            cursor = await conn.execute(_INSERT, values)
            inserted = cursor.rowcount
        if inserted == 0:
            raise IntentLost(f"image {record.id}: its upload intent was swept as stale")

    async def get(self, image_id: str) -> ImageRecord | None:
        """image_id's record, or None."""
        async with self._connection() as conn:
            cursor = await conn.execute(f"SELECT {_COLUMNS} FROM images WHERE id = %s", (image_id,))
            row = await cursor.fetchone()
        return None if row is None else ImageRecord(*row)

    async def list(self, owner: str, page_size: int, page_token: str, sha256: str = "") -> Page:
        """owner's records, newest first, by keyset pagination on images_by_owner (with
        sha256, on images_by_owner_sha256)."""
        sql, args = page_query(_COLUMNS, owner, page_size, page_token, "%s", sha256)
        async with self._connection() as conn:
            cursor = await conn.execute(sql, args)
            rows = await cursor.fetchall()
        return page_of(rows, page_size)

    async def delete(self, image_id: str, now_ns: int) -> bool:
        """Remove the record and record a delete intent in one statement, NOTIFYing every
        replica on commit; False if there was no record."""
        args = {"id": image_id, "now": now_ns, "channel": CHANNEL}
        async with self._connection() as conn:
            cursor = await conn.execute(_DELETE, args)
            deleted = cursor.rowcount
        return deleted > 0

    async def unfinished(self, stale_before_ns: int) -> builtins.list[str]:
        """Every delete intent's id, and the put intents' recorded before stale_before_ns.

        A stale put intent becomes a delete intent here, in the same statement: an
        upload still under way then fails with IntentLost rather than inserting a
        record whose blob recovery is about to remove.
        """
        async with self._connection() as conn:
            cursor = await conn.execute(_UNFINISHED, (stale_before_ns,))
            rows = await cursor.fetchall()
        return [row[0] for row in rows]

    async def finish(self, image_id: str) -> None:
        """Clear image_id's intent: its blob and variants are gone."""
        async with self._connection() as conn:
            await conn.execute("DELETE FROM intents WHERE id = %s", (image_id,))

    def deletions(self) -> AsyncIterator[str]:
        """Ids deleted through any replica from now on; DeletionsMissed when the LISTEN
        connection was lost (or this consumer fell behind)."""
        return self._fanout.subscribe()

    async def _listen(self) -> None:
        """Hold a LISTEN connection, reconnecting after a loss, and fan out what it hears."""
        delay = 0.25
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._info, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._fanout.connected()
                    self._listening.set()
                    delay = 0.25
                    while True:
                        async for notify in conn.notifies(timeout=PING_SECONDS):
                            # Anyone with access to the database may NOTIFY.
                            with contextlib.suppress(ValueError):
                                self._fanout.publish(parse_image_id(notify.payload))
                        async with asyncio.timeout(CALL_TIMEOUT):
                            await conn.execute("SELECT 1")
            # Anything, not only psycopg's errors: a listener that died quietly would
            # leave every replica's hot copies of deleted images served forever.
            except Exception as e:
                log.warning(
                    "no connection to hear deletions on",
                    extra={"database": self._where, "error": _detail(e)},
                )
                self._fanout.lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """Stop listening, end every deletions() iterator and close the pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        self._fanout.close()
        await self._pool.close()


async def _connect_until(info: str, where: str, deadline: float, span: float) -> Connection:
    """A connection, retried with backoff until deadline; StorageUnavailable after."""
    loop = asyncio.get_running_loop()
    delay = 0.25
    while True:
        try:
            return await psycopg.AsyncConnection.connect(info, autocommit=True)
        except psycopg.OperationalError as e:
            if loop.time() + delay >= deadline:
                raise StorageUnavailable(
                    ENGINE, f"{where}: {_detail(e)} (tried for {span:g} s at start)"
                ) from e
            log.warning(
                "PostgreSQL not answering yet", extra={"database": where, "error": _detail(e)}
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


def _remaining(deadline: float) -> float:
    # At least a second: the connection just made shows the server is there.
    return max(deadline - asyncio.get_running_loop().time(), 1.0)
