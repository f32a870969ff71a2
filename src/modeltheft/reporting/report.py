"""``modeltheft report``: a sweep's run folder as one self-contained HTML page, Markdown and CSV.

:func:`build_report` reads ``RUN_DIR/results.jsonl`` (the latest record of every run) and
writes, into the output folder (``RUN_DIR`` by default):

* ``report.html`` — one file, nothing to fetch: CSS inline, plots as inline SVG, digits as
  ``data:`` PNGs, and a Content-Security-Policy that forbids any network access and any
  script. Every string that comes from a spec or a record is escaped (jinja2 autoescaping;
  matplotlib escapes the text it writes into the SVGs).
* ``report.md`` — the same tables, with the plots as PNG files saved beside it.
* ``runs.csv`` — one row per run: ids, task fields flattened, metric scalars, seconds.

Statistics are over a cell's runs (seeds): mean, sample standard deviation, and a 95 %
Student-t confidence interval of the mean (none for a single run).
"""

import base64
import csv
import io
import json
import math
import re
import statistics
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from modeltheft.errors import ConfigError, ModelTheftError
from modeltheft.experiments.results import RESULTS

HTML, MARKDOWN, CSV = "report.html", "report.md", "runs.csv"
FIGURES = {
    "fidelity": "fidelity_vs_queries.png",
    "pareto": "pareto.png",
    "samples": "sample_digits.png",
}
LABELS = {
    "fidelity": "Fidelity against queries spent, one panel per attack, a line per defense",
    "pareto": "Honest accuracy against thief fidelity per defense and attack",
}
WATERMARK_ALPHA = 1e-6
"""A copy "carries the watermark" when its p-value is below this (the table's ``p < 1e-6``)."""

MARKERS = "os^vD<>Pp*hX"
CSV_TEXT_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Run:
    """One record, with the task fields the report groups by."""

    id: str
    status: str
    error: str | None
    sweep: str
    victim: str
    defense: str
    attack: str
    budget: int
    seed_index: int
    version: str
    seconds: float | None
    metrics: dict[str, Any]
    task: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def metric(self, name: str) -> float | None:
        """A scalar metric as a float, or None when it is missing."""
        value = self.metrics.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The latest record of every run in ``run_dir/results.jsonl``, in order of appearance.

    Read-only, unlike :class:`~modeltheft.experiments.results.ResultsStore` (which repairs a
    torn last line): a report may be built while a sweep still appends, so an unfinished
    last line is skipped, never cut.
    """
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a line still being written
    latest: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{path}:{number} is not a JSON record") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ConfigError(f"{path}:{number} has no run id")
        latest[str(record["id"])] = record
    return list(latest.values())


def _run(record: dict[str, Any], where: str) -> Run:
    task = record.get("task")
    try:
        if not isinstance(task, dict):
            raise TypeError("no task")
        seconds = (record.get("timings") or {}).get("seconds")
        return Run(
            id=str(record["id"]),
            status=str(record.get("status", "failed")),
            error=None if record.get("error") is None else str(record["error"]),
            sweep=str(task.get("sweep", "")),
            victim=str(task.get("victim", "")),
            defense=str(task["defense"]["name"]),
            attack=str(task["attack"]["name"]),
            budget=int(task["budget"]),
            seed_index=int(task.get("seed_index", 0)),
            version=str(record.get("version", "?")),
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
            metrics=record.get("metrics") or {},
            task=task,
        )
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"run {record.get('id')!r} in {where} is not a sweep record "
            "(it needs task.defense.name, task.attack.name and task.budget)"
        ) from None


# -------------------------------------------------------------------------- statistics


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


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({k / n:.0%})" if n else "—"


# ------------------------------------------------------------------------------ tables


@dataclass
class Table:
    """Headers and rows of text cells, rendered by both the HTML template and Markdown."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)
    """Indexes of right-aligned columns."""

    def __bool__(self) -> bool:
        return bool(self.rows)


@dataclass
class Report:
    """Everything the templates show, already formatted."""

    title: str
    overview: list[tuple[str, str]]
    spec_text: str | None
    fidelity_table: Table
    pareto_table: Table
    pareto_budget: int | None
    detection_table: Table
    detection_recorded: bool
    watermark_table: Table
    failed_table: Table
    samples: dict[str, Any] | None
    figures: dict[str, str] = field(default_factory=dict)
    """Inline SVG of each figure (HTML)."""
    notes: dict[str, str] = field(default_factory=dict)


class Sweep:
    """A run folder's records, grouped for the report."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        records = read_records(self.run_dir)
        if not records:
            raise ConfigError(f"no run records in {self.run_dir}")
        where = str(self.run_dir / RESULTS)
        self.runs = [_run(r, where) for r in records]
        self.ok = [r for r in self.runs if r.ok]
        self.failed = [r for r in self.runs if not r.ok]
        self.spec_text, order = self._spec()
        self.defenses = _ordered((r.defense for r in self.runs), order.get("defenses"))
        self.attacks = _ordered((r.attack for r in self.runs), order.get("attacks"))
        self.budgets = sorted({r.budget for r in self.runs})
        names = list(dict.fromkeys(r.sweep for r in self.runs if r.sweep))
        self.name = ", ".join(names) or order.get("name", [self.run_dir.name])[0]

    def _spec(self) -> tuple[str | None, dict[str, list[str]]]:
        """The copied spec's text and its defense and attack order (best effort)."""
        path = self.run_dir / "spec.toml"
        if not path.is_file():
            return None, {}
        try:
            text = path.read_text()
            data = tomllib.loads(text)
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None, {}
        order: dict[str, list[str]] = {"name": [str(data.get("name", self.run_dir.name))]}
        defenses = data.get("defenses", [])
        attacks = data.get("attacks", [])
        if isinstance(defenses, list):
            order["defenses"] = [
                Path(d).stem if isinstance(d, str) else str(d.get("name", ""))
                for d in defenses
                if isinstance(d, str | dict)
            ]
        if isinstance(attacks, list):
            order["attacks"] = [
                str(a.get("name", a.get("strategy", ""))) for a in attacks if isinstance(a, dict)
            ]
        return text, order

    def cells(self, runs: Sequence[Run] | None = None) -> dict[tuple[str, str], list[Run]]:
        """Runs per (defense, attack), in the spec's order."""
        grouped: dict[tuple[str, str], list[Run]] = {}
        for defense in self.defenses:
            for attack in self.attacks:
                chosen = [
                    r
                    for r in (self.ok if runs is None else runs)
                    if r.defense == defense and r.attack == attack
                ]
                if chosen:
                    grouped[(defense, attack)] = chosen
        return grouped


def _ordered(seen: Iterable[str], preferred: list[str] | None) -> list[str]:
    names = list(dict.fromkeys(seen))
    rank = {name: i for i, name in enumerate(preferred or [])}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def _overview(sweep: Sweep) -> list[tuple[str, str]]:
    seconds = [r.seconds for r in sweep.runs if r.seconds is not None]
    versions = sorted({r.version for r in sweep.runs})
    victims = list(dict.fromkeys(r.victim for r in sweep.runs if r.victim))
    seeds = len({r.seed_index for r in sweep.runs})
    rows = [
        ("sweep", sweep.name),
        ("run folder", sweep.run_dir.name or str(sweep.run_dir)),
        (
            "runs",
            f"{len(sweep.runs)}: {len(sweep.ok)} ok, {len(sweep.failed)} failed",
        ),
        ("victims", ", ".join(victims) or "—"),
        ("defenses", f"{len(sweep.defenses)}: " + ", ".join(sweep.defenses)),
        ("attacks", f"{len(sweep.attacks)}: " + ", ".join(sweep.attacks)),
        ("budgets (queries)", ", ".join(str(b) for b in sweep.budgets)),
        ("seeds per cell", str(seeds)),
        ("modeltheft version" + ("s" if len(versions) > 1 else ""), ", ".join(versions)),
        (
            "total run time",
            f"{_duration(sum(seconds))} (summed over {len(seconds)} run"
            + ("s)" if len(seconds) != 1 else ")")
            if seconds
            else "—",
        ),
    ]
    return rows


def _fidelity_table(sweep: Sweep) -> Table:
    table = Table(
        [
            "defense",
            "attack",
            "budget",
            "runs",
            "fidelity",
            "accuracy",
            "answered",
            "honest accuracy",
        ],
        numeric={2, 3, 4, 5, 6, 7},
    )
    for (defense, attack), runs in sweep.cells().items():
        for budget in sweep.budgets:
            cell = [r for r in runs if r.budget == budget]
            if not cell:
                continue
            answered = Stat.of(r.metric("answered") for r in cell)
            table.rows.append(
                [
                    defense,
                    attack,
                    str(budget),
                    str(len(cell)),
                    Stat.of(r.metric("fidelity") for r in cell).pm(),
                    Stat.of(r.metric("accuracy") for r in cell).pm(),
                    "—" if answered.mean is None else f"{answered.mean:.0f}",
                    Stat.of(r.metric("honest_accuracy") for r in cell).pm(),
                ]
            )
    return table


def _pareto_points(sweep: Sweep) -> tuple[int | None, list[dict[str, Any]]]:
    """Honest accuracy and fidelity per defense × attack at the largest budget."""
    budgets = [r.budget for r in sweep.ok]
    if not budgets:
        return None, []
    top = max(budgets)
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


def _pareto_table(points: list[dict[str, Any]]) -> Table:
    table = Table(
        ["defense", "attack", "runs", "honest accuracy [95 % CI]", "thief fidelity [95 % CI]"],
        numeric={2, 3, 4},
    )
    for p in points:
        table.rows.append(
            [
                p["defense"],
                p["attack"],
                str(p["fidelity"].n),
                p["honest"].interval(),
                p["fidelity"].interval(),
            ]
        )
    return table


def _detection_table(sweep: Sweep) -> tuple[Table, bool]:
    table = Table(
        [
            "defense",
            "attack",
            "thieves flagged",
            "by budget",
            "median queries until flagged",
            "max",
            "detectors",
        ],
        numeric={2, 4, 5},
    )
    recorded = False
    for (defense, attack), runs in sweep.cells().items():
        known = [r for r in runs if "flagged_after" in r.metrics]
        if not known:
            table.rows.append([defense, attack, "not recorded", "", "—", "—", "—"])
            continue
        recorded = True
        delays = [r.metric("flagged_after") for r in known]
        flagged = [d for d in delays if d is not None]
        by_budget = []
        if len(sweep.budgets) > 1:
            for budget in sweep.budgets:
                cell = [r for r in known if r.budget == budget]
                if cell:
                    hits = sum(r.metric("flagged_after") is not None for r in cell)
                    by_budget.append(f"{budget}: {hits}/{len(cell)}")
        detectors = sorted({str(d) for r in known for d in r.metrics.get("detectors") or []})
        table.rows.append(
            [
                defense,
                attack,
                _share(len(flagged), len(known)),
                " · ".join(by_budget),
                f"{statistics.median(flagged):.0f}" if flagged else "—",
                f"{max(flagged):.0f}" if flagged else "—",
                ", ".join(detectors) or "—",
            ]
        )
    if len(sweep.budgets) <= 1:
        table.headers.pop(3)
        for row in table.rows:
            row.pop(3)
        table.numeric = {2, 3, 4}
    return table, recorded


def _watermark_table(sweep: Sweep) -> Table:
    table = Table(
        [
            "defense",
            "attack",
            "budget",
            "runs",
            "marked answers",
            "copies: worst p",
            "median p",
            "p < 1e-6",
            "independent model: min p",
        ],
        numeric={2, 3, 4, 5, 6, 7, 8},
    )
    for (defense, attack), runs in sweep.cells().items():
        for budget in sweep.budgets:
            cell = [r for r in runs if r.budget == budget and r.metric("watermark_p") is not None]
            if not cell:
                continue
            copies = [r.metric("watermark_p") for r in cell]
            control = [p for r in cell if (p := r.metric("watermark_p_independent")) is not None]
            marks = [m for r in cell if (m := r.metric("watermarks")) is not None]
            table.rows.append(
                [
                    defense,
                    attack,
                    str(budget),
                    str(len(cell)),
                    f"{statistics.median(marks):.0f}" if marks else "—",
                    _p(max(copies)),
                    _p(statistics.median(copies)),
                    _share(sum(p < WATERMARK_ALPHA for p in copies), len(copies)),
                    _p(min(control)) if control else "—",
                ]
            )
    return table


def _failed_table(sweep: Sweep) -> Table:
    table = Table(["run", "defense", "attack", "budget", "seed", "error"], numeric={3, 4})
    for r in sweep.failed:
        table.rows.append(
            [r.id, r.defense, r.attack, str(r.budget), str(r.seed_index), r.error or r.status]
        )
    return table


# ----------------------------------------------------------------------- sample digits


def _digit_png(pixels: np.ndarray) -> bytes:
    """An 8×8 digit as a grayscale PNG (ink dark), a hundred bytes or so."""
    values = np.clip(1.0 - np.asarray(pixels, dtype=float).reshape(8, 8), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((values * 255).round().astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def _samples(sweep: Sweep) -> dict[str, Any] | None:
    """For the first attack at the largest budget: each defense's median-fidelity run."""
    with_samples = [
        r
        for r in sweep.ok
        if isinstance(r.metrics.get("samples"), dict) and r.metric("fidelity") is not None
    ]
    if not with_samples:
        return None
    attack = next(a for a in sweep.attacks if any(r.attack == a for r in with_samples))
    top = max(r.budget for r in with_samples if r.attack == attack)
    from modeltheft.data import lab_split

    images = lab_split().X_test
    rows = []
    for defense in sweep.defenses:
        runs = sorted(
            (r for r in with_samples if (r.defense, r.attack, r.budget) == (defense, attack, top)),
            key=lambda r: (r.metric("fidelity"), r.seed_index),
        )
        if not runs:
            continue
        run = runs[(len(runs) - 1) // 2]
        victim = list(run.metrics["samples"].get("victim") or [])
        stolen = list(run.metrics["samples"].get("stolen") or [])
        count = min(len(victim), len(stolen), len(images))
        digits = [
            {
                "png": _digit_png(images[k]),
                "victim": victim[k],
                "stolen": stolen[k],
                "agree": victim[k] == stolen[k],
            }
            for k in range(count)
        ]
        rows.append(
            {
                "defense": defense,
                "run": run.id,
                "seed": run.seed_index,
                "of": len(runs),
                "fidelity": f"{run.metric('fidelity'):.3f}",
                "agree": sum(d["agree"] for d in digits),
                "digits": digits,
            }
        )
    return {"attack": attack, "budget": top, "rows": rows}


# ----------------------------------------------------------------------------- figures


def _tex(text: str) -> str:
    """Text for matplotlib, where ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def _palette(names: Sequence[str]) -> dict[str, Any]:
    cmap = mpl.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def _fidelity_figure(sweep: Sweep) -> Figure | None:
    """One panel per attack: mean fidelity against queries spent, a line per defense."""
    cells = sweep.cells()
    attacks = [a for a in sweep.attacks if any(key[1] == a for key in cells)]
    if not attacks:
        return None
    colors = _palette(sweep.defenses)
    count = len(sweep.defenses)
    widths = {
        d: 1.2 + 1.6 * (count - 1 - i) / max(count - 1, 1) for i, d in enumerate(sweep.defenses)
    }
    ncols = min(3, len(attacks))
    nrows = math.ceil(len(attacks) / ncols)
    fig = Figure(figsize=(4.3 * ncols, 3.1 * nrows + 0.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    shown: dict[str, Line2D] = {}
    for ax, attack in zip(axes, attacks, strict=False):
        for budget in sweep.budgets:
            ax.axvline(budget, color="#999999", linestyle=":", linewidth=0.9, zorder=0)
        for defense in sweep.defenses:
            runs = cells.get((defense, attack))
            if not runs:
                continue
            by_spent: dict[int, list[float]] = {}
            for run in runs:
                final = {"spent": run.budget, "fidelity": run.metric("fidelity")}
                for point in run.metrics.get("curve") or [final]:
                    value = point.get("fidelity")
                    if isinstance(value, int | float) and isinstance(point.get("spent"), int):
                        by_spent.setdefault(point["spent"], []).append(float(value))
            if not by_spent:
                continue
            spent = sorted(by_spent)
            stats = [Stat.of(by_spent[s]) for s in spent]
            mean = np.array([s.mean for s in stats], dtype=float)
            half = np.array([s.ci if s.ci is not None else 0.0 for s in stats], dtype=float)
            # Later defenses draw thinner lines on top: equal curves stay visible.
            (line,) = ax.plot(
                spent,
                mean,
                color=colors[defense],
                marker="o",
                markersize=2.5,
                linewidth=widths[defense],
            )
            ax.fill_between(
                spent,
                np.clip(mean - half, 0, 1),
                np.clip(mean + half, 0, 1),
                color=colors[defense],
                alpha=0.18,
                linewidth=0,
            )
            shown.setdefault(defense, line)
        ax.set_title(_tex(attack), fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.25)
        ax.set_xlabel("queries spent", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[: len(attacks) : ncols]:
        ax.set_ylabel("fidelity (agreement with victim)", fontsize=9)
    for ax in axes[len(attacks) :]:
        ax.set_visible(False)
    if not shown:
        return None
    names = [d for d in sweep.defenses if d in shown]
    handles = [shown[d] for d in names]
    handles.append(Line2D([], [], color="#999999", linestyle=":", linewidth=0.9))
    labels = [_tex(d) for d in names] + ["a budget"]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 6),
        fontsize=8.5,
        frameon=False,
    )
    return fig


def _pareto_figure(sweep: Sweep, points: list[dict[str, Any]], budget: int) -> Figure | None:
    """Honest accuracy (x) against thief fidelity (y), 95 % CI error bars on both."""
    points = [p for p in points if p["honest"].mean is not None and p["fidelity"].mean is not None]
    if not points:
        return None
    colors = _palette(sweep.defenses)
    attacks = [a for a in sweep.attacks if any(p["attack"] == a for p in points)]
    fig = Figure(figsize=(8.2, 4.8), layout="constrained")
    ax = fig.subplots()

    def error(stat: Stat) -> list[list[float]]:
        bounds = stat.bounds() or (stat.mean, stat.mean)
        return [[stat.mean - bounds[0]], [bounds[1] - stat.mean]]

    # Defenses with the same honest accuracy would hide each other: spread them a little.
    shift = []
    for p in points:
        twins = list(
            dict.fromkeys(
                q["defense"] for q in points if abs(q["honest"].mean - p["honest"].mean) < 1e-3
            )
        )
        shift.append(0.006 * (twins.index(p["defense"]) - (len(twins) - 1) / 2))
    for p, dx in zip(points, shift, strict=True):
        ax.errorbar(
            p["honest"].mean + dx,
            p["fidelity"].mean,
            xerr=error(p["honest"]),
            yerr=error(p["fidelity"]),
            color=colors[p["defense"]],
            marker=MARKERS[attacks.index(p["attack"]) % len(MARKERS)],
            markersize=6.5,
            markeredgecolor="black",
            markeredgewidth=0.4,
            elinewidth=0.9,
            capsize=2.5,
            alpha=0.9,
            linestyle="none",
        )
    defenses = [d for d in sweep.defenses if any(p["defense"] == d for p in points)]
    header = Line2D([], [], linestyle="", marker="")
    handles = [header] + [
        Line2D([], [], color=colors[d], marker="o", linestyle="") for d in defenses
    ]
    handles += [header] + [
        Line2D([], [], color="grey", marker=MARKERS[i % len(MARKERS)], linestyle="")
        for i, _ in enumerate(attacks)
    ]
    labels = ["defense"] + [_tex(d) for d in defenses] + ["attack"] + [_tex(a) for a in attacks]
    legend = ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    for text in (legend.get_texts()[0], legend.get_texts()[len(defenses) + 1]):
        text.set_fontweight("bold")
    ax.set_xlabel(
        "honest client's accuracy through the API (540 test digits)"
        + ("; equal values spread apart" if any(shift) else "")
    )
    ax.set_ylabel(f"thief's fidelity after {budget} queries")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.25)
    ax.set_title(
        "the owner's goal: bottom right (honest clients served, the thief's copy poor)",
        fontsize=9,
        color="#444444",
    )
    return fig


def _samples_figure(samples: dict[str, Any]) -> Figure | None:
    """The Markdown's copy of the sample digits: a row per defense."""
    rows = samples["rows"]
    if not rows:
        return None
    count = max(len(r["digits"]) for r in rows)
    fig = Figure(figsize=(0.62 * count + 1.6, 1.0 * len(rows) + 0.3), layout="constrained")
    axes = fig.subplots(len(rows), count, squeeze=False)
    for i, row in enumerate(rows):
        for k, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(row["digits"]):
                ax.set_visible(False)
                continue
            digit = row["digits"][k]
            image = np.asarray(Image.open(io.BytesIO(digit["png"])))
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_title(
                f"{digit['victim']}→{digit['stolen']}",
                fontsize=8,
                color="#2e7d32" if digit["agree"] else "#c62828",
                fontweight="normal" if digit["agree"] else "bold",
            )
            for spine in ax.spines.values():
                spine.set_color("#c62828" if not digit["agree"] else "#bbbbbb")
                spine.set_linewidth(1.8 if not digit["agree"] else 0.6)
        axes[i][0].set_ylabel(_tex(row["defense"]), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("label given by the victim → by the stolen copy (red: they differ)", fontsize=9)
    return fig


def _svg(fig: Figure, key: str, label: str) -> str:
    """A figure as inline SVG: no XML header, no namespaces, ids prefixed with ``key``."""
    buffer = io.StringIO()
    with mpl.rc_context({"svg.fonttype": "none", "svg.hashsalt": key}):
        fig.savefig(
            buffer,
            format="svg",
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)
    text = re.sub(r"<style[^>]*>.*?</style>", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = text.replace("xlink:href=", "href=")
    text = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{key}-\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{key}-\1"', text)
    label = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace("<svg", f'<svg role="img" aria-label="{label}"', 1)


def _png(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path


# ---------------------------------------------------------------------------- renderers


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("modeltheft.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


def _md_text(text: object) -> str:
    """A Markdown table cell or heading: no raw HTML, no pipes, no emphasis, no links."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = out.replace("|", "&#124;").replace("\n", " ").replace("\r", " ")
    return re.sub(r"([\\`*_\[\]#!])", r"\\\1", out)


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_text(h) for h in table.headers) + " |",
        "|"
        + "|".join("---:" if i in table.numeric else "---" for i in range(len(table.headers)))
        + "|",
    ]
    lines += ["| " + " | ".join(_md_text(c) or " " for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _markdown(report: Report, figures: dict[str, str]) -> str:
    out = [f"# {_md_text(report.title)}", "", "## Overview", ""]
    out += [f"- **{_md_text(k)}**: {_md_text(v)}" for k, v in report.overview]
    out += ["", "## Fidelity against queries", "", _md_text(report.notes["fidelity"]), ""]
    if "fidelity" in figures:
        out += [f"![fidelity against queries per attack]({figures['fidelity']})", ""]
    out += ["## Fidelity and accuracy per budget", "", _md_text(report.notes["table"]), ""]
    out += [_md_table(report.fidelity_table) if report.fidelity_table else "No successful runs."]
    out += ["", "## Defenses: honest accuracy against thief fidelity", ""]
    out += [_md_text(report.notes["pareto"]), ""]
    if "pareto" in figures:
        out += [f"![Pareto plot]({figures['pareto']})", ""]
    out += [_md_table(report.pareto_table) if report.pareto_table else "No successful runs."]
    out += ["", "## Detection delays", "", _md_text(report.notes["detection"]), ""]
    out += [_md_table(report.detection_table) if report.detection_table else "No successful runs."]
    out += ["", "## Watermark evidence", "", _md_text(report.notes["watermark"]), ""]
    if report.watermark_table:
        out += [_md_table(report.watermark_table)]
    out += ["", "## Sample digits", "", _md_text(report.notes["samples"]), ""]
    if "samples" in figures:
        out += [f"![sample digits]({figures['samples']})", ""]
    if report.samples:
        table = Table(["defense", "run", "seed", "fidelity", "agreement on these digits"])
        for row in report.samples["rows"]:
            agree = f"{row['agree']}/{len(row['digits'])}"
            table.rows.append(
                [row["defense"], row["run"], str(row["seed"]), row["fidelity"], agree]
            )
        out += [_md_table(table)]
    out += ["", "## Failed runs", ""]
    out += [_md_table(report.failed_table) if report.failed_table else "None."]
    return "\n".join(out) + "\n"


def _csv_text(value: Any) -> Any:
    """Spreadsheet-safe text: a leading ``=``, ``+``, ``-`` or ``@`` is quoted with ``'``."""
    if isinstance(value, str) and value.startswith(CSV_TEXT_PREFIXES):
        return "'" + value
    return value


CSV_METRICS = (
    "fidelity",
    "accuracy",
    "answered",
    "refused",
    "honest_accuracy",
    "honest_refused",
    "flagged_after",
    "watermarks",
    "watermark_p",
    "watermark_p_independent",
)


def _csv_rows(sweep: Sweep) -> list[dict[str, Any]]:
    rows = []
    for r in sweep.runs:
        attack = r.task.get("attack") or {}
        defense = r.task.get("defense") or {}
        row: dict[str, Any] = {
            "id": r.id,
            "status": r.status,
            "error": _csv_text(r.error or ""),
            "sweep": _csv_text(r.sweep),
            "victim": _csv_text(r.victim),
            "defense": _csv_text(r.defense),
            "defense_config": _csv_text(json.dumps(defense.get("config", {}), sort_keys=True)),
            "attack": _csv_text(r.attack),
            "strategy": _csv_text(str(attack.get("strategy", ""))),
            "params": _csv_text(json.dumps(attack.get("params", {}), sort_keys=True)),
            "labels": _csv_text(str(attack.get("labels", ""))),
            "top_k": attack.get("top_k", ""),
            "substitute": _csv_text(str(attack.get("substitute", ""))),
            "batch_size": attack.get("batch_size", ""),
            "budget": r.budget,
            "seed_index": r.seed_index,
            "root_seed": r.task.get("root_seed", ""),
            "honest": r.task.get("honest", ""),
            "version": _csv_text(r.version),
        }
        for name in CSV_METRICS:
            value = r.metrics.get(name)
            row[name] = "" if value is None or isinstance(value, dict | list) else value
        row["detectors"] = _csv_text(";".join(str(d) for d in r.metrics.get("detectors") or []))
        row["seconds"] = "" if r.seconds is None else round(r.seconds, 4)
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------------- main


NOTES = {
    "fidelity": (
        "Mean fidelity (agreement of the stolen copy with the victim on the 540 test digits) "
        "after each number of queries, pooled over the runs' budget curves; the band is the "
        "95 % confidence interval of the mean over seeds. Dotted lines mark the sweep's budgets."
    ),
    "table": "Mean ± standard deviation over seeds, at each run's budget.",
    "pareto": (
        "Each point is a defense × attack at the largest budget, with 95 % confidence "
        "intervals over seeds. A defense is good when it keeps honest accuracy high "
        "(right) and the thief's fidelity low (down)."
    ),
    "detection": (
        "Share of the thief's runs in which a detector raised an alert, and the queries the "
        "thief had sent by the first alert (over the flagged runs)."
    ),
    "watermark": (
        "p-value that a model agrees this often with the watermarked (deliberately wrong) "
        "answers by chance: small for a stolen copy is evidence of theft; the independent "
        "model, trained on real digits, is the control and should not be small."
    ),
}


def build_report(run_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` (+ its PNG plots) and ``runs.csv`` for ``run_dir``.

    Returns the written paths by kind (``html``, ``md``, ``csv`` and one per PNG figure).
    Raises :class:`ConfigError` when ``run_dir`` is missing or holds no run records.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    sweep = Sweep(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    budget, points = _pareto_points(sweep)
    detection, recorded = _detection_table(sweep)
    samples = _samples(sweep)
    notes = dict(NOTES)
    notes["samples"] = (
        f"The first {max((len(r['digits']) for r in samples['rows']), default=0)} test digits, "
        f"labelled by the victim and by a stolen copy (attack “{samples['attack']}”, "
        f"{samples['budget']} queries): for each defense, its run of median fidelity. "
        "Red digits are those the copy gets different from the victim."
        if samples
        else "No run recorded sample labels."
    )
    if sweep.ok and not recorded:
        notes["detection"] += " These runs recorded no detection data."
    watermarks = _watermark_table(sweep)
    if not watermarks:
        notes["watermark"] = "No defense in these runs watermarked its answers."
    report = Report(
        title=f"Model-theft sweep “{sweep.name}”",
        overview=_overview(sweep),
        spec_text=sweep.spec_text,
        fidelity_table=_fidelity_table(sweep),
        pareto_table=_pareto_table(points),
        pareto_budget=budget,
        detection_table=detection,
        detection_recorded=recorded,
        watermark_table=watermarks,
        failed_table=_failed_table(sweep),
        samples=samples,
        notes=notes,
    )

    paths: dict[str, Path] = {}
    md_figures: dict[str, str] = {}
    builders: dict[str, Callable[[], Figure | None]] = {
        "fidelity": lambda: _fidelity_figure(sweep),
        "pareto": lambda: _pareto_figure(sweep, points, budget) if budget else None,
        "samples": lambda: _samples_figure(samples) if samples else None,
    }
    for key, build in builders.items():
        fig = build()
        if fig is None:
            continue
        if key != "samples":  # the HTML draws the digits itself
            report.figures[key] = _svg(fig, key, LABELS[key])
        paths[key] = _png(fig, out / FIGURES[key])
        md_figures[key] = FIGURES[key]

    try:
        html = _environment().get_template("report.html.j2").render(report=report)
    except jinja2.TemplateError as exc:  # a packaging problem, not the user's
        raise ModelTheftError(f"cannot render the report template: {exc}") from exc
    paths["html"] = out / HTML
    paths["html"].write_text(html, encoding="utf-8")
    paths["md"] = out / MARKDOWN
    paths["md"].write_text(_markdown(report, md_figures), encoding="utf-8")
    paths["csv"] = _write_csv(out / CSV, _csv_rows(sweep))
    return {k: paths[k] for k in ("html", "md", "csv", *FIGURES) if k in paths}
