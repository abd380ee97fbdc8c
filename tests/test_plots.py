"""Every figure of ``tfft.plots``: drawn without pyplot, written atomically, backend untouched."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest
from PIL import Image

from tfft import plots
from tfft.metrics import Predictions

ROWS = [{"phase": phase, "loss": 1.0 / (i + 1), "accuracy": 0.5 + 0.1 * i,
         "val_loss": 1.2 / (i + 1), "val_accuracy": 0.4 + 0.1 * i}
        for i, phase in enumerate(("head", "head", "finetune"))]


@pytest.fixture
def svg_backend():
    """A notebook-like session whose backend is not Agg; restored afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)


def _draw_every_figure(directory: str) -> list[str]:
    predictions = Predictions(np.array([0, 1, 1]), np.array(
        [[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]], np.float32))
    images = [np.full((20, 20, 3), 40 * i, np.uint8) for i in range(3)]
    rates = [1e-5 * 2 ** i for i in range(12)]
    losses = [2.0 - 0.1 * i for i in range(12)]
    return [
        plots.plot_training_curves(ROWS, os.path.join(directory, "curves.png")),
        plots.plot_confusion_matrix(np.array([[3, 1], [0, 2]]), ("a", "b"),
                                    os.path.join(directory, "cm.png")),
        plots.plot_sample_predictions(predictions, images, ("a", "b"),
                                      os.path.join(directory, "samples.png")),
        plots.plot_lr_range(rates, losses, losses, 1e-3, "LR range test, head phase",
                            os.path.join(directory, "lr_find_head.png")),
    ]


def test_drawing_leaves_a_notebooks_backend_unchanged(svg_backend, tmp_path):
    paths = _draw_every_figure(str(tmp_path))
    assert plots.png_bytes(plots.training_curves_figure(ROWS)).startswith(b"\x89PNG")
    assert matplotlib.get_backend() == svg_backend
    for path in paths:
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) > 200, path
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_lr_range_plot_marks_the_suggestion_on_a_log_axis():
    rates, losses, smoothed = [1e-5, 1e-4, 1e-3, 1e-2], [2.0, 1.5, 1.0, 3.0], [2.0, 1.7, 1.3, 2.0]
    fig = plots.lr_range_figure(rates, losses, smoothed, 3e-4, "LR range test, finetune phase")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "LR range test, finetune phase"
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["loss"].get_ydata()) == losses
    assert list(lines["smoothed loss"].get_ydata()) == smoothed
    marker = lines["suggested 0.0003"]
    assert marker.get_color() == "red" and marker.get_linestyle() == "--"
    assert list(marker.get_xdata()) == [3e-4, 3e-4]


def test_sample_grid_shows_as_many_images_as_both_have():
    predictions = Predictions(np.array([0, 1, 1, 0]), np.eye(2, dtype=np.float32)[[0, 0, 1, 0]])
    fig = plots.sample_predictions_figure(predictions, [np.zeros((8, 8), np.uint8)] * 2, "ab")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [
        "pred a (100%)\ntrue a", "pred a (100%)\ntrue b"]
    assert fig.get_suptitle() == "Sample test predictions: 1 of 2 wrong (red)"


class _BrokenFigure:
    """Fails halfway through writing, like a full disk."""

    def savefig(self, f, **_kwargs) -> None:
        f.write(b"\x89PNG half")
        raise OSError("No space left on device")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "cm.png"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        plots.save_png(_BrokenFigure(), str(path))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["cm.png"]
