"""The file behind a :class:`~modeltheft.state.sqlite.SqliteStore`: how it is opened and checked.

SQLite creates a missing file on ``connect`` unless told not to, so every connection names
its mode (``rw``, or ``rwc`` only when the store means to create the file). A file is known
by its device and inode, so a file deleted or replaced while in use is noticed instead of
written on in the dark; a file or file system without write permission is refused by name;
a damaged database is found by ``PRAGMA quick_check`` at open, within a time budget.
"""

import logging
import os
import sqlite3
import stat
import time
from typing import NamedTuple
from urllib.parse import quote

log = logging.getLogger("modeltheft.state")

CHECK_TIMEOUT = 1.0
"""Seconds the integrity check at open may take; a larger file is checked only in part."""

SIDE_FILES = ("-wal", "-shm")


class FileIdentity(NamedTuple):
    """Device and inode of a file: another file at the same path has another identity."""

    device: int
    inode: int

    @classmethod
    def of(cls, result: os.stat_result) -> "FileIdentity":
        """The identity in a ``stat`` result."""
        return cls(result.st_dev, result.st_ino)


def database_uri(path: str, create: bool) -> tuple[str, bool]:
    """``(database, uri)`` for ``sqlite3.connect``: a ``file:`` URI that creates nothing unless
    ``create`` (``:memory:`` as it is)."""
    if path == ":memory:":
        return path, False
    mode = "rwc" if create else "rw"
    return f"file:{quote(os.fsencode(os.path.abspath(path)))}?mode={mode}", True


def leftovers(path: str) -> list[str]:
    """The ``-wal`` and ``-shm`` files beside ``path``: a database was there (or still is)."""
    return [path + suffix for suffix in SIDE_FILES if os.path.exists(path + suffix)]


def in_use(path: str) -> bool | None:
    """Whether some process holds a lock on the file at ``path`` (SQLite locks its ``-shm``
    while a connection is open); None where that cannot be told (no Linux ``/proc/locks``)."""
    try:
        result = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            text = locks.read()
    except OSError:
        return None
    wanted = f"{os.major(result.st_dev):02x}:{os.minor(result.st_dev):02x}:{result.st_ino}"
    return any(wanted in line.split() for line in text.splitlines())


def read_only_reason(path: str, result: os.stat_result, mount: bool = False) -> str | None:
    """Why the state file at ``path`` must not be written, or None.

    A file without any write permission bit (``chmod 0444``) counts as read-only even for
    root, whom the kernel would let write: the operator asked for it not to change. With
    ``mount``, a read-only file system too (one more system call: at open only; while
    serving, SQLite's own "readonly" errors tell).
    """
    if not result.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        return f"state database {path} is read-only (mode {stat.S_IMODE(result.st_mode):04o})"
    if not mount:
        return None
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return f"state database {path} is on a read-only file system"
    except OSError:
        pass  # statvfs is not everywhere; SQLite's own errors will tell
    return None


def check_integrity(conn: sqlite3.Connection, path: str, timeout: float) -> None:
    """``PRAGMA quick_check`` within ``timeout`` seconds: raise sqlite3.DatabaseError if damaged.

    A file too large to check in time is checked in part (logged at INFO); the pages not
    checked are still protected while serving: a damaged page read then is a 503.
    """
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        log.info("state database %s checked in part only (%.1f s budget)", path, timeout)
        return
    finally:
        conn.set_progress_handler(None, 0)
    problems = [str(row[0]) for row in rows if row[0] != "ok"]
    if problems:
        raise sqlite3.DatabaseError("; ".join(" ".join(p.split()) for p in problems))
