"""The run report: ``metrics.csv``, three figures and ``report.md`` in the run directory.

Written at the end of every training run by ``ReportCallback`` (on by default in
``train_lib.train_and_evaluate``), and for a finished run directory by
``write_run_dir_report``. The report predicts nothing itself: it reads the test predictions the
run made in its one pass over the test split (``RunResult.test_predictions``) and shows the
first raw test images beside them, so a report costs no extra pass through the model.

Files (names relative to the run directory, so ``report.md`` links work wherever it is read):

- ``metrics.csv``: one row per epoch actually run (both phases), with its wall-clock seconds;
- ``training_curves.png``: loss and accuracy over both phases, the phase boundary marked;
- ``confusion_matrix.png``: row-normalised, class names on both axes;
- ``sample_predictions.png``: a grid of test images, predicted / true label, mistakes in red;
- ``report.md``: config summary, parameters and time per phase, final metrics, per-class table.

Every figure comes from ``tfft.plots``, every number from ``tfft.metrics``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from tfft import calibration, class_counts, fs, metrics, plots, rundir
from tfft import data as data_lib
from tfft.callbacks import RunCallback, RunResult
from tfft.checkpoints import PHASES
from tfft.config import AUTO_LR, Config

CSV_COLUMNS = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy",
               "learning_rate", "seconds")
SAMPLE_COUNT = 16  # test images in the predictions grid (report and TensorBoard)
History = dict[str, list[dict[str, Any]]]  # phase -> its epoch rows


@dataclass(frozen=True)
class RunSummary:
    """What the report tells about a run besides its test predictions."""

    config: Config
    class_names: tuple[str, ...]
    history: History
    parameters: dict[str, int]  # total and per-phase trainable counts
    test_loss: float | None = None
    counts: class_counts.Counts = field(default_factory=dict)  # examples per class, by split


class ReportCallback(RunCallback):
    """Writes the report files when a run ends (chief only)."""

    def on_run_end(self, result: RunResult) -> None:
        write_run_report(result)


# ---------------------------------------------------------------- entry points


def write_run_report(result: RunResult) -> dict[str, str]:
    """The report of a run that just finished, from its in-memory result."""
    summary = RunSummary(result.config, tuple(result.class_names),
                         result.history or result.metrics.get("phases", {}),
                         result.metrics.get("parameters", {}),
                         result.metrics.get("test", {}).get("loss"), result.splits.counts)
    return write_report(result.workdir, summary, require_test_predictions(result),
                        first_test_images(result))


def write_run_dir_report(workdir: str, predictions: metrics.Predictions,
                         class_names: Sequence[str],
                         images: Sequence[np.ndarray] = ()) -> dict[str, str]:
    """The report of a finished run directory with test predictions made elsewhere::

        write_run_dir_report(workdir, metrics.predict_split(pixels, test, 32), class_names,
                             images=first_images(test))

    ``images`` are the first raw test images, in the order of ``predictions``. The epoch history
    comes from ``metrics.csv`` when present (it keeps the timings), else from ``metrics.json``;
    the config and parameter counts from the run's files.
    """
    saved = rundir.read_json(os.path.join(workdir, rundir.METRICS))
    summary = RunSummary(rundir.read_config(workdir), tuple(class_names),
                         read_history(workdir) or saved.get("phases", {}),
                         saved.get("parameters", {}), saved.get("test", {}).get("loss"))
    return write_report(workdir, summary, predictions, images)


def write_report(workdir: str, summary: RunSummary, predictions: metrics.Predictions,
                 images: Sequence[np.ndarray]) -> dict[str, str]:
    """Writes every report file into ``workdir``; returns their paths by file name."""
    rows = [row for phase in PHASES for row in summary.history.get(phase, [])]
    scores = metrics.classification_metrics(predictions.labels, predictions.predicted,
                                            summary.class_names)
    paths = {name: os.path.join(workdir, name)
             for name in (rundir.METRICS_CSV, rundir.CURVES_PNG, rundir.CONFUSION_PNG,
                          rundir.SAMPLES_PNG, rundir.CALIBRATION_PNG, rundir.REPORT_MD)}
    write_metrics_csv(rows, paths[rundir.METRICS_CSV])
    plots.plot_training_curves(rows, paths[rundir.CURVES_PNG])
    plots.plot_confusion_matrix(np.asarray(scores["confusion_matrix"]), summary.class_names,
                                paths[rundir.CONFUSION_PNG])
    plots.plot_sample_predictions(predictions, images, summary.class_names,
                                  paths[rundir.SAMPLES_PNG])
    bins = calibration.reliability(predictions.probabilities, predictions.labels)
    plots.plot_reliability(bins, paths[rundir.CALIBRATION_PNG])
    text = report_markdown(workdir, summary, rows, scores, bins)
    rundir.write_text(paths[rundir.REPORT_MD], text)
    return paths


# ---------------------------------------------------------------- test split


def require_test_predictions(result: RunResult) -> metrics.Predictions:
    """The predictions of the run's one test pass (the report and TensorBoard make none)."""
    if result.test_predictions is None:
        raise ValueError("RunResult.test_predictions is None: the run must keep the "
                         "predictions of its test pass for the report and TensorBoard.")
    return result.test_predictions


GRID_MAX_SIDE = 512  # pixels: a grid cell is 2.6 inches at 100 dpi, so more is never seen


def first_images(ds: tf.data.Dataset, count: int = SAMPLE_COUNT) -> list[np.ndarray]:
    """The first ``count`` raw uint8 images of a raw split (records decoded, no model pass):
    the ones the predictions grid shows. Larger photos are shrunk to ``GRID_MAX_SIDE`` first
    (an 8000 x 6000 image drawn as it is took 14 s and 3.4 GB)."""
    return [grid_sized(image).numpy() for image, _ in data_lib.load_images(ds).take(count)]


def grid_sized(image: tf.Tensor) -> tf.Tensor:
    """``image`` itself when it fits the grid, else shrunk (aspect kept) to fit, as uint8."""
    height, width = int(image.shape[0]), int(image.shape[1])
    if max(height, width) <= GRID_MAX_SIDE:
        return image
    scale = GRID_MAX_SIDE / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return tf.cast(tf.image.resize(image, size, antialias=True), tf.uint8)


def first_test_images(result: RunResult, count: int = SAMPLE_COUNT) -> list[np.ndarray]:
    """The first raw test images of a run, in the order of ``result.test_predictions``."""
    return first_images(result.splits.test, count)


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


def read_history(workdir: str) -> History:
    """The per-phase epoch rows of a run's ``metrics.csv`` ({} when there is none)."""
    path = os.path.join(workdir, rundir.METRICS_CSV)
    if not fs.isfile(path):
        return {}
    history: History = {}
    text = fs.read_bytes(path).decode()  # as ``open(newline="")`` reads it, for csv
    for raw in csv.DictReader(io.StringIO(text, newline="")):
        row: dict[str, Any] = {k: (float(v) if v else None) for k, v in raw.items()
                               if k != "phase"}
        row["epoch"] = int(row["epoch"])
        history.setdefault(raw["phase"], []).append({**row, "phase": raw["phase"]})
    return history


# ---------------------------------------------------------------- report.md


def report_markdown(workdir: str, summary: RunSummary, rows: list[dict[str, Any]],
                    scores: dict[str, Any], bins: calibration.Reliability) -> str:
    """The human-readable summary; images are linked by relative path.

    ``scores`` is ``metrics.classification_metrics`` over the test predictions.
    """
    config, parameters = summary.config, summary.parameters
    d, m = config.data, config.model
    loss = f", loss {summary.test_loss:.4f}" if summary.test_loss is not None else ""
    lines = [
        f"# tfft run report: `{os.path.basename(fs.abspath(workdir))}`", "",
        f"Dataset `{d.dataset}`, {len(summary.class_names)} classes; backbone `{m.backbone}` "
        f"(weights `{m.weights}`) at {d.image_size} px, batch {d.batch_size}, optimizer "
        f"`{config.train.optimizer}`, seed {config.train.seed}.", "",
        "Settings that differ from the defaults (the full config is in `config.json`):", "",
        "```", *_non_default_flags(config), "```", "",
        *_data_lines(summary),
        "## Phases", "",
        "| phase | epochs run | learning rate | trainable parameters | epoch time (s) | loss | "
        "accuracy | val_loss | val_accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *_phase_lines(_phase_rates(workdir, config), rows, parameters), "",
        f"Parameters in the model: {parameters.get('total', 0):,}. Loss and accuracy are the "
        "phase's last epoch; epoch time excludes the one-off feature extraction.", "",
        "## Test", "",
        f"Accuracy **{scores['accuracy']:.4f}** on {scores['examples']:,} test "
        f"examples{loss}.", "",
        "| class | precision | recall | f1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
        *_class_lines(scores["per_class"]), "",
        *_calibration_lines(workdir, bins),
        "## Figures", "",
        f"![Training curves]({rundir.CURVES_PNG})", "",
        f"![Confusion matrix]({rundir.CONFUSION_PNG})", "",
        f"![Sample predictions]({rundir.SAMPLES_PNG})", "",
        f"![Reliability diagram]({rundir.CALIBRATION_PNG})", "",
        f"Per-epoch numbers: [{rundir.METRICS_CSV}]({rundir.METRICS_CSV}). TensorBoard: "
        f"`tensorboard --logdir {workdir}`.", "",
    ]
    return "\n".join(lines)


def _calibration_lines(workdir: str, bins: calibration.Reliability) -> list[str]:
    """The test predictions' calibration error, and the temperature the run fitted."""
    path = os.path.join(workdir, rundir.METRICS)
    fitted = rundir.read_json(path).get("calibration", {}) if fs.isfile(path) else {}
    how = (f" after temperature scaling (T = {fitted['temperature']:.3f}, fitted on the "
           f"validation split: ECE there {fitted['validation_ece_before']:.4f} -> "
           f"{fitted['validation_ece_after']:.4f})") if fitted else " (not calibrated)"
    return [f"Expected calibration error (ECE, {len(bins.count)} bins) **{bins.ece:.4f}**"
            f"{how}.", ""]


def _data_lines(summary: RunSummary) -> list[str]:
    """The examples per class and split, with the imbalance warning the run printed."""
    table = class_counts.markdown_table(summary.class_names, summary.counts)
    if not table:
        return []
    warning = class_counts.imbalance(summary.class_names, summary.counts)
    return ["## Data", "", "Examples per class and split:", "", *table, "",
            *([f"**{warning}**", ""] if warning else [])]


def _non_default_flags(config: Config) -> list[str]:
    """The flags that reproduce the run on top of the defaults."""
    defaults = Config().flat()
    return [f"--{name}={_flag_value(value)}" for name, value in config.flat().items()
            if value != defaults[name]] or ["(all defaults)"]


def _flag_value(value: Any) -> str:
    """A config value written as it is typed on the command line."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _phase_rates(workdir: str, config: Config) -> dict[str, str]:
    """Each phase's learning rate as set, or for ``auto`` the rate the range test found."""
    path = os.path.join(workdir, rundir.LR_FIND)
    found = rundir.read_json(path) if fs.exists(path) else {}
    rates = {"head": config.head.head_learning_rate,
             "finetune": config.finetune.finetune_learning_rate}
    return {phase: f"{rate:g}" if rate != AUTO_LR
            else f"auto → {found[phase]:.3g}" if phase in found else "auto"
            for phase, rate in rates.items()}


def _phase_lines(rates: dict[str, str], rows: list[dict[str, Any]],
                 parameters: dict[str, int]) -> list[str]:
    """One table row per phase: epochs, rate, trainable count, time and its last epoch."""
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


def _class_lines(per_class: dict[str, dict[str, Any]]) -> list[str]:
    """One table row per class, in class-id order."""
    return [f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
            f"{row['support']} |" for name, row in per_class.items()]
