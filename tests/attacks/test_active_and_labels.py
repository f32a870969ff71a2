import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks import extract, make_strategy, make_substitute
from modeltheft.attacks.labels import fit_substitute, soft_targets, top_k
from modeltheft.attacks.selectors.active import k_center_greedy, margins
from modeltheft.attacks.spec import AttackSpec, default_checkpoints, parse_params
from modeltheft.attacks.strategies import QueryHistory
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import AttackFailed, ConfigError
from modeltheft.evaluation.metrics import fidelity
from modeltheft.oracle import LocalOracle
from modeltheft.tasks import digits_task
from modeltheft.victim import LoadedVictim


def test_top_k_keeps_k_largest_and_spreads_the_rest() -> None:
    P = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]])
    out = top_k(P, 2)
    assert np.allclose(out.sum(axis=1), 1.0)
    assert np.allclose(out[0], [0.5, 0.3, 0.1, 0.1])
    assert np.allclose(out[1], [0.15, 0.15, 0.3, 0.4])


def test_soft_targets_need_probabilities() -> None:
    with pytest.raises(AttackFailed, match="needs probabilities"):
        soft_targets(np.array([0, 1]), None, "soft", 3, np.arange(10))
    assert soft_targets(np.array([0, 1]), None, "hard", 3, np.arange(10)) is None


def test_soft_fit_matches_the_teacher_better_than_hard(victim: LoadedVictim) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((200, 64))
    P = victim.model.predict_proba(X)
    labels = P.argmax(axis=1)
    soft = fit_substitute(LogisticRegression(max_iter=1000), X, labels, P, np.arange(10))
    hard = fit_substitute(LogisticRegression(max_iter=1000), X, labels, None, np.arange(10))
    kl_soft = np.mean(np.sum(P * np.log((P + 1e-9) / (soft.predict_proba(X) + 1e-9)), axis=1))
    kl_hard = np.mean(np.sum(P * np.log((P + 1e-9) / (hard.predict_proba(X) + 1e-9)), axis=1))
    assert kl_soft < kl_hard


def test_margins_and_k_center() -> None:
    assert np.allclose(margins(np.array([[0.6, 0.3, 0.1], [0.4, 0.4, 0.2]])), [0.3, 0.0])
    candidates = np.array([[0.0], [0.1], [5.0], [10.0]])
    assert k_center_greedy(candidates, np.array([[0.0]]), 2) == [3, 2]


def test_active_asks_seed_digits_first_and_is_deterministic() -> None:
    strategy = make_strategy("active", pool="uniform", pool_size=100, seed_digits=5)
    first = strategy.propose(8, np.random.default_rng(1), QueryHistory())
    again = make_strategy("active", pool="uniform", pool_size=100, seed_digits=5).propose(
        8, np.random.default_rng(1), QueryHistory()
    )
    assert np.array_equal(first, again)
    seeds = digits_task().data.public_rows(5, np.random.default_rng(1))
    assert np.array_equal(first[:5], seeds)


def test_active_beats_its_own_pool_at_random(victim: LoadedVictim) -> None:
    split = digits_task().data
    truth = victim.model.predict(split.X_eval)
    scores = {}
    for name, strategy in (
        ("random", make_strategy("owasp-synthetic")),
        ("active", make_strategy("active", pool="owasp-synthetic", pool_size=2000)),
    ):
        values = []
        for seed in range(2):
            oracle = LocalOracle(
                GuardedModel(victim.model, load_pipeline("none"), task=digits_task()), budget=200
            )
            result = extract(
                oracle,
                strategy,
                make_substitute("lr"),
                200,
                np.random.default_rng(seed),
                batch_size=20,
            )
            values.append(fidelity(result.model.predict(split.X_eval), truth))
        scores[name] = np.mean(values)
    assert scores["active"] > scores["random"] + 0.05


def test_active_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="pool_size"):
        make_strategy("active", pool_size=0).propose(1, np.random.default_rng(0), QueryHistory())
    # The pool is a source now (a strategy cannot be its own pool): named in the message.
    with pytest.raises(ConfigError, match=r"pool must be one of .*got 'active'"):
        make_strategy("active", pool="active")


def test_public_digits_are_disjoint_from_a_holdout_victims_data() -> None:
    data = digits_task().data
    X_train, y_train = data.victim_rows(holdout=True)
    rows = {r.tobytes() for r in data.X_public}
    assert len(data.X_public) == 200
    assert not rows & {r.tobytes() for r in X_train}
    assert not rows & {r.tobytes() for r in data.X_eval}
    assert len(y_train) == 1257 - 200


def test_checkpoints_record_a_budget_curve(victim: LoadedVictim) -> None:
    split = digits_task().data
    oracle = LocalOracle(
        GuardedModel(victim.model, load_pipeline("none"), task=digits_task()), budget=150
    )
    spec = AttackSpec(strategy="uniform", budget=150, batch_size=40, checkpoints=(60, 100))
    result = spec.run(
        oracle, evaluate=lambda m: {"accuracy": float(m.score(split.X_eval, split.y_eval))}
    )
    assert [p.spent for p in result.curve] == [60, 100, 150]
    assert all(p.metrics is not None for p in result.curve)
    assert oracle.spent == 150


def test_spec_helpers() -> None:
    assert parse_params(["pool=uniform", "pool_size=30", "x=0.5", "flag=true"]) == {
        "pool": "uniform",
        "pool_size": 30,
        "x": 0.5,
        "flag": True,
    }
    assert default_checkpoints(300)[-1] == 300 and len(default_checkpoints(300)) == 10
    with pytest.raises(ConfigError, match="label mode"):
        AttackSpec(label_mode="x").validate()


def test_a_refused_batch_does_not_hide_other_batches_probabilities() -> None:
    history = QueryHistory()
    P = np.full((2, 10), 0.1)
    history.add(np.zeros((2, 64)), np.array([1, 2]), P)
    history.add(np.ones((3, 64)), np.array([-1, -1, -1]), None)
    history.add(np.ones((1, 64)), np.array([3]), np.full((1, 10), 0.1))
    X, labels, probabilities = history.answered()
    assert X.shape == (3, 64) and labels.tolist() == [1, 2, 3]
    assert probabilities is not None and probabilities.shape == (3, 10)
