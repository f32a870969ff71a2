"""Writes held back to the commit, and group commit: what one SQLite transaction shared by
several requests keeps, takes back and shows to other connections (#14, item 1)."""

import asyncio
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from modeltheft.errors import RateLimited, StateUnavailable
from modeltheft.state import SqliteStore
from modeltheft.state.audit import AuditEntry
from modeltheft.state.breaker import Breaker
from modeltheft.state.group import GroupCommit


def entry(t: float, client: str = "c") -> AuditEntry:
    return AuditEntry(t, client, "answered", ("ab",))


def committed(path: Path, sql: str) -> list[tuple[object, ...]]:
    """What another connection reads now (only committed data)."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def test_a_batch_holds_its_writes_back_to_one_commit(path: Path) -> None:
    store = SqliteStore(path)
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    with store.batch():
        assert store.incr("n", 2) == 2
        assert store.incr("n", 3) == 5
        assert store.append("l", [b"a", b"b"]) == 2
        assert store.append("l", [b"c"]) == 3
        assert store.items("l") == [b"a", b"b", b"c"]
        assert store.items("l", 1) == [b"b", b"c"]
        assert store.items("l", -1) == [b"c"]
        assert store.take_tokens("b", 1, 10, 0, now=1.0).remaining == 9
        store.audit_append([entry(1.0)])
        assert committed(path, "SELECT COUNT(*) FROM counters") == [(0,)]  # nothing yet
    inserts = [s for s in statements if s.startswith("INSERT")]
    # one statement per row of executemany (the trace's view), each table written once,
    # after the log of the keys written (for the other workers' caches)
    tables = ["changes"] * 3 + ["counters", "buckets", "lists", "lists", "lists", "audit"]
    assert [s.split()[2] for s in inserts] == tables
    assert committed(path, "SELECT value FROM counters WHERE key = 'n'") == [(5,)]
    assert committed(path, "SELECT idx, item FROM lists ORDER BY idx") == [
        (0, b"a"), (1, b"b"), (2, b"c")
    ]  # fmt: skip
    other = SqliteStore(path)
    assert other.get("n") == 5 and other.items("l", 1) == [b"b", b"c"]
    assert other.take_tokens("b", 1, 10, 0, now=2.0).remaining == 8
    assert [e.time for e in other.audit_entries()] == [1.0]


def test_a_failed_batch_keeps_nothing_and_a_refusal_keeps_everything(path: Path) -> None:
    store = SqliteStore(path)
    store.incr("n")
    with pytest.raises(ValueError), store.batch():
        store.incr("n")
        store.append("l", [b"x"])
        raise ValueError("a bug")
    assert store.get("n") == 1 and store.items("l") == []
    with pytest.raises(RateLimited), store.batch():
        store.incr("n")
        store.audit_append([entry(1.0)])
        raise RateLimited("over budget", 1.0)
    assert SqliteStore(path).get("n") == 2
    assert len(SqliteStore(path).audit_entries()) == 1


def run_group(store: object, *units: object, deferred: bool = False) -> list[object]:
    """Run ``units`` (callables) as the requests of one turn of an event loop, each in its
    own batch, and return what each returned or raised once the group committed. With
    ``deferred``, each is handed to the group's commit (:meth:`GroupCommit.defer`)."""

    def batched(unit: object) -> object:
        with store.batch():  # type: ignore[attr-defined]
            return unit()  # type: ignore[operator]

    async def request(commits: GroupCommit, unit: object) -> object:
        if deferred:
            try:
                return await commits.defer(lambda: batched(unit))
            except Exception as exc:
                return exc
        done = commits.join()
        try:
            with store.batch():  # type: ignore[attr-defined]
                result = unit()  # type: ignore[operator]
        except Exception as exc:
            result = exc
        try:
            await GroupCommit.committed(done)
        except Exception as exc:
            return exc
        return result

    async def main() -> list[object]:
        commits = GroupCommit(store)
        return await asyncio.gather(*(request(commits, unit) for unit in units))

    return asyncio.run(main())


def test_a_group_commits_once_and_a_failed_request_is_taken_back_alone(path: Path) -> None:
    store = SqliteStore(path)
    commits: list[str] = []
    store._connection().set_trace_callback(lambda s: commits.append(s) if s == "COMMIT" else None)

    def ok(name: str) -> object:
        def unit() -> int:
            store.add_new_members("seen", [name])
            store.append("l", [name.encode()])
            store.audit_append([entry(1.0, name)])
            return store.incr("n")

        return unit

    def bug() -> None:
        store.add_new_members("seen", ["bug"])  # held: its undo notes take it back
        store.append("l", [b"bug"])
        store.incr("n", 100)
        store.audit_append([entry(1.0, "bug")])
        raise ValueError("a bug")

    results = run_group(store, ok("a"), bug, ok("b"))
    assert results[0] == 1 and isinstance(results[1], ValueError) and results[2] == 2
    assert commits == ["COMMIT"]  # one commit for the three
    assert committed(path, "SELECT value FROM counters WHERE key = 'n'") == [(2,)]
    assert committed(path, "SELECT idx, item FROM lists ORDER BY idx") == [(0, b"a"), (1, b"b")]
    assert committed(path, "SELECT member FROM sets ORDER BY member") == [("a",), ("b",)]
    assert [e.client for e in store.audit_entries()] == ["a", "b"]
    assert store.incr("n") == 3  # the cache was taken back with it


def test_nothing_of_a_group_is_visible_before_its_commit(path: Path) -> None:
    store = SqliteStore(path)
    seen: list[list[tuple[object, ...]]] = []

    def unit() -> None:
        store.incr("n")
        seen.append(committed(path, "SELECT COUNT(*) FROM counters"))

    run_group(store, unit, unit)
    assert seen == [[(0,)], [(0,)]]
    assert committed(path, "SELECT value FROM counters") == [(2,)]


def test_a_store_failure_fails_every_request_of_the_group(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(path)
    store.incr("n")

    def ok() -> int:
        return store.incr("n")

    def fail_commit(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store._cache, "flush", fail_commit)
    results = run_group(store, ok, ok)
    assert all(isinstance(r, StateUnavailable) and "disk I/O" in str(r) for r in results)
    monkeypatch.undo()
    assert store.get("n") == 1  # nothing of the group was kept, and the store goes on
    assert run_group(store, ok) == [2]


def test_a_failure_inside_one_request_fails_the_group_at_once(path: Path) -> None:
    store = SqliteStore(path)
    calls: list[str] = []

    def broken() -> None:
        store.incr("n")
        raise StateUnavailable("the disk went away")

    def later() -> int:
        calls.append("later")
        return store.incr("n")

    results = run_group(store, broken, later)
    assert all(isinstance(r, StateUnavailable) for r in results)
    assert calls == []  # refused before it ran
    assert store.get("n") == 0


def test_two_processes_groups_count_exactly(path: Path) -> None:
    """Two stores on one file (two workers) interleave groups: every increment counts once."""
    first, second = SqliteStore(path), SqliteStore(path)
    for _ in range(5):
        run_group(first, *(lambda: first.incr("n") for _ in range(3)))
        run_group(second, *(lambda: second.incr("n") for _ in range(4)))
    assert first.get("n") == second.get("n") == 35


def test_reads_between_the_requests_of_a_group_see_the_held_writes(path: Path) -> None:
    store = SqliteStore(path)

    async def main() -> list[float]:
        commits = GroupCommit(store)
        done = commits.join()
        with store.batch():
            store.audit_append([entry(7.0)])
        times = [e.time for e in store.audit_entries()]  # another thread's read, say
        await GroupCommit.committed(done)
        return times

    assert asyncio.run(main()) == [7.0]


def test_group_commit_goes_through_the_breaker_and_skips_memory(path: Path) -> None:
    from modeltheft.state.memory import MemoryStore

    assert GroupCommit(MemoryStore()).join() is None
    breaker = Breaker(SqliteStore(path))
    assert run_group(breaker, lambda: breaker.incr("n"), lambda: breaker.incr("n")) == [1, 2]
    breaker.close()


def _busy_worker(path: str, seconds: float, results: "multiprocessing.Queue[object]") -> None:
    """A worker that commits a group every ~3 ms and begins the next one at once."""
    store = SqliteStore(path, create=False)
    groups, failures, longest = 0, 0, 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            store.open_group()
        except StateUnavailable:
            failures += 1
            continue
        longest = max(longest, time.monotonic() - started)
        store.incr("n")
        busy = time.perf_counter()
        while time.perf_counter() - busy < 0.003:  # the rest of the turn, holding the lock
            pass
        store.close_group()
        groups += 1
    results.put((groups, failures, longest))


def test_two_busy_workers_share_the_write_lock_fairly(path: Path) -> None:
    """SQLite's busy handler sleeps up to 100 ms between tries, so a worker that begins again
    right after each commit starved the other for seconds (then 503); polling often does not."""
    SqliteStore(path).close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_busy_worker, args=(str(path), 2.0, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    (a, fails_a, wait_a), (b, fails_b, wait_b) = outcomes
    assert fails_a == fails_b == 0
    assert max(wait_a, wait_b) < 0.5
    assert min(a, b) > 0.3 * max(a, b)
    assert SqliteStore(path).get("n") == a + b


def test_another_workers_writes_drop_only_the_keys_it_changed(path: Path) -> None:
    """Each commit logs the keys it wrote; another store drops just those from its cache."""
    first, second = SqliteStore(path), SqliteStore(path)
    first.incr("mine", 5)
    first.append("rows", [b"a"])
    assert first.get("shared") == 0
    second.incr("shared", 2)
    second.append("rows", [b"b"])
    reads: list[str] = []
    first._connection().set_trace_callback(reads.append)
    with first.batch():
        assert first.get("shared") == 2  # read again: the other store changed it
        assert first.get("mine") == 5  # still cached: nobody else wrote it
        assert first.items("rows") == [b"a", b"b"]
        assert first.incr("mine") == 6
    selects = [s for s in reads if s.startswith("SELECT") and "changes" not in s]
    assert any("'shared'" in s for s in selects)
    assert not any("'mine'" in s for s in selects)


@pytest.mark.parametrize("lag", ["pruned", "too_many"])
def test_a_store_that_cannot_tell_what_changed_starts_over(
    path: Path, lag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = SqliteStore(path), SqliteStore(path)
    assert first.get("n") == 0 and first.get("m") == 0
    second.incr("n")
    second.incr("m")
    if lag == "pruned":  # the log no longer holds what followed first's last known change
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("DELETE FROM changes WHERE key = 'n'")
            conn.commit()
    else:
        monkeypatch.setattr("modeltheft.state.sqlite.CHANGES_READ", 1)
    assert first.get("n") == 1 and first.get("m") == 1


def test_trims_and_deletes_see_the_writes_held_for_the_commit(path: Path) -> None:
    store, other = SqliteStore(path), SqliteStore(path)
    store.append("l", [b"0", b"1"])
    assert other.get("n") == 0 and other.items("l") == [b"0", b"1"]
    with store.batch():
        store.append("l", [b"2", b"3"])  # held
        store.trim("l", 3)
        assert store.items("l") == [b"3"]
        store.incr("n", 4)
    assert committed(path, "SELECT idx FROM lists WHERE key = 'l'") == [(3,)]
    assert other.get("n") == 4 and other.items("l", 2) == [b"3"]

    def fails() -> None:
        store.delete(["n", "l"])
        raise ValueError("a bug")

    assert isinstance(run_group(store, fails)[0], ValueError)
    assert store.get("n") == 4 and store.items("l", 3) == [b"3"]  # taken back
    run_group(store, lambda: store.delete(["n", "l"]))
    assert store.get("n") == 0 and store.items("l") == []
    assert other.get("n") == 0 and other.items("l") == []  # logged: the other drops them


def test_a_request_that_writes_nothing_directly_takes_no_savepoint(path: Path) -> None:
    """Set members are held back like the other writes, so a normal request of a group runs
    no SAVEPOINT/RELEASE and no INSERT of its own: its members reach ``sets`` in one
    ``executemany`` with the group's commit (they used to cost an INSERT each at once)."""
    store = SqliteStore(path)
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)

    def request(name: str) -> object:
        def unit() -> list[bool]:
            new = store.add_new_members("seen", [name, "x", name])
            store.add_member("active", name)
            assert store.has_members("seen", [name, "x", "nope"]) == [True, True, False]
            store.incr("n")
            store.append("l", [name.encode()])
            store.audit_append([entry(1.0, name)])
            return new

        return unit

    assert run_group(store, request("a"), request("b")) == [
        [True, True, False],
        [True, False, False],
    ]
    assert not [s for s in statements if s.split()[0] in ("SAVEPOINT", "RELEASE", "ROLLBACK")]
    sets = [i for i, s in enumerate(statements) if "INTO sets" in s]
    assert len(sets) == 5 and min(sets) > statements.index("BEGIN IMMEDIATE")
    assert not [s for s in statements[min(sets) :] if s.startswith("SELECT")]  # at the commit
    assert committed(path, "SELECT key, member FROM sets ORDER BY key, member") == [
        ("active", "a"), ("active", "b"), ("seen", "a"), ("seen", "b"), ("seen", "x")
    ]  # fmt: skip


def test_members_held_for_the_commit_are_seen_by_every_read(path: Path) -> None:
    store = SqliteStore(path)
    store.add_member("s", "old")
    with store.batch():
        assert store.add_new_members("s", ["a", "b", "old", "a"]) == [True, True, False, False]
        assert store.add_new_members("s", ["a"]) == [False]
        assert store.has_members("s", ["a", "c", "old"]) == [True, False, True]
        assert store.members("s") == {"a", "b", "old"}
        assert committed(path, "SELECT COUNT(*) FROM sets") == [(1,)]  # held
        assert sorted(store.take_members("s", 5)) == ["a", "b", "old"]
        assert store.members("s") == set() and store.has_members("s", ["a"]) == [False]
        store.add_member("s", "c")
        store.add_member("t", "d")
        store.delete(["t"])
        assert store.members("t") == set() and store.has_members("t", ["d"]) == [False]
    assert committed(path, "SELECT key, member FROM sets") == [("s", "c")]
    assert SqliteStore(path).members("s") == {"c"}


def test_a_failed_request_takes_its_members_back_and_a_direct_write_its_savepoint(
    path: Path,
) -> None:
    """Units of one group: held members only (kept), a take_members (its savepoint is taken
    then) that fails, and one with a direct write that succeeds."""
    store = SqliteStore(path)
    store.add_member("s", "old")

    def held() -> list[bool]:
        return store.add_new_members("s", ["a"])

    def takes_then_fails() -> None:
        store.add_new_members("s", ["z"])
        assert sorted(store.take_members("s", 10)) == ["a", "old", "z"]
        raise ValueError("a bug")

    def takes() -> list[str]:
        store.add_new_members("s", ["y"])
        return sorted(store.take_members("t", 1))

    results = run_group(store, held, takes_then_fails, takes)
    assert results[0] == [True] and isinstance(results[1], ValueError) and results[2] == []
    assert committed(path, "SELECT member FROM sets ORDER BY member") == [
        ("a",), ("old",), ("y",)
    ]  # fmt: skip
    assert store.has_members("s", ["a", "z", "old", "y"]) == [True, False, True, True]
    assert store.add_new_members("s", ["z"]) == [True]


def test_another_workers_removals_drop_the_members_it_knew(path: Path) -> None:
    """Members known are never wrong for long: a removal by another store (take_members,
    delete) is logged in ``changes``, and the first store reads the set again."""
    first, second = SqliteStore(path), SqliteStore(path)
    assert first.add_new_members("s", ["a", "b"]) == [True, True]
    assert first.has_members("s", ["a", "b"]) == [True, True]  # known: no read
    assert second.add_new_members("s", ["a", "c"]) == [False, True]
    assert second.take_members("s", 10) != []
    assert first.has_members("s", ["a", "b", "c"]) == [False, False, False]
    assert first.add_new_members("s", ["a"]) == [True]
    assert second.has_members("s", ["a"]) == [True]
    first.delete(["s"])
    assert second.has_members("s", ["a"]) == [False]
    assert second.add_new_members("s", ["a"]) == [True]


RECOVERING = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120)  # the WAL write lock
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 122)  # the WAL recovery lock
os.pwrite(fd, bytes([os.pread(fd, 1, 8)[0] ^ 0xFF]), 8)  # the two index headers disagree
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextmanager
def recovering(path: Path, seconds: float) -> Iterator[None]:
    """Another process recovering the WAL index for ``seconds``: its locks (as SQLite takes
    them in the -shm file) and a header that every reader must wait to see rebuilt."""
    holder = subprocess.Popen(
        [sys.executable, "-c", RECOVERING, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_transactions_run_no_busy_timeout_statements(path: Path) -> None:
    """BEGIN IMMEDIATE is polled with SQLite's busy timeout at 0; it stays 0 from one
    transaction to the next (it used to be set to 0 and back in each: 2 statements)."""
    store = SqliteStore(path)
    store.incr("n")
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    for _ in range(3):
        run_group(store, lambda: store.incr("n"))
        with store.batch():
            store.incr("n")
    assert statements.count("BEGIN IMMEDIATE") == 6
    assert not [s for s in statements if "busy_timeout" in s]
    assert store.get("n") == 7


def test_a_reader_still_waits_for_another_process_after_a_transaction(path: Path) -> None:
    """Outside a transaction the busy timeout is the store's again: a read that meets another
    process recovering the WAL waits for it, and after busy_timeout it is 503, not at once."""
    store = SqliteStore(path, busy_timeout=2.0)
    store.incr("n")
    store.add_member("s", "a")
    store.audit_append([entry(1.0)])
    with recovering(path, 0.4):
        start = time.monotonic()
        assert store.get("m") == 0  # not cached: read
        waited = time.monotonic() - start
    assert 0.3 < waited < 1.9
    store.incr("n")  # the timeout went back to 0 for this transaction
    with recovering(path, 0.3):
        assert [e.time for e in store.audit_entries()] == [1.0]
    store.incr("n")
    with recovering(path, 0.3):
        assert store.members("s") == {"a"}
    store.incr("n")
    with recovering(path, 0.3):
        assert store.items("l") == []
    short = SqliteStore(path, busy_timeout=0.3)
    short.incr("n")
    with recovering(path, 3.0):
        start = time.monotonic()
        with pytest.raises(StateUnavailable, match="locked"):
            short.has_members("s", ["a", "b"])
        assert 0.25 < time.monotonic() - start < 2.0
    assert short.has_members("s", ["a", "b"]) == [True, False] and short.get("n") == 5


def test_a_sqlite_error_inside_a_unit_fails_its_group(path: Path) -> None:
    store = SqliteStore(path)
    store.incr("n")

    def raw() -> None:
        store.incr("n")
        raise sqlite3.OperationalError("disk I/O error")

    def later() -> int:
        return store.incr("n")

    results = run_group(store, raw, later)
    assert all(isinstance(r, StateUnavailable) and "disk I/O" in str(r) for r in results)
    assert store.get("n") == 1
    assert run_group(store, later) == [2]


def test_a_cancelled_request_leaves_the_groups_commit_alone(path: Path) -> None:
    store = SqliteStore(path)

    async def request(commits: GroupCommit, amount: int) -> int:
        done = commits.join()
        with store.batch():
            value = store.incr("n", amount)
        await GroupCommit.committed(done)
        return value

    async def main() -> list[object]:
        commits = GroupCommit(store)
        tasks = [asyncio.ensure_future(request(commits, k)) for k in (1, 10, 100)]
        await asyncio.sleep(0)  # all three ran their batch and wait for the commit
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] == 1 and isinstance(results[1], asyncio.CancelledError)
    assert results[2] == 111
    assert committed(path, "SELECT value FROM counters") == [(111,)]  # its writes committed


def test_deferred_works_run_in_order_in_one_commit_each_with_its_own_outcome(path: Path) -> None:
    store = SqliteStore(path)
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    order: list[str] = []

    def ok(name: str) -> object:
        def unit() -> int:
            order.append(name)
            store.audit_append([entry(1.0, name)])
            return store.incr("n")

        return unit

    def refused() -> None:
        order.append("refused")
        store.audit_append([entry(1.0, "refused")])  # a refusal's audit entry is kept
        raise RateLimited("over budget", 1.0)

    def bug() -> None:
        order.append("bug")
        store.incr("n", 100)
        raise ValueError("a bug")

    results = run_group(store, ok("a"), refused, bug, ok("b"), deferred=True)
    assert order == ["a", "refused", "bug", "b"]
    assert results[0] == 1 and results[3] == 2
    assert isinstance(results[1], RateLimited) and isinstance(results[2], ValueError)
    assert statements.count("COMMIT") == 1
    assert committed(path, "SELECT value FROM counters WHERE key = 'n'") == [(2,)]
    assert [e.client for e in SqliteStore(path).audit_entries()] == ["a", "refused", "b"]


def test_a_failed_commit_fails_every_deferred_work_and_keeps_nothing(path: Path) -> None:
    store = SqliteStore(path)

    def broken() -> int:
        store.incr("n")
        raise StateUnavailable("the disk went away")  # the group is taken back

    results = run_group(
        store, lambda: store.incr("n"), broken, lambda: store.incr("n"), deferred=True
    )
    assert all(isinstance(r, StateUnavailable) for r in results)
    assert SqliteStore(path).get("n") == 0


def test_a_cancelled_requests_deferred_work_still_runs_and_commits(path: Path) -> None:
    store = SqliteStore(path)

    async def main() -> tuple[bool, object]:
        commits = GroupCommit(store)
        cancelled = commits.defer(lambda: store.incr("n"))
        kept = commits.defer(lambda: store.incr("n"))
        cancelled.cancel()  # the client left before the turn's commit
        return cancelled.cancelled(), await kept

    assert asyncio.run(main()) == (True, 2)  # the cancelled one ran first and counted
    assert SqliteStore(path).get("n") == 2


def test_defer_needs_a_store_with_transactions() -> None:
    from modeltheft.state.memory import MemoryStore

    async def main() -> object:
        return await GroupCommit(MemoryStore()).defer(lambda: None)

    with pytest.raises(RuntimeError, match="transactions"):
        asyncio.run(main())


def test_a_group_mixes_joined_and_deferred_requests(path: Path) -> None:
    store = SqliteStore(path)

    async def main() -> list[object]:
        commits = GroupCommit(store)
        done = commits.join()
        with store.batch():
            store.incr("n")  # a joined request's work, done at once
        deferred = commits.defer(lambda: store.incr("n"))
        assert commits.groups == 1
        await GroupCommit.committed(done)
        return [await deferred, commits.groups]

    assert asyncio.run(main()) == [2, 1]
    assert SqliteStore(path).get("n") == 2
