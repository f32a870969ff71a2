"""Pool-based active selection: ask about the candidates the copy is least sure of, spread out."""

from typing import Any, ClassVar

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.metrics.pairwise import euclidean_distances

from modeltheft.attacks.base import QueryHistory, Source, Strategy
from modeltheft.attacks.sources.public import PublicRows
from modeltheft.errors import ConfigError
from modeltheft.registry import Interval
from modeltheft.tasks import Task


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
    """Uncertainty plus k-center diversity over a candidate pool drawn from any source.

    ``pool_size`` candidates are drawn from ``source`` (all of a finite source's rows, if
    fewer). Until the loop has a working substitute, candidates are drawn at random. Then
    each batch keeps the ``shortlist`` × n candidates with the smallest margin and picks n of
    them by k-center greedy distance to everything already asked (in features standardised by
    the pool's spread, so no wide column dominates; digit pixels are left as they are).
    ``seed_rows`` of the attacker's own rows are asked first: the source's public rows when it
    has them (so a synthetic pool and its seeds are the same rows), else the task's
    attacker-public rows or ``seed_path``.
    """

    name: ClassVar[str] = "active"
    kind: ClassVar[str] = "selector"
    paper: ClassVar[str] = (
        "Pal et al., ActiveThief: Model Extraction Using Active Learning and Unannotated "
        "Public Data, AAAI 2020"
    )
    needs_model = True
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "pool_size": [Interval(int, 1, None)],
        "shortlist": [Interval(float, 1, None)],
        "seed_rows": [Interval(int, 0, None)],
    }

    def __init__(
        self,
        source: Source,
        pool_size: int = 5000,
        shortlist: float = 4,
        seed_rows: int = 0,
        seed_path: str | None = None,
    ) -> None:
        self.source = source
        self.pool_size = pool_size
        self.shortlist = shortlist
        self.seed_rows = seed_rows
        self.seed_path = seed_path

    @property
    def uses_public_data(self) -> bool:
        return self.source.uses_public_data or (self.seed_rows > 0 and self.seed_path is None)

    def _seeds(self) -> PublicRows:
        shared = getattr(self.source, "public", None)
        if isinstance(shared, PublicRows) and self.seed_path is None:
            return shared
        if getattr(self, "seeds_", None) is None:
            self.seeds_ = PublicRows(self.seed_rows, self.seed_path)
        return self.seeds_

    def check_task(self, task: Task) -> None:
        self.source.check_task(task, f"strategy {self.name!r} (pool {self.source.name!r})")
        if self.seed_rows:
            rows = PublicRows(path=self.seed_path).rows(task, None)
            if rows is not None and len(rows) < self.seed_rows:
                raise ConfigError(
                    f"strategy {self.name!r}: seed_rows={self.seed_rows} but task "
                    f"{task.name!r} has {len(rows)} attacker-public rows"
                )

    def setup(self, task: Task, budget: int) -> None:
        super().setup(task, budget)
        self.source.reset()
        self.seeds_ = None
        self.pool_ = None
        self.scale_ = None

    def _candidates(self, rng: np.random.Generator, task: Task) -> np.ndarray:
        if getattr(self, "pool_", None) is None or len(self.pool_) == 0:
            size = self.pool_size
            available = self.source.available(task)
            if available is not None:
                size = min(size, available)
            self.pool_ = self.source.draw(size, rng, task)
            spread = self.pool_.std(axis=0)
            self.scale_ = None if task.is_image else np.where(spread > 0, spread, 1.0)
        return self.pool_

    def propose(self, n: int, rng: np.random.Generator, history: QueryHistory) -> np.ndarray:
        self.validate_params()
        task = history.target
        out: list[np.ndarray] = []
        if history.n_sent == 0 and self.seed_rows:
            rows = self._seeds().rows(task, rng)
            seeds = rows[: self.seed_rows]  # type: ignore[index]
            out.append(seeds[:n])
            n -= len(out[0])
        while n > 0:
            pool = self._candidates(rng, task)
            take = min(n, len(pool))
            if history.model is None:
                chosen = rng.choice(len(pool), size=take, replace=False)
            else:
                uncertain = np.argsort(uncertainty(history.model, pool), kind="stable")
                short = uncertain[: max(take, int(self.shortlist * take))]
                asked = history.asked()
                scale = getattr(self, "scale_", None)
                if scale is not None:
                    chosen = short[k_center_greedy(pool[short] / scale, asked / scale, take)]
                else:
                    chosen = short[k_center_greedy(pool[short], asked, take)]
            out.append(pool[chosen])
            self.pool_ = np.delete(pool, chosen, axis=0)
            n -= take
        return np.concatenate(out) if out else np.empty((0, task.n_features))
