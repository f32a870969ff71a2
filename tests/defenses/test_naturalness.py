"""Naturalness scorers: honest (cross-fitted) calibration, ranks, any task, bad parameters."""

import numpy as np
import pytest

from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.defenses.naturalness import KINDS, Scorer, make_scorer
from modeltheft.errors import ConfigError
from modeltheft.tasks import digits_task, get_task


@pytest.fixture(scope="module")
def renders() -> np.ndarray:
    return RenderedDigits().render(200, np.random.default_rng(0))[0]


@pytest.mark.parametrize("kind", KINDS)
def test_real_digits_get_uniform_ranks_and_renders_small_ones(
    kind: str, renders: np.ndarray
) -> None:
    task = digits_task().held_out()
    scorer = make_scorer(kind, "task", task)
    real = scorer.ranks(task.data.X_eval)
    assert real.shape == (len(task.data.X_eval),)
    assert (real > 0).all() and (real <= 1).all()
    # Unseen real digits rank like the reference rows: about uniform.
    assert 0.4 < real.mean() < 0.65
    assert np.mean(real <= 0.05) < 0.08
    # Rendered digits do not.
    assert scorer.ranks(renders).mean() < real.mean() - 0.1


def test_calibration_is_out_of_fold() -> None:
    """In-sample scores of the reference rows would be optimistic; the calibration is not."""
    task = digits_task().held_out()
    scorer = make_scorer("gmm", "task", task)
    in_sample = np.sort(scorer.score(task.data.X_train))
    assert np.median(scorer.calibration) > np.median(in_sample)
    assert len(scorer.calibration) == len(task.data.X_train)


def test_scorers_are_shared_per_rows_and_parameters() -> None:
    task = digits_task().held_out()
    assert make_scorer("pca", "task", task) is make_scorer("pca", "task", task)
    assert make_scorer("pca", "task", task) is not make_scorer("pca", "task", task, n_components=5)
    assert make_scorer("pca", "task", task) is not make_scorer("pca", "task", digits_task())


@pytest.mark.parametrize("name", ["breast-cancer", "wine"])
@pytest.mark.parametrize("kind", KINDS)
def test_tabular_tasks(name: str, kind: str) -> None:
    task = get_task(name)
    scorer = make_scorer(kind, "task", task)
    real = scorer.ranks(task.data.X_eval)
    rng = np.random.default_rng(0)
    noise = rng.uniform(task.data.X_train.min(0), task.data.X_train.max(0), (50, task.n_features))
    assert np.isfinite(real).all() and real.mean() > 0.3
    assert scorer.ranks(noise).mean() < real.mean()


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("nope", {}, "kind must be one of"),
        ("gmm", {"k": 3}, "no parameter"),
        ("pca", {"n_components": 0}, "n_components must be an integer >= 1"),
        ("gmm", {"reg_covar": -1.0}, "reg_covar must be a number > 0"),
        ("knn", {"k": 0}, "k must be"),
    ],
)
def test_bad_parameters(kind: str, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_scorer(kind, "task", digits_task().held_out(), **params)


def test_bad_rows() -> None:
    scorer = make_scorer("pca", "task", digits_task().held_out())
    with pytest.raises(ConfigError, match="64 features"):
        scorer.ranks(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="reference rows"):
        Scorer("pca", np.zeros((3, 4)))


def test_the_gmm_score_equals_scikit_learns() -> None:
    """The NumPy log-likelihood is scikit-learn's, on real rows, noise and single rows."""
    from sklearn.mixture import GaussianMixture

    from modeltheft.defenses.naturalness import gmm_negative_log_likelihood

    X = digits_task().data.X_train
    gmm = GaussianMixture(5, covariance_type="full", reg_covar=0.1, random_state=0).fit(X)
    score = gmm_negative_log_likelihood(gmm)
    noise = np.random.default_rng(0).random((30, 64)) * 16
    for rows in (X[:50], noise, X[:1]):
        np.testing.assert_allclose(score(rows), -gmm.score_samples(rows), rtol=1e-9, atol=1e-9)
