"""Output stages that perturb or truncate probabilities but never change a row's top class.

"Top class" is the first column holding the row's largest value in the answers the stage
receives (:attr:`Answers.labels`), which is the victim's own label when the stage runs first.
Inputs are expected in [0, 1]; rows that are exactly 0 or 1 (forest victims) are fine.
"""

from typing import ClassVar

import numpy as np

from modeltheft.defenses.base import STAGES, Answers, DefenseContext, OutputStage
from modeltheft.registry import Interval

_LOGIT_CLIP = 1e-9
"""Probabilities are clipped to [_LOGIT_CLIP, 1 - _LOGIT_CLIP] before the logit (as ART does)."""

_TIE_BREAK = 1e-9
"""Weight of the one-hot mixed into a row whose top class is only tied for first place."""


POSITIVE = Interval(float, 0, float("inf"), closed="neither")
"""A finite number > 0."""


def _normalize(rows: np.ndarray) -> np.ndarray:
    """Divide each row by its sum; a row summing to 0 becomes uniform."""
    totals = rows.sum(axis=1, keepdims=True)
    uniform = np.full_like(rows, 1.0 / rows.shape[1], dtype=float)
    return np.divide(rows, totals, out=uniform, where=totals > 0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow warnings for large |z|."""
    return np.exp(-np.logaddexp(0.0, -z))


def keep_top_class(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Make ``labels[i]`` the first argmax of row ``i`` again, changing as little as possible.

    A row whose top value moved to another column gets the two values swapped (so the row's
    values, and its sum, are unchanged). A row where the label only ties for the top value with
    an earlier column is mixed with its one-hot by a weight of 1e-9, which keeps the sum.
    """
    out = np.array(probabilities, dtype=float)
    rows = np.arange(len(out))
    top = out.argmax(axis=1)
    moved = top != labels
    if moved.any():
        r, a, b = rows[moved], top[moved], labels[moved]
        out[r, a], out[r, b] = out[r, b], out[r, a]
    tied = out.argmax(axis=1) != labels
    if tied.any():
        one_hot = np.eye(out.shape[1])[labels[tied]]
        out[tied] = (1.0 - _TIE_BREAK) * out[tied] + _TIE_BREAK * one_hot
    return out


@STAGES.register
class ReverseSigmoid(OutputStage):
    """Lee et al.'s reverse-sigmoid perturbation, label-preserving for every beta and gamma.

    For each probability y (clipped to [1e-9, 1 - 1e-9] inside the logit only)::

        r = beta * (sigmoid(gamma * logit(y)) - 1/2)
        y' = max(y - r, 0) / sum(max(y - r, 0))

    as in ART's ``art.defences.postprocessor.ReverseSigmoid`` (the clips and the defaults are
    ART's) and Orekondy et al.'s ``bb_reversesigmoid.py`` (Eq. 3-4 of the paper). Large
    probabilities shrink and small ones grow (a zero rises to about 0.39 * beta before
    normalising with gamma = 0.1), so the answer misleads a copier trained on it. That can
    lift a small class above the top one (ART keeps the label only for some parameters); such
    rows have the two values swapped back (:func:`keep_top_class`), so the top class never
    changes.
    """

    name = "reverse_sigmoid"
    needs_probabilities = True
    paper = (
        "Lee et al., Defending Against NN Model Stealing Attacks Using Deceptive Perturbations, "
        "IEEE S&P Workshops 2019"
    )
    honest_cost = "low: the top label is kept, but the other probabilities are misleading"
    keeps_argmax = True
    keeps_simplex = True

    _parameter_constraints: ClassVar[dict[str, list]] = {"beta": [POSITIVE], "gamma": [POSITIVE]}

    def __init__(self, beta: float = 1.0, gamma: float = 0.1) -> None:
        self.beta = beta
        self.gamma = gamma
        self.validate_params()

    def perturbation(self, probabilities: np.ndarray) -> np.ndarray:
        """The reverse-sigmoid term r for every probability."""
        clipped = np.clip(probabilities, _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
        logit = np.log(clipped) - np.log1p(-clipped)
        return self.beta * (_sigmoid(self.gamma * logit) - 0.5)

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        probabilities = np.asarray(answers.probabilities, dtype=float)
        shifted = np.clip(probabilities - self.perturbation(probabilities), 0.0, None)
        defended = keep_top_class(_normalize(shifted), answers.labels)
        return answers.with_probabilities(defended)


@STAGES.register
class TopK(OutputStage):
    """Keep each row's k largest probabilities, zero the others and renormalise.

    Ties are broken towards the lower column, so the top class is always kept. A row whose
    kept values sum to 0 becomes uniform over the kept columns. With k at least the number of
    classes the stage only renormalises.
    """

    name = "top_k"
    needs_probabilities = True
    paper = (
        "Orekondy et al., Knockoff Nets: Stealing Functionality of Black-Box Models, CVPR 2019 "
        "(top-k truncation)"
    )
    honest_cost = "low: the k best classes keep their order; the others read as 0"
    keeps_argmax = True
    keeps_simplex = True

    _parameter_constraints: ClassVar[dict[str, list]] = {"k": [Interval(int, 1, None)]}

    def __init__(self, k: int = 3) -> None:
        self.k = k
        self.validate_params()

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        probabilities = np.asarray(answers.probabilities, dtype=float)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.k]
        kept = np.zeros(probabilities.shape, dtype=bool)
        np.put_along_axis(kept, order, True, axis=1)
        truncated = np.where(kept, probabilities, 0.0)
        totals = truncated.sum(axis=1, keepdims=True)
        fallback = kept / kept.sum(axis=1, keepdims=True)
        defended = np.divide(truncated, totals, out=fallback, where=totals > 0)
        return answers.with_probabilities(defended)


@STAGES.register
class ArgmaxPreservingNoise(OutputStage):
    """Mix each row with a random point of the simplex, then put the top class back on top.

    ``y' = (1 - scale) * y + scale * d`` with ``d ~ Dirichlet(1, …, 1)`` drawn from the
    request's generator, renormalised; a row whose top class moved has the two values swapped
    back (:func:`keep_top_class`). ``scale`` is the share of each answer replaced by noise:
    0 changes nothing, 1 keeps only the label.
    """

    name = "argmax_noise"
    needs_probabilities = True
    paper = (
        "Orekondy et al., Prediction Poisoning: Towards Defenses Against DNN Model Stealing "
        "Attacks, ICLR 2020 (argmax-preserving random-noise baseline)"
    )
    honest_cost = "low: the top label is kept; the probabilities are randomly distorted"
    keeps_argmax = True
    keeps_simplex = True

    _parameter_constraints: ClassVar[dict[str, list]] = {"scale": [Interval(float, 0, 1)]}

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = scale
        self.validate_params()

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        probabilities = np.asarray(answers.probabilities, dtype=float)
        n, k = probabilities.shape
        noise = ctx.rng.dirichlet(np.ones(k), size=n)
        mixed = (1.0 - self.scale) * probabilities + self.scale * noise
        defended = keep_top_class(_normalize(mixed), answers.labels)
        return answers.with_probabilities(defended)
