"""The run report: ``metrics.csv``, three figures and ``report.md`` in the run directory.

Written at the end of every training run by ``ReportCallback`` (on by default in
``train_lib.train_and_evaluate``), and for a finished run directory by
``write_run_dir_report`` (what ``tfft.evaluate`` can call with its own predictions). Figures are
drawn with matplotlib's Agg backend, so no display is needed.

Files (names relative to the run directory, so ``report.md`` links work wherever it is read):

- ``metrics.csv``: one row per epoch actually run (both phases), with its wall-clock seconds;
- ``training_curves.png``: loss and accuracy over both phases, the phase boundary marked;
- ``confusion_matrix.png``: row-normalised, class names on both axes (``tfft.plots``);
- ``sample_predictions.png``: a grid of test images, predicted / true label, mistakes in red;
- ``report.md``: config summary, parameters and time per phase, final metrics, per-class table.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft import data as data_lib
from tfft import rundir
from tfft.callbacks import RunCallback, RunResult
from tfft.checkpoints import PHASES
from tfft.config import AUTO_LR, Config

METRICS_CSV, CURVES_PNG, CONFUSION_PNG, SAMPLES_PNG, REPORT_MD = (
    rundir.METRICS_CSV, rundir.CURVES_PNG, rundir.CONFUSION_PNG, rundir.SAMPLES_PNG,
    rundir.REPORT_MD)
CSV_COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy",
               "learning_rate", "seconds")
SAMPLE_COUNT = 16
Predict = Callable[[tf.Tensor], np.ndarray]  # preprocessed image batch -> probabilities


@dataclass(frozen=True)
class TestPredictions:
    """Predicted and true classes over a test split, and the first raw images for the grid."""

    labels: np.ndarray  # true class ids
    predicted: np.ndarray  # predicted class ids
    confidence: np.ndarray | None  # probability of the predicted class (None when unknown)
    images: list[np.ndarray]  # the first few raw uint8 images, [H, W, C]


class ReportCallback(RunCallback):
    """Writes the report files when a run ends (chief only)."""

    def on_run_end(self, result: RunResult) -> None:
        write_run_report(result)


# ---------------------------------------------------------------- entry points


def write_run_report(result: RunResult) -> dict[str, str]:
    """The report of a run that just finished, from its in-memory model and splits."""
    config = result.config
    predictions = predict_split(keras_predict(result.classifier.model), result.splits.test,
                                config, result.classifier.backbone.normalize,
                                verbose=config.run.verbosity >= 1)
    history = result.history or result.metrics.get("phases", {})
    return write_report(result.workdir, config, result.class_names, history,
                        result.metrics.get("parameters", {}), predictions,
                        result.metrics.get("test", {}).get("loss"))


def write_run_dir_report(workdir: str, predictions: TestPredictions,
                         class_names: Sequence[str]) -> dict[str, str]:
    """The report of a finished run directory with predictions made elsewhere (tfft.evaluate)::

        predictions = TestPredictions(labels, predicted, None, first_images(raw_test_split))
        write_run_dir_report(workdir, predictions, class_names)

    The epoch history comes from ``metrics.csv`` when present (it keeps the timings), else from
    ``metrics.json``; the config and parameter counts from the run's files.
    """
    config = rundir.read_config(workdir)
    metrics = rundir.read_json(os.path.join(workdir, rundir.METRICS))
    history = read_history(workdir) or metrics.get("phases", {})
    return write_report(workdir, config, class_names, history, metrics.get("parameters", {}),
                        predictions, metrics.get("test", {}).get("loss"))


def write_report(workdir: str, config: Config, class_names: Sequence[str],
                 history: dict[str, list[dict[str, Any]]], parameters: dict[str, int],
                 predictions: TestPredictions, test_loss: float | None = None) -> dict[str, str]:
    """Writes every report file into ``workdir``; returns their paths by file name."""
    from tfft.plots import plot_confusion_matrix

    rows = [row for phase in PHASES for row in history.get(phase, [])]
    matrix = confusion_matrix(predictions.labels, predictions.predicted, len(class_names))
    paths = {name: os.path.join(workdir, name)
             for name in (METRICS_CSV, CURVES_PNG, CONFUSION_PNG, SAMPLES_PNG, REPORT_MD)}
    write_metrics_csv(rows, paths[METRICS_CSV])
    save_figure(training_curves_figure(rows), paths[CURVES_PNG])
    plot_confusion_matrix(matrix, class_names, paths[CONFUSION_PNG])
    save_figure(sample_predictions_figure(predictions, class_names), paths[SAMPLES_PNG])
    rundir.write_text(paths[REPORT_MD], report_markdown(
        workdir, config, class_names, rows, parameters, matrix, test_loss))
    return paths


# ---------------------------------------------------------------- predictions


@functools.lru_cache(maxsize=1)
def keras_predict(model: keras.Model) -> Predict:
    """Probabilities of a Keras classifier over preprocessed batches, in inference mode.

    Traced once for any batch size and kept for the last model, so the report and the
    TensorBoard image of one run share the trace.
    """
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda x: forward(x).numpy()


def predict_split(predict: Predict, ds: tf.data.Dataset, config: Config,
                  normalize: data_lib.Normalizer, limit: int = 0,
                  verbose: bool = False) -> TestPredictions:
    """Runs ``predict`` over raw (uint8 image, label) examples, preprocessed like training.

    ``limit`` > 0 predicts only the first ``limit`` examples (the TensorBoard image needs no
    more). Shows a progress bar with rate and ETA when ``verbose``.
    """
    if limit:
        ds = ds.take(limit)
    batches = data_lib.make_batches(ds, config.data, normalize, training=False,
                                    seed=config.train.seed)
    steps = int(batches.cardinality())
    bar = keras.utils.Progbar(steps if steps >= 0 else None) if verbose else None
    if bar:
        print("Predicting the test split for the report")
    labels, probabilities = [], []
    for i, (images, y) in enumerate(batches):
        probabilities.append(predict(images))
        labels.append(y.numpy())
        if bar:
            bar.update(i + 1)
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, 1), np.float32)
    return TestPredictions(
        labels=np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
        predicted=probs.argmax(axis=-1).astype(np.int64),
        confidence=probs.max(axis=-1) if len(probs) else np.zeros(0, np.float32),
        images=first_images(ds, SAMPLE_COUNT))


def first_images(ds: tf.data.Dataset, count: int = SAMPLE_COUNT) -> list[np.ndarray]:
    """The first ``count`` raw images of a split (the ones the predictions grid shows)."""
    return [image.numpy() for image, _ in data_lib.load_images(ds.take(count))]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts: ``matrix[i, j]`` = examples of true class i predicted as j."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where a class has no examples)."""
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _ratio(true_positive, matrix.sum(axis=0))
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(denominator),
                     where=denominator > 0)


# ---------------------------------------------------------------- metrics.csv


def write_metrics_csv(rows: list[dict[str, Any]], path: str) -> None:
    """One line per epoch run, in run order; ``seconds`` is empty when it was not recorded."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in CSV_COLUMNS})
    rundir.write_text(path, out.getvalue())


def read_history(workdir: str) -> dict[str, list[dict[str, Any]]]:
    """The per-phase epoch rows of a run's ``metrics.csv`` ({} when there is none)."""
    path = os.path.join(workdir, METRICS_CSV)
    if not os.path.isfile(path):
        return {}
    history: dict[str, list[dict[str, Any]]] = {}
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {k: (float(v) if v else None) for k, v in raw.items()
                                   if k != "phase"}
            row["epoch"] = int(row["epoch"])
            history.setdefault(raw["phase"], []).append({**row, "phase": raw["phase"]})
    return history


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Writes a figure as PNG atomically (temp file, then rename) and closes it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        _pyplot().close(fig)
    return path


def figure_png(fig) -> bytes:
    """A figure as PNG bytes (for TensorBoard's image summary); closes it."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=100, format="png")
    finally:
        _pyplot().close(fig)
    return buffer.getvalue()


def training_curves_figure(rows: list[dict[str, Any]]):
    """Loss and accuracy per epoch over both phases on one axis; the boundary is marked.

    The x axis counts epochs across the whole run, so the finetune phase continues where the
    head phase stopped, as in TensorBoard's continuous step axis.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(1, len(rows) + 1)
    boundary = next((i for i, row in enumerate(rows) if row["phase"] != rows[0]["phase"]), 0)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
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
        if len(rows):
            ax.set_xticks(x)
            ax.legend(loc="best")
    phases = " + ".join(f"{p} {sum(r['phase'] == p for r in rows)}" for p in PHASES
                        if any(r["phase"] == p for r in rows))
    fig.suptitle(f"Training curves ({phases or 'no epochs'} epochs)")
    fig.tight_layout()
    return fig


def sample_predictions_figure(predictions: TestPredictions, class_names: Sequence[str]):
    """A grid of test images titled predicted / true label; mistakes framed and titled red."""
    plt = _pyplot()
    count = max(len(predictions.images), 1)
    cols = min(4, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(predictions.images):
            ax.axis("off")
            continue
        image = predictions.images[i]
        gray = image.ndim == 2 or image.shape[-1] == 1
        ax.imshow(image.squeeze(-1) if gray and image.ndim == 3 else image,
                  cmap="gray" if gray else None)
        true, pred = int(predictions.labels[i]), int(predictions.predicted[i])
        color = "tab:green" if true == pred else "tab:red"
        confidence = ("" if predictions.confidence is None
                      else f" ({predictions.confidence[i]:.0%})")
        ax.set_title(f"pred {_short(class_names[pred])}{confidence}\n"
                     f"true {_short(class_names[true])}", color=color, fontsize=9)
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if true == pred else 3)
    shown = min(len(predictions.images), len(predictions.labels))
    wrong = int(np.sum(predictions.labels[:shown] != predictions.predicted[:shown]))
    fig.suptitle(f"Sample test predictions: {wrong} of {shown} wrong (red)")
    fig.tight_layout()
    return fig


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


# ---------------------------------------------------------------- report.md


def report_markdown(workdir: str, config: Config, class_names: Sequence[str],
                    rows: list[dict[str, Any]], parameters: dict[str, int],
                    matrix: np.ndarray, test_loss: float | None) -> str:
    """The human-readable summary; images are linked by relative path."""
    d, m = config.data, config.model
    examples = int(matrix.sum())
    accuracy = float(np.trace(matrix) / max(examples, 1))
    loss = f", loss {test_loss:.4f}" if test_loss is not None else ""
    lines = [
        f"# tfft run report: `{os.path.basename(os.path.abspath(workdir))}`", "",
        f"Dataset `{d.dataset}`, {len(class_names)} classes; backbone `{m.backbone}` (weights "
        f"`{m.weights}`) at {d.image_size} px, batch {d.batch_size}, optimizer "
        f"`{config.train.optimizer}`, seed {config.train.seed}.", "",
        "Settings that differ from the defaults (the full config is in `config.json`):", "",
        "```", *_non_default_flags(config), "```", "",
        "## Phases", "",
        "| phase | epochs run | learning rate | trainable parameters | epoch time (s) | loss | "
        "accuracy | val_loss | val_accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *_phase_lines(_phase_rates(workdir, config), rows, parameters), "",
        f"Parameters in the model: {parameters.get('total', 0):,}. Loss and accuracy are the "
        "phase's last epoch; epoch time excludes the one-off feature extraction.", "",
        "## Test", "",
        f"Accuracy **{accuracy:.4f}** on {examples:,} test examples{loss}.", "",
        "| class | precision | recall | f1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
        *_class_lines(class_names, matrix), "",
        "## Figures", "",
        f"![Training curves]({CURVES_PNG})", "",
        f"![Confusion matrix]({CONFUSION_PNG})", "",
        f"![Sample predictions]({SAMPLES_PNG})", "",
        f"Per-epoch numbers: [{METRICS_CSV}]({METRICS_CSV}). TensorBoard: "
        f"`tensorboard --logdir {workdir}`.", "",
    ]
    return "\n".join(lines)


def _non_default_flags(config: Config) -> list[str]:
    defaults = Config().flat()
    return [f"--{name}={_flag_value(value)}" for name, value in config.flat().items()
            if value != defaults[name]] or ["(all defaults)"]


def _flag_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _phase_rates(workdir: str, config: Config) -> dict[str, str]:
    """Each phase's learning rate as set, or for ``auto`` the rate the range test found."""
    path = os.path.join(workdir, rundir.LR_FIND)
    found = rundir.read_json(path) if os.path.exists(path) else {}
    rates = {"head": config.head.head_learning_rate,
             "finetune": config.finetune.finetune_learning_rate}
    return {phase: f"{rate:g}" if rate != AUTO_LR
            else f"auto → {found[phase]:.3g}" if phase in found else "auto"
            for phase, rate in rates.items()}


def _phase_lines(rates: dict[str, str], rows: list[dict[str, Any]],
                 parameters: dict[str, int]) -> list[str]:
    lines = []
    for phase in PHASES:
        phase_rows = [row for row in rows if row["phase"] == phase]
        seconds = [row.get("seconds") for row in phase_rows]
        time = f"{sum(seconds):.1f}" if phase_rows and None not in seconds else "–"
        last = phase_rows[-1] if phase_rows else {}
        values = [f"{last[k]:.4f}" if k in last else "–"
                  for k in ("loss", "accuracy", "val_loss", "val_accuracy")]
        lines.append(f"| {phase} | {len(phase_rows)} | {rates[phase]} | "
                     f"{parameters.get(f'{phase}_trainable', 0):,} | {time} | "
                     + " | ".join(values) + " |")
    return lines


def _class_lines(class_names: Sequence[str], matrix: np.ndarray) -> list[str]:
    stats = per_class_metrics(matrix)
    return [f"| {name} | {stats['precision'][i]:.3f} | {stats['recall'][i]:.3f} | "
            f"{stats['f1'][i]:.3f} | {int(stats['support'][i])} |"
            for i, name in enumerate(class_names)]
