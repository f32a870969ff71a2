"""Stateless output stages: each maps an (n, k) probability array to another."""

from dataclasses import replace

import numpy as np

from modeltheft.defenses.base import Answers, DefenseContext, OutputStage
from modeltheft.errors import ConfigError


def _check_probability(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class GaussianNoise(OutputStage):
    """Add N(0, sigma) to every probability, then clip (the OWASP lab's output noise)."""

    name = "gaussian_noise"
    honest_cost = "high: noisy probabilities, and sigma 0.2 flips some labels"
    paper = "OWASP ML05:2023 lab; output perturbation as in Tramèr et al., USENIX Security 2016"

    def __init__(self, sigma: float = 0.2, clip_min: float = 0.01, clip_max: float = 0.99) -> None:
        if not isinstance(sigma, int | float) or isinstance(sigma, bool) or sigma < 0:
            raise ConfigError(f"sigma must be >= 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.clip_min = _check_probability("clip_min", clip_min)
        self.clip_max = _check_probability("clip_max", clip_max)
        if self.clip_min > self.clip_max:
            raise ConfigError(f"clip_min ({clip_min}) must be <= clip_max ({clip_max})")

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        noise = ctx.rng.normal(0.0, self.sigma, size=answers.probabilities.shape)
        noisy = np.clip(answers.probabilities + noise, self.clip_min, self.clip_max)
        return answers.with_probabilities(noisy)


class Rounding(OutputStage):
    """Round probabilities to a few decimals (precision reduction; Tramèr et al. 2016)."""

    name = "rounding"
    honest_cost = "low: coarser probabilities; ties can change the label"
    paper = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016"
    )

    def __init__(self, decimals: int = 1) -> None:
        if not isinstance(decimals, int) or isinstance(decimals, bool) or decimals < 0:
            raise ConfigError(f"decimals must be an integer >= 0, got {decimals!r}")
        self.decimals = decimals

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        return answers.with_probabilities(np.round(answers.probabilities, self.decimals))


class RandomHardLabel(OutputStage):
    """With probability p per row, answer a one-hot of the victim's own top class (OWASP lab)."""

    name = "random_hard_label"
    honest_cost = "low: some answers lose their probabilities (the label is the victim's)"
    paper = "OWASP ML05:2023 lab; label-only answers as in Tramèr et al. 2016"
    keeps_simplex = True

    def __init__(self, probability: float = 0.4) -> None:
        self.probability = _check_probability("probability", probability)

    def transform(self, answers: Answers, ctx: DefenseContext) -> Answers:
        n, k = answers.probabilities.shape
        chosen = ctx.rng.random(n) < self.probability
        one_hot = np.eye(k)[np.argmax(answers.original, axis=1)]
        probabilities = np.where(chosen[:, None], one_hot, answers.probabilities)
        return answers.with_probabilities(probabilities)


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


class Normalize(OutputStage):
    """Divide each row by its sum so the answer is a probability vector again (OWASP lab)."""

    name = "normalize"
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
