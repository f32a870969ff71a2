"""Reverse sigmoid, top-k and argmax-preserving noise: the math, the label, the parameters."""

import math

import numpy as np
import pytest

from modeltheft.defenses import STAGES, DefenseContext, Pipeline
from modeltheft.defenses.base import Answers
from modeltheft.defenses.perturb import ArgmaxPreservingNoise, ReverseSigmoid, TopK
from modeltheft.defenses.presets import build_stage
from modeltheft.errors import ConfigError


def ctx(seed: int = 0) -> DefenseContext:
    return DefenseContext.local(np.random.default_rng(seed))


def run(stage, P: np.ndarray, seed: int = 0) -> np.ndarray:
    return Pipeline([stage]).transform(P, ctx(seed)).probabilities


def reverse_sigmoid_by_hand(row: list[float], beta: float, gamma: float) -> list[float]:
    """Lee et al. Eq. 3-4, written out with scalars: r = β(σ(γ·logit y) − ½), y' ∝ max(y − r, 0).

    σ(γ·logit y) is computed as y^γ / (y^γ + (1 − y)^γ), with y clipped to [1e-9, 1 − 1e-9].
    """
    shifted = []
    for y in row:
        c = min(max(y, 1e-9), 1 - 1e-9)
        s = c**gamma / (c**gamma + (1 - c) ** gamma)
        shifted.append(max(y - beta * (s - 0.5), 0.0))
    total = math.fsum(shifted)
    return [v / total for v in shifted]


def awkward_rows(n: int = 3000, k: int = 6, seed: int = 0) -> np.ndarray:
    """Rows with zeros, exact ties, one-hots and near-uniform rows, all summing to 1."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.dirichlet(np.full(k, 0.3), size=n // 4),
        rng.dirichlet(np.full(k, 5.0), size=n // 4),
    ]
    rounded = np.round(rng.dirichlet(np.full(k, 0.5), size=n // 4), 1)  # zeros and ties
    rounded[rounded.sum(axis=1) == 0, 0] = 1.0
    parts.append(rounded / rounded.sum(axis=1, keepdims=True))
    parts.append(np.eye(k)[rng.integers(0, k, size=n // 8)])  # forest-like one-hots
    fixed = [
        [0.5, 0.5, 0, 0, 0, 0],
        [0, 0, 0.5, 0, 0, 0.5],
        [0.2, 0, 0.2, 0.2, 0.2, 0.2],
        [0.25, 0.25, 0.25, 0.25, 0, 0],
        [1 / 6] * 6,
        [0.3, 0.1, 0.1, 0.1, 0.1, 0.3],
    ]
    parts.append(np.array(fixed, dtype=float))
    return np.vstack(parts)


# ---------------------------------------------------------------- reverse sigmoid


def test_reverse_sigmoid_matches_a_hand_computed_row() -> None:
    row = [0.7, 0.2, 0.1, 0.0]
    expected = reverse_sigmoid_by_hand(row, beta=1.0, gamma=0.1)
    out = run(ReverseSigmoid(beta=1.0, gamma=0.1), np.array([row]))
    assert np.allclose(out[0], expected, rtol=0, atol=1e-12)
    # Written out: 0.7 → 0.7 − (σ(0.1·logit 0.7) − ½) ≈ 0.678830; 0 → ½ − σ(−2.0723) ≈ 0.388184.
    assert out[0].sum() == pytest.approx(1.0)
    assert expected[0] == pytest.approx(
        0.678830 / (0.678830 + 0.234602 + 0.154711 + 0.388184), abs=1e-6
    )


def test_reverse_sigmoid_other_parameters_and_rows_match_the_formula() -> None:
    rows = [[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.34, 0.33, 0.33]]
    for beta, gamma in [(0.7, 0.4), (0.5, 0.2), (1.0, 0.1), (0.3, 2.0)]:
        out = run(ReverseSigmoid(beta=beta, gamma=gamma), np.array(rows))
        for got, row in zip(out, rows, strict=True):
            assert np.allclose(got, reverse_sigmoid_by_hand(row, beta, gamma), atol=1e-12)


def test_reverse_sigmoid_swaps_the_top_class_back_when_a_zero_overtakes_it() -> None:
    # A zero rises to ½ − σ(0.1·logit 1e-9) ≈ 0.388 while 0.3 only rises to ≈ 0.321: the
    # plain formula would put column 4 (the first zero) on top.
    row = [0.3, 0.25, 0.25, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    plain = np.array(reverse_sigmoid_by_hand(row, beta=1.0, gamma=0.1))
    assert plain.argmax() == 4
    out = run(ReverseSigmoid(), np.array([row]))[0]
    expected = plain.copy()
    expected[[0, 4]] = plain[[4, 0]]
    assert np.allclose(out, expected, atol=1e-12)
    assert out.argmax() == 0
    assert np.allclose(np.sort(out), np.sort(plain))


def test_reverse_sigmoid_actually_perturbs() -> None:
    P = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    out = run(ReverseSigmoid(), P)
    assert np.abs(out - P).sum(axis=1).min() > 0.05
    # The top probability is pulled down and the smallest pushed up.
    assert out[0, 0] < 0.6 and out[0, 2] > 0.1


def test_reverse_sigmoid_uses_no_randomness() -> None:
    context = ctx(7)
    Pipeline([ReverseSigmoid()]).transform(awkward_rows(n=40), context)
    assert context.rng.random() == np.random.default_rng(7).random()


# ---------------------------------------------------------------- top-k


def test_top_k_zeroes_all_but_k_entries_and_keeps_their_ratios() -> None:
    P = np.random.default_rng(1).dirichlet(np.ones(10), size=200)  # no ties, no zeros
    out = run(TopK(k=3), P)
    assert ((out == 0).sum(axis=1) == 7).all()
    assert np.allclose(out.sum(axis=1), 1.0)
    top3 = np.sort(P, axis=1)[:, -3:]
    assert np.allclose(np.sort(out, axis=1)[:, -3:], top3 / top3.sum(axis=1, keepdims=True))


def test_top_k_breaks_ties_towards_the_lower_column_and_handles_small_k_and_large_k() -> None:
    P = np.array([[0.3, 0.4, 0.3, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert np.allclose(run(TopK(k=2), P), [[3 / 7, 4 / 7, 0, 0], [0.5, 0.5, 0, 0]])
    assert np.allclose(run(TopK(k=1), P), [[0, 1, 0, 0], [1, 0, 0, 0]])
    assert np.allclose(run(TopK(k=10), P), P)


def test_top_k_on_rows_with_fewer_nonzeros_than_k() -> None:
    P = np.array([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.6, 0.4, 0.0]])
    assert np.array_equal(run(TopK(k=3), P), P)


# ---------------------------------------------------------------- argmax noise


def test_argmax_noise_changes_probabilities_but_not_labels() -> None:
    P = awkward_rows()
    out = run(ArgmaxPreservingNoise(), P, seed=3)
    assert np.array_equal(out.argmax(axis=1), P.argmax(axis=1))
    assert np.allclose(out.sum(axis=1), 1.0)
    changed = np.abs(out - P).sum(axis=1)
    assert (changed > 1e-3).all()
    # One-hot (forest) rows get mass on other classes too.
    one_hot = (P == 1.0).any(axis=1)
    assert (out[one_hot].max(axis=1) < 1.0).all()


def test_argmax_noise_depends_on_the_seed_only() -> None:
    P = awkward_rows(n=200)
    stage = ArgmaxPreservingNoise(scale=0.3)
    assert np.array_equal(run(stage, P, seed=1), run(stage, P, seed=1))
    assert not np.allclose(run(stage, P, seed=1), run(stage, P, seed=2))


def test_argmax_noise_scale_zero_is_identity_and_scale_one_keeps_only_the_label() -> None:
    P = awkward_rows(n=200)
    assert np.allclose(run(ArgmaxPreservingNoise(scale=0), P), P)
    out = run(ArgmaxPreservingNoise(scale=1), P, seed=4)
    assert np.array_equal(out.argmax(axis=1), P.argmax(axis=1))


# ---------------------------------------------------------------- all three


STAGE_VARIANTS = [
    ReverseSigmoid(),
    ReverseSigmoid(beta=0.7, gamma=0.4),
    ReverseSigmoid(beta=3.0, gamma=0.05),
    ReverseSigmoid(beta=1.0, gamma=1.0),  # every row becomes uniform before the fix
    ReverseSigmoid(beta=0.5, gamma=8.0),
    TopK(),
    TopK(k=1),
    TopK(k=2),
    ArgmaxPreservingNoise(),
    ArgmaxPreservingNoise(scale=0.9),
    ArgmaxPreservingNoise(scale=1.0),
]


@pytest.mark.parametrize("stage", STAGE_VARIANTS, ids=lambda s: f"{s.name}-{vars(s)}")
def test_argmax_and_simplex_hold_on_awkward_rows(stage) -> None:
    P = awkward_rows()
    for seed in range(3):
        out = run(stage, P, seed=seed)
        assert np.array_equal(out.argmax(axis=1), P.argmax(axis=1))
        assert np.allclose(out.sum(axis=1), 1.0)
        assert (out >= 0).all() and (out <= 1.0).all()
        assert np.isfinite(out).all()


@pytest.mark.parametrize("stage", [ReverseSigmoid(), TopK(), ArgmaxPreservingNoise()])
def test_other_fields_are_kept(stage) -> None:
    P = awkward_rows(n=8)
    flags = np.arange(len(P)) % 2 == 0
    answers = Answers(P, P.copy(), suspicious=flags)
    out = stage.transform(answers, ctx())
    assert out.suspicious is flags
    assert out.original is P
    assert out.expose_probabilities


def test_single_row_batches() -> None:
    row = np.array([[0.0, 1.0, 0.0]])
    for stage in (ReverseSigmoid(), TopK(), ArgmaxPreservingNoise()):
        out = run(stage, row)
        assert out.shape == (1, 3) and out.argmax() == 1 and out.sum() == pytest.approx(1.0)


def test_registered_with_honest_cost() -> None:
    for name, cls in [
        ("reverse_sigmoid", ReverseSigmoid),
        ("top_k", TopK),
        ("argmax_noise", ArgmaxPreservingNoise),
    ]:
        assert STAGES[name] is cls
        assert cls.honest_cost and cls.paper
    assert build_stage({"type": "top_k", "k": 2}).k == 2
    with pytest.raises(ConfigError, match="no parameter"):
        build_stage({"type": "reverse_sigmoid", "alpha": 1.0})


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (ReverseSigmoid, {"beta": 0}),
        (ReverseSigmoid, {"beta": -1.0}),
        (ReverseSigmoid, {"beta": float("nan")}),
        (ReverseSigmoid, {"beta": "1"}),
        (ReverseSigmoid, {"beta": True}),
        (ReverseSigmoid, {"gamma": 0.0}),
        (ReverseSigmoid, {"gamma": float("inf")}),
        (TopK, {"k": 0}),
        (TopK, {"k": 1.5}),
        (TopK, {"k": True}),
        (TopK, {"k": "3"}),
        (ArgmaxPreservingNoise, {"scale": -0.1}),
        (ArgmaxPreservingNoise, {"scale": 1.5}),
        (ArgmaxPreservingNoise, {"scale": float("nan")}),
        (ArgmaxPreservingNoise, {"scale": None}),
    ],
)
def test_invalid_parameters_are_config_errors(cls, params) -> None:
    with pytest.raises(ConfigError):
        cls(**params)
