"""A read-only SQLite state (``mode=ro``): what reading tools open, never creating anything."""

import os
from pathlib import Path

import pytest

from modeltheft.errors import ConfigError, StateUnavailable
from modeltheft.state import SqliteStore, open_store


def test_read_only_reads_an_existing_state_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    writer = SqliteStore(path)
    writer.incr("c", 3)
    writer.append("l", [b"x"])
    writer.close()
    before = path.read_bytes()
    reader = open_store(f"sqlite:///{path}", read_only=True)
    try:
        assert reader.get("c") == 3 and reader.items("l") == [b"x"]
        with pytest.raises(StateUnavailable, match="readonly"):
            reader.incr("c")
    finally:
        reader.close()
    assert path.read_bytes() == before
    # SQLite's own -wal/-shm companions may appear beside a WAL file; no other file does
    assert set(os.listdir(tmp_path)) <= {"state.db", "state.db-wal", "state.db-shm"}


def test_read_only_never_creates_a_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no state database at"):
        open_store("sqlite:///fresh/state.db", read_only=True)
    with pytest.raises(ConfigError, match="no state database at"):
        SqliteStore("state.db", read_only=True)
    assert os.listdir(tmp_path) == []


def test_read_only_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database " * 100)
    with pytest.raises(ConfigError, match=r"cannot use .* as a state database"):
        SqliteStore(path, read_only=True)
    assert path.read_text() == "not a database " * 100


def test_read_only_opens_a_path_that_needs_quoting(tmp_path: Path) -> None:
    path = tmp_path / "a dir?x=1#frag%20" / "state.db"
    SqliteStore(path).close()
    reader = SqliteStore(path, read_only=True)
    try:
        assert reader.get("missing") == 0
    finally:
        reader.close()
