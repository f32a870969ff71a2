"""Numbers of a report, pure functions of run records: means, 95 % intervals, Pareto points,
budget curves, detection delays, watermark evidence, per-class agreement.

Statistics are over a cell's runs (seeds): mean, sample standard deviation, and a 95 %
Student-t confidence interval of the mean (none for a single run).
"""

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from modeltheft.reporting.records import Run, Sweep

WATERMARK_ALPHA = 1e-6
"""A copy "carries the watermark" when its p-value is below this (the table's ``p < 1e-6``)."""


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and 95 % confidence half-width of some values."""

    n: int
    mean: float | None
    std: float | None
    ci: float | None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> "Stat":
        data = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not data:
            return cls(0, None, None, None)
        if len(data) == 1:
            return cls(1, data[0], None, None)
        from scipy.stats import t

        std = statistics.stdev(data)
        ci = float(t.ppf(0.975, len(data) - 1)) * std / math.sqrt(len(data))
        return cls(len(data), statistics.fmean(data), std, ci)

    def pm(self, digits: int = 3) -> str:
        """``0.512 ± 0.034`` (mean ± std), ``0.512`` or ``—``."""
        if self.mean is None:
            return "—"
        text = f"{self.mean:.{digits}f}"
        return text if self.std is None else f"{text} ± {self.std:.{digits}f}"

    def bounds(self, low: float = 0.0, high: float = 1.0) -> tuple[float, float] | None:
        """The 95 % confidence interval, clipped to ``[low, high]`` (a share's range)."""
        if self.mean is None or self.ci is None:
            return None
        return max(low, self.mean - self.ci), min(high, self.mean + self.ci)

    def interval(self, digits: int = 3) -> str:
        """``0.512 [0.470, 0.554]`` (mean and clipped 95 % CI), ``0.512`` or ``—``."""
        if self.mean is None:
            return "—"
        text = f"{self.mean:.{digits}f}"
        bounds = self.bounds()
        return (
            text if bounds is None else f"{text} [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
        )


def p_text(value: float | None) -> str:
    """A p-value: ``0.046``, ``3.2e-07`` or ``—``."""
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 07 s`` or ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def share(k: int, n: int) -> str:
    """``3/4 (75%)`` or ``—``."""
    return f"{k}/{n} ({k / n:.0%})" if n else "—"


def top_budget(runs: Sequence[Run]) -> int | None:
    """The largest budget among ``runs`` (None for no runs)."""
    return max((r.budget for r in runs), default=None)


def pareto_points(sweep: Sweep) -> tuple[int | None, list[dict[str, Any]]]:
    """Honest accuracy and fidelity (as :class:`Stat`) per defense × attack at the top budget."""
    top = top_budget(sweep.ok)
    if top is None:
        return None, []
    points = []
    for (defense, attack), runs in sweep.cells([r for r in sweep.ok if r.budget == top]).items():
        points.append(
            {
                "defense": defense,
                "attack": attack,
                "honest": Stat.of(r.metric("honest_accuracy") for r in runs),
                "fidelity": Stat.of(r.metric("fidelity") for r in runs),
            }
        )
    return top, points


def fidelity_curve(runs: Sequence[Run]) -> tuple[list[int], list[Stat]]:
    """Fidelity per number of queries spent, pooled over the runs' budget curves."""
    by_spent: dict[int, list[float]] = {}
    for run in runs:
        final = {"spent": run.budget, "fidelity": run.metric("fidelity")}
        for point in run.metrics.get("curve") or [final]:
            value = point.get("fidelity")
            if isinstance(value, int | float) and isinstance(point.get("spent"), int):
                by_spent.setdefault(point["spent"], []).append(float(value))
    spent = sorted(by_spent)
    return spent, [Stat.of(by_spent[s]) for s in spent]


def detection(runs: Sequence[Run], budgets: Sequence[int]) -> dict[str, Any] | None:
    """Thieves flagged (share, per budget), queries until the first alert, detectors.

    None when no run recorded detection (``flagged_after``).
    """
    known = [r for r in runs if "flagged_after" in r.metrics]
    if not known:
        return None
    flagged = [d for r in known if (d := r.metric("flagged_after")) is not None]
    by_budget = {}
    for budget in budgets:
        cell = [r for r in known if r.budget == budget]
        if cell:
            by_budget[budget] = (
                sum(r.metric("flagged_after") is not None for r in cell),
                len(cell),
            )
    return {
        "runs": len(known),
        "flagged": flagged,
        "by_budget": by_budget,
        "median": statistics.median(flagged) if flagged else None,
        "max": max(flagged) if flagged else None,
        "detectors": sorted({str(d) for r in known for d in r.metrics.get("detectors") or []}),
    }


def watermark(runs: Sequence[Run]) -> dict[str, Any] | None:
    """p-values of the copies and of the independent control model (None if not marked)."""
    cell = [r for r in runs if r.metric("watermark_p") is not None]
    if not cell:
        return None
    copies = [p for r in cell if (p := r.metric("watermark_p")) is not None]
    control = [p for r in cell if (p := r.metric("watermark_p_independent")) is not None]
    marks = [m for r in cell if (m := r.metric("watermarks")) is not None]
    return {
        "runs": len(cell),
        "marks": statistics.median(marks) if marks else None,
        "worst": max(copies),
        "median": statistics.median(copies),
        "carried": sum(p < WATERMARK_ALPHA for p in copies),
        "control": min(control) if control else None,
    }


def median_runs(sweep: Sweep, has: str) -> tuple[str, int, list[tuple[str, Run, int]]] | None:
    """For the first attack whose runs carry ``metrics[has]``, at its largest budget: each
    defense's run of median fidelity (the lower one of an even count), and of how many runs.
    """
    usable = [
        r
        for r in sweep.ok
        if isinstance(r.metrics.get(has), dict) and r.metric("fidelity") is not None
    ]
    if not usable:
        return None
    attack = next(a for a in sweep.attacks if any(r.attack == a for r in usable))
    top = max(r.budget for r in usable if r.attack == attack)
    chosen = []
    for defense in sweep.defenses:
        runs = sorted(
            (r for r in usable if (r.defense, r.attack, r.budget) == (defense, attack, top)),
            key=lambda r: (r.metric("fidelity"), r.seed_index),
        )
        if runs:
            chosen.append((defense, runs[(len(runs) - 1) // 2], len(runs)))
    return attack, top, chosen


def per_class(runs: Sequence[Run]) -> dict[str, Stat]:
    """Agreement with the victim per class label, over the runs that recorded it."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for label, agreement in run.per_class().items():
            values.setdefault(label, []).append(agreement)
    return {label: Stat.of(v) for label, v in values.items()}
