"""Issue 14: a request's detector work is cheap (running counts, constants computed once),
and computes exactly what the plain formulas did, so no decision changes."""

import numpy as np
import pytest

from modeltheft.defenses import keyed
from modeltheft.defenses.base import Answers, DefenseContext, StageEnv
from modeltheft.defenses.clients import ClientCache
from modeltheft.defenses.detection import Prada
from modeltheft.defenses.keyed import canonical
from modeltheft.defenses.ood import KnnScorer
from modeltheft.defenses.streams import StreamTest
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task


def plain_canonical(X: np.ndarray, resolution: object) -> np.ndarray:
    """The formula of :func:`canonical` written out, with nothing cached."""
    Z = np.asarray(X, dtype=np.float64).astype(np.float32).astype(np.float64)
    if resolution is not None:
        step = np.broadcast_to(np.asarray(resolution, dtype=np.float64), Z.shape[-1:])
        grid = step > 0
        if grid.any():
            safe = np.where(grid, step, 1.0)
            Z = np.where(grid, np.round(Z / safe) * safe, Z)
    return Z + 0.0


@pytest.mark.parametrize(
    "resolution",
    [None, 0.0, 0.25, "task", "some columns", "no columns"],
)
def test_canonical_rows_are_the_plain_formulas_bit_for_bit(resolution: object) -> None:
    task = digits_task()
    if resolution == "task":
        resolution = task.resolution
    elif resolution == "some columns":
        resolution = np.where(np.arange(64) % 3 == 0, 0.0, task.resolution)
    elif resolution == "no columns":
        resolution = np.zeros(64)
    rng = np.random.default_rng(0)
    for X in (
        np.asarray(task.data.X_eval[:40], dtype=float),
        rng.random((1, 64)) * 40 - 20,
        -np.zeros((2, 64)),
        rng.random((3, 64)).astype(np.float32),
    ):
        expected = plain_canonical(X, resolution)
        got = canonical(X, resolution)
        assert got.tobytes() == expected.tobytes() and got.shape == expected.shape
        assert not np.signbit(got).any() or np.signbit(expected).any()
        assert got is not X


def test_a_resolutions_grid_is_computed_once() -> None:
    """Every request of a task has the same resolution: its grid is not rebuilt each time."""
    resolution = digits_task().resolution
    first = keyed._grid(resolution, 64)
    assert keyed._grid(resolution.copy(), 64) is first
    assert keyed._grid(np.zeros(64), 64) is not first


@pytest.mark.parametrize("k", [1, 2, 5, 7, 8, 9])
def test_a_one_row_knn_score_is_the_plain_formula_bit_for_bit(k: int) -> None:
    task = digits_task()
    scorer = KnnScorer(np.asarray(task.data.X_train, dtype=float), k)
    reference, squared = scorer._reference, scorer._squared
    rng = np.random.default_rng(k)
    rows = [
        *np.asarray(task.data.X_eval[:50]),
        *np.asarray(task.data.X_train[:5]),  # a distance of 0 among the nearest
        *(rng.random((20, 64)) * 16),
        np.full(64, 1e-300),
    ]
    for x in rows:
        near = np.partition(squared - 2.0 * (reference @ x), k - 1)[:k] + x @ x
        expected = np.sqrt(np.maximum(near, 0.0)).mean(keepdims=True)
        assert scorer.score(np.array([x])).tobytes() == expected.tobytes()


def test_the_mean_root_of_a_few_values_is_numpys_bit_for_bit() -> None:
    """Python floats in NumPy's order (sequential sum, maximum's 0.0 for -0.0, NaN kept)."""
    from modeltheft.defenses.ood import _mean_root

    rng = np.random.default_rng(0)
    edge = [0.0, -0.0, 5e-324, 1e-300, 3.0, -1.0, np.inf, np.nan]
    for trial in range(20_000):
        k = int(rng.integers(1, 8))
        kind = trial % 3
        if kind == 0:
            values = rng.normal(0.0, 1e3, k)
        elif kind == 1:
            values = rng.integers(-3, 50, k).astype(float)
        else:
            values = rng.choice(edge, k)
        offset = float(rng.choice([0.0, -0.0, 1e-10, 123.456, rng.random() * 100]))
        with np.errstate(invalid="ignore"):
            expected = np.sqrt(np.maximum(values + offset, 0.0)).mean(keepdims=True)
        got = np.array([_mean_root(values.tolist(), offset)])
        assert got.tobytes() == expected.tobytes() or (np.isnan(got) & np.isnan(expected)).all()


def test_prada_keeps_its_row_count_and_distances_as_windows_move() -> None:
    """The rows held and D are kept as they change (no sum over the window per request),
    and equal what a worker reading the client afresh finds."""
    task = digits_task()
    store = MemoryStore()
    held = Prada(window=20, min_queries=3, max_rows=10)
    held.setup(StageEnv(store, task))
    rows = np.asarray(task.data.X_eval, dtype=float)
    rng = np.random.default_rng(2)
    for step in range(120):
        X = rows[rng.integers(len(rows), size=int(rng.integers(1, 5)))]
        probabilities = np.eye(10)[rng.integers(10, size=len(X))] * 0.9 + 0.01
        ctx = DefenseContext("c", np.random.default_rng(step), store, inputs=X)
        held.transform(Answers(probabilities, probabilities.copy()), ctx)
        state = held._clients["c"]
        assert state.held_rows == sum(state.row_counts)
    assert state.base.records_from > 0 and state.base.rows_from > 0  # windows did move
    fresh = Prada(window=20, min_queries=3, max_rows=10)
    fresh.setup(StageEnv(store, task))
    again = fresh._sync(store, "c")
    assert again.distances == state.distances and again.held_rows == state.held_rows
    assert held.statistic("c", store) == fresh.statistic("c", store)


@pytest.mark.parametrize("stage_type", [Prada, StreamTest])
def test_a_clients_size_is_counted_only_when_it_changed(stage_type: type) -> None:
    """Reading a client with nothing new costs no recount of its size."""
    task = digits_task()
    store = MemoryStore()
    prada = stage_type()
    prada.setup(StageEnv(store, task))
    puts = []

    class Counting(ClientCache):
        def put(self, client, value):  # type: ignore[no-untyped-def]
            puts.append(client)
            return super().put(client, value)

    prada._clients = Counting()
    X = np.asarray(task.data.X_eval[:3], dtype=float)
    probabilities = np.eye(10)[[0, 1, 2]] * 0.9 + 0.01
    ctx = DefenseContext("c", np.random.default_rng(0), store, inputs=X)
    prada.transform(Answers(probabilities, probabilities.copy()), ctx)
    before = len(puts)
    assert before >= 1
    prada._sync(store, "c")
    prada._sync(store, "c")
    assert len(puts) == before


def test_prada_decodes_a_stored_base_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client past its first window has a base in the store, read twice a request: the same
    stored base is decoded once, and a newer one (another worker's move) still is."""
    from modeltheft.defenses import detection

    task = digits_task()
    store = MemoryStore()
    stages = [Prada(window=20, min_queries=3, max_rows=10) for _ in range(2)]
    for stage in stages:
        stage.setup(StageEnv(store, task))
    rows = np.asarray(task.data.X_eval, dtype=float)
    decoded = []
    decode = detection.Base.decode.__func__
    monkeypatch.setattr(
        detection.Base,
        "decode",
        classmethod(lambda cls, item: decoded.append(1) or decode(cls, item)),
    )
    for step in range(100):
        X = rows[step : step + 1]
        probabilities = np.eye(10)[[step % 10]] * 0.9 + 0.01
        ctx = DefenseContext("c", np.random.default_rng(step), store, inputs=X)
        stages[step % 2].transform(Answers(probabilities, probabilities.copy()), ctx)
    moves = len(store.items("prada:c:base"))  # the newest base (older ones trimmed)
    assert moves and stages[0]._clients["c"].base.records_from > 0
    assert len(decoded) < 20  # a decode per move seen by the other worker, not 2 a request
    assert stages[0]._sync(store, "c").base == stages[1]._sync(store, "c").base


@pytest.mark.parametrize("name", ["digits", "breast-cancer"])
def test_the_stream_tests_knn_ranks_share_the_ood_stages_scorer(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One index per (rows, scale, k): the stream test's knn ranks and the OOD stages score
    with one scorer, and a batch of the same bytes (a request's rows as sent, then their
    canonical form, on digits often equal) is scored once."""
    from collections import OrderedDict

    from modeltheft.defenses import naturalness, ood
    from modeltheft.defenses.naturalness import make_scorer
    from modeltheft.defenses.ood import knn_scorer
    from modeltheft.tasks import get_task

    # Both caches start empty: scorers built by earlier tests in this process (and since
    # evicted from one cache but not the other) must not decide the outcome.
    monkeypatch.setattr(ood, "_CACHE", OrderedDict())
    monkeypatch.setattr(naturalness, "_CACHE", OrderedDict())

    task = get_task(name)
    shared = knn_scorer("task", 5, task)
    assert make_scorer("knn", "task", task)._score.__self__ is shared
    rows = np.asarray(task.data.X_eval[:3], dtype=float)
    first = shared.score(rows)
    other = shared.score(rows[1:])
    assert shared.score(rows.copy()) is first  # the same bytes: the remembered scores
    assert shared.score(rows[1:].copy()) is other
    flipped = rows.copy()
    flipped[0, 0] = np.nextafter(flipped[0, 0], np.inf)
    assert shared.score(flipped) is not first


def test_the_stream_test_keeps_its_row_count_as_its_window_moves() -> None:
    """The rows held are counted as items come and go (no sum over up to 4,000 items on
    every request that counts a row), and the window still moves as it did."""
    task = digits_task()
    store = MemoryStore()
    stage = StreamTest(max_rows=10)
    stage.setup(StageEnv(store, task))
    rng = np.random.default_rng(3)
    for step in range(60):
        X = rng.random((int(rng.integers(1, 4)), 64))  # noise: every row counts
        probabilities = np.full((len(X), 10), 0.1)
        ctx = DefenseContext("c", np.random.default_rng(step), store, inputs=X)
        stage.transform(Answers(probabilities, probabilities.copy()), ctx)
        state = stage._clients["c"]
        assert state.held == sum(state.counts) <= 2 * 10 + 3
    assert store.get("stream:rows_from:c") > 0  # the window did move


def test_a_contexts_derived_rows_are_computed_once_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The canonical rows and their digests (``once``: cached_property without its lock)."""
    from modeltheft.defenses import base

    calls: list[int] = []
    real = base.canonical
    monkeypatch.setattr(base, "canonical", lambda X, r: calls.append(1) or real(X, r))
    X = np.array([[0.5, -0.0, 3.0]])
    ctx = DefenseContext.local(np.random.default_rng(0), X, resolution=np.array([0.25, 0, 0]))
    assert ctx.canonical is ctx.canonical and calls == [1]
    assert ctx.canonical_hex == [d.hex() for d in ctx.canonical_digests]
    assert ctx.canonical_hex is ctx.canonical_hex and calls == [1]
    assert np.array_equal(ctx.canonical, plain_canonical(X, np.array([0.25, 0, 0])))
    assert isinstance(DefenseContext.canonical, base.once)  # the descriptor, read on the class
    fresh = DefenseContext.local(np.random.default_rng(0), X)  # another request: its own
    assert fresh.canonical is not ctx.canonical


@pytest.mark.parametrize("marked", [None, [False, False, False], [False, True, False]])
def test_answers_shortcuts_say_what_the_masks_say(marked: list[bool] | None) -> None:
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    suspicious = None if marked is None else np.array(marked)
    answers = Answers(probabilities, probabilities.copy(), suspicious=suspicious)
    assert answers.any_flagged == bool(answers.flagged.any())
    relabelled = answers.with_probabilities(probabilities[:, ::-1].copy())
    assert np.array_equal(answers.labels, np.argmax(probabilities, axis=1))
    assert np.array_equal(relabelled.labels, [0, 1, 0])  # a copy's labels are its own
    assert relabelled.altered == 2 and answers.altered == 0


@pytest.mark.parametrize(
    "values",
    [[0.0, 16.0, 3.0], [0.1, 1.0, 2.0], [np.nan, 1.0, 2.0], [np.inf, 7e4, 1.0], [-0.0, 1.0, 2.0],
     [127.0, -128.0, 0.0], [128.0, 1.0, 2.0], [-129.0, 0.0, 1.0]],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [np.int8, np.float16, np.float32])
def test_exactness_checks_say_what_array_equal_says(values: list[float], dtype: type) -> None:
    """And for int8, what comparing the float64 bits back says (-0.0 is not 0 there)."""
    from modeltheft.defenses.prada_state import _exact

    rows = np.array([values])
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = rows.astype(dtype)
    if np.dtype(dtype).kind == "i":
        plain = narrow.astype(np.float64).tobytes() == rows.tobytes()
    else:
        plain = bool(np.array_equal(narrow, rows, equal_nan=True))
    assert _exact(rows, dtype) == plain


def test_a_pipeline_runs_the_stages_it_holds_now() -> None:
    """Its plan (which stages admit, which transform) follows the stages list, changed in
    place or replaced."""
    from modeltheft.defenses.base import OutputStage, Pipeline

    calls: list[str] = []

    class Mark(OutputStage):
        name = "mark"

        def __init__(self, tag: str) -> None:
            self.tag = tag

        def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
            calls.append(self.tag)
            return answers

    rng = np.random.default_rng(0)
    pipeline = Pipeline([Mark("a")])
    ctx = DefenseContext.local(rng, np.zeros((1, 2)))
    pipeline.transform(np.array([[0.5, 0.5]]), ctx)
    pipeline.stages.append(Mark("b"))
    pipeline.transform(np.array([[0.5, 0.5]]), ctx)
    pipeline.stages = [Mark("c")]
    pipeline.transform(np.array([[0.5, 0.5]]), ctx)
    assert calls == ["a", "a", "b", "c"]
