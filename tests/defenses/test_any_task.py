"""Defenses on any task: the OOD reference and its scale, PRADA's space, k-class watermarks."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import NearestNeighbors

from modeltheft.defenses import STAGES, GuardedModel, Pipeline, load_pipeline
from modeltheft.defenses.base import DefenseContext, StageEnv
from modeltheft.defenses.detection import OodRateMonitor, Prada
from modeltheft.defenses.keyed import label_prefix, split_label
from modeltheft.defenses.misinformation import AdaptiveMisinformation
from modeltheft.defenses.ood import feature_space, knn_scorer, reference_rows
from modeltheft.defenses.watermark import (
    CLASSES_KEY,
    Watermark,
    WatermarkRecords,
    load_records,
    stored_classes,
    verify,
)
from modeltheft.errors import ConfigError
from modeltheft.state.memory import MemoryStore
from modeltheft.tasks import digits_task, get_task, task_from_model


def schema_only_model() -> GaussianNB:
    task = get_task("wine")
    X, y = task.data.victim_rows()
    return GaussianNB().fit(X, y)


# --- the reference and its scale ------------------------------------------------------------


def test_digits_scores_are_the_labs_raw_pixel_distances_bit_for_bit() -> None:
    """Default reference and scale on digits: the training digits, untouched (as on main)."""
    task = digits_task()
    scorer = knn_scorer("task", 5, task)
    X_train = task.data.X_train
    assert scorer.space is None  # pixels share the range [0, 1]: no scaling at all
    assert np.array_equal(scorer._reference, X_train)
    loo = NearestNeighbors(n_neighbors=6).fit(X_train).kneighbors(X_train)[0][:, 1:]
    assert np.array_equal(scorer.calibration, np.sort(loo.mean(axis=1)))
    assert scorer.threshold(0.01) == float(np.quantile(np.sort(loo.mean(axis=1)), 0.99))
    lab = knn_scorer("lab", 5, task)
    assert lab is scorer  # the old name is the same rows, so the same cached scorer
    X = task.data.X_eval
    assert np.array_equal(scorer.score(X), lab.score(X.copy()))
    holdout = reference_rows("holdout", task)
    assert np.array_equal(holdout, task.data.X_train[task.data.holdout])


def test_a_model_without_task_data_needs_a_reference_file(tmp_path: Path) -> None:
    model = schema_only_model()
    assert task_from_model(model).data is None
    with pytest.raises(ConfigError, match=r'reference = "file\.npy"') as info:
        GuardedModel(model, load_pipeline("recommended"))
    assert "\n" not in str(info.value)
    rows = tmp_path / "rows.npy"
    np.save(rows, get_task("wine").data.X_train)
    stage = OodRateMonitor(reference=str(rows))
    GuardedModel(model, Pipeline([stage, Prada()])).answer("c", rows_of("wine")[:3])
    np.save(rows, np.zeros((20, 5)))
    with pytest.raises(ConfigError, match="has 5 features, task 'model' has 13"):
        GuardedModel(model, Pipeline([OodRateMonitor(reference=str(rows))]))
    for bad in ("nope.npy", "lab.csv"):
        with pytest.raises(ConfigError, match="reference must be"):
            GuardedModel(model, Pipeline([AdaptiveMisinformation(reference=bad)]))


def rows_of(name: str) -> np.ndarray:
    return np.asarray(get_task(name).data.X_eval)


def test_the_scale_follows_the_task() -> None:
    digits, cancer = digits_task(), get_task("breast-cancer")
    assert feature_space("auto", digits, digits.data.X_train).identity
    assert feature_space("auto", cancer, cancer.data.X_train).kind == "rank"
    standard = feature_space("standard", cancer, cancer.data.X_train)
    assert np.allclose(standard(cancer.data.X_train).std(axis=0), 1.0)
    ranged = feature_space("range", cancer, None)
    assert np.allclose(ranged(cancer.upper[None, :] - cancer.lower[None, :]), 1.0)
    schema = task_from_model(schema_only_model())
    with pytest.raises(ConfigError, match='scale = "range" needs finite bounds'):
        feature_space("range", schema, None)
    with pytest.raises(ConfigError, match="training rows of task 'model'"):
        feature_space("rank", schema, None)


def test_rank_space_spreads_the_reference_and_keeps_far_values_far() -> None:
    task = get_task("breast-cancer")
    space = feature_space("rank", task, task.data.X_train)
    Z = space(task.data.X_train)
    assert Z.min() >= 0 and Z.max() <= 1
    column = np.sort(task.data.X_train[:, 3])  # mean area: skewed, in the hundreds
    probe = np.tile(task.data.X_train[:1], (4, 1))
    probe[:, 3] = [column[0] - 100, column[0], column[-1], column[-1] + 10 * np.ptp(column)]
    mapped = space(probe)[:, 3]
    assert np.all(np.diff(mapped) > 0) and mapped[0] < 0 and mapped[-1] > 10


def test_the_scorer_cache_keys_on_the_rows_not_the_name() -> None:
    wine, cancer = get_task("wine"), get_task("breast-cancer")
    assert knn_scorer("task", 5, wine) is not knn_scorer("task", 5, cancer)
    assert knn_scorer("task", 5, wine) is knn_scorer("task", 5, wine.with_classes([2, 1, 0]))
    assert knn_scorer("task", 5, wine, "standard") is not knn_scorer("task", 5, wine, "rank")
    assert knn_scorer("task", 5, wine).n_features == 13


def test_prada_measures_in_the_scorers_space() -> None:
    def space_of(task, **params):
        stage = Prada(**params)
        stage.setup(StageEnv(MemoryStore(), task))
        return stage._space

    assert space_of(digits_task()) is None  # digits: raw pixel distances, as always
    assert space_of(get_task("wine")).kind == "rank"
    assert space_of(get_task("wine"), scale="standard").kind == "standard"
    schema = task_from_model(schema_only_model())
    assert space_of(schema) is None  # no data, no bounds: raw distances
    assert space_of(get_task("wine").without_data()).kind == "range"
    with pytest.raises(ConfigError, match="training rows"):
        space_of(schema, scale="standard")


def test_misinformation_gate_needs_enough_reference_rows() -> None:
    def gate(task):
        stage = AdaptiveMisinformation()
        stage.setup(StageEnv(MemoryStore(), task))
        return stage

    assert gate(digits_task()).gated  # 1,257 rows hold fpr = 0.002
    wine = gate(get_task("wine"))  # 124 rows cannot: only flagged clients are misinformed
    assert not wine.gated and not wine.out_of_distribution(np.zeros((3, 13))).any()


# --- every stage is declared -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_parameter_is_declared(name: str) -> None:
    cls = STAGES[name]
    assert set(cls.param_names()) == set(cls._parameter_constraints)


def test_toml_errors_are_one_line_and_name_the_value(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[[stages]]\ntype = "ood_monitor"\nscale = "zscore"\n')
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "\n" not in message and "'ood_monitor'" in message and "'zscore'" in message


# --- watermarks for any number of classes ----------------------------------------------------


def test_labels_of_any_width_round_trip() -> None:
    row = np.arange(3, dtype=np.float64).tobytes()
    for label in (0, 9, 255, 256, 70_000):
        assert split_label(label_prefix(label) + row) == (label, row)
    assert split_label(bytes([7]) + row) == (7, row)  # records written before wide labels


def test_watermark_and_prada_with_300_classes() -> None:
    store = MemoryStore(np.random.default_rng(0))
    wm, prada = Watermark(rate=1.0, scope="all"), Prada(min_queries=3, window=3)
    P = np.random.default_rng(1).dirichlet(np.ones(300), size=8)
    P[:, 290] += 1.0  # the victim's top class is 290 for every row
    P /= P.sum(axis=1, keepdims=True)
    X = np.random.default_rng(2).random((8, 4))
    ctx = DefenseContext("c", np.random.default_rng(3), store, inputs=X)
    answers = Pipeline([prada, wm]).transform(P, ctx)
    records = load_records(store, "c")
    assert len(records.labels) == 8 and (records.labels != 290).all()
    assert np.array_equal(answers.labels, records.labels)
    assert set(prada._sync(store, "c").growing) == {290}


def test_binary_watermarks_are_keyed_coins_and_verify_is_exact() -> None:
    """k = 2: DAWN's 1/(k-1) bound is 1; keyed coins give chance exactly 1/2 for any suspect."""
    names = np.array(["no", "yes"])
    task = get_task("breast-cancer").with_classes(names)
    X_train, y_train = task.data.victim_rows()
    model = GaussianNB().fit(X_train, names[y_train])
    store = MemoryStore(np.random.default_rng(0))
    pipeline = Pipeline([Watermark(rate=1.0, scope="all")])
    guarded = GuardedModel(model, pipeline, store=store, seed=0, task=task)
    X = task.clip(np.random.default_rng(1).uniform(task.lower, task.upper, (400, 30)))
    answered = guarded.answer("thief", X).labels
    records = load_records(store, "thief")
    assert list(records.classes) == ["no", "yes"]
    victim = task.class_index(model.predict(records.X))
    assert 0.4 < np.mean(records.labels == victim) < 0.6  # a coin, not "the other class"
    assert np.array_equal(names[records.labels], answered)
    copy = verify(records, answered)
    assert copy.p_value < 1e-30 and copy.chance == 0.5 and "1/(k-1) = 1" in copy.null
    for suspect in (model.predict(records.X), names[1 - victim]):  # agree / always disagree
        assert verify(records, suspect).p_value > 1e-3
    assert verify(records, np.full(len(records.labels), "maybe")).matches == 0


def test_three_class_watermarks_stay_dawn() -> None:
    task = get_task("wine")
    X_train, y_train = task.data.victim_rows()
    model = GaussianNB().fit(X_train, y_train)
    store = MemoryStore(np.random.default_rng(0))
    pipeline = Pipeline([Watermark(rate=1.0, scope="all")])
    guarded = GuardedModel(model, pipeline, store=store, seed=0, task=task)
    X = task.clip(np.random.default_rng(1).uniform(task.lower, task.upper, (200, 13)))
    answered = guarded.answer("thief", X).labels
    records = load_records(store, "thief")
    assert (records.labels != model.predict(records.X)).all()
    verdict = verify(records, answered)
    assert verdict.chance == 0.5 and verdict.n_classes == 3 and verdict.p_value < 1e-30
    assert "chance_rate_at_most" in verdict.describe()


def test_verify_reads_old_states_and_refuses_unknown_classes() -> None:
    store = MemoryStore()
    assert stored_classes(store) is None
    store.raise_to(CLASSES_KEY, 10)  # a state from before class lists were kept
    assert list(stored_classes(store)) == list(range(10))
    records = WatermarkRecords("c", np.zeros((2, 3)), np.array([1, 2]))
    with pytest.raises(ConfigError, match="classes are unknown"):
        verify(records, np.array([1, 2]))
    assert verify(records, np.array([1, 2]), 10).matches == 2
    with pytest.raises(ConfigError, match="3 answers for 2 watermarks"):
        verify(records, np.array([1, 2, 3]), 10)
