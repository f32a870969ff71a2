"""Embedded state in one SQLite file (WAL mode): shared by the processes of one machine.

Every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, so several worker
processes (each with its own :class:`SqliteStore`) count exactly once; committed writes
survive a crash of the process (``synchronous=NORMAL`` in WAL mode only risks the last
transactions on a power loss, never the database's integrity).
"""

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from modeltheft.errors import ConfigError
from modeltheft.state.base import BucketState, refill, withdraw

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

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
"""

# UPSERT ... RETURNING needs SQLite 3.35; older libraries read the value back instead.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


class SqliteStore:
    """State in the SQLite database at ``path`` (created, with its folder, if missing).

    One connection per store, guarded by a lock, so a store may be shared by threads. A store
    used after ``fork`` opens its own connection in the child (SQLite connections must not
    cross a fork).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the folder of state database {self.path}: {exc.strerror}"
                ) from None
        with self._lock:
            self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """Open, configure and migrate a connection; unusable files become ConfigError."""
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Several processes may open a new file at once: switching to WAL and creating
            # the tables can meet a lock that the busy handler does not wait for; retry then.
            for attempt in range(50):
                try:
                    conn.execute("PRAGMA journal_mode = WAL").fetchone()
                    conn.execute("PRAGMA synchronous = NORMAL")
                    conn.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
                    break
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if "locked" not in str(exc) or attempt == 49:
                        raise
                    time.sleep(0.05)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise ConfigError(f"cannot use {self.path} as a state database: {exc}") from None
        return conn

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ConfigError(f"state database {self.path} was closed")
        if self._conn is None or self._pid != os.getpid():
            # After a fork the parent's connection belongs to the parent: leave it alone.
            self._conn, self._pid = self._connect(), os.getpid()
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on error), under the store's lock."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return query(self._connection())

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        with self._transaction() as conn:
            if HAS_RETURNING:
                row = conn.execute(
                    "INSERT INTO counters (key, value) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = value + excluded.value RETURNING value",
                    (key, amount),
                ).fetchone()
            else:  # pragma: no cover - SQLite < 3.35
                conn.execute(
                    "INSERT INTO counters (key, value) VALUES (?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET value = value + excluded.value",
                    (key, amount),
                )
                row = conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
            return int(row[0])

    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        row = self._read(
            lambda conn: conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
        )
        return int(row[0]) if row else 0

    def raise_to(self, key: str, value: int) -> int:
        """Set counter ``key`` to ``max(current, value)`` and return the result."""
        with self._transaction() as conn:
            row = conn.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
            new = max(int(row[0]) if row else 0, int(value))
            conn.execute(
                "INSERT INTO counters (key, value) VALUES (?, ?) ON CONFLICT (key) "
                "DO UPDATE SET value = excluded.value",
                (key, new),
            )
            return new

    def append(self, key: str, items: Sequence[bytes]) -> int:
        """Append ``items`` to list ``key`` at consecutive indexes; return its new length."""
        with self._transaction() as conn:
            (length,) = conn.execute(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM lists WHERE key = ?", (key,)
            ).fetchone()
            conn.executemany(
                "INSERT INTO lists (key, idx, item) VALUES (?, ?, ?)",
                [(key, length + i, bytes(item)) for i, item in enumerate(items)],
            )
            return int(length) + len(items)

    def items(self, key: str, start: int = 0) -> list[bytes]:
        """Items of list ``key`` from index ``start`` on (a negative start counts from the end)."""
        args: tuple[str | int, ...]
        if start >= 0:
            sql, args = (
                "SELECT item FROM lists WHERE key = ? AND idx >= ? ORDER BY idx",
                (key, start),
            )
        else:  # one statement, so the length and the items come from one snapshot
            sql = (
                "SELECT item FROM lists WHERE key = ? AND idx >= "
                "(SELECT COALESCE(MAX(idx) + 1, 0) FROM lists WHERE key = ?) + ? ORDER BY idx"
            )
            args = (key, key, start)
        rows = self._read(lambda conn: conn.execute(sql, args).fetchall())
        return [bytes(row[0]) for row in rows]

    def add_member(self, key: str, member: str) -> None:
        """Add ``member`` to set ``key``."""
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO sets (key, member) VALUES (?, ?)", (key, member))

    def members(self, key: str) -> set[str]:
        """Members of set ``key``."""
        rows = self._read(
            lambda conn: conn.execute("SELECT member FROM sets WHERE key = ?", (key,)).fetchall()
        )
        return {row[0] for row in rows}

    def secret(self, name: str, nbytes: int = 32) -> bytes:
        """A random secret created on first use and the same for every later caller."""
        with self._transaction() as conn:
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
        with self._transaction() as conn:
            row = conn.execute("SELECT tokens, last FROM buckets WHERE key = ?", (key,)).fetchone()
            tokens, last = (float(row[0]), float(row[1])) if row else (float(capacity), now)
            tokens = refill(tokens, last, capacity, refill_per_second, now)
            state = withdraw(tokens, cost, capacity, refill_per_second)
            conn.execute(
                "INSERT INTO buckets (key, tokens, last) VALUES (?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET tokens = excluded.tokens, last = excluded.last",
                (key, state.remaining, max(last, now)),
            )
            return state

    def close(self) -> None:
        """Close this process's connection (idempotent)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True
