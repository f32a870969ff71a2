"""Embedded state in one SQLite file (WAL mode): shared by the processes of one machine.

Every read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, so several worker processes (each
with its own :class:`SqliteStore`) count exactly once; committed writes survive a crash of the
process (``synchronous=NORMAL`` in WAL mode only risks the last transactions on a power loss, never
the database's integrity). Inside a transaction the counters, buckets, list items, set members and
audit rows are held back and written just before the commit (:mod:`~modeltheft.state.sqlite_cache`),
and a service shares one transaction among the requests of a turn of its event loop
(:meth:`SqliteStore.open_group`, :mod:`~modeltheft.state.group`): each request is answered after the
commit that holds it.

A write that cannot get the database's lock within the busy timeout (2 s by default: another
process holds a long write transaction), that meets a disk error, a damaged page or a
read-only file raises :class:`~modeltheft.errors.StateUnavailable` (HTTP 503 in the service):
nothing is answered without its state, and nothing already stored is touched. A file deleted
or replaced while in use raises :class:`~modeltheft.state.base.StateLost` from then on (it is
never recreated behind the service's back).
"""

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import NoReturn, TypeVar, cast

from modeltheft.errors import ConfigError, ModelTheftError, StateUnavailable
from modeltheft.state.audit import AuditEntry
from modeltheft.state.base import BucketState, StateLost, refill, withdraw
from modeltheft.state.sqlite_cache import Cache
from modeltheft.state.sqlite_checkpoint import WAL_LIMIT, Checkpointer
from modeltheft.state.sqlite_file import (
    CHECK_TIMEOUT,
    FileIdentity,
    check_integrity,
    database_uri,
    in_use,
    leftovers,
    read_only_reason,
)

T = TypeVar("T")
log = logging.getLogger("modeltheft.state")

BUSY_TIMEOUT = 2.0
"""Seconds a write waits for another process's lock before the store gives up (503)."""
LOCK_POLL = 0.0002
"""Seconds between two tries for the database's write lock held by another process."""
OPEN_TIMEOUT = 10.0
"""Seconds opening a database may retry the locks that the busy handler does not wait for."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lists (
    key TEXT NOT NULL, idx INTEGER NOT NULL, item BLOB NOT NULL, PRIMARY KEY (key, idx)
);
CREATE TABLE IF NOT EXISTS sets (
    key TEXT NOT NULL, member TEXT NOT NULL, PRIMARY KEY (key, member)
);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY, tokens REAL NOT NULL, last REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, client TEXT NOT NULL, entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, key TEXT NOT NULL);
"""

CACHE_LIMIT = 50_000
"""Cached reads (counters, list lengths, buckets) a connection keeps: past it, the oldest are
dropped down to half of it (about 150 B each: at most ~8 MB; `recommended` keeps ~30 keys a
client, so the cache holds the reads of the last ~800-1,600 clients seen)."""
MEMBERS_LIMIT = 20_000
"""Set members a connection knows to be there: past it, those of the oldest sets are dropped
down to half of it (a "seen" row's digest, ~90 B each: at most ~2 MB, kept small because a
`serve` worker's RSS target leaves a few MB). They answer a row sent again without a
statement."""
CHANGES_READ = 10_000
"""Keys changed by other connections read at most; past that, the whole cache starts over."""
CHANGES_KEPT = 100_000
"""Rows of the ``changes`` log kept (a connection that lags further starts over)."""
PRUNE_EVERY = 64
"""Commits between two prunings of the ``changes`` log (each deletes ~1,000 rows under load,
~0.3 ms; every 1,024 commits it was ~14,000 rows, a 7 ms stall of every request in flight)."""


class SqliteStore:
    """State in the SQLite database at ``path``.

    A missing file is created with its folder (``create=False`` refuses instead, for tools
    that only read and for the workers of a running service) and logged at WARNING with its
    path, so that starting on a new, empty state is never silent. A folder that cannot be
    created, a file that is not a SQLite database, one that fails its integrity check (for
    ``check_timeout`` seconds at most) or one that cannot be written is a
    :class:`~modeltheft.errors.ConfigError` at once. Writes wait ``busy_timeout`` seconds for
    another process's lock, then raise :class:`~modeltheft.errors.StateUnavailable`.

    Every write (and :meth:`ping`) first compares the file at ``path`` with the one opened
    (device and inode, one ``stat``): deleted or replaced, the store raises :class:`StateLost`
    from then on, reads included; without any write permission bit, StateUnavailable.
    ``read_only=True`` opens an existing file with SQLite's ``mode=ro`` for tools that only
    read: nothing is created, migrated or written (a write raises StateUnavailable).

    One connection per store, guarded by a lock, so a store may be shared by threads. A store
    used after ``fork`` opens its own connection in the child (SQLite connections must not
    cross a fork).
    """

    transactions = True
    """Whether calls share transactions (batches; group commit: :mod:`modeltheft.state.group`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        busy_timeout: float = BUSY_TIMEOUT,
        create: bool = True,
        check_timeout: float = CHECK_TIMEOUT,
        read_only: bool = False,
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        create = create and not read_only
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.RLock()  # re-entered by the calls inside a batch()
        self._depth = 0
        # Cached reads and held-back writes, valid while no other connection commits
        # (PRAGMA data_version is checked as each transaction starts).
        self._version: int | None = None
        self._changes: int | None = None  # the last row of ``changes`` this connection knows
        self._commits = 0
        self._cache = Cache()
        self._group = False  # a group transaction is open (open_group … close_group)
        self._saved = False  # the current unit of the group took its savepoint
        self._group_error: StateUnavailable | None = None
        self._checkpointer: Checkpointer | None = None
        self._conn: sqlite3.Connection | None = None
        self._waits = True  # the connection's busy timeout is busy_timeout (else 0)
        self._pid = os.getpid()
        self._closed = False
        self._identity: FileIdentity | None = None
        self._lost: str | None = None
        try:
            if "\x00" in self.path:
                raise ValueError("embedded null byte")
            new = self.path != ":memory:" and not Path(self.path).exists()
            self._database = database_uri(self.path, create=False)
            if read_only and self.path != ":memory:":  # nothing created, migrated or written
                self._database = (self._database[0].replace("?mode=rw", "?mode=ro"), True)
        except (OSError, ValueError) as exc:  # a NUL, a lone surrogate, a name too long
            reason = exc.strerror if isinstance(exc, OSError) else exc
            raise ConfigError(f"invalid state database path {self.path!r}: {reason}") from None
        stale = leftovers(self.path) if new else []
        if new and not create:
            hint = f" (yet {' and '.join(stale)} are there: deleted while in use?)" if stale else ""
            raise ConfigError(f"no state database at {self.path}{hint}")
        if new:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the folder of state database {self.path}: {exc.strerror}"
                ) from None
        with self._lock:
            self._conn = self._open(new, create, stale, check_timeout)
        if new:
            lost = f" ({' and '.join(stale)} of a deleted one were there)" if stale else ""
            log.warning(
                "created a new, empty state database at %s%s: budgets, rate limits and the "
                "audit start empty",
                self.path,
                lost,
            )

    def _open(
        self, new: bool, create: bool, stale: list[str], check_timeout: float
    ) -> sqlite3.Connection:
        """The first connection: created if ``new``, checked, and its file's identity kept.

        A read-only file is refused when the store may create (a service starting); readers
        (``create=False``: the audit tool, a service's workers) open it, and writes are refused.
        """
        if self.path == ":memory:":
            return self._connect(ConfigError)
        if not new:
            if create and not self.read_only:
                self._refuse_read_only()
            conn = self._connect(ConfigError)
        else:
            conn = self._create(stale)
        try:
            self._identity = FileIdentity.of(os.stat(self.path))
            if not new:
                check_integrity(conn, self.path, check_timeout)
        except (OSError, sqlite3.Error) as exc:
            conn.close()
            if isinstance(exc, OSError):
                reason = exc.strerror
                raise ConfigError(f"cannot use state database {self.path}: {reason}") from None
            raise ConfigError(
                f"state database {self.path} is damaged ({' '.join(str(exc).split())}): "
                "restore it from a backup, or move it away to start on an empty state"
            ) from None
        return conn

    def _refuse_read_only(self) -> None:
        """ConfigError for a file (or file system) the service may not write."""
        try:
            problem = read_only_reason(self.path, os.stat(self.path), mount=True)
        except OSError as exc:
            raise ConfigError(f"cannot use state database {self.path}: {exc.strerror}") from None
        if problem is not None:
            raise ConfigError(f"{problem}: the service must write every request's state")

    def _create(self, stale: list[str]) -> sqlite3.Connection:
        """Create the missing file, unless the WAL files of a deleted one are still in use.

        Beside WAL files no process holds (a service killed after the deletion), SQLite
        discards them as it creates the new file. Beside WAL files in use, the new file would
        share them with a database that is gone: refused.
        """
        if stale:
            shm = self.path + "-shm"
            used = in_use(shm) if os.path.exists(shm) else False
            if used is not False:
                what = (
                    "a process still uses them (a service still running on the deleted file?): "
                    "stop it, then start again"
                    if used
                    else "a process may still use them: stop any service that ran on it, "
                    "then delete them to start on an empty state"
                )
                raise ConfigError(
                    f"no state database at {self.path}, yet {' and '.join(stale)} of a deleted "
                    f"one are there and {what}"
                )
        return self._connect(ConfigError, create=True)

    def _connect(self, fault: type[ModelTheftError], create: bool = False) -> sqlite3.Connection:
        """Open, configure and migrate a connection; an unusable file raises ``fault``.

        The file is created only if ``create``: a reconnection (after ``fork``) never makes a
        new database where the old one went missing.
        """
        conn: sqlite3.Connection | None = None
        database, uri = database_uri(self.path, create) if create else self._database
        try:
            conn = sqlite3.connect(
                database,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if self.read_only:  # a file that is not a database fails here, not at first use
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            # Several processes may open a new file at once: switching to WAL and creating
            # the tables can meet a lock that the busy handler does not wait for; retry then.
            deadline = time.monotonic() + OPEN_TIMEOUT
            while True:
                try:
                    conn.execute("PRAGMA journal_mode = WAL").fetchone()
                    conn.execute("PRAGMA synchronous = NORMAL")
                    if self.path != ":memory:":  # checkpoints run in a thread (see below)
                        conn.execute("PRAGMA wal_autocheckpoint = 0")
                        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
                    conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
                    break
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: a NUL or lone surrogate
            if conn is not None:
                conn.close()
            reason = " ".join(str(exc).split())
            raise fault(f"cannot use {self.path} as a state database: {reason}") from None
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ConfigError(f"state database {self.path} was closed")
        if self._conn is None or self._pid != os.getpid():
            # After a fork the parent's connection belongs to the parent: leave it alone.
            self._conn, self._pid = self._connect(StateUnavailable), os.getpid()
            self._waits = True
            self._version = self._changes = None
            self._checkpointer = None  # the parent's thread did not cross the fork
        if self._checkpointer is None and not self.read_only and self.path != ":memory:":
            self._checkpointer = Checkpointer(*self._database)
        return self._conn

    def _outside(self, conn: sqlite3.Connection) -> None:
        """Before reads outside a transaction: :meth:`_patient`, then :meth:`_validate`."""
        self._patient(conn)
        self._validate(conn)

    def _patient(self, conn: sqlite3.Connection) -> None:
        """Before statements outside a transaction: SQLite's busy handler waits up to
        ``busy_timeout`` again (a read may meet another process's WAL recovery, say), if a
        transaction set it to 0 (:meth:`_lock_database`). A service runs everything in
        transactions, so it sets it once, not twice per transaction."""
        if not self._waits:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._waits = True

    def _validate(self, conn: sqlite3.Connection) -> None:
        """Drop the cached reads that another connection changed since the last call: the
        keys it logged in ``changes``, or everything if that log cannot tell."""
        if len(self._cache) > CACHE_LIMIT:  # between units: nothing is held, no undo notes
            self._cache.shrink(CACHE_LIMIT // 2)
        if self._cache.member_count > MEMBERS_LIMIT:
            self._cache.shrink_members(MEMBERS_LIMIT // 2)
        (version,) = conn.execute("PRAGMA data_version").fetchone()
        if version == self._version:
            return
        if self.read_only:  # an older file may lack the log, and nothing is written here
            self._cache.forget()
            self._version = version
            return
        known = self._changes
        if known is not None:
            rows = conn.execute(
                "SELECT seq, key FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (known, CHANGES_READ + 1),
            ).fetchall()
            if len(rows) <= CHANGES_READ and (not rows or rows[0][0] == known + 1):
                self._cache.invalidate([key for _, key in rows])
                self._changes = rows[-1][0] if rows else known
                self._version = version
                return
        self._cache.forget()
        (self._changes,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()
        self._version = version

    def _verify(self) -> None:
        """Refuse if the file was deleted, replaced or made read-only since it was opened."""
        if self._identity is None or self._closed:
            return
        try:
            result = os.stat(self.path)
        except FileNotFoundError:
            self._lose("was deleted")
        except OSError as exc:
            raise StateUnavailable(
                f"cannot check state database {self.path}: {exc.strerror}"
            ) from None
        if FileIdentity.of(result) != self._identity:
            self._lose("was replaced by another file")
        reason = read_only_reason(self.path, result)
        if reason:
            raise StateUnavailable(reason)

    def _lose(self, what: str) -> NoReturn:
        """Remember for good that the file ``what`` (deleted, replaced); log it once."""
        self._lost = (
            f"state database {self.path} {what} while in use: every request is refused and "
            "nothing is recreated; restore the file and restart the service"
        )
        log.error("%s", self._lost)
        raise StateLost(self._lost)

    @contextmanager
    def _faults(self, write: bool) -> Iterator[None]:
        """Turn any SQLite failure (locked, busy, disk error, damaged page, read-only) into
        :class:`StateUnavailable`; before a write, :meth:`_verify` the file (one ``stat``: the
        reads, cheaper than a write, only learn of a lost file from the writes)."""
        if self._lost is not None:
            raise StateLost(self._lost)
        try:
            if write:
                self._verify()
            yield
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def batch(self) -> AbstractContextManager[None]:
        """The calls inside as one unit: one transaction, its writes held back to the commit.

        Outside a group: one ``BEGIN IMMEDIATE`` and one commit, where the counters, buckets, list
        items, set members and audit rows written inside reach the database in one ``executemany``
        per table (measured with `recommended`: ~29 transactions a request before batches, ~17
        statements with one, ~6 with the writes held back). Inside a group (:meth:`open_group`): a
        unit of the group's transaction, committed with it (taken back alone by undo notes, and by a
        savepoint if it wrote anything directly).

        Other threads wait for the batch; nested batches join the outer one. A domain refusal
        raised inside (429, 403: decisions already recorded) keeps the batch's writes; any
        other error takes them all back (and fails the whole group if the store itself
        failed). Each worker process holds the database's write lock for its transaction, so
        keep a batch to one request.
        """
        return cast("AbstractContextManager[None]", self._unit())  # (it gives the connection)

    def open_group(self) -> None:
        """Start a transaction that every later batch (and call) joins, as a unit, until
        :meth:`close_group` commits them all at once (group commit: the requests answered in
        one turn of a service's event loop share one commit; each is answered after it)."""
        with self._lock:
            if self._group or self._depth:
                raise RuntimeError("open_group inside a transaction")
            self._begin()
            self._group, self._group_error, self._saved = True, None, False

    def close_group(self) -> None:
        """Commit the group (its held-back writes first). StateUnavailable if the commit or
        any batch of the group met a store failure: then nothing of the group is kept."""
        with self._lock:
            if not self._group:
                return
            self._group = False
            error, self._group_error = self._group_error, None
            if error is not None:  # rolled back when it happened
                raise error
            self._commit(self._connection())

    def _begin(self) -> sqlite3.Connection:
        """``BEGIN IMMEDIATE`` after checking the file; cached reads dropped if stale. (What
        :meth:`_faults` does, inline: it runs once a transaction.)"""
        if self._lost is not None:
            raise StateLost(self._lost)
        try:
            self._verify()
            conn = self._connection()
            self._lock_database(conn)
            try:
                self._validate(conn)  # with the write lock held: nobody commits until we do
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        return conn

    def _unavailable(self, exc: BaseException) -> StateUnavailable:
        """The StateUnavailable that a SQLite failure ``exc`` raises."""
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return StateUnavailable(f"state database {self.path} is unavailable: {reason}")

    def _lock_database(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, retried every ``LOCK_POLL`` seconds for ``busy_timeout``.

        SQLite's own busy handler sleeps up to 100 ms between tries: against a worker that
        commits and begins again within a fraction of a millisecond, it rarely finds the lock
        free and waits seconds (measured: 1.3 s, then 503, while the other worker committed
        900 times). Polling often finds the gaps, so workers share the database fairly.

        The busy timeout stays 0 after it, inside the transaction (holding the write lock,
        its statements meet no lock: WAL readers never block a writer) and after it, until
        a statement outside a transaction sets it back (:meth:`_patient`): two statements
        fewer per transaction.
        """
        if self._waits:
            conn.execute("PRAGMA busy_timeout = 0")
            self._waits = False
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(LOCK_POLL)

    def _commit(self, conn: sqlite3.Connection) -> None:
        """Write what is held back, then commit; on any failure roll everything back."""
        if self._lost is not None:
            self._rollback(conn)
            raise StateLost(self._lost)
        try:
            self._flush(conn)
            self._commits += 1
            if self._commits % PRUNE_EVERY == 0 and self._changes is not None:
                old = self._changes - CHANGES_KEPT
                conn.execute("DELETE FROM changes WHERE seq <= ?", (old,))
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, sqlite3.Error):
                raise self._unavailable(exc) from None
            raise

    def _unit(self) -> AbstractContextManager[sqlite3.Connection]:
        """One atomic unit, under the store's lock: inside a batch, a part of it; inside an
        open group, a unit of it (taken back alone if it fails); else its own transaction."""
        self._lock.acquire()
        if self._depth:  # the lock is ours, so is the batch: the cheap way (most calls)
            return _Part(self)  # releases the lock
        if self._group:  # a request of the open group
            return _GroupUnit(self)  # releases the lock
        self._lock.release()
        return self._own_unit()

    @contextmanager
    def _own_unit(self) -> Iterator[sqlite3.Connection]:
        """:meth:`_unit` outside a batch: a unit of the open group, or a transaction of
        its own. (A batch only ever runs with the lock held, so no other thread's batch can be
        open once the lock is ours, and :meth:`_unit` took this thread's own to ``_Part``.)"""
        with self._lock:
            if self._group:  # opened by another thread meanwhile
                self._lock.acquire()  # released by the unit
                with _GroupUnit(self) as conn:
                    yield conn
                return
            conn = self._begin()
            self._depth = 1
            try:
                with self._faults(write=False):
                    yield conn
            except BaseException as exc:
                self._depth = 0
                if _keeps(exc):
                    self._commit(conn)
                else:
                    self._rollback(conn)
                raise
            self._depth = 0
            self._commit(conn)

    def _held_connection(self, refusal: BaseException | None) -> sqlite3.Connection:
        """The connection, for a unit that holds the lock (:meth:`_unit`): if ``refusal`` (or
        a failure to connect) stops the unit, the lock is released and that is raised."""
        try:
            if refusal is not None:
                raise refusal
            return self._connection()
        except BaseException:
            self._lock.release()
            raise

    def _release(self, conn: sqlite3.Connection) -> None:
        self._cache.end_unit()
        if self._saved:
            self._saved = False
            self._group_statement(conn, "RELEASE unit")

    def _direct(self, conn: sqlite3.Connection) -> None:
        """Before a statement that writes at once (not held back): inside a unit of the
        group, its savepoint, taken on its first such write only (most units write nothing
        directly: their writes are all held back, and their undo notes take them back)."""
        if self._group and not self._saved:
            self._group_statement(conn, "SAVEPOINT unit")
            self._saved = True

    def _group_statement(self, conn: sqlite3.Connection, sql: str) -> None:
        """``sql`` in the open group's transaction; if it fails, the whole group fails."""
        try:
            with self._faults(write=False):
                conn.execute(sql)
        except StateUnavailable as exc:
            self._fail_group(conn, exc)

    def _fail_group(self, conn: sqlite3.Connection, exc: Exception) -> NoReturn:
        """Roll the whole group back and refuse its later units and its commit with ``exc``."""
        if not isinstance(exc, StateUnavailable):
            exc = self._unavailable(exc)
            exc.__suppress_context__ = True  # as ``raise ... from None``
        self._group_error = exc
        self._depth = 0
        self._saved = False
        self._rollback(conn)
        raise exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Roll back what is open (quietly) and drop the cached reads and held writes."""
        self._forget()
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _forget(self) -> None:
        """Drop the cached reads and held writes (a rollback, a failure)."""
        self._cache.forget()
        self._version = self._changes = None

    def _flush(self, conn: sqlite3.Connection) -> None:
        """Write the held writes; the change rows logged are this connection's own."""
        logged = self._cache.flush(conn)
        if self._changes is not None:  # we hold the write lock: they follow the last we knew
            self._changes += logged

    def _in_transaction(self) -> bool:
        """Whether this connection holds the write lock now (caches need no check)."""
        return bool(self._depth or self._group)

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """``query`` under the lock; between the units of a group, held writes first (so
        that audit reads see them)."""
        with self._lock, self._faults(write=False):
            conn = self._connection()
            if self._group and not self._depth and self._cache.held:
                try:
                    self._flush(conn)
                except sqlite3.Error as exc:
                    self._fail_group(conn, exc)
            elif not self._in_transaction():
                self._patient(conn)
            return query(conn)

    def _counter(self, conn: sqlite3.Connection, key: str) -> int:
        """Counter ``key``: cached, else read (and cached)."""
        value = self._cache.counters.get(key)
        if value is None:
            row = conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
            value = int(row[0]) if row else 0
            self._cache.read_counter(key, value)
        return value

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        with self._lock:
            if self._depth and (cached := self._cache.counters.get(key)) is not None:
                self._cache.write_counter(key, value := cached + int(amount))  # no SQL: held
                return value
        with self._unit() as conn:
            value = self._counter(conn, key) + int(amount)
            self._cache.write_counter(key, value)
            return value

    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        with self._lock:
            cached = self._cache.counters.get(key)
            if cached is not None and (self._depth or self._group):  # _in_transaction(), inline:
                return cached  # the write lock is ours: nobody else changed it
        with self._lock, self._faults(write=False):
            conn = self._connection()
            if not self._in_transaction():
                self._outside(conn)
            return self._counter(conn, key)

    def raise_to(self, key: str, value: int) -> int:
        """Set counter ``key`` to ``max(current, value)`` and return the result."""
        with self._unit() as conn:
            current = self._counter(conn, key)
            new = max(current, int(value))
            if new != current:
                self._cache.write_counter(key, new)
            return new

    def append(self, key: str, items: Sequence[bytes]) -> int:
        """Append ``items`` to list ``key`` at consecutive indexes; return its new length."""
        rows = [bytes(item) for item in items]
        with self._lock:
            if self._depth and (length := self._cache.lengths.get(key)) is not None:
                return self._cache.write_items(key, length, rows)
        with self._unit() as conn:
            length = self._cache.lengths.get(key)
            if length is None:
                (length,) = conn.execute(
                    "SELECT COALESCE(MAX(idx) + 1, 0) FROM lists WHERE key = ?", (key,)
                ).fetchone()
            return self._cache.write_items(key, int(length), rows)

    def items(self, key: str, start: int = 0) -> list[bytes]:
        """Items of list ``key`` from index ``start`` on (a negative start counts from the end);
        items held back for the commit included."""
        with self._lock:
            if start >= 0 and (self._depth or self._group):  # _in_transaction(): the lock is ours
                known = self._cache.lengths.get(key)
                if known is not None and known <= start:
                    return []  # nothing past a length known
                held = self._cache.held_items(key, start)
                if held is not None and start >= held[0]:
                    return held[1]  # all of it held back for the commit
        with self._lock, self._faults(write=False):
            conn = self._connection()
            if not self._in_transaction():
                self._outside(conn)
            length = self._cache.lengths.get(key)
            if start < 0 and length is not None:
                start = max(0, length + start)
            if start >= 0 and length is not None and start >= length:
                return []
            held = self._cache.held_items(key, start) if start >= 0 else None
            if held is not None:
                first, tail = held
                if start >= first:
                    return tail
                rows = conn.execute(
                    "SELECT item FROM lists WHERE key = ? AND idx >= ? AND idx < ? ORDER BY idx",
                    (key, start, first),
                ).fetchall()
                return [bytes(row[0]) for row in rows] + tail
            if start >= 0:
                sql, args = (
                    "SELECT item, idx FROM lists WHERE key = ? AND idx >= ? ORDER BY idx",
                    (key, start),
                )
            else:  # one statement, so the length and the items come from one snapshot
                sql = (
                    "SELECT item, idx FROM lists WHERE key = ? AND idx >= "
                    "(SELECT COALESCE(MAX(idx) + 1, 0) FROM lists WHERE key = ?) + ? ORDER BY idx"
                )
                args = (key, key, start)
            rows = conn.execute(sql, args).fetchall()
            if rows:  # the last index read, not start + len(rows): a trimmed head leaves a gap
                self._cache.read_length(key, int(rows[-1][1]) + 1)
            elif start == 0:
                self._cache.read_length(key, 0)
        return [bytes(row[0]) for row in rows]

    def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to set ``key`` (held back for the commit: no statement now)."""
        with self._unit():
            known = self._cache.members.get(key)
            if known is None or member not in known:
                self._cache.add_members(key, [member])

    def add_new_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """Add ``members`` to set ``key``; for each, whether it was new (one transaction).

        Members known (read or added before) are answered from the cache, the others by one
        read of ``sets``; the new ones are held back for the commit."""
        with self._lock:
            known = self._cache.members.get(key) if self._depth else None
            if known is not None and all(member in known for member in members):
                return [False] * len(members)  # no SQL: all known
        with self._unit() as conn:
            cache = self._cache
            known = cache.members.get(key)
            unknown = (
                list(dict.fromkeys(members))
                if known is None
                else [m for m in dict.fromkeys(members) if m not in known]
            )
            if not unknown:
                return [False] * len(members)
            found = self._present(conn, key, unknown)
            if found:
                cache.know_members(key, found)
            new = [member for member in unknown if member not in found]
            if new:
                cache.add_members(key, new)
            fresh = set(new)
            result = []
            for member in members:
                result.append(member in fresh)
                fresh.discard(member)  # a member repeated is new once
            return result

    @staticmethod
    def _present(conn: sqlite3.Connection, key: str, members: list[str]) -> set[str]:
        """Which of ``members`` (distinct) set ``key`` holds in the database."""
        if len(members) == 1:
            sql = "SELECT member FROM sets WHERE key = ? AND member = ?"
            return {row[0] for row in conn.execute(sql, (key, members[0]))}
        found: set[str] = set()
        for start in range(0, len(members), 500):  # SQLite's bound-parameter limit
            chunk = members[start : start + 500]
            sql = (
                "SELECT member FROM sets WHERE key = ? AND member IN "
                f"({', '.join('?' * len(chunk))})"
            )
            found.update(row[0] for row in conn.execute(sql, [key, *chunk]))
        return found

    def has_members(self, key: str, members: Sequence[str]) -> list[bool]:
        """For each of ``members``, whether it is in set ``key`` (members known answered from
        the cache, the others by one read)."""
        if not members:
            return []
        with self._lock:
            known = self._cache.members.get(key) if self._in_transaction() else None
            if known is not None and all(member in known for member in members):
                return [True] * len(members)  # the write lock is ours: no SQL
        with self._lock, self._faults(write=False):
            conn = self._connection()
            if not self._in_transaction():
                self._outside(conn)
            known = self._cache.members.get(key) or {}
            unknown = [m for m in dict.fromkeys(members) if m not in known]
            if not unknown:
                return [True] * len(members)
            found = self._present(conn, key, unknown)
            if found:
                self._cache.know_members(key, found)
            return [member in known or member in found for member in members]

    def members(self, key: str) -> set[str]:
        """Members of set ``key`` (those held back for the commit included)."""
        rows = self._read(
            lambda conn: conn.execute("SELECT member FROM sets WHERE key = ?", (key,)).fetchall()
        )
        with self._lock:
            held = self._cache.held_members.get(key) or {}
            return {row[0] for row in rows} | held.keys()

    def secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret created on first use and the same for every later caller."""
        with self._unit() as conn:
            self._direct(conn)
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)",
                (name, secrets.token_bytes(nbytes)),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

    def take_tokens(
        self, key: str, cost: float, capacity: float, refill_per_second: float, now: float
    ) -> BucketState:
        """Withdraw ``cost`` tokens from bucket ``key`` (full at first, refilled continuously)."""
        with self._unit() as conn:
            cached = self._cache.buckets.get(key)
            if cached is None:
                row = conn.execute(
                    "SELECT tokens, last FROM buckets WHERE key = ?", (key,)
                ).fetchone()
                cached = (float(row[0]), float(row[1])) if row else (float(capacity), now)
            tokens, last = cached
            tokens = refill(tokens, last, capacity, refill_per_second, now)
            state = withdraw(tokens, cost, capacity, refill_per_second)
            self._cache.write_bucket(key, state.remaining, max(last, now))
            return state

    def audit_append(self, entries: Sequence[AuditEntry]) -> None:
        """Add ``entries`` to the audit table, in order, with the transaction's commit."""
        rows = [(e.time, e.client, e.encode()) for e in entries]
        with self._lock:
            if self._depth:
                self._cache.write_audit(rows)
                return
        with self._unit():
            self._cache.write_audit(rows)

    def audit_entries(
        self, client: str | None = None, since: float | None = None, limit: int | None = None
    ) -> list[AuditEntry]:
        """Audit entries of ``client`` at or after ``since``, oldest first, the newest ``limit``."""
        sql = (
            "SELECT entry FROM audit WHERE (?1 IS NULL OR client = ?1) "
            "AND (?2 IS NULL OR time >= ?2) ORDER BY id DESC LIMIT ?3"
        )
        args = (client, since, -1 if limit is None else max(0, limit))
        rows = self._read(lambda conn: conn.execute(sql, args).fetchall())
        return [AuditEntry.decode(row[0]) for row in reversed(rows)]

    def audit_prune(self, before: float, limit: int | None = None) -> int:
        """Delete the entries older than ``before``, the oldest ``limit`` at most (through the
        index on time)."""
        with self._unit() as conn:
            self._direct(conn)
            if limit is None:
                return conn.execute("DELETE FROM audit WHERE time < ?", (before,)).rowcount
            return conn.execute(
                "DELETE FROM audit WHERE id IN "
                "(SELECT id FROM audit WHERE time < ? ORDER BY time LIMIT ?)",
                (before, max(0, limit)),
            ).rowcount

    def ping(self) -> None:
        """Take the write lock and release it: StateUnavailable if it cannot be had in time."""
        with self._unit():
            pass

    def close(self) -> None:
        """Close this process's connection and stop its checkpoints (idempotent)."""
        with self._lock:
            if self._checkpointer is not None and self._pid == os.getpid():
                self._checkpointer.stop()
            self._checkpointer = None
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True
            self._group = False  # an open group's transaction ended with its connection

    def trim(self, key: str, start: int) -> int:
        """Delete the items of list ``key`` before index ``start`` (the others keep theirs;
        the newest always stays, so the list's length stays its last index + 1)."""
        with self._unit() as conn:
            self._direct(conn)
            if self._cache.trim_held(key, start):  # a newer item is held for the commit
                sql = "DELETE FROM lists WHERE key = ? AND idx < ?"
                return conn.execute(sql, (key, start)).rowcount
            return conn.execute(
                "DELETE FROM lists WHERE key = ? AND idx < ? "
                "AND idx < (SELECT MAX(idx) FROM lists WHERE key = ?)",
                (key, start, key),
            ).rowcount

    def delete(self, keys: Sequence[str]) -> None:
        """Delete the counters, lists, sets and buckets named ``keys`` (one transaction; the
        other workers drop them from their caches at their next transaction)."""
        if not keys:
            return
        with self._unit() as conn:
            self._direct(conn)
            for table in ("counters", "lists", "sets", "buckets"):
                conn.executemany(f"DELETE FROM {table} WHERE key = ?", [(k,) for k in keys])
            self._cache.remove(list(keys))

    def take_members(self, key: str, count: int) -> list[str]:
        """Remove up to ``count`` members of set ``key`` and return them (one transaction;
        its members held back for the commit are written first)."""
        with self._unit() as conn:
            self._direct(conn)
            held = self._cache.take_held_members(key)
            if held:
                sql = "INSERT OR IGNORE INTO sets (key, member) VALUES (?, ?)"
                conn.executemany(sql, [(key, member) for member in held])
            rows = conn.execute(
                "SELECT member FROM sets WHERE key = ? LIMIT ?", (key, max(0, count))
            ).fetchall()
            taken = [row[0] for row in rows]
            conn.executemany(
                "DELETE FROM sets WHERE key = ? AND member = ?", [(key, m) for m in taken]
            )
            self._cache.unknow_members(key, taken)
            return taken


class _Part:
    """A unit inside a batch: the calls of one request (:meth:`SqliteStore._unit`, whose lock
    it holds and releases). The same as the batch's own ``_faults`` and depth count, without
    two generator-based context managers per store call (~3 µs each, 8 calls a request)."""

    __slots__ = ("_store",)

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        conn = store._held_connection(None if store._lost is None else StateLost(store._lost))
        store._depth += 1
        return conn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        store = self._store
        store._depth -= 1
        store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise store._unavailable(exc) from None


class _GroupUnit:
    """A unit of the open group: the calls of one request (:meth:`SqliteStore._unit`, whose
    lock it holds and releases). Its writes are held back with undo notes, and it takes a
    savepoint only before its first direct write (:meth:`SqliteStore._direct`). A failed
    unit is taken back alone; a store failure fails the whole group, and a failed group
    refuses its later units at once. (A class: the generator-based context managers it
    replaces cost ~4 us a request.)"""

    __slots__ = ("_conn", "_store")

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        self._conn = store._held_connection(store._group_error)
        store._cache.begin_unit()
        store._depth = 1
        if store._lost is not None:
            try:
                self._end(StateLost(store._lost))  # fails the group
            finally:
                store._lock.release()
        return self._conn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: object
    ) -> None:
        store = self._store
        try:
            store._depth = 0
            if exc is None:
                store._release(self._conn)
            else:
                self._end(exc)
        finally:
            store._lock.release()

    def _end(self, exc: BaseException) -> None:
        """Take the failed unit back (raising instead if the store failed)."""
        store, conn = self._store, self._conn
        store._depth = 0
        if isinstance(exc, sqlite3.Error | StateUnavailable):
            store._fail_group(conn, exc)  # raises
        if not _keeps(exc):
            store._cache.undo_unit()
            if store._saved:
                store._group_statement(conn, "ROLLBACK TO unit")
        store._release(conn)


def _keeps(exc: BaseException) -> bool:
    """Whether a unit that raised ``exc`` keeps its writes: a domain refusal (429, 403) was
    decided and recorded; a store failure or any other error takes them back."""
    return isinstance(exc, ModelTheftError) and not isinstance(exc, StateUnavailable)
