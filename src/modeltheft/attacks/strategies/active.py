"""Pool-based active selection: ask about the candidates the copy is least sure of, spread out."""

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.metrics.pairwise import euclidean_distances

from modeltheft.attacks.strategies.base import QueryHistory, Strategy
from modeltheft.data import attacker_digits
from modeltheft.errors import ConfigError


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (small = uncertain)."""
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def uncertainty(model: ClassifierMixin, X: np.ndarray) -> np.ndarray:
    """Margin of the model's top two scores (probabilities, else decision values)."""
    if hasattr(model, "predict_proba"):
        return margins(model.predict_proba(X))
    scores = model.decision_function(X)
    return margins(scores if scores.ndim == 2 else np.stack([-scores, scores], axis=1))


def k_center_greedy(candidates: np.ndarray, centers: np.ndarray, n: int) -> list[int]:
    """Pick ``n`` candidate indices, each the farthest from the centers chosen so far."""
    if len(centers):
        distance = euclidean_distances(candidates, centers, squared=True).min(axis=1)
    else:
        distance = np.full(len(candidates), np.inf)
    picked: list[int] = []
    for _ in range(min(n, len(candidates))):
        index = int(np.argmax(distance))
        picked.append(index)
        distance = np.minimum(distance, ((candidates - candidates[index]) ** 2).sum(1))
        distance[index] = -1.0
    return picked


class ActiveSelection(Strategy):
    """Uncertainty plus k-center diversity over a candidate pool (ActiveThief).

    The pool comes from another strategy (``pool``, default ``rendered-digits``). Until the
    loop has a working substitute, candidates are drawn at random. Then each batch keeps the
    ``shortlist`` × n candidates with the smallest margin and picks n of them by k-center
    greedy distance to everything already asked. ``seed_digits`` real attacker-owned digits
    (disjoint from the victim's data) are asked first.
    """

    name = "active"
    paper = (
        "Pal et al., ActiveThief: Model Extraction Using Active Learning and Unannotated "
        "Public Data, AAAI 2020"
    )
    needs_model = True

    def __init__(
        self,
        pool: str = "rendered-digits",
        pool_size: int = 5000,
        shortlist: int = 4,
        seed_digits: int = 0,
    ) -> None:
        self.pool = pool
        self.pool_size = pool_size
        self.shortlist = shortlist
        self.seed_digits = seed_digits
        self._check()  # a bad parameter fails before any query is paid for

    def _check(self) -> None:
        from modeltheft.attacks.strategies import STRATEGIES

        if self.pool == self.name:
            raise ConfigError("the active strategy cannot draw its pool from itself")
        if self.pool not in STRATEGIES:
            known = ", ".join(sorted(STRATEGIES))
            raise ConfigError(f"unknown pool strategy {self.pool!r}; choose one of {known}")
        if not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise ConfigError(f"pool_size must be an integer >= 1, got {self.pool_size!r}")
        if not isinstance(self.shortlist, int | float) or self.shortlist < 1:
            raise ConfigError(f"shortlist must be >= 1, got {self.shortlist!r}")
        if not isinstance(self.seed_digits, int) or self.seed_digits < 0:
            raise ConfigError(f"seed_digits must be an integer >= 0, got {self.seed_digits!r}")

    def _candidates(self, rng: np.random.Generator) -> np.ndarray:
        from modeltheft.attacks.strategies import make_strategy

        if getattr(self, "pool_", None) is None or len(self.pool_) == 0:
            base = make_strategy(self.pool)
            self.pool_ = base.propose(self.pool_size, rng, QueryHistory())
        return self.pool_

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        self._check()
        out: list[np.ndarray] = []
        if history.n_sent == 0 and self.seed_digits:
            seeds, _ = attacker_digits(self.seed_digits, rng)
            out.append(seeds[:n])
            n -= len(out[0])
        while n > 0:
            pool = self._candidates(rng)
            take = min(n, len(pool))
            if history.model is None:
                chosen = rng.choice(len(pool), size=take, replace=False)
            else:
                uncertain = np.argsort(uncertainty(history.model, pool), kind="stable")
                short = uncertain[: max(take, int(self.shortlist * take))]
                asked = np.concatenate(history.X) if history.X else np.empty((0, pool.shape[1]))
                chosen = short[k_center_greedy(pool[short], asked, take)]
            out.append(pool[chosen])
            self.pool_ = np.delete(pool, chosen, axis=0)
            n -= take
        return np.concatenate(out) if out else np.empty((0, 64))
