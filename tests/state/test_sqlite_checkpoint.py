"""WAL checkpoints in a thread of the store's own (state/sqlite_checkpoint.py)."""

import sqlite3
import time
from pathlib import Path

import pytest

from modeltheft.state import sqlite as sqlite_module
from modeltheft.state import sqlite_checkpoint
from modeltheft.state.sqlite import SqliteStore
from modeltheft.state.sqlite_checkpoint import Checkpointer


def test_checkpoints_run_in_a_thread_not_in_the_commits(tmp_path: Path) -> None:
    """A checkpoint syncs the database file (an fsync): never inside a request's commit."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    conn = store._connection()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    before = path.stat().st_size
    with store.batch():
        store.append("big", [bytes(3000)] * 1500)  # ~1,500 pages into the WAL
    deadline = time.monotonic() + 10
    while path.stat().st_size <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > before  # copied into the database by the thread
    thread = store._checkpointer._thread  # type: ignore[union-attr]
    store.close()
    assert not thread.is_alive()


def test_read_only_and_in_memory_stores_start_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStore(path).close()
    reader = SqliteStore(path, read_only=True)
    reader.get("n")
    assert reader._checkpointer is None
    memory = SqliteStore(":memory:")
    memory.incr("n")
    assert memory._checkpointer is None


@pytest.mark.parametrize("restart", [True, False], ids=["restart", "passive-only"])
def test_the_wal_stays_bounded_under_continuous_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restart: bool
) -> None:
    """A writer that never pauses for long (a busy worker) leaves PASSIVE checkpoints behind
    for ever, and SQLite rewinds the WAL only after one that caught up: the RESTART round
    keeps it bounded (before it, the WAL of a served database grew to 3.4 GB)."""
    monkeypatch.setattr(sqlite_module, "WAL_LIMIT", 0)  # a rewound WAL is truncated
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store._connection()
    store._checkpointer.stop()  # type: ignore[union-attr]
    pages = 100 if restart else 10**9
    store._checkpointer = checkpointer = Checkpointer(*store._database, 0.02, pages)
    wal = Path(f"{path}-wal")
    written = largest = 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        with store.batch():
            store.append("rows", [bytes(2000)] * 4)
        written += 8000
        largest = max(largest, wal.stat().st_size)
        time.sleep(0.0001)  # the event loop's own work between two turns
    store.close()
    if restart:
        assert checkpointer.restarts > 0
        assert largest < max(written / 4, 2 * 2**20), (largest, written)
    else:  # the test can fail: without RESTART the WAL holds everything written
        assert checkpointer.restarts == 0
        assert largest > written / 2, (largest, written)


def test_a_restart_gives_up_when_the_lock_never_frees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holding the write lock makes the round give up after RESTART_WAIT
    (and try again next round), never wait for ever."""
    monkeypatch.setattr(sqlite_checkpoint, "RESTART_WAIT", 0.2)
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    with store.batch():
        store.append("rows", [bytes(3000)] * 50)
    store._checkpointer.stop()  # type: ignore[union-attr]
    holder = SqliteStore(path)
    conn = holder._connection()
    conn.execute("BEGIN IMMEDIATE")
    checkpointer = Checkpointer(*store._database, 3600, restart_pages=1)
    own = sqlite3.connect(store._database[0], uri=store._database[1], isolation_level=None)
    own.execute("PRAGMA busy_timeout = 0")
    started = time.monotonic()
    checkpointer.checkpoint(own)
    assert 0.2 <= time.monotonic() - started < 1.5
    assert checkpointer.restarts == 0
    conn.execute("ROLLBACK")
    checkpointer.checkpoint(own)
    assert checkpointer.restarts == 1
    own.close()
    checkpointer.stop()
    holder.close()
    store.close()


def test_the_changes_log_is_pruned_in_small_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log other workers read to drop stale cache entries keeps its newest CHANGES_KEPT
    rows, pruned every PRUNE_EVERY commits (small deletes: no stall of the requests)."""
    monkeypatch.setattr(sqlite_module, "CHANGES_KEPT", 50)
    monkeypatch.setattr(sqlite_module, "PRUNE_EVERY", 4)
    store = SqliteStore(tmp_path / "state.db")
    sizes = []
    for i in range(200):
        with store.batch():
            store.incr(f"a{i}")
            store.incr(f"b{i}")
        (n,) = store._connection().execute("SELECT count(*) FROM changes").fetchone()
        sizes.append(n)
    assert max(sizes) <= 50 + 4 * 2 + 2  # kept + what four commits log
    assert sizes[-1] >= 50
    store.close()
