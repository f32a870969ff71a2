"""One contract table for every registered recipe and source, on digits and on a tabular task."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from modeltheft.attacks import (
    SELECTORS,
    SOURCES,
    STRATEGIES,
    extract,
    make_strategy,
    make_substitute,
)
from modeltheft.attacks.base import QueryHistory
from modeltheft.defenses import GuardedModel, load_pipeline
from modeltheft.errors import ConfigError
from modeltheft.oracle import LocalOracle
from modeltheft.tasks import Task, get_task

IMAGE_ONLY = {"rendered-digits", "owasp-synthetic", "natural-patches"}
# Parameters that make a recipe runnable on a task without the digits' defaults.
TABULAR_PARAMS: dict[str, dict] = {"active": {"pool": "synthetic", "pool_size": 300}}
DIGITS_PARAMS: dict[str, dict] = {"active": {"pool_size": 300}}


def _propose(name: str, task: Task, params: dict, seed: int, sizes: tuple[int, ...]) -> np.ndarray:
    strategy = make_strategy(name, **params)
    strategy.setup(task, sum(sizes))
    history = QueryHistory(task=task)
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        X = task.clip(strategy.propose(n, rng, history))
        assert X.shape == (n, task.n_features)
        history.add(X, np.zeros(n, dtype=int), None)
        out.append(X)
    return np.vstack(out)


@pytest.mark.parametrize("task_name", ["digits", "wine"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_recipe_keeps_the_contract(name: str, task_name: str) -> None:
    task = get_task(task_name)
    if name in IMAGE_ONLY and not task.is_image:
        pytest.skip("image-only (refusal tested below)")
    params = (DIGITS_PARAMS if task.is_image else TABULAR_PARAMS).get(name, {})
    X = _propose(name, task, params, 3, (4, 3))  # batches of more than one row
    assert ((task.lower <= X) & (task.upper >= X)).all()
    assert np.isfinite(X).all()
    again = _propose(name, task, params, 3, (4, 3))
    assert np.array_equal(X, again)  # determinism under a seed


@pytest.mark.parametrize("name", sorted(IMAGE_ONLY))
def test_image_only_recipes_refuse_tabular_tasks_by_name(name: str) -> None:
    wine = get_task("wine")
    with pytest.raises(ConfigError) as caught:
        make_strategy(name).setup(wine, 10)
    assert str(caught.value) == (
        f"strategy {name!r} needs 8×8 digit images (task 'digits'); task 'wine' has "
        "13 tabular features"
    )


def test_active_over_an_image_pool_refuses_a_tabular_task() -> None:
    with pytest.raises(ConfigError, match=r"'active' .*'rendered-digits'.* task 'wine'"):
        make_strategy("active").setup(get_task("wine"), 10)


def test_every_source_and_selector_is_registered_with_a_paper() -> None:
    assert {"uniform", "public-data", "synthetic", "rendered-digits"} <= set(SOURCES)
    assert {"random", "active", "jacobian"} <= set(SELECTORS)
    for registry in (SOURCES, SELECTORS, STRATEGIES):
        for name in registry:
            assert registry.get(name).paper, name


def test_uniform_refuses_a_task_without_bounds() -> None:
    wine = get_task("wine")
    schema = Task(
        name="model",
        feature_names=wine.feature_names,
        lower=np.full(13, -np.inf),
        upper=np.full(13, np.inf),
        classes=wine.classes,
    )
    with pytest.raises(ConfigError, match="task 'model' declares no bounds; give a task with"):
        make_strategy("uniform").setup(schema, 10)


def test_public_data_from_a_file(tmp_path: Path) -> None:
    wine = get_task("wine").without_data()
    rows = get_task("wine").data.X_public[:12]
    path = tmp_path / "mine.npy"
    np.save(path, rows)
    strategy = make_strategy("public-data", path=str(path))
    strategy.setup(wine, 12)
    X = strategy.propose(12, np.random.default_rng(0), QueryHistory(task=wine))
    assert sorted(map(tuple, X)) == sorted(map(tuple, rows))  # each row once
    with pytest.raises(ConfigError, match="holds 12 rows, fewer than the budget of 13"):
        make_strategy("public-data", path=str(path)).setup(wine, 13)
    with pytest.raises(ConfigError, match="carries no attacker-public rows"):
        make_strategy("public-data").setup(wine, 5)


def test_public_data_from_a_csv_of_the_wrong_width(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(ConfigError, match=r"shape \(n, 13\)"):
        make_strategy("public-data", path=str(path)).setup(get_task("wine"), 2)


@pytest.mark.parametrize("mode", ["gaussian", "marginals"])
def test_synthetic_rows_look_like_the_public_rows(mode: str) -> None:
    task = get_task("breast-cancer")
    strategy = make_strategy("synthetic", mode=mode, n_rows=20)
    strategy.setup(task, 500)
    X = strategy.propose(500, np.random.default_rng(1), QueryHistory(task=task))
    public = task.data.X_public
    assert ((task.lower <= X) & (task.upper >= X)).all()
    # Each feature's median lands within the public rows' spread of theirs.
    gap = np.abs(np.median(X, axis=0) - np.median(public, axis=0))
    assert (gap <= public.std(axis=0)).all()
    assert len(np.unique(X[:, 0])) > 100  # new rows, not copies


def test_jacobian_from_seed_rows_of_width_13() -> None:
    wine = get_task("wine")
    seeds = wine.data.X_public[:5]
    victim = LogisticRegression(max_iter=5000).fit(*wine.data.victim_rows(holdout=True))
    oracle = LocalOracle(
        GuardedModel(victim, load_pipeline("none"), seed=0, task=wine.without_data()), 60
    )
    result = extract(
        oracle,
        make_strategy("jacobian", seed_X=seeds),
        make_substitute("lr", 0, wine),
        60,
        np.random.default_rng(0),
        batch_size=10,
        min_answers=20,
    )
    assert result.X.shape == (60, 13)
    assert {tuple(r) for r in seeds} <= {tuple(r) for r in result.X}
    assert ((wine.lower <= result.X) & (wine.upper >= result.X)).all()
    with pytest.raises(ConfigError, match=r"seed_X must have shape \(n, 13\)"):
        make_strategy("jacobian", seed_X=np.zeros((3, 64))).setup(wine, 10)


def test_a_proposal_of_the_wrong_width_names_strategy_shape_and_width() -> None:
    wine = get_task("wine")
    victim = LogisticRegression(max_iter=5000).fit(*wine.data.victim_rows())

    class Wrong(type(make_strategy("uniform"))):  # type: ignore[misc]
        def propose(self, n, rng, history):  # type: ignore[no-untyped-def]
            return np.zeros((n, 64))

    oracle = LocalOracle(GuardedModel(victim, load_pipeline("none"), seed=0, task=wine), 10)
    strategy = Wrong(SOURCES.build("uniform"))
    with pytest.raises(ConfigError, match=r"'random' proposed shape \(5, 64\), expected \(5, 13\)"):
        extract(oracle, strategy, make_substitute("lr"), 10, np.random.default_rng(0), batch_size=5)
