from functools import cache

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.attacks.selectors.jacobian import JacobianAugmentation, class_gradients
from modeltheft.attacks.strategies import QueryHistory
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import ConfigError
from modeltheft.evaluation.metrics import fidelity
from modeltheft.oracle import LocalOracle
from modeltheft.tasks import digits_task
from modeltheft.victim import train_victim

STEP = 0.1


@cache
def _labeller() -> LogisticRegression:
    """A quick stand-in for the victim and the substitute: LR on the public digits."""
    pool = digits_task().data
    return LogisticRegression(max_iter=1000).fit(pool.X_public, pool.y_public)


def _rows(X: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(X, dtype=float)}


def _answer(history: QueryHistory, X: np.ndarray) -> None:
    history.add(X, _labeller().predict(X), None)


def _step(X: np.ndarray, labels: np.ndarray, step: float) -> np.ndarray:
    return np.clip(X + step * np.sign(class_gradients(_labeller(), X, labels)), 0.0, 1.0)


def test_first_proposals_are_the_attackers_seed_digits() -> None:
    strategy = make_strategy("jacobian")
    X = strategy.propose(10, np.random.default_rng(4), QueryHistory())
    seeds = digits_task().data.public_rows(10, np.random.default_rng(4))
    assert X.shape == (10, 64)
    assert _rows(X) == _rows(seeds)


def test_batches_are_exact_in_range_and_seeded() -> None:
    def run(seed: int) -> np.ndarray:
        strategy, history = make_strategy("jacobian"), QueryHistory()
        rng = np.random.default_rng(seed)
        for n in (7, 7, 7, 30):  # seeds, a model-less round, then rounds with a substitute
            X = strategy.propose(n, rng, history)
            assert X.shape == (n, 64)
            _answer(history, X)
            history.model = _labeller()
        return np.concatenate(history.X)

    a = run(1)
    assert (a >= 0).all() and (a <= 1).all()
    assert np.array_equal(a, run(1))
    assert not np.array_equal(a, run(2))


def test_rounds_step_by_lambda_along_the_gradient_sign_and_flip_every_tau() -> None:
    seeds = digits_task().data.X_public[:6]
    strategy = make_strategy("jacobian", seed_X=seeds, step=STEP, tau=1)
    rng, history = np.random.default_rng(0), QueryHistory()
    history.model = _labeller()

    first = strategy.propose(6, rng, history)
    assert _rows(first) == _rows(seeds)
    _answer(history, first)

    second = strategy.propose(6, rng, history)  # round ρ = 0: +λ
    X, y, _ = history.answered()
    assert _rows(second) == _rows(_step(X, y, +STEP))
    moved = np.abs(second[:, None, :] - X[None, :, :])
    # Every new row is one of the seeds moved by exactly ±λ per pixel, except where clipped.
    for row, gaps in zip(second, moved, strict=True):
        source = X[np.argmin(gaps.max(axis=1))]
        diff = np.abs(row - source)
        clipped = (row == 0) | (row == 1)
        assert np.all(np.isclose(diff, STEP) | (clipped & (diff <= STEP + 1e-12)))
        assert np.isclose(diff, STEP).any()
    _answer(history, second)

    third = strategy.propose(12, rng, history)  # round ρ = 1 with τ = 1: −λ, set doubles
    X, y, _ = history.answered()
    assert _rows(third) == _rows(_step(X, y, -STEP))


def test_requests_beyond_a_round_continue_with_the_next_one() -> None:
    seeds = digits_task().data.X_public[:4]
    strategy = make_strategy("jacobian", seed_X=seeds)
    rng, history = np.random.default_rng(0), QueryHistory()
    history.model = _labeller()
    X = strategy.propose(4, rng, history)
    _answer(history, X)
    X = strategy.propose(11, rng, history)  # round 0's 4 rows, then 7 of round 1's 8
    assert X.shape == (11, 64)
    assert len(_rows(X)) == 11  # re-stepping a seed with the same substitute is not resent
    assert not _rows(X) & _rows(seeds)


def test_without_a_substitute_it_perturbs_the_seeds_slightly() -> None:
    seeds = digits_task().data.X_public[:5]
    X = make_strategy("jacobian", seed_X=seeds).propose(
        15, np.random.default_rng(0), QueryHistory()
    )
    # The seeds, then two rounds of random ±λ steps (the set doubles: 5 + 5 + 5 of 10).
    gaps = np.abs(X[:, None, :] - seeds[None, :, :]).max(axis=2).min(axis=1)
    assert np.isclose(gaps, 0).sum() == 5
    assert (gaps <= 2 * STEP + 1e-12).all()
    assert len(_rows(X)) == 15


def test_finite_differences_match_the_analytic_lr_gradient() -> None:
    model = _labeller()
    X = digits_task().data.X_public[:20]
    y = model.predict(X)
    analytic = class_gradients(model, X, y)
    numeric = class_gradients(make_pipeline(model), X, y)  # not an LR: finite differences
    assert np.allclose(analytic, numeric, atol=1e-4)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0)
    mlp.fit(digits_task().data.X_public, digits_task().data.y_public)
    grads = class_gradients(mlp, X, mlp.predict(X))
    assert grads.shape == (20, 64) and np.abs(grads).sum(axis=1).min() > 0


def test_needs_model() -> None:
    assert JacobianAugmentation.needs_model
    assert make_strategy("jacobian").needs_model


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"seed_size": 0}, "seed_size"),
        ({"seed_size": 10_000}, "seed_size"),
        ({"seed_size": 2.5}, "seed_size"),
        ({"step": 0}, "step"),
        ({"step": 1.5}, "step"),
        ({"step": "big"}, "step"),
        ({"tau": 0}, "tau"),
        ({"target": "nearest"}, "target"),
        ({"seed_X": np.zeros((3, 8))}, "seed_X"),
        ({"seed_X": np.full((3, 64), 2.0)}, "seed_X"),
        ({"seed_X": np.full((3, 64), np.nan)}, "seed_X"),
    ],
)
def test_bad_options_are_config_errors(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        strategy = make_strategy("jacobian", **params)
        strategy.propose(5, np.random.default_rng(0), QueryHistory())


def test_jacobian_steals_better_than_uniform_noise() -> None:
    victim = train_victim("rf", split_name="holdout").model  # never saw the seed digits
    split = digits_task().data
    truth = victim.predict(split.X_eval)

    def steal(strategy: str) -> float:
        oracle = LocalOracle(
            GuardedModel(victim, load_pipeline("none"), seed=0, task=digits_task()), 150
        )
        result = extract(
            oracle,
            make_strategy(strategy),
            make_substitute("lr"),
            150,
            np.random.default_rng(0),
            batch_size=10,
        )
        return fidelity(result.model.predict(split.X_eval), truth)

    jacobian, noise = steal("jacobian"), steal("uniform")
    assert jacobian > noise + 0.1
