"""One table that every registered output stage must satisfy, always with multi-row batches."""

import numpy as np
import pytest

from modeltheft.defenses import STAGES, OutputStage, load_pipeline, preset_names
from modeltheft.defenses.base import DefenseContext, Pipeline

OUTPUT_STAGES = sorted(name for name, cls in STAGES.items() if issubclass(cls, OutputStage))


def ctx(seed: int) -> DefenseContext:
    return DefenseContext.local(np.random.default_rng(seed))


def probabilities(n: int = 32, k: int = 10, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).dirichlet(np.ones(k) * 0.5, size=n)
    return raw


@pytest.mark.parametrize("name", OUTPUT_STAGES)
def test_shape_range_and_determinism(name: str) -> None:
    pipeline = Pipeline([STAGES[name]()])
    P = probabilities()
    first = pipeline.transform(P, ctx(1))
    again = pipeline.transform(P, ctx(1))
    assert first.probabilities.shape == P.shape
    assert np.isfinite(first.probabilities).all()
    assert (first.probabilities >= 0).all() and (first.probabilities <= 1 + 1e-12).all()
    assert np.array_equal(first.probabilities, again.probabilities)
    assert np.array_equal(first.original, P)


@pytest.mark.parametrize("name", OUTPUT_STAGES)
def test_claims_hold(name: str) -> None:
    stage = STAGES[name]()
    P = probabilities(n=64)
    out = Pipeline([stage]).transform(P, ctx(3)).probabilities
    if stage.keeps_argmax:
        assert np.array_equal(out.argmax(axis=1), P.argmax(axis=1))
    if stage.keeps_simplex:
        assert np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_cites_its_paper_and_states_its_honest_cost(name: str) -> None:
    assert STAGES[name].paper and STAGES[name].honest_cost


@pytest.mark.parametrize("preset", preset_names())
def test_presets_return_probability_vectors(preset: str) -> None:
    answers = load_pipeline(preset).transform(probabilities(n=50), ctx(0))
    assert np.allclose(answers.probabilities.sum(axis=1), 1.0)


def test_lab_pipeline_keeps_victims_label_on_hard_rows_and_perturbs_others() -> None:
    P = probabilities(n=2000, seed=5)
    answers = load_pipeline("lab").transform(P, ctx(0))
    one_hot = (answers.probabilities == 1.0).any(axis=1)
    # About 40 % of rows get the victim's one-hot label; on those the label is the victim's.
    assert 0.35 < one_hot.mean() < 0.45
    assert (answers.labels[one_hot] == P.argmax(axis=1)[one_hot]).all()
    # The noisy rows are rounded to one decimal before normalisation, so they change.
    assert not np.allclose(answers.probabilities[~one_hot], P[~one_hot])


def test_noise_is_clipped_and_rounding_rounds() -> None:
    from modeltheft.defenses.output import GaussianNoise, Rounding

    P = probabilities(n=100)
    noisy = Pipeline([GaussianNoise(0.2, 0.01, 0.99)]).transform(P, ctx(0))
    assert noisy.probabilities.min() >= 0.01 and noisy.probabilities.max() <= 0.99
    rounded = Pipeline([Rounding(1)]).transform(P, ctx(0))
    assert np.allclose(rounded.probabilities * 10, np.round(rounded.probabilities * 10))


def test_hard_label_withholds_probabilities() -> None:
    answers = load_pipeline("none").transform(probabilities(), ctx(0))
    assert answers.expose_probabilities
    from modeltheft.defenses.output import HardLabel

    hidden = Pipeline([HardLabel()]).transform(probabilities(), ctx(0))
    assert not hidden.expose_probabilities
