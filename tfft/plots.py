"""Every figure tfft draws: training curves, confusion matrix, sample predictions, LR range test,
reliability diagram.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``), never
pyplot: ``Figure.savefig`` renders PNG without a backend, so drawing a figure neither needs a
display nor switches the backend of a notebook that imported tfft. Nothing is registered with
pyplot, so there is nothing to close. Every file is written through ``save_png`` (temp file
beside the target, then renamed), so a reader never sees half a PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tfft import fs
from tfft.calibration import Reliability
from tfft.metrics import Predictions

DPI = 100


def save_png(fig: Figure, path: str) -> str:
    """Writes ``fig`` as a PNG so a reader sees the old file or the whole new one, on any
    filesystem (``fs.write_atomic``: a unique temp name, so two writers of one file cannot mix
    their bytes); returns ``path``."""
    fs.write_atomic(path, png_bytes(fig))
    return path


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (TensorBoard's image summaries take encoded images)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, format="png")
    return buffer.getvalue()


# ---------------------------------------------------------------- confusion matrix


def row_normalised(matrix: npt.ArrayLike) -> np.ndarray:
    """Each row divided by its total, so classes of different sizes read alike: cell (i, j) is
    the fraction of class i's examples predicted as j. Rows without examples stay zero."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def confusion_figure(matrix: npt.ArrayLike, class_names: Sequence[str]) -> Figure:
    """The row-normalised confusion matrix (true class per row), class names on both axes.

    ``matrix[i, j]`` counts examples of true class i predicted as class j.
    """
    n = len(class_names)
    if np.shape(matrix) != (n, n):
        raise ValueError(f"confusion matrix of shape {np.shape(matrix)} for {n} class names")
    normalised = row_normalised(matrix)
    size = min(4.0 + 0.45 * n, 24.0)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(class_names), rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (row-normalised)")
    if n <= 30:  # beyond that the numbers would not fit their cells
        _write_cell_values(ax, normalised)
    fig.tight_layout()
    return fig


def _write_cell_values(ax: Axes, normalised: np.ndarray) -> None:
    """Each cell's fraction in it, white on dark cells so it stays readable."""
    for (i, j), value in np.ndenumerate(normalised):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value > 0.5 else "black")


def plot_confusion_matrix(matrix: npt.ArrayLike, class_names: Sequence[str], path: str) -> str:
    """Writes ``confusion_figure`` as a PNG; returns ``path``."""
    return save_png(confusion_figure(matrix, class_names), path)


# ---------------------------------------------------------------- training curves


def training_curves_figure(rows: list[dict[str, Any]]) -> Figure:
    """Loss and accuracy per epoch over both phases; the boundary between phases is marked.

    The x axis counts epochs across the whole run, so the finetune phase continues where the
    head phase stopped, as on TensorBoard's continuous step axis.
    """
    fig = Figure(figsize=(11, 4))
    x = np.arange(1, len(rows) + 1)
    boundary = next((i for i, row in enumerate(rows) if row["phase"] != rows[0]["phase"]), 0)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        ax.plot(x, [row[metric] for row in rows], "o-", label=f"train {metric}")
        ax.plot(x, [row[f"val_{metric}"] for row in rows], "s--", label=f"validation {metric}")
        if boundary:
            ax.axvline(boundary + 0.5, color="gray", linestyle=":")
            ax.text(boundary + 0.55, 0.98, "finetune →", transform=ax.get_xaxis_transform(),
                    va="top", color="gray")
        ax.set_xlabel("epoch (both phases)")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(alpha=0.3)
        if rows:
            ax.set_xticks(x)
            ax.legend(loc="best")
    phases = dict.fromkeys(row["phase"] for row in rows)  # in run order
    counts = " + ".join(f"{p} {sum(r['phase'] == p for r in rows)}" for p in phases)
    fig.suptitle(f"Training curves ({counts or 'no'} epochs)")
    fig.tight_layout()
    return fig


def plot_training_curves(rows: list[dict[str, Any]], path: str) -> str:
    """Writes ``training_curves_figure`` as a PNG; returns ``path``."""
    return save_png(training_curves_figure(rows), path)


# ---------------------------------------------------------------- sample predictions


def sample_predictions_figure(predictions: Predictions, images: Sequence[np.ndarray],
                              class_names: Sequence[str]) -> Figure:
    """A grid of the first test images titled predicted / true label; mistakes in red.

    ``images`` are the first raw uint8 images of the split ``predictions`` were made on, in
    the same order; as many are shown as both have.
    """
    shown = min(len(images), len(predictions.labels))
    cols = min(4, max(shown, 1))
    rows = -(-max(shown, 1) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    labels, predicted = predictions.labels[:shown], predictions.predicted[:shown]
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i < shown:
            title = (f"pred {_short(class_names[predicted[i]])} "
                     f"({predictions.confidence[i]:.0%})\ntrue {_short(class_names[labels[i]])}")
            _draw_sample(ax, images[i], title, correct=bool(labels[i] == predicted[i]))
        else:
            ax.axis("off")
    wrong = int(np.sum(labels != predicted))
    fig.suptitle(f"Sample test predictions: {wrong} of {shown} wrong (red)")
    fig.tight_layout()
    return fig


def _draw_sample(ax: Axes, image: np.ndarray, title: str, correct: bool) -> None:
    """One image under its title, framed and titled red if the prediction is wrong."""
    gray = image.ndim == 2 or image.shape[-1] == 1
    ax.imshow(image.squeeze(-1) if gray and image.ndim == 3 else image,
              cmap="gray" if gray else None)
    color = "tab:green" if correct else "tab:red"
    ax.set_title(title, color=color, fontsize=9)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(1 if correct else 3)


def _short(name: str, width: int = 16) -> str:
    """A class name cut to fit above a thumbnail."""
    return name if len(name) <= width else name[:width - 1] + "…"


def plot_sample_predictions(predictions: Predictions, images: Sequence[np.ndarray],
                            class_names: Sequence[str], path: str) -> str:
    """Writes ``sample_predictions_figure`` as a PNG; returns ``path``."""
    return save_png(sample_predictions_figure(predictions, images, class_names), path)


# ---------------------------------------------------------------- LR range test


def lr_range_figure(rates: list[float], losses: list[float], smoothed: list[float],
                    suggestion: float, title: str) -> Figure:
    """Loss and smoothed loss against the learning rate (log scale), the suggestion marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(rates, losses, alpha=0.3, label="loss")
    ax.plot(rates, smoothed, label="smoothed loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_lr_range(rates: list[float], losses: list[float], smoothed: list[float],
                  suggestion: float, title: str, path: str) -> str:
    """Writes ``lr_range_figure`` as a PNG (``rundir.lr_find_png(phase)``); returns ``path``."""
    return save_png(lr_range_figure(rates, losses, smoothed, suggestion, title), path)


# ---------------------------------------------------------------- calibration


def reliability_figure(bins: Reliability) -> Figure:
    """Accuracy against confidence per bin (bars; the diagonal is perfect calibration), with
    each bin's share of the examples below: where the model says 0.9, how often is it right?"""
    fig = Figure(figsize=(5.0, 5.6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = np.diff(bins.edges)
    filled = bins.count > 0
    top.bar(bins.edges[:-1][filled], bins.accuracy[filled], width=width[filled], align="edge",
            color="#4c72b0", edgecolor="white", label="accuracy")
    top.bar(bins.edges[:-1][filled], (bins.confidence - bins.accuracy)[filled],
            bottom=bins.accuracy[filled], width=width[filled], align="edge", color="#dd8452",
            alpha=0.5, edgecolor="white", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability (ECE {bins.ece:.4f})")
    top.legend(loc="upper left")
    share = bins.count / max(int(bins.count.sum()), 1)
    bottom.bar(bins.edges[:-1], share, width=width, align="edge", color="#8c8c8c")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("share")
    fig.tight_layout()
    return fig


def plot_reliability(bins: Reliability, path: str) -> str:
    """Writes ``reliability_figure`` as a PNG (``rundir.CALIBRATION_PNG``); returns ``path``."""
    return save_png(reliability_figure(bins), path)
