"""Two-phase transfer learning: ``train_and_evaluate(config, workdir)``.

Validates the config, sets the run up (``tfft.phases.setup_run``), runs each phase's plan with
resume and early stopping, passes the test split through the model once (its metrics and its
predictions serve ``metrics.json``, the report and TensorBoard) and writes the run directory.
Phase ``head`` trains the head on the frozen backbone, on cached backbone features when nothing
makes them change between epochs; phase ``finetune`` unfreezes the top blocks at a lower
learning rate with the backbone still in inference mode (BatchNorm statistics frozen unless
``--finetune_batchnorm``), optionally with per-step schedules, gradual unfreezing and
discriminative learning rates (``tfft.schedules``).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from typing import Any

import tensorflow as tf

from tfft import (
    checkpoints,
    class_counts,
    distribute,
    fit,
    loop,
    lr_find,
    phases,
    progress,
    report,
    rundir,
    tensorboard,
)
from tfft.callbacks import RunCallback, RunResult
from tfft.classifier import freeze_backbone
from tfft.config import Config, validate
from tfft.errors import UserError
from tfft.metrics import Predictions


def train_and_evaluate(
    config: Config,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: tuple[RunCallback, ...] = (),
    overwrite: bool = False,
) -> RunResult:
    """Validates ``config``, trains both phases, evaluates on the test split and writes the run
    directory.

    An interrupted run in ``workdir`` is resumed; a finished run or one with another config is
    refused (UserError) unless ``overwrite``.
    """
    config = validate(config)
    strategy = strategy or phases.run_strategy(config)
    chief = distribute.is_chief(strategy)
    record = checkpoints.prepare_workdir(workdir, config, overwrite, may_delete=chief)
    if record is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise UserError(f"--workdir: {workdir!r} holds an interrupted multi-worker run; "
                        "resuming one is not supported (every worker would need its position); "
                        "pass --overwrite to start it again.")
    out_dir = workdir if chief else tempfile.mkdtemp(prefix="tfft-worker-")
    try:
        callbacks = (*default_callbacks(config, workdir), *callbacks) if chief else ()
        with phases.setup_run(config, strategy) as run:
            return run_training(run, out_dir, callbacks, record if chief else None)
    finally:
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def default_callbacks(config: Config, workdir: str) -> tuple[RunCallback, ...]:
    """TensorBoard logs (unless ``--tensorboard=false``) and the run report, on every run."""
    logs = (tensorboard.TensorBoardCallback(workdir),) if config.run.tensorboard else ()
    return (*logs, report.ReportCallback())


def run_training(run: phases.RunSetup, workdir: str, callbacks: tuple[RunCallback, ...],
                 record: checkpoints.Progress | None) -> RunResult:
    """Both phases, the test pass and the run directory, for a prepared run."""
    config, clf = run.config, run.classifier
    params = phases.parameter_counts(clf, config)
    rundir.write_text(os.path.join(workdir, rundir.CONFIG), config.to_json() + "\n")
    print_summary(run, params)
    resume = checkpoints.RunProgress(workdir, record)
    choose_rate = functools.partial(lr_find.auto_learning_rate, run, workdir=workdir)
    history = {phase: fit.train_phase(run, phase, resume, workdir, callbacks, choose_rate)
               for phase in phases.PHASES}
    freeze_backbone(clf)
    test, predictions = test_pass(run)
    metrics: dict[str, Any] = {
        "phases": {phase: [without_timings(row) for row in rows]
                   for phase, rows in history.items()},
        "parameters": params, "backbone": clf.backbone.identity,
        "class_names": list(run.splits.class_names),
        "test": {"loss": test.mean_loss, "accuracy": test.accuracy, "examples": int(test.count)}}
    rundir.save_model(clf.model, os.path.join(workdir, rundir.MODEL))
    rundir.write_json(os.path.join(workdir, rundir.METRICS), metrics)
    if not config.run.keep_checkpoints:  # a finished run is never resumed
        checkpoints.remove_checkpoints(workdir)
    result = RunResult(config, workdir, clf, run.splits, metrics, history, predictions)
    for callback in callbacks:
        callback.on_run_end(result)
    run.say(f"Test accuracy: {test.accuracy:.4f} (loss {test.mean_loss:.4f}, "
            f"{int(test.count)} examples)")
    return result


def test_pass(run: phases.RunSetup) -> tuple[loop.EpochStats, Predictions]:
    """The one pass of the test split through the model: its loss and accuracy, and every
    example's probabilities for the report and TensorBoard."""
    batches = run.batches(run.splits.test)
    bar = progress.progress_bar(loop.count_steps(batches), "Test evaluation",
                                run.config.run.verbosity)

    def after_call(done: int, stats: loop.EpochStats) -> None:
        if bar:
            bar.update(done, [("loss", stats.mean_loss), ("accuracy", stats.accuracy)])

    stats, labels, probabilities = loop.predict(
        run.strategy, run.classifier.model, loop.make_loss(run.config.train.label_smoothing),
        batches, after_call)
    return stats, Predictions(labels, probabilities)


def without_timings(row: dict[str, Any]) -> dict[str, Any]:
    """metrics.json holds only what the seed determines, so equal seeds give equal files."""
    return {k: v for k, v in row.items() if k != "seconds"}


def print_summary(run: phases.RunSetup, params: dict[str, int]) -> None:
    """The run's data (with its examples per class and split), backbone and strategy in a few
    lines, and a warning line when the training classes are badly skewed."""
    config, splits, say = run.config, run.splits, run.say
    replicas = run.strategy.num_replicas_in_sync
    sizes = ", ".join(f"{k} {v:,}" for k, v in splits.sizes.items())
    say(f"Dataset {config.data.dataset}: {sizes} examples; {splits.num_classes} classes "
        f"({', '.join(splits.class_names[:10])}{', …' if splits.num_classes > 10 else ''})")
    for line in class_counts.summary_lines(splits.class_names, splits.counts):
        say(line)
    warning = class_counts.imbalance(splits.class_names, splits.counts)
    if warning:
        say(f"Warning: {warning}")
    say(f"Backbone {config.model.backbone} (weights {config.model.weights}) at "
        f"{config.data.image_size}px; parameters {params['total']:,}; trainable: head phase "
        f"{params['head_trainable']:,}, finetune phase {params['finetune_trainable']:,}")
    say(f"Strategy {config.run.strategy}: {replicas} replica(s); global batch "
        f"{config.data.batch_size}, per replica {config.data.batch_size // replicas}")
