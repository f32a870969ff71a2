"""Ways to damage a SQLite state file as disks, operators and accidents do, for the fault tests."""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from modeltheft.state import SqliteStore


def filled_database(folder: Path) -> Path:
    """A new state database ``folder/state.db`` whose tables span several pages (:func:`fill`)."""
    path = folder / "state.db"
    SqliteStore(path).close()
    fill(path)
    return path


def fill(path: Path, rows: int = 3000) -> None:
    """Give the ``lists`` and ``audit`` tables several pages each (interior pages, not one leaf)."""
    now = time.time()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO lists (key, idx, item) VALUES ('filler', ?, randomblob(200))",
            [(i,) for i in range(rows)],
        )
        conn.executemany(
            "INSERT INTO audit (time, client, entry) VALUES (?, 'filler', hex(randomblob(100)))",
            # Recent times: a service's audit retention keeps them (an interior root page).
            [(now - i,) for i in range(rows)],
        )
        conn.execute("COMMIT")


def smash_table(path: Path, table: str) -> int:
    """Overwrite half of the root page of ``table`` with 0xFF bytes; return its page number.

    The WAL is checkpointed first, so the damage is in the pages readers get; the header and
    the schema stay intact, so the file still opens.
    """
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        sql = "SELECT rootpage FROM sqlite_master WHERE name = ?"
        page = int(conn.execute(sql, (table,)).fetchone()[0])
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    with path.open("r+b") as file:
        file.seek((page - 1) * page_size + 8)
        file.write(b"\xff" * (page_size // 2))
    return page


def touch_other_table(path: Path) -> None:
    """Commit a write from another connection: every open connection drops its page cache."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("INSERT OR REPLACE INTO counters (key, value) VALUES ('touched', 1)")


def smash_header(path: Path) -> None:
    """Give the file an impossible page size (bytes 16-17 of the header)."""
    with path.open("r+b") as file:
        file.seek(16)
        file.write(b"\x00\x03")


@contextmanager
def full_redis(url: str) -> Iterator[None]:
    """The Redis at ``url`` refuses every write (``OOM``) inside the block; reset after it."""
    import redis

    with redis.Redis.from_url(url) as admin:
        policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            yield
        finally:
            admin.config_set("maxmemory", 0)
            admin.config_set("maxmemory-policy", policy)
