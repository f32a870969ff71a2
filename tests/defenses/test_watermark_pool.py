"""Pooled watermark evidence: duplicates across clients, Holm's correction, class lists."""

from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.neighbors import KNeighborsClassifier

from modeltheft.cli.app import main
from modeltheft.defenses import Pipeline
from modeltheft.defenses.base import DefenseContext, StageEnv
from modeltheft.defenses.keyed import label_prefix
from modeltheft.defenses.watermark import (
    Watermark,
    WatermarkRecords,
    holm,
    load_records,
    records_key,
    store_classes,
    verify,
    verify_pooled,
)
from modeltheft.errors import ConfigError
from modeltheft.state import SqliteStore
from modeltheft.state.base import StateStore
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task
from modeltheft.tasks.base import Task


def test_holm_adjusts_in_the_given_order_and_stays_monotone() -> None:
    p = [0.04, 0.001, 0.03, 0.5]
    # sorted: 0.001*4, 0.03*3, 0.04*2, 0.5*1 -> 0.004, 0.09, 0.09 (monotone), 0.5
    assert holm(p) == pytest.approx([0.09, 0.004, 0.09, 0.5])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]).shape == (0,)


def records(client: str, X: np.ndarray, labels: list[int]) -> WatermarkRecords:
    return WatermarkRecords(client, X, np.array(labels), np.arange(10))


def test_a_row_watermarked_for_two_clients_counts_once() -> None:
    X = np.random.default_rng(0).random((4, 3))
    a = records("a", X[:3], [1, 2, 3])
    b = records("b", X[1:], [2, 3, 4])  # rows 1 and 2 again, same keyed labels
    pooled = verify_pooled([a, b], [np.array([1, 2, 3]), np.array([2, 3, 4])])
    assert pooled.client_id == "pooled" and pooled.n_watermarks == 4 and pooled.matches == 4
    assert pooled.p_value == pytest.approx(
        verify(records("x", X, [1, 2, 3, 4]), [1, 2, 3, 4]).p_value
    )
    with pytest.raises(ConfigError, match="answers for 3 watermarks of a"):
        verify_pooled([a, b], [np.array([1]), np.array([2, 3, 4])])


def watermark(store: StateStore, task: Task, client: str, rows: np.ndarray) -> None:
    """Every row of ``client`` watermarked by a service whose model answers ``task``'s classes."""
    pipeline = Pipeline([Watermark(rate=1.0, scope="all")])
    pipeline.setup(StageEnv(store, task))
    P = np.random.default_rng(1).dirichlet(np.ones(10), size=len(rows))
    pipeline.transform(P, DefenseContext(client, np.random.default_rng(2), store, inputs=rows))


def test_records_made_under_different_class_lists_are_not_pooled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The served model's classes changed between two clients: each keeps its own list, the
    pool refuses to mix them (one line); the CLI pools the clients of the current list."""
    store = SqliteStore(tmp_path / "state.db")
    X = np.random.default_rng(0).random((60, 64)) * 16
    names = np.array([f"digit-{i}" for i in range(10)])
    for client, task, rows in [
        ("old", digits_task().with_classes(names), X[:20]),
        ("a", digits_task(), X[20:40]),
        ("b", digits_task(), X[40:]),
    ]:
        watermark(store, task, client, rows)
    old, a, b = (load_records(store, name) for name in ("old", "a", "b"))
    store.close()
    assert list(old.classes) == names.tolist() and list(a.classes) == list(range(10))
    assert not (old.mixed or a.mixed or b.mixed)
    with pytest.raises(ConfigError, match="cannot pool watermarks made under 2 different") as e:
        verify_pooled([old, a], [names[old.labels], a.labels])
    assert "\n" not in str(e.value)
    assert verify_pooled([a, b], [a.labels, b.labels]).n_watermarks == 40
    copy = KNeighborsClassifier(1).fit(np.vstack([a.X, b.X]), np.concatenate([a.labels, b.labels]))
    sio.dump(copy, tmp_path / "copy.skops")
    argv = ["watermark", "verify", "--state", f"sqlite:///{tmp_path / 'state.db'}", "--suspect"]
    assert main([*argv, str(tmp_path / "copy.skops")]) == 0
    out = capsys.readouterr().out
    assert "note: pooled 2 of 3 clients" in out and "another class list" in out
    assert "strongest evidence from the pool of 2 clients (40 distinct watermarks)" in out
    assert "Holm over 4 test(s): 3 client(s) + pooled" in out


def test_a_client_with_records_under_two_class_lists_is_never_pooled() -> None:
    store = MemoryStore(np.random.default_rng(0))
    X = np.random.default_rng(1).random((10, 64))
    names = np.array([f"d{i}" for i in range(10)])
    for task, rows in [(digits_task(), X[:5]), (digits_task().with_classes(names), X[5:])]:
        watermark(store, task, "c", rows)
    mixed = load_records(store, "c")
    assert mixed.mixed and len(mixed.labels) == 10
    with pytest.raises(ConfigError, match="c had watermarks under several class lists"):
        verify_pooled([mixed], [mixed.labels])


def test_untagged_records_are_pooled_only_if_the_state_served_one_class_list() -> None:
    """Records from before the tags: their class list is known only if the state served one."""
    store = MemoryStore(np.random.default_rng(0))
    row = np.random.default_rng(1).random(64)
    store.append(records_key("c"), [label_prefix(3) + row.tobytes()])
    store_classes(store, list(range(10)))
    assert not load_records(store, "c").mixed
    store_classes(store, [f"d{i}" for i in range(10)])
    assert load_records(store, "c").mixed
