"""WAL checkpoints off the request path, with a WAL that stays bounded.

In WAL mode each commit appends to the ``-wal`` file, and a checkpoint copies it back into the
database, then syncs the database file: an ``fsync`` of tens of milliseconds on a busy disk.
SQLite runs it inside the commit that crosses 1,000 pages, on the service's event loop, which
then stalls every request in flight (the p99 of the default store). Here the serving
connections turn that off and a thread of the worker's own checkpoints instead:

- every ``every`` seconds a PASSIVE checkpoint copies what it can without waiting for, or
  blocking, anyone (the bulk of the copying and the ``fsync`` happen here, off the loop);
- once the WAL holds ``restart_pages`` pages, a RESTART checkpoint follows at once. Under
  continuous writes PASSIVE never catches up with the writers, and SQLite rewinds the WAL
  only after a checkpoint that did: without RESTART the file grows for ever (measured before:
  3.4 GB after 300,000 queries). RESTART takes the write lock for the few pages written since
  the PASSIVE one, so the writers wait briefly; ``journal_size_limit`` then truncates the
  rewound file. Like the writers (:meth:`SqliteStore._lock_database`), it polls for the lock
  every ``LOCK_POLL`` seconds instead of SQLite's busy handler, which sleeps up to 100 ms
  between tries and rarely finds the gaps between a busy worker's commits.
"""

import sqlite3
import threading
import time

CHECKPOINT_EVERY = 0.5
"""Seconds between two PASSIVE checkpoints of a worker's state database."""
RESTART_PAGES = 2000
"""WAL pages (~8 MB) past which the WAL is rewound (RESTART)."""
RESTART_WAIT = 1.0
"""Seconds a RESTART checkpoint keeps trying before it gives up until the next round."""
LOCK_POLL = 0.0002
"""Seconds between two tries of a RESTART checkpoint."""
WAL_LIMIT = 16 * 2**20
"""Bytes a rewound WAL file is truncated to (``PRAGMA journal_size_limit``)."""


class Checkpointer:
    """Checkpoint the database at ``database`` (a URI if ``uri``) in a thread (module doc)."""

    def __init__(
        self,
        database: str,
        uri: bool,
        every: float = CHECKPOINT_EVERY,
        restart_pages: int = RESTART_PAGES,
    ) -> None:
        self.database, self.uri = database, uri
        self.every, self.restart_pages = every, restart_pages
        self.restarts = 0
        """RESTART checkpoints that completed (for tests and curiosity)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modeltheft-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.every):
            try:
                if conn is None:  # mode=rw: a deleted file is never recreated from here
                    conn = sqlite3.connect(
                        self.database, uri=self.uri, timeout=0, isolation_level=None,
                        check_same_thread=False,
                    )  # fmt: skip
                    conn.execute("PRAGMA busy_timeout = 0")
                    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
                self.checkpoint(conn)
            except sqlite3.Error:  # the file is gone or unusable: the store reports outages
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        """One round: PASSIVE, then RESTART if the WAL has grown past ``restart_pages``."""
        _, log, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if log < self.restart_pages:
            return
        deadline = time.monotonic() + RESTART_WAIT
        while not self._stop.is_set():
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            if not busy:
                self.restarts += 1
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(LOCK_POLL)

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        self._thread.join(timeout=5)
