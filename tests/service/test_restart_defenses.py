"""A SIGKILL mid-traffic and a restart lose no counter, detector state or watermark record.

``modeltheft serve --defense recommended --workers 2`` runs as a real process group on shared
state (SQLite, or Redis). A thief ("bob") sends noise and is flagged by the
out-of-distribution monitor (strict policy) and watermarked; an honest client ("alice") keeps
sending real digits while the whole group is SIGKILLed. After a restart on the same state,
every counter, alert, status, PRADA list and watermark record is still there, bob is still
misinformed (on rows that only the strict policy's looser gate misinforms), and alice still
gets the victim's own answers.
"""

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from modeltheft.defenses import load_pipeline
from modeltheft.defenses.alerts import STRICT, alerts, client_status
from modeltheft.defenses.base import StageEnv
from modeltheft.defenses.keyed import canonical, row_digests, unit_interval
from modeltheft.defenses.misinformation import AdaptiveMisinformation
from modeltheft.defenses.watermark import Watermark, load_records, watermarked_clients
from modeltheft.state import MemoryStore, StateStore, open_store
from modeltheft.state.audit import row_hashes
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim
from tests.conftest import auth
from tests.service.processes import Server, serve_processes

CLIENTS = ("alice", "bob")
BATCH = 5  # rows per request of alice
NOISE_REQUESTS, NOISE_ROWS = 10, 3  # bob: 30 noise rows, flagged after the 12th


@pytest.fixture
def start_server(victim_path: Path, tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Start ``serve --defense recommended --workers 2`` on a state URL; killed at teardown."""
    with serve_processes(victim_path, tmp_path, "recommended") as start:
        yield start


@pytest.fixture(params=["sqlite", "redis"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty state: a new SQLite file, or a Redis database of its own, flushed."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 's.db'}"
        return
    import redis

    # The session's Redis is shared with other tests (database 0): use another database.
    url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/7"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    yield url
    with redis.Redis.from_url(url) as client:
        client.flushdb()


def watermarked_rows(store: StateStore, rows: np.ndarray) -> int:
    """How many of ``rows`` the recommended watermark selects (its rate, under the store's key)."""
    [stage] = [s for s in load_pipeline("recommended").stages if isinstance(s, Watermark)]
    key = store.secret("watermark-key")
    # Keyed on canonical rows (the served digits task's precision), as the stage does.
    canonical_rows = canonical(rows, digits_task().resolution)
    return int((unit_interval(row_digests(key, canonical_rows)) < stage.rate).sum())


def odd_rows(n: int = 20) -> np.ndarray:
    """Blends of real digits and noise that a clean key gets true answers to, while the
    strict policy misinforms them (beyond its looser gate ``strict_fpr`` only)."""
    [stage] = [
        s for s in load_pipeline("recommended").stages if isinstance(s, AdaptiveMisinformation)
    ]
    task = digits_task()
    stage.setup(StageEnv(MemoryStore(), task))
    rng = np.random.default_rng(5)
    real = task.data.X_eval[rng.integers(0, len(task.data.X_eval), 2000)]
    lam = rng.uniform(0.05, 0.6, (2000, 1))
    blends = canonical(lam * rng.random((2000, 64)) + (1 - lam) * real, task.resolution)
    chosen = stage.strict_gate(blends) & ~stage.out_of_distribution(blends)
    assert chosen.sum() >= n
    return blends[chosen][:n]


def predict(url: str, rows: np.ndarray, client: str) -> httpx.Response:
    """One request on a new connection."""
    body = {"inputs": np.asarray(rows, dtype=float).tolist()}
    return httpx.post(f"{url}/v1/predict", json=body, headers=auth(client), timeout=30)


def labels_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([p["label"] for p in response.json()["predictions"]])


@dataclass(frozen=True)
class Snapshot:
    """Everything the defenses keep that a restart must not lose."""

    counters: dict[str, int]
    lists: dict[str, int]
    alerts: list[dict[str, object]]
    bob_status: int
    watermarked: list[str]

    @classmethod
    def of(cls, store: StateStore) -> "Snapshot":
        counters = {
            f"{name}:{client}": store.get(f"{name}:{client}")
            for name in ("served", "ood:n", "ood:hits")
            for client in CLIENTS
        }
        counters["alerted:ood_monitor:bob"] = store.get("alerted:ood_monitor:bob")
        lists = {
            key: len(store.items(key))
            for client in CLIENTS
            for key in (f"prada:{client}:d", f"prada:{client}:rows", f"watermark:{client}")
        }
        return cls(
            counters,
            lists,
            alerts(store),
            client_status(store, "bob"),
            watermarked_clients(store),
        )

    def nothing_lost_in(self, later: "Snapshot") -> None:
        for key, value in self.counters.items():
            assert later.counters[key] >= value, key
        for key, value in self.lists.items():
            assert later.lists[key] >= value, key
        # Alerts are append-only: the earlier ones are still there, in order.
        assert later.alerts[: len(self.alerts)] == self.alerts
        assert later.bob_status >= self.bob_status
        assert set(self.watermarked) <= set(later.watermarked)


@dataclass
class Traffic:
    """Alice's background traffic up to the kill: rows sent, and the rows answered with 200."""

    sent: int = 0
    answered: int = 0
    other_statuses: list[int] = field(default_factory=list)
    answers: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """(row indices, labels) of every request answered with 200."""


def test_sigkill_mid_traffic_loses_no_defense_state(
    start_server: Callable[[str], Server], state_url: str, victim: LoadedVictim
) -> None:
    X = digits_task().data.X_eval
    truth = victim.model.predict(X)
    store = open_store(state_url)
    try:
        first = start_server(state_url)

        # 1. The thief: noise in small batches; flagged after 12 rows, then strict.
        noise = np.random.default_rng(0).random((NOISE_REQUESTS * NOISE_ROWS, 64))
        for i in range(0, len(noise), NOISE_ROWS):
            labels_of(predict(first.url, noise[i : i + NOISE_ROWS], "bob"))
        assert client_status(store, "bob") == STRICT
        flagged = alerts(store)
        assert [(a["client"], a["detector"]) for a in flagged] == [("bob", "ood_monitor")]
        assert store.get("served:bob") == len(noise)
        assert store.get("ood:n:bob") == len(noise)
        assert len(store.items("prada:bob:d")) == len(noise)
        # Every noise row is out of distribution, so misinformed, and watermarked if its HMAC
        # falls under the preset's rate.
        assert len(store.items("watermark:bob")) == watermarked_rows(store, noise)
        assert len(load_records(store, "bob").labels) == watermarked_rows(store, noise)
        assert watermarked_clients(store) == ["bob"]

        # 2. The honest client sends real digits from a background thread; kill mid-traffic.
        traffic, stop = Traffic(), threading.Event()

        def send(start: int) -> int | None:
            rows = np.arange(start, start + BATCH) % len(X)
            try:
                response = predict(first.url, X[rows], "alice")
            except httpx.TransportError:
                return None  # the server was killed
            if response.status_code == 200:
                traffic.answers.append((rows, labels_of(response)))
            return response.status_code

        def sender() -> None:
            deadline, start = time.monotonic() + 30, 0
            with ThreadPoolExecutor(2) as pool:
                while not stop.is_set() and time.monotonic() < deadline:
                    starts = [start, start + BATCH]
                    start += 2 * BATCH
                    traffic.sent += 2 * BATCH
                    for status in pool.map(send, starts):
                        if status == 200:
                            traffic.answered += BATCH
                        elif status is not None:
                            traffic.other_statuses.append(status)

        thread = threading.Thread(target=sender)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while traffic.answered < 100 and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.01)
            before = Snapshot.of(store)  # the server is still answering alice
            first.kill()
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not thread.is_alive()
        assert traffic.answered >= 100 and traffic.other_statuses == []
        assert before.counters["served:alice"] > 0

        at_kill = Snapshot.of(store)
        before.nothing_lost_in(at_kill)
        if state_url.startswith("sqlite"):
            with closing(sqlite3.connect(state_url[len("sqlite:///") :])) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # 4. Every answered row was counted before its answer left; a row cut off by the
        # kill may or may not have been.
        served = at_kill.counters["served:alice"]
        assert traffic.answered <= served <= traffic.sent
        assert traffic.answered <= at_kill.counters["ood:n:alice"] <= served
        assert traffic.answered <= at_kill.lists["prada:alice:d"] <= served
        # Alice was never flagged, misinformed or watermarked.
        assert client_status(store, "alice") == 0
        assert at_kill.lists["watermark:alice"] == 0
        for rows, labels in traffic.answers:
            np.testing.assert_array_equal(labels, truth[rows])
        # Every acknowledged request has its audit entry, matched by input hashes and labels.
        acknowledged = Counter(
            (row_hashes(X[rows]), tuple(labels.tolist())) for rows, labels in traffic.answers
        )
        audited = Counter((e.row_hashes, e.labels) for e in store.audit_entries(client="alice"))
        assert not acknowledged - audited
        assert len(traffic.answers) <= audited.total() <= served // BATCH
        bob_log = store.audit_entries(client="bob")
        assert [e.row_hashes for e in bob_log] == [
            row_hashes(noise[i : i + NOISE_ROWS]) for i in range(0, len(noise), NOISE_ROWS)
        ]
        assert bob_log[0].status_before == "normal" and bob_log[-1].status_before == "strict"
        assert all(e.altered == NOISE_ROWS for e in bob_log if e.status_before == "strict")

        # 3. Restart on the same state: bob is still strict, alice still gets the truth.
        second = start_server(state_url)
        # New odd rows (not the real digits: a strict key gets true answers to those too).
        # Five: a burst of 20 such rows from alice is itself flagged by stream_test.
        odd = odd_rows(5)
        digits = np.arange(len(odd))
        bob = labels_of(predict(second.url, odd, "bob"))
        alice = labels_of(predict(second.url, odd, "alice"))
        np.testing.assert_array_equal(alice, victim.model.predict(odd))
        assert np.all(bob != alice), (bob, alice)

        after = Snapshot.of(store)
        at_kill.nothing_lost_in(after)
        assert after.bob_status == STRICT
        # Counting went on from where it stopped, exactly.
        assert after.counters["served:alice"] == served + len(digits)
        assert after.counters["served:bob"] == len(noise) + len(digits)
        assert after.counters["ood:n:bob"] == len(noise) + len(digits)
        assert after.lists["prada:bob:d"] == len(noise) + len(digits)
        # Under the strict policy every row of bob may be watermarked; alice's none.
        expected = watermarked_rows(store, noise) + watermarked_rows(store, odd)
        assert after.lists["watermark:bob"] == expected
        assert after.lists["watermark:alice"] == 0
        # The ood_monitor alert was kept and not raised again; alice has no alert.
        assert [a for a in after.alerts if a["detector"] == "ood_monitor"] == flagged
        assert all(a["client"] == "bob" for a in after.alerts)
    finally:
        store.close()
