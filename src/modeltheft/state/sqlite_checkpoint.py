"""WAL checkpoints off the request path.

In WAL mode each commit appends to the ``-wal`` file, and a checkpoint copies it back into the
database, then syncs the database file: an ``fsync`` of tens of milliseconds on a busy disk.
SQLite runs it inside the commit that crosses 1,000 pages, on the service's event loop, which
then stalls every request in flight (the p99 of the default store). Here the serving
connections turn that off and a thread of the worker's own runs a PASSIVE checkpoint every
second instead (it never waits for, nor blocks, readers and writers).
"""

import sqlite3
import threading

CHECKPOINT_EVERY = 1.0
"""Seconds between two checkpoints of a worker's state database."""


class Checkpointer:
    """Checkpoint the database at ``database`` (a URI if ``uri``) every ``every`` seconds."""

    def __init__(self, database: str, uri: bool, every: float = CHECKPOINT_EVERY) -> None:
        self.database, self.uri, self.every = database, uri, every
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
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:  # busy, or the file is gone: the store reports outages
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        self._thread.join(timeout=5)
