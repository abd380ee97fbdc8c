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

import dataclasses
import functools
import hashlib
import os
import shutil
import tempfile
from typing import Any

import tensorflow as tf

from tfft import (
    checkpoints,
    class_counts,
    distribute,
    final_model,
    fit,
    fs,
    lr_find,
    phases,
    report,
    run_setup,
    rundir,
    tensorboard,
)
from tfft.callbacks import RunCallback, RunResult
from tfft.classifier import freeze_backbone
from tfft.config import Config, validate
from tfft.errors import UserError


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
    strategy = strategy or run_setup.run_strategy(config)
    chief = distribute.is_chief(strategy)
    record = checkpoints.prepare_workdir(workdir, config, overwrite, may_delete=chief)
    out_dir = workdir if chief else worker_dir(workdir, strategy)
    try:
        resume = checkpoints.RunProgress(out_dir, record, source=workdir)
        callbacks = (*default_callbacks(config, workdir), *callbacks) if chief else ()
        with phases.setup_run(config, strategy) as run:
            if distribute.shards_input(strategy):
                check_same_start(strategy, workdir, record)
            return run_training(run, out_dir, callbacks, resume)
    finally:
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def worker_dir(workdir: str, strategy: tf.distribute.Strategy) -> str:
    """A non-chief worker's own run directory, removed when it ends: every worker of a cluster
    checkpoints (TensorFlow's pattern for custom loops; saving on the chief alone can
    deadlock), the others into here. It is named after the run and the task, so one a killed
    run left behind is cleared by the next; a resume reads the chief's record and checkpoints
    (``RunProgress``) and its LR range test results (copied here)."""
    resolver = strategy.cluster_resolver
    digest = hashlib.sha256(fs.abspath(workdir).encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(),
                        f"tfft-worker-{resolver.task_type}-{resolver.task_id}-{digest}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    found = os.path.join(workdir, rundir.LR_FIND)
    if fs.exists(found):
        tf.io.gfile.copy(found, os.path.join(path, rundir.LR_FIND))
    return path


def check_same_start(strategy: tf.distribute.Strategy, workdir: str,
                     record: checkpoints.Progress | None) -> None:
    """Every worker of a cluster must take the same decision (fresh run, or resume from the
    same point); they cannot when the workers see different run directories (a ``--workdir``
    on a disk of each machine). Also a barrier: no worker starts (and the chief changes its
    run directory) before every worker has read it."""
    point = [-1] * 4 if record is None else [
        checkpoints.PHASES.index(record.phase), record.epoch, record.step, int(record.done)]
    if not distribute.same_on_every_worker(strategy, point):
        raise UserError(f"--workdir: the workers found different runs in {workdir!r} (each "
                        "resumes from the chief's record there); give every worker a --workdir "
                        "on storage they all read, e.g. gs://BUCKET/RUN.")


def default_callbacks(config: Config, workdir: str) -> tuple[RunCallback, ...]:
    """TensorBoard logs (unless ``--tensorboard=false``) and the run report, on every run."""
    logs = (tensorboard.TensorBoardCallback(workdir),) if config.run.tensorboard else ()
    return (*logs, report.ReportCallback())


def run_training(run: phases.RunSetup, workdir: str, callbacks: tuple[RunCallback, ...],
                 resume: checkpoints.RunProgress) -> RunResult:
    """Both phases, the test pass and the run directory, for a prepared run."""
    config, clf = run.config, run.classifier
    params = phases.parameter_counts(clf, config)
    rundir.write_text(os.path.join(workdir, rundir.CONFIG), config.to_json() + "\n")
    print_summary(run, params)
    choose_rate = functools.partial(lr_find.auto_learning_rate, run, workdir=workdir)
    history = {phase: fit.train_phase(run, phase, resume, workdir, callbacks, choose_rate)
               for phase in phases.PHASES}
    freeze_backbone(clf)
    model, calibration = final_model.calibrated(run)
    test, predictions = final_model.test_pass(run, model)
    metrics: dict[str, Any] = {
        "phases": {phase: [without_timings(row) for row in rows]
                   for phase, rows in history.items()},
        "parameters": params, "backbone": clf.backbone.identity,
        "class_names": list(run.splits.class_names),
        "test": final_model.test_metrics(test, predictions)}
    if calibration:
        metrics["calibration"] = calibration
    rundir.save_model(model, os.path.join(workdir, rundir.MODEL))
    rundir.write_json(os.path.join(workdir, rundir.METRICS), metrics)
    if not config.run.keep_checkpoints:  # a finished run is never resumed
        checkpoints.remove_checkpoints(workdir)
    result = RunResult(config, workdir, dataclasses.replace(clf, model=model), run.splits,
                       metrics, history, predictions)
    for callback in callbacks:
        callback.on_run_end(result)
    run.say(f"Test accuracy: {test.accuracy:.4f} (loss {test.mean_loss:.4f}, "
            f"{int(test.count)} examples)")
    return result


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
    if distribute.shards_input(run.strategy):
        say(input_share(run))


def input_share(run: phases.RunSetup) -> str:
    """This worker's share of the training split: how many examples it reads and decodes per
    epoch, counted by the sharding filter its pipeline applies (over positions, not images)."""
    ctx = distribute.input_context(run.strategy)
    total = run.splits.sizes["train"]
    mine = distribute.shard_count(total, ctx, run.config.data.batch_size)
    return (f"Input: worker {ctx.input_pipeline_id} of {ctx.num_input_pipelines} reads "
            f"{mine:,} of {total:,} training examples per epoch")
