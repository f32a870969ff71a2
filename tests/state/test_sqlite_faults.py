"""Every failure of a SQLite state file is StateUnavailable while in use, ConfigError at open.

A damaged page, a file made read-only, a file deleted or replaced under the store: no raw
``sqlite3`` exception escapes, nothing is recreated behind the store's back, and a store that
lost its file says so once at ERROR.
"""

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from modeltheft.errors import ConfigError, StateUnavailable
from modeltheft.state import SqliteStore
from modeltheft.state.base import StateLost
from tests.state.damage import filled_database, smash_header, smash_table, touch_other_table


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return filled_database(tmp_path)


def test_a_damaged_page_while_open_is_unavailable(store_path: Path) -> None:
    store = SqliteStore(store_path)
    try:
        assert len(store.items("filler", -2)) == 2
        smash_table(store_path, "lists")
        touch_other_table(store_path)
        with pytest.raises(StateUnavailable, match="malformed"):
            store.items("filler", -2)
        with pytest.raises(StateUnavailable, match="malformed"):
            store.append("filler", [b"x"])
        assert store.incr("other") == 1  # the rest of the file still works
    finally:
        store.close()


@pytest.mark.parametrize("table", ["lists", "audit"])
def test_a_damaged_page_is_refused_at_open(store_path: Path, table: str) -> None:
    smash_table(store_path, table)
    with pytest.raises(ConfigError, match="is damaged") as info:
        SqliteStore(store_path)
    assert len(str(info.value).splitlines()) == 1
    SqliteStore(store_path, check_timeout=0).close()  # no check asked: it opens


def test_a_damaged_header_is_refused_at_open(store_path: Path) -> None:
    smash_header(store_path)
    with pytest.raises(ConfigError, match="not a database"):
        SqliteStore(store_path)


def test_a_large_file_is_checked_within_its_budget(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="modeltheft.state"):
        SqliteStore(store_path, check_timeout=1e-9).close()
    assert "checked in part only" in caplog.text


def test_a_file_made_read_only_while_open_is_unavailable_until_writable(
    store_path: Path,
) -> None:
    store = SqliteStore(store_path)
    try:
        store.incr("c")
        store_path.chmod(0o444)
        with pytest.raises(StateUnavailable, match="read-only"):
            store.incr("c")
        with pytest.raises(StateUnavailable, match="read-only"):
            store.ping()
        store_path.chmod(0o644)
        assert store.incr("c") == 2
    finally:
        store.close()


def test_a_read_only_file_is_refused_at_open(store_path: Path) -> None:
    store_path.chmod(0o444)
    with pytest.raises(ConfigError, match=r"read-only \(mode 0444\)"):
        SqliteStore(store_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="SQLite cannot migrate a 0444 file but as root")
def test_a_reader_opens_a_read_only_file_and_cannot_write(store_path: Path) -> None:
    """``create=False`` (the audit tool, a worker) reads a read-only file; writes are refused."""
    writer = SqliteStore(store_path)
    writer.incr("c")
    writer.close()
    store_path.chmod(0o444)
    reader = SqliteStore(store_path, create=False)
    try:
        assert reader.get("c") == 1
        with pytest.raises(StateUnavailable, match="read-only"):
            reader.incr("c")
    finally:
        reader.close()


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(writable, read-only)``: one folder bind-mounted read-only (root with mount only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("bind mounts need root")
    writable, frozen = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir()
    frozen.mkdir()
    bind = subprocess.run(["mount", "--bind", str(writable), str(frozen)], capture_output=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.decode().strip()}")
    try:
        remount = ["mount", "-o", "remount,bind,ro", str(frozen)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield writable, frozen
    finally:
        with suppress(OSError):
            subprocess.run(["umount", str(frozen)], check=True)


def test_a_read_only_file_system_is_refused_at_open(read_only_mount: tuple[Path, Path]) -> None:
    writable, frozen = read_only_mount
    SqliteStore(writable / "state.db").close()
    with pytest.raises(ConfigError, match="read-only file system") as info:
        SqliteStore(frozen / "state.db")
    assert len(str(info.value).splitlines()) == 1


def test_a_deleted_file_is_lost_for_good_and_never_recreated(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(store_path)
    try:
        store.incr("c")
        store_path.unlink()
        with caplog.at_level(logging.ERROR, logger="modeltheft.state"):
            for call in (lambda: store.incr("c"), store.ping, lambda: store.get("c")):
                with pytest.raises(StateLost, match="was deleted while in use") as info:
                    call()
                assert info.value.retry_after >= 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "was deleted" in errors[0].getMessage()
        assert not store_path.exists()
    finally:
        store.close()
    assert not store_path.exists()


def test_a_replaced_file_is_lost(store_path: Path, tmp_path: Path) -> None:
    store = SqliteStore(store_path)
    try:
        store.incr("c")
        other = tmp_path / "other.db"
        SqliteStore(other).close()
        os.replace(other, store_path)
        with pytest.raises(StateLost, match="replaced by another file"):
            store.incr("c")
    finally:
        store.close()


OPENER = """
import sys
from modeltheft.errors import ConfigError
from modeltheft.state import SqliteStore
try:
    SqliteStore(sys.argv[1]).close()
except ConfigError as exc:
    print(exc)
"""


def test_a_deleted_file_still_in_use_is_not_recreated_beside_it(store_path: Path) -> None:
    """Another process (a restarted worker, a second start) meets the WAL files still in use."""
    holder = SqliteStore(store_path)
    try:
        holder.incr("c")
        store_path.unlink()
        with pytest.raises(ConfigError, match=r"no state database at .*deleted while in use"):
            SqliteStore(store_path, create=False)
        assert not store_path.exists()
        opener = [sys.executable, "-c", OPENER, str(store_path)]
        result = subprocess.run(opener, capture_output=True, text=True, timeout=60)
        assert "still uses them" in result.stdout and len(result.stdout.splitlines()) == 1
        assert "Traceback" not in result.stderr
        assert not store_path.exists()  # no half-made file left for the next start to trust
    finally:
        holder.close()


KILLED_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("CREATE TABLE counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
conn.execute("INSERT INTO counters VALUES ('c', 5)")
os.unlink(sys.argv[1])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_file_deleted_under_a_killed_service_is_recreated_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], check=False)
    assert not path.exists() and (tmp_path / "state.db-wal").exists()
    with caplog.at_level(logging.WARNING, logger="modeltheft.state"):
        fresh = SqliteStore(path)
    try:
        assert fresh.get("c") == 0 and fresh.incr("c") == 1
    finally:
        fresh.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "created a new, empty state database" in warnings[0]
    assert "state.db-wal" in warnings[0] and "deleted" in warnings[0]
