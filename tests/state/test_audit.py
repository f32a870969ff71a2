"""The audit log of queries: its entries, every backend, GuardedModel's recording, the CLI."""

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from modeltheft.cli.app import main
from modeltheft.defenses.alerts import BLOCKED, STRICT, status_key
from modeltheft.defenses.base import Answers, DefenseContext, OutputStage, Pipeline
from modeltheft.defenses.guarded import GuardedModel
from modeltheft.defenses.output import HardLabel
from modeltheft.defenses.ratelimit import TokenBucketRateLimit
from modeltheft.errors import Blocked, ConfigError, RateLimited, StateUnavailable
from modeltheft.service import Settings
from modeltheft.service.auth import KeyRing
from modeltheft.state import MemoryStore, RedisStore, SqliteStore, StateStore
from modeltheft.state.audit import FIELDS, OUTCOMES, AuditEntry, parse_duration, row_hashes
from tests.conftest import KEYS


def entry(t: float, client: str = "alice", outcome: str = "answered") -> AuditEntry:
    labels = (1, 2) if outcome == "answered" else None
    return AuditEntry(t, client, outcome, ("0" * 16, "f" * 16), labels=labels)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    opened: StateStore
    if request.param == "memory":
        opened = MemoryStore()
    elif request.param == "sqlite":
        opened = SqliteStore(tmp_path / "audit.db")
    else:
        url = request.getfixturevalue("redis_url")
        opened = RedisStore(url, namespace=f"test:{request.node.nodeid}:")
    yield opened
    opened.close()


# --- entries ------------------------------------------------------------------------------


def test_entry_round_trips_through_json() -> None:
    full = AuditEntry(
        12.5,
        "bob",
        "answered",
        ("a" * 16,),
        labels=(3,),
        status_before="normal",
        status_after="strict",
        suspicious=1,
        altered=1,
        probabilities=True,
    )
    assert AuditEntry.decode(full.encode()) == full
    refused = entry(1.0, outcome="rate_limited")
    assert AuditEntry.decode(refused.encode().encode()) == refused
    assert refused.rows == 2 and refused.as_dict()["rows"] == 2
    assert "\n" not in full.encode()


_floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**53), 2**53)
_ints = st.integers(-(2**70), 2**70) | st.booleans()


@settings(max_examples=400, deadline=None)
@given(
    time_=_floats,
    client=st.text(),
    outcome=st.sampled_from(OUTCOMES) | st.text(),
    hashes=st.lists(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16) | st.text()),
    labels=st.none() | st.lists(st.integers(-(2**70), 2**70) | st.text() | st.booleans()),
    before=st.text(),
    after=st.sampled_from(("normal", "strict", "blocked")),
    counts=st.tuples(_ints, _ints),
    probabilities=st.booleans(),
)
def test_entry_encoding_is_json_dumps_of_its_fields(
    time_: float,
    client: str,
    outcome: str,
    hashes: list[str],
    labels: list[int | str] | None,
    before: str,
    after: str,
    counts: tuple[int, int],
    probabilities: bool,
) -> None:
    """The hand-built encoder writes byte for byte what ``json.dumps`` of the fields did
    (any character in names and labels, floats as ``float.__repr__``, NaN and infinities as
    json spells them), and what it writes decodes back to the entry."""
    entry = AuditEntry(
        time_,
        client,
        outcome,
        tuple(hashes),
        labels=None if labels is None else tuple(labels),
        status_before=before,
        status_after=after,
        suspicious=counts[0],
        altered=counts[1],
        probabilities=probabilities,
    )
    text = entry.encode()
    fields = {name: getattr(entry, name) for name in FIELDS}
    assert text == json.dumps(fields, separators=(",", ":"))
    back = AuditEntry.decode(text)
    if time_ == time_:  # NaN is never equal to itself
        assert back == entry
    else:
        assert back.time != back.time and back.row_hashes == entry.row_hashes


@pytest.mark.parametrize(
    "odd", [np.float64(0.1), float("nan"), float("-inf"), -0.0, 1e300, 5e-324, True, 7]
)
def test_entry_encoding_of_float_subclasses_and_oddities(odd: float) -> None:
    entry = AuditEntry(odd, 'c\u2028\n"', "answered", ("x",), labels=(1, "\x00é", 2.5))  # type: ignore[arg-type]
    fields = {name: getattr(entry, name) for name in FIELDS}
    assert entry.encode() == json.dumps(fields, separators=(",", ":"))


def test_entry_encoding_refuses_what_json_refuses() -> None:
    entry = AuditEntry(np.float32(0.5), "c", "answered", ("x",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        json.dumps({name: getattr(entry, name) for name in FIELDS})
    with pytest.raises(TypeError):
        entry.encode()


def test_row_hashes_identify_rows_not_batches() -> None:
    X = np.random.default_rng(0).random((3, 8))
    hashes = row_hashes(X)
    assert len(hashes) == 3 and all(len(h) == 16 for h in hashes)
    assert row_hashes(X[1:2]) == hashes[1:2]  # a row hashes the same in any batch
    assert row_hashes(X.astype(np.float32).astype(float)) != hashes  # float64 bytes
    assert len(set(hashes)) == 3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 604800.0),
        ("12h", 43200.0),
        ("30m", 1800.0),
        ("45s", 45.0),
        ("0", 0.0),
        ("2W", 1.2096e6),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1d", "7 days", "d", "1.5.2h"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match="for example 7d"):
        parse_duration(text, "--audit-retention")


def test_settings_check_the_retention() -> None:
    keys = KeyRing.from_pairs(KEYS)
    assert Settings(keys=keys).audit_retention == 7 * 86400
    assert Settings(keys=keys, audit_retention=0).audit_retention == 0
    with pytest.raises(ConfigError, match="audit_retention"):
        Settings(keys=keys, audit_retention=-1)


# --- every backend --------------------------------------------------------------------------


def test_backends_append_filter_limit_and_prune(store: StateStore) -> None:
    now = time.time()
    assert store.audit_entries() == []
    older = [entry(now - 100 + i, "alice" if i % 2 else "bob") for i in range(6)]
    store.audit_append(older[:4])
    store.audit_append(older[4:])
    store.audit_append([entry(now, "bob", "blocked")])
    everything = store.audit_entries()
    assert everything == [*older, entry(now, "bob", "blocked")]
    assert store.audit_entries(client="alice") == older[1::2]
    assert store.audit_entries(since=now - 96) == everything[4:]
    assert store.audit_entries(limit=2) == everything[-2:]
    assert store.audit_entries(client="bob", limit=2) == [older[4], everything[-1]]
    assert store.audit_entries(limit=0) == []
    store.ping()
    if isinstance(store, RedisStore):
        # The stream's ids are the server's times: everything was added just now.
        assert store.audit_prune(now - 3600) == 0
        assert store.audit_prune(time.time() + 1) == 7
    else:
        assert store.audit_prune(now - 97) == 3
        assert store.audit_entries() == everything[3:]
        assert store.audit_prune(now - 97) == 0
    store.audit_append([entry(time.time(), "carol")])
    assert [e.client for e in store.audit_entries()][-1] == "carol"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_pruning_deletes_the_oldest_limit_entries(kind: str, tmp_path: Path) -> None:
    """Pruned often and a little at a time (PRUNE_ROWS), a long retention never deletes a
    minute of traffic inside one request's commit."""
    store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "state.db")
    now = time.time()
    old = [entry(now - 1000 + i) for i in range(10)]
    store.audit_append([*old, entry(now)])
    assert store.audit_prune(now - 1, limit=4) == 4
    assert store.audit_entries() == [*old[4:], entry(now)]
    assert store.audit_prune(now - 1, limit=100) == 6
    assert store.audit_prune(now - 1, limit=100) == 0
    assert len(store.audit_entries()) == 1


def test_redis_pages_through_a_long_stream(redis_url: str) -> None:
    store = RedisStore(redis_url, namespace="test:audit-pages:")
    try:
        now = time.time()
        store.audit_append(
            [entry(now + i * 1e-3, "alice" if i % 3 else "bob") for i in range(2500)]
        )
        bob = store.audit_entries(client="bob")
        assert len(bob) == 834 and bob == sorted(bob, key=lambda e: e.time)
        assert store.audit_entries(client="bob", limit=900) == bob
        assert store.audit_entries(client="bob", limit=5) == bob[-5:]
        assert len(store.audit_entries()) == 2500
    finally:
        store.audit_prune(time.time() + 1)
        store.close()


# --- SQLite: new files, faults --------------------------------------------------------------


def test_sqlite_logs_a_new_database_and_can_refuse_to_create_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "fresh" / "state.db"
    with pytest.raises(ConfigError, match="no state database at"):
        SqliteStore(path, create=False)
    assert not path.parent.exists()
    with caplog.at_level(logging.WARNING, logger="modeltheft.state"):
        SqliteStore(path).close()
    assert f"created a new, empty state database at {path}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeltheft.state"):
        SqliteStore(path, create=False).close()
    assert caplog.text == ""
    with pytest.raises(ConfigError, match="cannot create the folder"):
        SqliteStore(path / "below-a-file" / "x.db")


def test_sqlite_locked_by_another_process_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout=0.2)
    try:
        store.incr("c", 5)
        store.audit_append([entry(1.0)])
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(StateUnavailable, match="locked"):
                store.incr("c")
            with pytest.raises(StateUnavailable):
                store.audit_append([entry(2.0)])
            with pytest.raises(StateUnavailable):
                store.ping()
            assert time.monotonic() - started < 3
            assert store.get("c") == 5  # WAL: reads go on
            other.execute("ROLLBACK")
        store.ping()
        assert store.incr("c") == 6
        assert store.audit_entries() == [entry(1.0)]
    finally:
        store.close()


# --- GuardedModel records every request ------------------------------------------------------


class FlipSuspicious(OutputStage):
    """Answers the suspicious rows with the model's least likely class."""

    name = "flip_suspicious"

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        flipped = answers.probabilities.copy()
        rows = answers.flagged
        flipped[rows] = 1 - flipped[rows]
        return answers.with_probabilities(flipped)


@pytest.fixture(scope="module")
def model() -> LogisticRegression:
    rng = np.random.default_rng(0)
    X = rng.random((90, 4))
    return LogisticRegression().fit(X, np.repeat([0, 1, 2], 30))


def guarded(
    model: LogisticRegression,
    store: StateStore,
    retention: float | None = 3600.0,
    capacity: int = 6,
) -> GuardedModel:
    bucket = TokenBucketRateLimit(capacity=capacity, refill_per_hour=0.0)
    pipeline = Pipeline([bucket, FlipSuspicious()])
    return GuardedModel(model, pipeline, store=store, seed=1, audit_retention=retention)


def test_guarded_model_records_answers_and_refusals(
    model: LogisticRegression, store: StateStore
) -> None:
    g = guarded(model, store)
    X = np.random.default_rng(1).random((4, 4))
    reply = g.answer("alice", X[:2])
    store.raise_to(status_key("alice"), STRICT)
    strict = g.answer("alice", X[2:])
    with pytest.raises(RateLimited):
        g.answer("alice", X[:3])  # 4 of 6 tokens spent
    store.raise_to(status_key("bob"), BLOCKED)
    with pytest.raises(Blocked):
        g.answer("bob", X[:1])
    log = store.audit_entries()
    assert [(e.client, e.outcome) for e in log] == [
        ("alice", "answered"),
        ("alice", "answered"),
        ("alice", "rate_limited"),
        ("bob", "blocked"),
    ]
    first, second, limited, blocked = log
    assert first.row_hashes == row_hashes(X[:2]) and first.labels == tuple(reply.labels.tolist())
    assert (first.status_before, first.status_after, first.suspicious, first.altered) == (
        "normal",
        "normal",
        0,
        0,
    )
    assert first.probabilities
    own = model.predict(X[2:])
    assert second.labels == tuple(strict.labels.tolist())
    assert second.status_before == "strict" and second.suspicious == 2
    assert second.altered == int((strict.labels != own).sum()) > 0
    assert limited.labels is None and limited.rows == 3
    assert blocked.labels is None and blocked.status_before == "blocked"
    assert all(e.client in ("alice", "bob") for e in log)
    assert not any(KEYS["alice"] in e.encode() for e in log)


def test_status_change_and_hidden_probabilities_are_recorded(model: LogisticRegression) -> None:
    class Escalate(OutputStage):
        name = "escalate"

        def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
            ctx.store.raise_to(status_key(ctx.client_id), STRICT)
            return answers.mark(np.ones(len(answers.original), dtype=bool))

    store = MemoryStore()
    g = GuardedModel(model, Pipeline([Escalate(), HardLabel()]), store=store, audit_retention=60)
    g.answer("eve", np.zeros((1, 4)))
    [only] = store.audit_entries()
    assert (only.status_before, only.status_after, only.suspicious) == ("normal", "strict", 1)
    assert only.probabilities is False


def test_no_audit_without_retention(model: LogisticRegression) -> None:
    for retention in (None, 0):
        store = MemoryStore()
        guarded(model, store, retention=retention).answer("alice", np.zeros((1, 4)))
        assert store.audit_entries() == []


def test_pruning_is_rare_and_drops_old_entries(
    model: LogisticRegression, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    store.audit_append([entry(time.time() - 7200), entry(time.time() - 10)])
    calls: list[float] = []
    prune = store.audit_prune
    monkeypatch.setattr(
        store, "audit_prune", lambda before, limit: calls.append(before) or prune(before, limit)
    )
    g = guarded(model, store, retention=3600.0, capacity=1000)
    for _ in range(50):
        g.answer("alice", np.zeros((1, 4)))
    assert len(calls) == 1  # once at the first request, then at most once a second
    assert len(store.audit_entries()) == 51  # the entry of 2 h ago is gone


def test_state_unavailable_is_raised_not_answered(model: LogisticRegression) -> None:
    class Down(MemoryStore):
        def audit_append(self, entries: object) -> None:
            raise StateUnavailable("down")

    with pytest.raises(StateUnavailable):
        guarded(model, Down()).answer("alice", np.zeros((1, 4)))


def test_audit_costs_little_per_request_on_memory(model: LogisticRegression) -> None:
    """The audit's own cost for a 1-row request on MemoryStore (target <= 20 µs).

    Timed on the helper answer() calls, since the difference of two whole-request timings is
    dominated by the machine's noise.
    """
    g = guarded(model, MemoryStore(), retention=3600.0, capacity=10**9)
    X = np.zeros((1, 4))
    X.flags.writeable = False
    probabilities = model.predict_proba(X)
    answers = g.pipeline.transform(probabilities, DefenseContext.local(np.random.default_rng(0)))
    labels = g.classes[answers.labels]
    rng = np.random.default_rng(0)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(2000):
            ctx = DefenseContext("alice", rng, g.store, inputs=X)  # fresh: digests included
            g._audit(ctx, 0, answers=answers, labels=labels)
        best = min(best, (time.perf_counter() - start) / 2000)
    print(f"audit cost per 1-row request on MemoryStore: {best * 1e6:.1f} µs")
    assert best < 100e-6  # generous for a loaded CI machine; measured well under 20 µs


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_audit_prints_a_table_and_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    now = time.time()
    store.audit_append([entry(now - 7200, "alice"), entry(now - 60, "bob", "rate_limited")])
    store.audit_append([entry(now - 30, "alice")])
    store.close()
    url = f"sqlite:///{path}"
    assert main(["audit", "--state", url, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["client"], x["outcome"], x["rows"]) for x in lines] == [
        ("alice", "answered", 2),
        ("bob", "rate_limited", 2),
        ("alice", "answered", 2),
    ]
    assert main(["audit", "--state", url, "--json", "--client", "alice", "--since", "1h"]) == 0
    [recent] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert recent["time"] == pytest.approx(now - 30)
    assert main(["audit", "--state", url, "--limit", "2"]) == 0
    table = capsys.readouterr().out
    assert "2 audit entries" in table and "rate_limited" in table and "bob" in table


def test_cli_audit_of_a_missing_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nowhere" / "state.db"
    assert main(["audit", "--state", f"sqlite:///{path}"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: no state database at {path}"
    assert not path.parent.exists()
    assert main(["audit", "--state", "memory://"]) == 1
    assert main(["audit", "--state", f"sqlite:///{path}", "--since", "soon"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
