"""Uniform random pixels: the weakest baseline."""

import numpy as np

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.data import N_FEATURES


class UniformNoise(Strategy):
    """Each pixel uniform in [0, 1) (Tramèr et al. 2016 use random inputs as their baseline)."""

    name = "uniform"
    paper = (
        "Tramèr et al., Stealing Machine Learning Models via Prediction APIs, USENIX Security 2016"
    )

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        return rng.random((n, N_FEATURES))
