"""Group commit in the service (#14, item 1): concurrent requests share a commit of the
default SQLite state, and none is answered before its audit entry is committed."""

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from modeltheft.service.runner import BackgroundServer
from modeltheft.state.audit import row_hashes
from modeltheft.state.sqlite import SqliteStore
from modeltheft.state.sqlite_cache import Cache
from tests.conftest import auth


def audited(path: Path, digest: str) -> bool:
    """Whether a committed audit entry holds ``digest`` (another connection: committed only)."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT entry FROM audit WHERE entry LIKE ?", (f"%{digest}%",))
        return rows.fetchone() is not None


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 17, size=(n, 64)) / 16


def test_every_answer_is_committed_before_it_is_sent_and_commits_are_shared(
    make_app: Callable[..., FastAPI], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    groups: list[int] = []
    close = SqliteStore.close_group

    def counted(self: SqliteStore) -> None:
        groups.append(len(self._cache.audit))  # requests in the group (one entry each)
        close(self)

    monkeypatch.setattr(SqliteStore, "close_group", counted)
    X = rows(48)
    digests = [row_hashes(x[None])[0] for x in X]

    async def one(client: httpx.AsyncClient, url: str, i: int) -> bool:
        body = {"inputs": [X[i].tolist()]}
        response = await client.post(url, json=body, headers=auth())
        assert response.status_code == 200, response.text
        return audited(path, digests[i])  # right as the answer arrives

    async def main(url: str) -> list[bool]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one(client, url, i) for i in range(len(X))))

    app = make_app("recommended", state=f"sqlite:///{path}", audit_retention=3600)
    with BackgroundServer(app) as server:
        found = asyncio.run(main(server.url + "/v1/predict"))
    assert all(found)
    assert sum(groups) >= len(X)
    assert len(groups) < len(X)  # some requests shared a commit
    assert max(groups) > 1


def test_a_failed_group_commit_is_503_for_each_of_its_requests(
    make_app: Callable[..., FastAPI], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    app = make_app("none", state=f"sqlite:///{path}", audit_retention=3600)
    X = rows(8)

    def broken(self: Cache, conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    async def main(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            requests = [client.post(url, json={"inputs": [x.tolist()]}, headers=auth()) for x in X]
            return await asyncio.gather(*requests)

    with BackgroundServer(app) as server:
        monkeypatch.setattr(Cache, "flush", broken)  # the commit's first step
        answers = asyncio.run(main(server.url + "/v1/predict"))
        monkeypatch.undo()
    assert {a.status_code for a in answers} == {503}
    assert all("state store unavailable" in a.json()["detail"] for a in answers)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone() == (0,)
