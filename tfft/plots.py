"""Figures written next to a run's numbers (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str) -> str:
    """Writes a row-normalised confusion matrix (true class per row) as a PNG; returns ``path``.

    ``matrix[i, j]`` counts examples of true class i predicted as class j. The file is written
    to a temp name and renamed, so a reader never sees half a PNG.

    Rows are normalised so classes of different sizes read alike: cell (i, j) is the fraction of
    class i's examples predicted as j. Rows without examples stay zero.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    size = min(4.0 + 0.45 * n, 24.0)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
        ticks = np.arange(n)
        ax.set_xticks(ticks, labels=list(class_names), rotation=90 if n > 10 else 0)
        ax.set_yticks(ticks, labels=list(class_names))
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title("Confusion matrix (row-normalised)")
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    value = normalised[i, j]
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value > 0.5 else "black")
        fig.tight_layout()
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path
