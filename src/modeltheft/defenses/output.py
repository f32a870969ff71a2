"""Stateless output stages: each maps an (n, k) probability array to another."""

from dataclasses import replace
from typing import ClassVar

import numpy as np

from modeltheft.defenses.base import STAGES, Answers, DefenseContext, OutputStage
from modeltheft.errors import ConfigError
from modeltheft.registry import Interval

PROBABILITY = Interval(float, 0, 1)


@STAGES.register
class GaussianNoise(OutputStage):
    """Add N(0, sigma) to every probability, then clip (the OWASP lab's output noise)."""

    name = "gaussian_noise"
    needs_probabilities = True
    honest_cost = "high: noisy probabilities, and sigma 0.2 flips some labels"
    paper = "OWASP ML05:2023 lab; output perturbation as in Tramèr et al., USENIX Security 2016"

    _parameter_constraints: ClassVar[dict[str, list]] = {
        "sigma": [Interval(float, 0, float("inf"), closed="left")],
        "clip_min": [PROBABILITY],
        "clip_max": [PROBABILITY],
    }

    def __init__(self, sigma: float = 0.2, clip_min: float = 0.01, clip_max: float = 0.99) -> None:
        self.sigma = sigma
        self.clip_min = clip_min
        self.clip_max = clip_max
        self.validate_params()
        if self.clip_min > self.clip_max:
            raise ConfigError(
                f"defense stage {self.name!r}: clip_min ({clip_min}) must be <= clip_max "
                f"({clip_max})"
            )

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        noise = ctx.rng.normal(0.0, self.sigma, size=answers.probabilities.shape)
        noisy = np.clip(answers.probabilities + noise, self.clip_min, self.clip_max)
        return answers.with_probabilities(noisy)


@STAGES.register
class Rounding(OutputStage):
    """Round probabilities to a few decimals (precision reduction; Tramèr et al. 2016)."""

    name = "rounding"
    needs_probabilities = True
    honest_cost = "low: coarser probabilities; ties can change the label"
    paper = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016"
    )

    _parameter_constraints: ClassVar[dict[str, list]] = {"decimals": [Interval(int, 0, None)]}

    def __init__(self, decimals: int = 1) -> None:
        self.decimals = decimals
        self.validate_params()

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        return answers.with_probabilities(np.round(answers.probabilities, self.decimals))


@STAGES.register
class RandomHardLabel(OutputStage):
    """With probability p per row, answer a one-hot of the victim's own top class (OWASP lab)."""

    name = "random_hard_label"
    needs_probabilities = True
    honest_cost = "low: some answers lose their probabilities (the label is the victim's)"
    paper = "OWASP ML05:2023 lab; label-only answers as in Tramèr et al. 2016"
    keeps_simplex = True

    _parameter_constraints: ClassVar[dict[str, list]] = {"probability": [PROBABILITY]}

    def __init__(self, probability: float = 0.4) -> None:
        self.probability = probability
        self.validate_params()

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        n, k = answers.probabilities.shape
        chosen = ctx.rng.random(n) < self.probability
        one_hot = np.eye(k)[np.argmax(answers.original, axis=1)]
        probabilities = np.where(chosen[:, None], one_hot, answers.probabilities)
        return answers.with_probabilities(probabilities)


@STAGES.register
class HardLabel(OutputStage):
    """Return only the top label, never probabilities (Tramèr et al. 2016, Sec. 7)."""

    name = "hard_label"
    honest_cost = "probabilities are never returned; labels are exact"
    paper = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016"
    )
    keeps_argmax = True
    keeps_simplex = True

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        k = answers.probabilities.shape[1]
        one_hot = np.eye(k)[answers.labels]
        return replace(answers, probabilities=one_hot, expose_probabilities=False)


@STAGES.register
class Normalize(OutputStage):
    """Divide each row by its sum so the answer is a probability vector again (OWASP lab)."""

    name = "normalize"
    needs_probabilities = True
    honest_cost = "none: rows sum to 1 again"
    paper = "OWASP ML05:2023 lab (response normalization)"
    keeps_argmax = True
    keeps_simplex = True

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        probabilities = answers.probabilities
        totals = probabilities.sum(axis=1, keepdims=True)
        k = probabilities.shape[1]
        uniform = np.full_like(probabilities, 1.0 / k)
        safe = np.divide(probabilities, totals, out=uniform, where=totals > 0)
        return answers.with_probabilities(safe)
