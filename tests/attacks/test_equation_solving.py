import numpy as np
import pytest
import skops.io as sio
from sklearn.base import ClassifierMixin

from modeltheft.attacks import ExtractionResult, extract, make_strategy, make_substitute
from modeltheft.attacks.equation_solving import EquationSolver
from modeltheft.attacks.strategies import QueryHistory
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.defenses.base import Pipeline
from modeltheft.defenses.output import HardLabel, Rounding
from modeltheft.errors import AttackFailed
from modeltheft.oracle import LocalOracle
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim, train_victim

CLASSES = np.arange(10)


@pytest.fixture(scope="module")
def lr_victim() -> ClassifierMixin:
    return train_victim("lr").model


def steal(
    victim: ClassifierMixin,
    budget: int,
    pipeline: Pipeline | None = None,
    label_mode: str = "soft",
    seed: int = 0,
) -> ExtractionResult:
    guarded = GuardedModel(victim, pipeline or load_pipeline("none"), seed=0)
    return extract(
        LocalOracle(guarded, budget=budget),
        make_strategy("equation-solving"),
        make_substitute("equation-solver"),
        budget,
        np.random.default_rng(seed),
        batch_size=budget,
        label_mode=label_mode,
        min_answers=1,
    )


def test_65_queries_recover_a_softmax_victim_exactly(lr_victim: ClassifierMixin) -> None:
    X_test = digits_task().data.X_eval
    model = steal(lr_victim, 65).model
    assert isinstance(model, EquationSolver)
    assert np.array_equal(model.predict(X_test), lr_victim.predict(X_test))
    assert np.abs(model.predict_proba(X_test) - lr_victim.predict_proba(X_test)).max() < 1e-6
    assert model.rank_ == 65 and np.isnan(model.residual_)


def test_redundant_queries_check_consistency(lr_victim: ClassifierMixin) -> None:
    model = steal(lr_victim, 70, seed=1).model
    assert model.residual_ < 1e-10
    X_test = digits_task().data.X_eval
    assert np.abs(model.predict_proba(X_test) - lr_victim.predict_proba(X_test)).max() < 1e-6


def test_rounded_answers_fail_clearly(lr_victim: ClassifierMixin) -> None:
    with pytest.raises(AttackFailed, match=r"exactly 0 .*multiple of 10\^-2"):
        steal(lr_victim, 70, Pipeline([Rounding(2)]))
    X = np.random.default_rng(0).random((70, 64))
    coarse = np.round(0.9 * lr_victim.predict_proba(X) + 0.01, 3)  # rounded, but no zeros
    with pytest.raises(AttackFailed, match="rounded to 3 decimals"):
        EquationSolver().fit_soft(X, coarse, CLASSES)


def test_the_lab_defenses_fail_clearly(lr_victim: ClassifierMixin) -> None:
    with pytest.raises(AttackFailed, match="not full-precision probabilities"):
        steal(lr_victim, 70, load_pipeline("lab"))


def test_labels_only_fail_clearly(lr_victim: ClassifierMixin) -> None:
    with pytest.raises(AttackFailed, match="hard labels cannot determine the model"):
        steal(lr_victim, 70, label_mode="hard")
    with pytest.raises(AttackFailed, match="labels only"):
        steal(lr_victim, 70, Pipeline([HardLabel()]))


def test_a_forest_victim_fails_clearly(victim: LoadedVictim) -> None:
    with pytest.raises(AttackFailed, match="not softmax-linear"):
        steal(victim.model, 70)


def test_noisy_answers_fail_on_the_residual(lr_victim: ClassifierMixin) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((80, 64))
    P = lr_victim.predict_proba(X) * np.exp(rng.normal(0.0, 0.01, (80, 10)))
    with pytest.raises(AttackFailed, match="least-squares residual"):
        EquationSolver().fit_soft(X, P / P.sum(axis=1, keepdims=True), CLASSES)


def test_too_few_queries_fail_on_the_rank(lr_victim: ClassifierMixin) -> None:
    with pytest.raises(AttackFailed, match=r"rank 30.*need rank 65"):
        steal(lr_victim, 30)


def test_wrong_answer_shape_fails() -> None:
    X = np.random.default_rng(0).random((70, 64))
    with pytest.raises(AttackFailed, match="expected"):
        EquationSolver().fit_soft(X, np.full((70, 3), 1 / 3), CLASSES)


def test_skops_round_trip(lr_victim: ClassifierMixin) -> None:
    model = steal(lr_victim, 65).model
    data = sio.dumps(model)
    untrusted = sio.get_untrusted_types(data=data)
    assert untrusted == ["modeltheft.attacks.equation_solving.EquationSolver"]
    loaded = sio.loads(data, trusted=untrusted)
    X_test = digits_task().data.X_eval
    assert np.array_equal(loaded.predict_proba(X_test), model.predict_proba(X_test))
    assert np.array_equal(loaded.coef_, model.coef_)
    assert loaded.get_params() == model.get_params()


def test_strategy_proposals_are_seeded_points_of_the_unit_cube() -> None:
    strategy = make_strategy("equation-solving")
    a = strategy.propose(65, np.random.default_rng(5), QueryHistory())
    b = strategy.propose(65, np.random.default_rng(5), QueryHistory())
    c = strategy.propose(65, np.random.default_rng(6), QueryHistory())
    assert a.shape == (65, 64)
    assert (a >= 0).all() and (a <= 1).all()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.linalg.matrix_rank(np.hstack([a, np.ones((65, 1))])) == 65


def test_saturated_full_precision_answers_are_not_taken_for_rounded_ones() -> None:
    """A binary victim whose answers are all within 1e-9 of 0 or 1 (but not 0 or 1) is still
    solved: a value like 1e-14 cannot come from rounding, which would have made it 0."""
    from modeltheft.attacks.equation_solving import _rounded_decimals

    rng = np.random.default_rng(0)
    X = rng.normal(size=(31, 30))
    w = rng.normal(size=30) * 20
    logits = np.clip(X @ w, 25, 40)  # every answer saturated: p_min between 2e-18 and 1e-11
    p1 = 1.0 / (1.0 + np.exp(-logits))
    p0 = np.exp(-logits) / (1.0 + np.exp(-logits))
    P = np.column_stack([p0, p1])
    assert _rounded_decimals(P) is None
    assert _rounded_decimals(np.round(P, 3)) == 0
    assert _rounded_decimals(np.array([[0.25, 0.75], [0.5, 0.5]])) == 2
