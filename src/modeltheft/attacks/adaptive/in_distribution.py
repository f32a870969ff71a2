"""Queries that look like the attacker's own rows: its rows first, then near renders and blends.

A thief that has read the defense knows that out-of-distribution queries are misinformed and
counted. So it asks its own (public) rows first, then rendered rows kept only when they are
among the ``keep`` fraction closest to those rows, and blends ``λ·render + (1−λ)·nearest own
row``. On 8×8 digit tasks the renders are :class:`RenderedDigits`; on other tasks they are
drawn from a Gaussian fit to the own rows (:class:`Synthetic`).
"""

from typing import Any, ClassVar

import numpy as np

from modeltheft.attacks.base import DIGIT_IMAGE, Source, Strategy
from modeltheft.attacks.recipes import recipe
from modeltheft.attacks.selectors import SELECTORS
from modeltheft.attacks.sources import SOURCES
from modeltheft.attacks.sources.public import _PUBLIC_CONSTRAINTS, Synthetic, _AttackerRows
from modeltheft.attacks.sources.rendered_digits import RenderedDigits
from modeltheft.errors import ConfigError
from modeltheft.registry import InstanceOf, Interval
from modeltheft.tasks import Task

PAPER = (
    "Tramèr et al., On Adaptive Attacks to Adversarial Example Defenses, NeurIPS 2020 "
    "(queries shaped to pass an out-of-distribution gate)"
)
CALIBRATION = 400
"""Renders drawn once to set the distance threshold of the ``keep`` fraction."""


def _is_digits(task: Task) -> bool:
    return task.image_shape is not None and tuple(task.image_shape[:2]) == DIGIT_IMAGE


def nearest(rows: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``X``: the L2 distance to the nearest of ``rows`` and its index."""
    squared = (X**2).sum(axis=1)[:, None] + (rows**2).sum(axis=1)[None, :] - 2.0 * X @ rows.T
    index = np.argmin(squared, axis=1)
    return np.sqrt(np.maximum(squared[np.arange(len(X)), index], 0.0)), index


@SOURCES.register
class InDistribution(_AttackerRows):
    """The attacker's ``n_rows`` own rows, then renders near them and blends with them.

    After the own rows (each once, in an rng order), each row is, with probability
    ``blend_share``, a blend ``λ·render + (1−λ)·nearest own row`` with ``λ`` uniform in
    ``[blend_low, blend_high]``, and otherwise a render whose distance to the nearest own row
    is below the ``keep`` quantile of such distances (set once on 400 renders). Digits are
    rounded to the optdigits grid (multiples of 1/16). ``renders`` (an array of rows) replaces
    drawing renders on the fly, for benchmarks that reuse one pool across runs.
    """

    name: ClassVar[str] = "in-distribution"
    paper: ClassVar[str] = PAPER
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **_PUBLIC_CONSTRAINTS,
        "keep": [Interval(float, 0, 1, closed="right")],
        "blend_share": [Interval(float, 0, 1)],
        "blend_low": [Interval(float, 0, 1)],
        "blend_high": [Interval(float, 0, 1)],
        "renders": [None, InstanceOf(np.ndarray, "an array of rendered rows")],
    }

    def __init__(
        self,
        n_rows: int | None = 20,
        path: str | None = None,
        keep: float = 0.25,
        blend_share: float = 0.5,
        blend_low: float = 0.3,
        blend_high: float = 0.7,
        renders: np.ndarray | None = None,
    ) -> None:
        self.n_rows = n_rows
        self.path = path
        self.keep = keep
        self.blend_share = blend_share
        self.blend_low = blend_low
        self.blend_high = blend_high
        self.renders = renders

    def reset(self) -> None:
        super().reset()
        self.order_: np.ndarray | None = None
        self.threshold_: float | None = None
        self.pool_: list[np.ndarray] = []
        self.used_ = 0

    def check_task(self, task: Task, who: str) -> None:
        super().check_task(task, who)
        if self.blend_low > self.blend_high:
            raise ConfigError(
                f"{who}: blend_low ({self.blend_low}) must not exceed blend_high "
                f"({self.blend_high})"
            )

    def _render(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        """``n`` fresh renders (from ``renders`` while it lasts)."""
        if self.renders is not None and self.used_ + n <= len(self.renders):
            out = np.asarray(self.renders[self.used_ : self.used_ + n], dtype=float)
            self.used_ += n
            return out
        if _is_digits(task):
            return RenderedDigits().render(n, rng)[0]
        synthetic = Synthetic()
        synthetic.public.rows_ = self._rows(task, rng)
        return synthetic.draw(n, rng, task)

    def _near(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        """``n`` renders within the ``keep`` quantile of distance to the own rows."""
        own = self._rows(task, rng)
        if self.threshold_ is None:
            calibration = self._render(CALIBRATION, rng, task)
            distances, _ = nearest(own, calibration)
            self.threshold_ = float(np.quantile(distances, self.keep))
            self.pool_ += list(calibration[distances <= self.threshold_])
        while len(self.pool_) < n:
            batch = self._render(max(4 * n, 64), rng, task)
            distances, _ = nearest(own, batch)
            self.pool_ += list(batch[distances <= self.threshold_])
        out, self.pool_ = np.array(self.pool_[:n]), self.pool_[n:]
        return out

    def draw(self, n: int, rng: np.random.Generator, task: Task) -> np.ndarray:
        if not hasattr(self, "pool_"):
            self.reset()
        own = self._rows(task, rng)
        order = getattr(self, "order_", None)
        if order is None:
            order = self.order_ = rng.permutation(len(own))
        first = own[order[:n]]
        self.order_ = order[len(first) :]
        rest = n - len(first)
        if rest == 0:
            return np.array(first)
        blend = rng.random(rest) < self.blend_share
        out = np.empty((rest, task.n_features))
        if (~blend).any():
            out[~blend] = self._near(int((~blend).sum()), rng, task)
        if blend.any():
            renders = self._render(int(blend.sum()), rng, task)
            _, index = nearest(own, renders)
            lam = rng.uniform(self.blend_low, self.blend_high, size=(len(renders), 1))
            out[blend] = lam * renders + (1.0 - lam) * own[index]
        if _is_digits(task):
            out = np.round(out * 16.0) / 16.0
        return np.vstack([first, np.clip(out, task.lower, task.upper)])


@recipe("in-distribution", PAPER)
def in_distribution(
    n_rows: int | None = 20,
    path: str | None = None,
    keep: float = 0.25,
    blend_share: float = 0.5,
    blend_low: float = 0.3,
    blend_high: float = 0.7,
    renders: np.ndarray | None = None,
) -> Strategy:
    """The attacker's own rows, then renders near them and blends with them."""
    params = {"n_rows": n_rows, "path": path, "keep": keep, "blend_share": blend_share}
    params |= {"blend_low": blend_low, "blend_high": blend_high, "renders": renders}
    source: Source = SOURCES.build("in-distribution", params)
    return SELECTORS.build("random", {"source": source})
