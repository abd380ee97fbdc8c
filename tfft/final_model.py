"""The model a run ends with, and the one pass of the test split through it.

After both phases the classifier may get a temperature (``--calibrate=temperature``): fitted on
the validation split's probabilities, baked into ``model.keras`` and so into every export, so a
probability of 0.9 is right about 9 times in 10. The test pass then evaluates exactly what is
saved, optionally averaged over test-time views (``--tta``, ``tfft.tta``), and keeps every
example's probabilities for the report, its calibration figure and TensorBoard.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfft import accelerator, calibration, loop, phases, predict_loop, progress, tta
from tfft.metrics import Predictions


def predictions(run: phases.RunSetup, model: keras.Model, ds: tf.data.Dataset, title: str,
                ) -> tuple[loop.EpochStats, Predictions]:
    """Loss, accuracy and every example's probabilities of ``model`` over one raw split."""
    batches = run.batches(ds)
    bar = progress.progress_bar(loop.count_steps(batches), title, run.config.run.verbosity)

    def after_call(done: int, stats: loop.EpochStats) -> None:
        if bar:
            bar.update(done, [("loss", stats.mean_loss), ("accuracy", stats.accuracy)])

    stats, labels, probabilities = predict_loop.predict(
        run.strategy, model, loop.make_loss(run.config.train.label_smoothing), batches,
        after_call, jit_compile=accelerator.jit_compile(run.config, run.strategy),
        prepare=run.prepare)
    return stats, Predictions(labels, probabilities)


def calibrated(run: phases.RunSetup) -> tuple[keras.Model, dict[str, Any]]:
    """The trained classifier, with the validation split's temperature when asked; and what
    was fitted (empty without calibration)."""
    model = run.classifier.model
    if run.config.train.calibrate != "temperature":
        return model, {}
    _, val = predictions(run, model, run.splits.validation, "Calibration (validation)")
    temperature = calibration.fit_temperature(val.probabilities, val.labels)
    scaled = calibration.scale(val.probabilities, temperature)
    record = {"temperature": temperature,
              "validation_ece_before": calibration.expected_calibration_error(
                  val.probabilities, val.labels),
              "validation_ece_after": calibration.expected_calibration_error(scaled, val.labels)}
    run.say(f"Calibration: temperature {temperature:.3f} (validation ECE "
            f"{record['validation_ece_before']:.4f} -> {record['validation_ece_after']:.4f})")
    with run.strategy.scope():
        return calibration.with_temperature(model, temperature), record


def test_pass(run: phases.RunSetup, model: keras.Model) -> tuple[loop.EpochStats, Predictions]:
    """The one pass of the test split through ``model`` (with ``--tta``'s views)."""
    mode = run.config.train.tta
    with run.strategy.scope():
        evaluated = tta.with_tta(model, mode)
    title = "Test evaluation" if mode == "none" else f"Test evaluation (TTA {mode})"
    return predictions(run, evaluated, run.splits.test, title)


def test_metrics(stats: loop.EpochStats, test: Predictions) -> dict[str, Any]:
    """The ``test`` section of ``metrics.json``."""
    return {"loss": stats.mean_loss, "accuracy": stats.accuracy, "examples": int(stats.count),
            "ece": calibration.expected_calibration_error(test.probabilities, test.labels)}
