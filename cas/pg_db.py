"""A PostgreSQL database shared by several processes: its connections, its transactions,
its versioned schema.

Used by :class:`cas.pg_meta.PgMetadata` (the store's metadata) and by the registry's
metadata on PostgreSQL. The driver is psycopg 3 with ``psycopg_pool`` (docs/storage.md
says why, with the measurements): the stores call their metadata from worker threads,
which is what a synchronous driver with a thread-safe pool serves directly.

Transactions. Every write transaction starts by taking one transaction-scoped advisory
lock (``pg_advisory_xact_lock``) per database *scope*, so the writers of one scope are
serialised across every process and replica, exactly as SQLite's ``BEGIN IMMEDIATE``
serialises them on one machine: the invariants the metadata contracts state (a piece
held by an ingest is never collected, exactly one of concurrent commits of a digest
wins, a link never points at a removed blob) keep holding with any number of replicas.
Readers never wait: each read is one statement in autocommit mode, which sees every
transaction committed before it began.

Schema versions. ``pybuild_schema(component, version)`` records each component's
version; :meth:`PgDatabase.migrate` applies the missing steps in one transaction under
the advisory lock, so two replicas migrating at once do it once. Opening a database whose
schema is older than this code knows is an error that names ``pybuild storage migrate``
(unless ``migrate=True``, as the registry's ``database.migrate`` asks at start); a schema
newer than it knows is refused: a replica never writes a schema it does not understand.
"""

from __future__ import annotations

import re
import select
import threading
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any

from .errors import StorageError, StorageFull, StorageNotWritable, StoreClosed

__all__ = ["DatabaseUnavailable", "Liveness", "PgDatabase", "SchemaMismatch", "SnapshotConnection",
           "closed_by_server", "live_connection", "mapped_errors", "redact", "unreachable"]

# Seconds a probe of a database seen down may take to connect (libpq's least is 2).
PROBE_TIMEOUT = 2


class SchemaMismatch(StorageError):
    """The database's schema is not the version this code needs (the message says
    whether to migrate or to upgrade pybuild)."""


class DatabaseUnavailable(StorageError):
    """The database cannot be reached or refused the connection."""


def redact(url: str) -> str:
    """The connection string (URI or ``key=value`` conninfo) without its password, for
    messages and logs."""
    if "://" not in url:
        return re.sub(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", "password=***", url)
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in cred else url


class Liveness:
    """Whether the database at ``url`` was last seen down, so that calls fail at once.

    A pool whose server is gone makes every caller wait its whole ``timeout`` for a
    connection it cannot open (a minute), where a client wants a quick 503 to retry or
    fail over. :func:`mapped_errors` marks the database down on a lost or refused
    connection; while it is, each call first probes it with one connection of its own
    (refused at once by a stopped server, :data:`PROBE_TIMEOUT` at most otherwise) and
    raises :class:`DatabaseUnavailable` if that fails. The first probe that connects
    clears the mark: the pool, reconnecting in the background, serves again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.down = False

    def check(self) -> None:
        if self.down:
            import psycopg

            with mapped_errors(self.url, self):
                psycopg.connect(self.url, connect_timeout=PROBE_TIMEOUT).close()
            self.down = False

    async def check_async(self) -> None:
        if self.down:
            import psycopg

            with mapped_errors(self.url, self):
                conn = await psycopg.AsyncConnection.connect(self.url, connect_timeout=PROBE_TIMEOUT)
                await conn.close()
            self.down = False


def closed_by_server(conn: Any) -> bool:
    """Whether pooled connection ``conn``, idle, was closed by the server (a restart, a
    failover, ``idle_session_timeout``): the server's goodbye waits on its socket, where
    an idle connection has nothing to read. One poll (no ``select``: its descriptors end
    at 1024), no round trip. The caller closes a connection found so, and the pool drops
    it when it is given back.

    Without this, the first statement on each such connection fails: after a database
    restart a replica that was idle meanwhile answers 503 once per pooled connection."""
    if conn.closed:
        return True
    poller = select.poll()
    try:
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


@asynccontextmanager
async def live_connection(pool: Any, liveness: Liveness) -> AsyncIterator[Any]:
    """A connection of asynchronous ``pool`` that the server has not closed
    (:func:`closed_by_server`); after dropping one, the database is probed (``liveness``),
    so a server still down fails at once instead of after the pool's timeout."""
    while True:
        async with pool.connection() as conn:
            if not closed_by_server(conn):
                yield conn
                return
            await conn.close()
        liveness.down = True
        await liveness.check_async()


class PgDatabase:
    """Connections to one PostgreSQL database for one component (``cas`` or
    ``registry``), whose schema is ``migrations`` (step n is the SQL taking the schema
    from version n-1 to n). Thread-safe; :meth:`close` waits for the calls in flight and
    later calls raise :class:`~cas.errors.StoreClosed`."""

    def __init__(self, url: str, component: str, migrations: Sequence[str], *,
                 migrate: bool = False, check: bool = True, max_size: int = 16) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover - the extra is not installed
            raise DatabaseUnavailable(
                "PostgreSQL metadata needs psycopg: pip install 'psycopg[binary]>=3.1' "
                "'psycopg-pool>=3.2' (pybuild's postgres extra: pip install '.[postgres]' in "
                "its checkout)") from exc
        self.url = url
        self.component = component
        self._migrations = list(migrations)
        self._lock_id = zlib.crc32(f"pybuild:{component}".encode())
        self._cond = threading.Condition()
        self._busy = 0
        self._closed = False
        self.liveness = Liveness(url)
        try:  # one plain connection first: a wrong address fails at once, with its reason
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise unreachable(url, exc) from exc
        self._pool = ConnectionPool(url, min_size=1, max_size=max_size, open=False,
                                    kwargs={"autocommit": True}, timeout=60)
        try:
            self._pool.open(wait=True, timeout=30)
        except Exception as exc:
            self._pool.close()
            raise unreachable(url, exc) from exc
        try:
            if check:
                self._check_schema(migrate)
        except BaseException:
            self._pool.close()
            raise

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._busy:
                self._cond.wait()
        self._pool.close()

    @contextmanager
    def _using(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise StoreClosed(f"metadata database {redact(self.url)}")
            self._busy += 1
        try:
            self.liveness.check()
            yield
        finally:
            with self._cond:
                self._busy -= 1
                if not self._busy:
                    self._cond.notify_all()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection that the server has not closed (:func:`closed_by_server`);
        after dropping one, the database is probed, so a server still down fails at once
        instead of after the pool's timeout."""
        while True:
            with self._pool.connection() as conn:
                if not closed_by_server(conn):
                    yield conn
                    return
                conn.close()
            self.liveness.down = True
            self.liveness.check()

    # -- statements --------------------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """A write transaction holding this component's advisory lock: the writers of
        every process are serialised."""
        with self._using(), self._mapped(), self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_id,))
            yield conn

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A connection in autocommit mode: each statement sees the last commit."""
        with self._using(), self._mapped(), self._connection() as conn:
            yield conn

    def q(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self.reading() as conn:
            return list(conn.execute(sql, args).fetchall())

    @contextmanager
    def snapshot_connection(self) -> Iterator[Any]:
        """A connection inside one REPEATABLE READ, READ ONLY transaction: every
        statement sees the same moment."""
        with self._using(), self._mapped(), self._connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                conn.execute("SELECT 1").fetchone()  # the snapshot is taken here
                yield conn
            finally:
                conn.execute("ROLLBACK")

    def _mapped(self) -> AbstractContextManager[None]:
        return mapped_errors(self.url, self.liveness)

    # -- schema ------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """The version this code writes and reads."""
        return len(self._migrations)

    def stored_version(self) -> int:
        rows = self.q("SELECT to_regclass('pybuild_schema') IS NOT NULL")
        if not rows[0][0]:
            return 0
        got = self.q("SELECT version FROM pybuild_schema WHERE component = %s", (self.component,))
        return int(got[0][0]) if got else 0

    def _check_schema(self, migrate: bool) -> None:
        have, want = self.stored_version(), self.schema_version
        if have > want:
            raise SchemaMismatch(
                f"the {self.component} schema in {redact(self.url)} is version {have}, newer "
                f"than this pybuild knows ({want}): upgrade pybuild on this machine before "
                "it serves from this database")
        if have < want:
            if not migrate:
                raise SchemaMismatch(
                    f"the {self.component} schema in {redact(self.url)} is at version {have}, "
                    f"this pybuild needs {want}: run `pybuild storage migrate` (or set "
                    "`database.migrate: true` in the registry's config, PYBUILD_DATABASE_MIGRATE=1)")
            self.migrate()

    def migrate(self) -> tuple[int, int]:
        """Apply the missing schema steps in one transaction (the advisory lock makes
        concurrent migrations wait, then find nothing to do); (from, to) versions."""
        with self.tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS pybuild_schema("
                         "component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM pybuild_schema WHERE component = %s",
                               (self.component,)).fetchone()
            have = int(row[0]) if row else 0
            if have > self.schema_version:
                raise SchemaMismatch(
                    f"the {self.component} schema in {redact(self.url)} is version {have}, newer "
                    f"than this pybuild knows ({self.schema_version}): upgrade pybuild on this "
                    "machine; a newer pybuild migrated this database already")
            for step in self._migrations[have:]:
                conn.execute(step)
            conn.execute("INSERT INTO pybuild_schema(component, version) VALUES (%s, %s) "
                         "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                         (self.component, self.schema_version))
        return have, self.schema_version


@contextmanager
def mapped_errors(url: str, liveness: Liveness | None = None) -> Iterator[None]:
    """Raise the driver's errors of the database at ``url`` as the store's: a full disk as
    :class:`~cas.errors.StorageFull`, a read-only server as
    :class:`~cas.errors.StorageNotWritable`, a lost or refused connection as
    :class:`DatabaseUnavailable`, each naming the database (without its password). Also
    around asynchronous calls (the registry's metadata). A lost connection marks
    ``liveness`` down."""
    import psycopg

    try:
        yield
    except psycopg.errors.DiskFull as exc:
        raise StorageFull("the metadata database", redact(url), _first_line(exc)) from exc
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise StorageNotWritable(redact(url), f"read-only: {_first_line(exc)}") from exc
    except psycopg.OperationalError as exc:  # also the pool's timeout (PoolTimeout)
        if liveness is not None:
            liveness.down = True
        raise DatabaseUnavailable(f"PostgreSQL at {redact(url)}: {_first_line(exc)}") from exc


def unreachable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """The error for a database that cannot be reached, naming it (without its password)."""
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {redact(url)}: {_first_line(exc)}; check the "
        "database settings (host, port, user, password, dbname) and that the server is running")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def open_async_pool(url: str, *, max_size: int, wait: float) -> Any:
    """An open ``psycopg_pool.AsyncConnectionPool`` of autocommit connections to ``url``
    (a request waits up to ``wait`` s for a free connection); a database that cannot be
    reached within 30 s is :func:`unreachable`."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False,
                               kwargs={"autocommit": True}, timeout=wait)
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:
        await pool.close()
        raise unreachable(url, exc) from exc
    return pool


class SnapshotConnection:
    """What :class:`~cas.pg_meta.PgMetadata`'s reads need, on one connection inside one
    REPEATABLE READ transaction (``PgMetadata.snapshot``); writes are refused."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql, args).fetchall())

    @contextmanager
    def reading(self) -> Iterator[Any]:
        yield self._conn

    snapshot_connection = reading

    def tx(self) -> Any:
        raise RuntimeError("a metadata snapshot is read-only")

    def close(self) -> None:
        pass
