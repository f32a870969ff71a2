"""The demo's figures, drawn with matplotlib's Agg backend (no display needed).

Axis texts name what was measured on (``measured_on``): the defaults are the digits lab's
wording; other tasks pass their own (``"the 54 evaluation rows"``).
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from modeltheft.evaluation.results import ScenarioResult

LABELS = {
    "no_defense": "Stolen copy\n(no defense)",
    "lab_defenses": "Stolen copy\n(lab defenses)",
}
COLORS = ["#2e7d32", "#c62828", "#ef6c00", "#6a1b9a"]


def _label(scenario: ScenarioResult) -> str:
    return LABELS.get(scenario.name, scenario.name)


def _annotate(ax: plt.Axes, bars, fmt: str) -> None:
    for bar in bars:
        ax.annotate(
            fmt.format(bar.get_height()),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontweight="bold",
        )


def accuracy_plot(
    victim_accuracy: float,
    scenarios: list[ScenarioResult],
    path: Path,
    measured_on: str = "the 540 test digits",
) -> Path:
    """Bars of victim and stolen accuracies (with ± std over repeats)."""
    names = ["Victim\n(proprietary)"] + [_label(s) for s in scenarios]
    values = [victim_accuracy] + [s.stolen_accuracy for s in scenarios]
    errors = [0.0] + [s.stolen_accuracy_std or 0.0 for s in scenarios]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bars = ax.bar(names, values, yerr=errors, capsize=6, color=COLORS[: len(values)], alpha=0.85)
    _annotate(ax, bars, "{:.3f}")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"Accuracy on {measured_on}")
    ax.set_title("Model theft: accuracy of the victim and of its stolen copies")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def query_success_plot(scenarios: list[ScenarioResult], path: Path) -> Path:
    """Bars of the fraction of the attacker's queries that were answered."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bars = ax.bar(
        [_label(s) for s in scenarios],
        [100 * s.query_success_rate for s in scenarios],
        color=COLORS[1 : len(scenarios) + 1],
        alpha=0.85,
    )
    _annotate(ax, bars, "{:.1f}%")
    ax.set_ylim(0, 110)
    ax.set_ylabel("Queries answered (%)")
    ax.set_title(f"Attacker's query success ({scenarios[0].budget} queries sent)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def predictions_plot(
    images: np.ndarray,
    truth: np.ndarray,
    columns: dict[str, np.ndarray],
    path: Path,
    image_shape: tuple[int, ...] | None = None,
    what: str = "Test digits",
) -> Path:
    """A 3x4 grid of images, each titled with the true label and every model's prediction.

    ``image_shape`` is the task's (H, W[, C]); by default a square grayscale image.

    A model's label is shown in red where it differs from the true one.
    """
    side = math.isqrt(images.shape[1])
    shape = tuple(image_shape) if image_shape else (side, side)
    fig, axes = plt.subplots(3, 4, figsize=(10, 11))
    for k, ax in enumerate(axes.flat):
        ax.imshow(np.clip(images[k].reshape(shape), 0, 1), cmap="gray_r", vmin=0, vmax=1)
        lines = [(f"true {truth[k]}", "black")] + [
            (f"{name}: {predicted[k]}", "#c62828" if predicted[k] != truth[k] else "#2e7d32")
            for name, predicted in columns.items()
        ]
        for row, (text, color) in enumerate(lines):
            ax.text(
                0.5,
                1.02 + 0.085 * (len(lines) - 1 - row),
                text,
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                fontsize=9,
                color=color,
                fontweight="bold" if row == 0 else "normal",
            )
        ax.axis("off")
    fig.suptitle(f"{what}: victim, stolen copy, and copy stolen under the lab's defenses")
    fig.subplots_adjust(top=0.86, bottom=0.02, left=0.02, right=0.98, hspace=0.55, wspace=0.1)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def budget_curve_plot(
    rows: list[dict[str, float | int | None]],
    path: Path,
    title: str,
    measured_on: str = "test digits",
) -> Path:
    """Fidelity and accuracy of the stolen copy against queries spent."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    spent = [r["spent"] for r in rows]
    for key, color in (("fidelity", COLORS[1]), ("accuracy", COLORS[0])):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            points = [(s, v) for s, v in zip(spent, values, strict=True) if v is not None]
            ax.plot(*zip(*points, strict=True), marker="o", color=color, label=key)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("queries spent")
    ax.set_ylabel(f"agreement with the victim / accuracy on {measured_on}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_plot(
    points: list[dict[str, object]],
    path: Path,
    title: str,
    measured_on: str = "540 test digits",
) -> Path:
    """Honest accuracy (x) against thief fidelity (y): one point per defense × attack.

    ``points`` hold ``defense``, ``attack``, ``honest_accuracy`` and ``fidelity``. Up and to
    the right is bad for the owner (the thief copies well); the goal is down and to the right.
    """
    defenses = list(dict.fromkeys(str(p["defense"]) for p in points))
    attacks = list(dict.fromkeys(str(p["attack"]) for p in points))
    markers = "os^vD<>Pp*hX"
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    # Defenses with the same honest accuracy would hide each other: spread them a little.
    accuracy = {d: float(p["honest_accuracy"]) for p in points for d in [str(p["defense"])]}  # type: ignore[arg-type]
    twins = {d: [e for e in defenses if abs(accuracy[e] - accuracy[d]) < 1e-3] for d in defenses}
    shift = {d: 0.006 * (twins[d].index(d) - (len(twins[d]) - 1) / 2) for d in defenses}
    for p in points:
        ax.scatter(
            float(p["honest_accuracy"]) + shift[str(p["defense"])],  # type: ignore[arg-type]
            float(p["fidelity"]),  # type: ignore[arg-type]
            color=palette(defenses.index(str(p["defense"])) % 10),
            marker=markers[attacks.index(str(p["attack"])) % len(markers)],
            s=46,
            alpha=0.85,
            edgecolors="black",
            linewidths=0.4,
        )
    handles = [
        plt.Line2D([], [], color=palette(i % 10), marker="o", linestyle="", label=name)
        for i, name in enumerate(defenses)
    ]
    handles += [
        plt.Line2D([], [], color="grey", marker=markers[i % len(markers)], linestyle="", label=a)
        for i, a in enumerate(attacks)
    ]
    ax.legend(handles=handles, fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel(
        f"honest client's accuracy through the API ({measured_on}; equal values spread apart)"
    )
    ax.set_ylabel("thief's fidelity (agreement with the victim)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
