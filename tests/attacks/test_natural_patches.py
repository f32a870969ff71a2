from collections.abc import Callable

import numpy as np
import pytest

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.attacks.sources.natural_patches import (
    POOL_SIZE,
    NaturalPatches,
    patch_pool,
    pool_arms,
)
from modeltheft.attacks.strategies import QueryHistory
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import ConfigError
from modeltheft.evaluation.metrics import fidelity
from modeltheft.oracle import LocalOracle
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim


def _arms_of(rows: np.ndarray, n_arms: int) -> np.ndarray:
    """The k-means arm of each proposed row, found by looking the row up in the pool."""
    index = {row.tobytes(): i for i, row in enumerate(patch_pool())}
    return pool_arms(n_arms)[[index[row.tobytes()] for row in rows]]


class _ConstantModel:
    """A stand-in substitute that is sure every input is class 0."""

    classes_ = np.arange(10)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros((len(X), 10))
        out[:, 0] = 1.0
        return out


def test_pool_is_fixed_digit_shaped_and_in_range() -> None:
    pool = patch_pool()
    assert pool.shape == (POOL_SIZE, 64)
    assert pool.min() >= 0 and pool.max() <= 1
    # Block counts of a 32x32 bitmap: multiples of 1/16, roughly a third of it ink, like digits.
    assert np.allclose(pool * 16, np.round(pool * 16))
    assert 0.2 < pool.mean() < 0.4
    assert len(np.unique(pool, axis=0)) > 0.9 * POOL_SIZE
    arms = pool_arms(20)
    assert arms.shape == (POOL_SIZE,) and set(np.unique(arms)) == set(range(20))


@pytest.mark.parametrize("policy", ["random", "adaptive"])
def test_batches_are_valid_distinct_and_seeded(policy: str) -> None:
    def run(seed: int) -> np.ndarray:
        strategy = make_strategy("natural-patches", policy=policy)
        rng, history = np.random.default_rng(seed), QueryHistory()
        for _ in range(3):
            X = strategy.propose(25, rng, history)
            labels = (X.sum(axis=1) * 7).astype(int) % 10  # any fixed answers will do
            history.add(X, labels, None)
        return np.concatenate(history.X)

    a, b = run(5), run(5)
    assert a.shape == (75, 64)
    assert (a >= 0).all() and (a <= 1).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, run(6))
    assert len(np.unique(a, axis=0)) == 75  # no patch is sent twice


def test_needs_model_only_when_a_reward_uses_the_substitute() -> None:
    assert not NaturalPatches.needs_model
    assert not make_strategy("natural-patches").needs_model
    assert make_strategy("natural-patches", policy="adaptive").needs_model
    assert make_strategy("natural-patches", policy="adaptive", reward="loss").needs_model
    assert not make_strategy("natural-patches", policy="adaptive", reward="diversity").needs_model


def _train_bandit(
    strategy: NaturalPatches,
    answer: Callable[[int], tuple[int, np.ndarray | None]],
    model: object = None,
    rounds: int = 15,
) -> None:
    """Propose ``rounds`` batches of 20, answering each row with ``answer(its arm)``."""
    rng, history = np.random.default_rng(0), QueryHistory()
    history.model = model
    for _ in range(rounds):
        X = strategy.propose(20, rng, history)
        labels, probabilities = zip(
            *(answer(arm) for arm in _arms_of(X, strategy.n_arms)), strict=True
        )
        soft = probabilities[0] is not None
        history.add(X, np.array(labels), np.array(probabilities) if soft else None)


def test_bandit_shifts_towards_the_arm_with_certain_soft_answers() -> None:
    strategy = NaturalPatches(policy="adaptive", reward="certainty", alpha=0.5)
    before = strategy.arm_probabilities
    favourite = 7

    def answer(arm: int) -> tuple[int, np.ndarray]:
        p = np.eye(10)[3] if arm == favourite else np.full(10, 0.1)
        return 3, p

    _train_bandit(strategy, answer)
    after = strategy.arm_probabilities
    assert np.allclose(before, 1 / strategy.n_arms)
    assert after.argmax() == favourite
    assert after[favourite] > 3 / strategy.n_arms


def test_bandit_rewards_hard_labels_the_substitute_gets_wrong() -> None:
    strategy = NaturalPatches(policy="adaptive", reward="loss", alpha=0.5)
    favourite = 4

    def answer(arm: int) -> tuple[int, None]:
        return (5 if arm == favourite else 0), None  # the stand-in model always says 0

    _train_bandit(strategy, answer, model=_ConstantModel())
    after = strategy.arm_probabilities
    assert after.argmax() == favourite
    assert after[favourite] > 3 / strategy.n_arms


def test_bandit_diversity_favours_arms_with_rare_hard_labels() -> None:
    strategy = NaturalPatches(policy="adaptive", reward="diversity", alpha=0.5)
    favourite = 11

    def answer(arm: int) -> tuple[int, None]:
        return (1 if arm == favourite else 2), None

    _train_bandit(strategy, answer)
    assert strategy.arm_probabilities.argmax() == favourite


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"policy": "greedy"}, "policy"),
        ({"policy": "adaptive", "reward": "fun"}, "reward"),
        ({"policy": "adaptive", "n_arms": 1}, "n_arms"),
        ({"policy": "adaptive", "n_arms": 2.5}, "n_arms"),
        ({"policy": "adaptive", "alpha": 0.0}, "alpha"),
        ({"policy": "adaptive", "alpha": "fast"}, "alpha"),
    ],
)
def test_bad_options_are_config_errors(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):  # at construction, before any query
        make_strategy("natural-patches", **params)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no parameter"):
        make_strategy("natural-patches", temperature=2.0)


@pytest.mark.parametrize("policy", ["random", "adaptive"])
def test_patches_steal_better_than_uniform_noise(victim: LoadedVictim, policy: str) -> None:
    split = digits_task().data
    truth = victim.model.predict(split.X_eval)

    def steal(strategy: str, **params: object) -> float:
        oracle = LocalOracle(
            GuardedModel(victim.model, load_pipeline("none"), seed=0, task=digits_task()), 200
        )
        result = extract(
            oracle,
            make_strategy(strategy, **params),
            make_substitute("lr"),
            200,
            np.random.default_rng(1),
            batch_size=20,
        )
        return fidelity(result.model.predict(split.X_eval), truth)

    patches, noise = steal("natural-patches", policy=policy), steal("uniform")
    assert patches > noise + 0.15
    assert patches > 0.65
