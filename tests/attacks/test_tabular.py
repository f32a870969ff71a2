"""Attacks on tabular tasks: exact equation solving, public-row extraction, string classes."""

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks import attack_task, extract, make_strategy, make_substitute
from modeltheft.attacks.base import QueryHistory
from modeltheft.attacks.spec import AttackSpec
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import ConfigError
from modeltheft.oracle import LocalOracle
from modeltheft.tasks import get_task


def _oracle(model, task, budget: int, seed: int = 0) -> LocalOracle:
    return LocalOracle(GuardedModel(model, load_pipeline("none"), seed=seed, task=task), budget)


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
def test_equation_solving_is_exact_in_d_plus_one_queries(name: str) -> None:
    task = get_task(name)
    victim = LogisticRegression(max_iter=1000).fit(*task.data.victim_rows(holdout=True))
    d = task.n_features
    result = extract(
        _oracle(victim, task.without_data(), d + 1),
        make_strategy("equation-solving"),
        make_substitute("equation-solver"),
        d + 1,
        np.random.default_rng(0),
        batch_size=d + 1,
        label_mode="soft",
        min_answers=1,
    )
    X_eval = task.data.X_eval
    assert result.sent == d + 1  # 31 for breast-cancer (binary), 14 for wine (3 classes)
    assert np.array_equal(result.model.predict(X_eval), victim.predict(X_eval))
    error = np.abs(result.model.predict_proba(X_eval) - victim.predict_proba(X_eval)).max()
    assert error < 1e-6
    exported = result.model.to_sklearn()  # a binary model exports as one coefficient row
    assert np.abs(exported.predict_proba(X_eval) - victim.predict_proba(X_eval)).max() < 1e-6


def test_extraction_with_twenty_public_rows_reaches_high_fidelity() -> None:
    task = get_task("breast-cancer")
    victim = RandomForestClassifier(n_estimators=50, random_state=42)
    victim.fit(*task.data.victim_rows(holdout=True))
    spec = AttackSpec(
        strategy="active",
        params={"pool": "synthetic", "n_rows": 20, "seed_rows": 20, "pool_size": 2000},
        substitute="lr",
        budget=300,
        batch_size=30,
        seed=1,
    )
    oracle = _oracle(victim, task, 300)
    result = spec.run(oracle)
    X_eval = task.data.X_eval
    assert np.mean(result.model.predict(X_eval) == victim.predict(X_eval)) >= 0.9
    public = {tuple(r) for r in task.data.X_public}
    assert sum(tuple(r) in public for r in result.X) == 20  # the 20 seed rows, asked once


def test_a_copy_of_a_string_class_victim_predicts_the_strings() -> None:
    task = get_task("wine")
    names = np.array(["barolo", "grignolino", "barbera"])
    X, y = task.data.victim_rows(holdout=True)
    victim = LogisticRegression(max_iter=5000).fit(X, names[y])
    labelled = task.with_classes(victim.classes_)
    for substitute, mode in (("lr", "hard"), ("rf", "soft")):
        result = extract(
            _oracle(victim, labelled, 200),
            make_strategy("synthetic", n_rows=20),
            make_substitute(substitute, 0, task),
            200,
            np.random.default_rng(0),
            batch_size=50,
            label_mode=mode,
        )
        assert set(result.model.classes_) == set(names)
        predicted = result.model.predict(task.data.X_eval)
        assert predicted.dtype.kind == "U" and set(predicted) <= set(names)
        assert set(result.labels) <= set(names)
        assert np.mean(predicted == victim.predict(task.data.X_eval)) > 0.8


def test_tabular_substitutes_standardise_and_digits_ones_do_not() -> None:
    lr = make_substitute("lr", 0, get_task("wine"))
    assert type(lr).__name__ == "Pipeline" and type(lr.steps[0][1]).__name__ == "StandardScaler"
    assert type(make_substitute("lr", 0, get_task("digits"))).__name__ == "LogisticRegression"
    assert type(make_substitute("rf", 0, get_task("wine"))).__name__ == "RandomForestClassifier"


def test_cnn_substitute_refuses_a_tabular_task() -> None:
    with pytest.raises(ConfigError, match="substitute 'cnn' needs 8×8 digit images"):
        make_substitute("cnn", 0, get_task("wine"))


def test_a_bare_model_is_attacked_as_it_describes_itself() -> None:
    digits = get_task("digits")
    victim = LogisticRegression(max_iter=1000).fit(*digits.data.victim_rows())
    bare = _oracle(victim, None, 60)
    found = attack_task(bare)  # width and classes only: not taken for digits
    assert (found.name, found.n_features, found.n_classes, found.data) == ("model", 64, 10, None)
    with pytest.raises(ConfigError, match=r"needs 8×8 digit images .* task 'model'"):
        extract(bare, make_strategy("owasp-synthetic"), make_substitute("lr"), 60, _rng())
    with pytest.raises(ConfigError, match="task 'model' carries no attacker-public rows"):
        extract(bare, make_strategy("jacobian"), make_substitute("lr"), 60, _rng())
    assert bare.spent == 0  # refused before any query was paid for
    # The thief who knows the task says so, and attacks as if the target had named it.
    assert attack_task(bare, digits).name == "digits" and attack_task(bare, digits).data is not None
    runs = []
    for oracle, task in ((bare, digits), (_oracle(victim, digits, 60), None)):
        strategy = make_strategy("active", seed_digits=5, pool_size=200)
        runs.append(
            extract(oracle, strategy, make_substitute("lr"), 60, _rng(), batch_size=20, task=task)
        )
    assert np.array_equal(runs[0].X, runs[1].X)  # same queries either way


def _rng() -> np.random.Generator:
    return np.random.default_rng(4)


def test_empty_history_has_the_task_width() -> None:
    X, labels, probabilities = QueryHistory(task=get_task("wine")).answered()
    assert X.shape == (0, 13) and labels.shape == (0,) and probabilities is None
