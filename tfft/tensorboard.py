"""TensorBoard logs of a run: ``tensorboard --logdir RUN`` (files under ``RUN/tensorboard/``).

Each phase writes to its own TensorBoard run (``head``, ``finetune``) with the same tags
(``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``learning_rate``) on one global-step
axis that continues across phases, so every chart shows both phases as two colours and the
boundary is where one line ends and the other starts. The ``test`` run holds the final test loss
and accuracy at the last step and an image of sample test predictions.

Summaries are written with ``tf.summary.write`` in TensorBoard's scalar and image formats, so
training never needs the ``tensorboard`` package (TensorFlow 2.21 does not install it and its
``tf.summary.scalar`` raises without it); viewing does: ``pip install tensorboard``.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

from tfft import plots, report, rundir
from tfft.callbacks import RunCallback, RunResult

SUBDIR = rundir.TENSORBOARD
SCALARS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")


def logdir(workdir: str) -> str:
    """Where ``tensorboard --logdir`` finds a run's logs."""
    return os.path.join(workdir, SUBDIR)


class TensorBoardCallback(RunCallback):
    """Writes per-epoch scalars of both phases and, at the end, test metrics and an image."""

    def __init__(self, workdir: str) -> None:
        self.root = logdir(workdir)
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._step = 0  # the last epoch's global step: where the test results are drawn

    def _writer(self, name: str) -> tf.summary.SummaryWriter:
        """The phase's (or ``test``'s) writer, created when first needed."""
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.root, name))
        return self._writers[name]

    def on_phase_begin(self, phase: str, model: keras.Model, epochs: int) -> None:
        self._writer(phase)

    def on_epoch_end(self, row: dict[str, Any], model: keras.Model) -> None:
        self._step = int(row["global_step"])
        writer = self._writer(row["phase"])
        with writer.as_default(step=self._step):
            for tag in SCALARS:
                write_scalar(tag, float(row[tag]))
        writer.flush()

    def on_run_end(self, result: RunResult) -> None:
        test = result.metrics.get("test", {})
        writer = self._writer("test")
        with writer.as_default(step=self._step):
            for tag in ("loss", "accuracy"):
                if tag in test:
                    write_scalar(tag, float(test[tag]))
            write_png("sample_predictions", _sample_predictions_png(result))
        self.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def write_scalar(tag: str, value: float) -> None:
    """One point of a scalar chart, at the default writer's step."""
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_metadata("scalars"))


def write_png(tag: str, png: bytes) -> None:
    """One image (already PNG-encoded) in TensorBoard's image format: [width, height, png]."""
    height, width = _png_size(png)
    tensor = tf.constant([str(width), str(height), png])
    tf.summary.write(tag, tensor, metadata=_metadata("images"))


def _png_size(png: bytes) -> tuple[int, int]:
    """Height and width from a PNG's IHDR chunk (bytes 16-24, big-endian)."""
    return int.from_bytes(png[20:24], "big"), int.from_bytes(png[16:20], "big")


def _metadata(plugin: str) -> bytes:
    metadata = tf.compat.v1.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    return metadata.SerializeToString()


def _sample_predictions_png(result: RunResult) -> bytes:
    """The report's predictions grid as PNG bytes: the run's own test predictions beside the
    first raw test images (no model pass of its own)."""
    predictions = report.require_test_predictions(result)
    images = report.first_test_images(result)
    return plots.png_bytes(plots.sample_predictions_figure(predictions, images,
                                                           result.class_names))
