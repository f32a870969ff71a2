"""The report's matplotlib figures (no pyplot state), and their inline SVG and PNG forms."""

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from modeltheft.reporting.records import Sweep
from modeltheft.reporting.statistics import Stat, fidelity_curve

MARKERS = "os^vD<>Pp*hX"


def tex(text: str) -> str:
    """Text for matplotlib, where ``$`` would start mathtext."""
    return text.replace("$", r"\$")


def palette(names: Sequence[str]) -> dict[str, Any]:
    """A tab10 colour per name."""
    cmap = mpl.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def fidelity_figure(sweep: Sweep) -> Figure | None:
    """One panel per attack: mean fidelity against queries spent, a line per defense."""
    cells = sweep.cells()
    attacks = [a for a in sweep.attacks if any(key[1] == a for key in cells)]
    if not attacks:
        return None
    colors = palette(sweep.defenses)
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
            spent, stats = fidelity_curve(cells.get((defense, attack)) or [])
            if not spent:
                continue
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
        ax.set_title(tex(attack), fontsize=10)
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
    labels = [tex(d) for d in names] + ["a budget"]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(labels), 6),
        fontsize=8.5,
        frameon=False,
    )
    return fig


def _error(stat: Stat) -> list[list[float]]:
    mean = stat.mean if stat.mean is not None else 0.0  # callers keep points with means
    bounds = stat.bounds() or (mean, mean)
    return [[mean - bounds[0]], [bounds[1] - mean]]


def pareto_figure(
    sweep: Sweep, points: list[dict[str, Any]], budget: int, measured_on: str
) -> Figure | None:
    """Honest accuracy (x) against thief fidelity (y), 95 % CI error bars on both."""
    points = [p for p in points if p["honest"].mean is not None and p["fidelity"].mean is not None]
    if not points:
        return None
    colors = palette(sweep.defenses)
    attacks = [a for a in sweep.attacks if any(p["attack"] == a for p in points)]
    fig = Figure(figsize=(8.2, 4.8), layout="constrained")
    ax = fig.subplots()
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
            xerr=_error(p["honest"]),
            yerr=_error(p["fidelity"]),
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
    labels = ["defense"] + [tex(d) for d in defenses] + ["attack"] + [tex(a) for a in attacks]
    legend = ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    for text in (legend.get_texts()[0], legend.get_texts()[len(defenses) + 1]):
        text.set_fontweight("bold")
    ax.set_xlabel(
        f"honest client's accuracy through the API ({tex(measured_on)})"
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


def image_png(pixels: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """A row as a PNG of ``shape``, a hundred bytes or so for a digit.

    Values are taken as shares of [0, 1] (clipped). Grayscale images (H, W) are drawn with the
    ink dark (1 → black), as the lab's digits; colour images (H, W, 3) as they are.
    """
    values = np.clip(np.asarray(pixels, dtype=float).reshape(shape), 0, 1)
    if len(shape) == 2:
        image = Image.fromarray(((1.0 - values) * 255).round().astype(np.uint8), mode="L")
    else:
        if shape[2] == 1:
            values = np.repeat(values, 3, axis=2)
        image = Image.fromarray((values[:, :, :3] * 255).round().astype(np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def samples_figure(samples: dict[str, Any]) -> Figure | None:
    """The Markdown's copy of the sample images: a row per defense."""
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
        axes[i][0].set_ylabel(tex(row["defense"]), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("label given by the victim → by the stolen copy (red: they differ)", fontsize=9)
    return fig


def confusion_figure(panels: list[dict[str, Any]]) -> Figure | None:
    """A victim (rows) × stolen copy (columns) label-count heat map per defense.

    Each panel holds ``defense``, ``title``, ``classes`` and ``matrix`` (counts).
    """
    if not panels:
        return None
    size = max(len(p["classes"]) for p in panels)
    side = min(2.2 + 0.32 * size, 6.0)
    fig = Figure(figsize=(side * len(panels) + 0.6, side + 0.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        matrix = np.asarray(panel["matrix"], dtype=float)
        labels = [tex(str(c)) for c in panel["classes"]]
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(float(matrix.max()), 1.0))
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, fontsize=7, rotation=90 if size > 6 else 0)
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_xlabel("stolen copy's label", fontsize=8)
        ax.set_ylabel("victim's label", fontsize=8)
        ax.set_title(tex(panel["title"]), fontsize=9)
        if size <= 12:
            high = matrix.max() / 2
            for (i, j), value in np.ndenumerate(matrix):
                color = "white" if value > high else "#1d2330"
                ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=7, color=color)
    fig.suptitle(
        "victim's label against the stolen copy's (off the diagonal: they differ)", fontsize=9
    )
    return fig


def svg(fig: Figure, key: str, label: str) -> str:
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


def save_png(fig: Figure, path: Path) -> Path:
    """The figure as a PNG file (100 dpi, no software stamp)."""
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path
