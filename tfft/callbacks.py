"""Hooks into a run and what a run returns: the one module that reports, TensorBoard and the
benchmarks build on (they import nothing of the training loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras

from tfft import data as data_lib
from tfft.classifier import Classifier
from tfft.config import Config
from tfft.metrics import Predictions


@dataclass(frozen=True)
class PhaseTimings:
    """Wall-clock seconds of one phase that ran: all of it, the one-off feature extraction
    (head phase on cached features) and each epoch."""

    phase: str
    seconds: float
    feature_seconds: float
    epoch_seconds: tuple[float, ...]


@dataclass
class RunResult:
    """What a run produced; the same numbers are in the run directory."""

    config: Config
    workdir: str
    classifier: Classifier
    splits: data_lib.Splits
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # rows with timings
    test_predictions: Predictions | None = None  # from the one pass over the test split

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.splits.class_names

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["test"]["accuracy"])


class RunCallback:
    """Hooks into a run (TensorBoard, reports, benchmarks); every method is optional."""

    def on_phase_begin(self, phase: str, model: keras.Model, epochs: int) -> None:
        """Called before the first epoch of a phase that runs."""

    def on_epoch_end(self, row: dict[str, Any], model: keras.Model) -> None:
        """Called after each epoch with its metrics row (epoch, phase, loss, accuracy,
        val_loss, val_accuracy, learning_rate, seconds, global_step)."""

    def on_phase_end(self, timings: PhaseTimings) -> None:
        """Called after a phase that ran (not for one skipped or finished before a resume)."""

    def on_run_end(self, result: RunResult) -> None:
        """Called once, after the test evaluation, on the chief only."""
