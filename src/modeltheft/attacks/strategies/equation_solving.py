"""Queries in general position for equation-solving extraction of softmax victims."""

import numpy as np

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.data import N_FEATURES


class EquationSolving(Strategy):
    """Uniform random points of [0, 1]^64, which are in general position with probability 1.

    Pair it with the ``equation-solver`` substitute and label mode ``"soft"``: 65 queries (d + 1)
    recover a softmax victim exactly from full-precision probabilities; extra queries let the
    solver check that the victim really is softmax-linear and its answers are exact.
    """

    name = "equation-solving"
    paper = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016"
    )

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        return rng.random((n, N_FEATURES))
