"""Figures of a copy's agreement for non-image tasks (images get sample pictures instead)."""

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def confusion_plot(agreements: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """One confusion matrix per copy (rows: the reference's class, columns: the copy's),
    from :func:`modeltheft.measure.agreement` results, titled with per-class agreement."""
    names = list(agreements)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.6 * max(1, len(names)), 4.4))
    for ax, name in zip(np.atleast_1d(axes), names, strict=False):
        found = agreements[name]
        classes = [str(c) for c in found["confusion"]["classes"]]
        matrix = np.asarray(found["confusion"]["matrix"], dtype=float)
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1.0, float(matrix.max())))
        for (i, j), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2
            ax.text(j, i, f"{int(count)}", ha="center", va="center", color="w" if dark else "k")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("copy's label")
        ax.set_ylabel(f"{found.get('against', 'victim')}'s label")
        per_class = ", ".join(
            f"{c}: {'—' if v is None else f'{v:.0%}'}" for c, v in found["per_class"].items()
        )
        ax.set_title(f"{name}\nagreement per class — {per_class}", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
