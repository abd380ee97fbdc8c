"""Resumable runs: per-epoch (and optional per-step) checkpoints plus a progress record.

A run directory that holds ``progress.json`` but no final metrics was interrupted; rerunning the
same command resumes from the last checkpoint, across the phase boundary too. The checkpoint
holds every model variable (including dropout seed-generator states) and the optimizer state;
``progress.json`` records the phase, epoch, step within the epoch, the epoch-level history and
early-stopping state. The checkpoint is written first and the progress record (atomically)
second, so the record never points to a checkpoint that does not exist.

Checkpoints do not pile up: each phase keeps its newest (plus its best epoch's while early
stopping is on); a finished phase keeps only its final weights, without optimizer slots, until
the next phase's first checkpoint holds them; a completed run removes them all unless
``--keep_checkpoints``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from tfft import diskspace, fs, rundir
from tfft.config import Config, RunConfig
from tfft.errors import UserError

PROGRESS = rundir.PROGRESS
CHECKPOINTS = rundir.CHECKPOINTS
PHASES = ("head", "finetune")
# The run section changes how a run executes but not what it computes: a resume may change it.
RESUMABLE_CHANGES = frozenset(f.name for f in dataclasses.fields(RunConfig))
RUN_FILES = (rundir.CONFIG, rundir.METRICS, rundir.MODEL, PROGRESS)
# Directories a new run must not mix with: checkpoints and TensorBoard logs (exports are
# versioned and kept; report files are rewritten by every run).
RUN_DIRS = (CHECKPOINTS, rundir.TENSORBOARD)


@dataclass
class Progress:
    """Where an interrupted run stopped (see module docstring)."""

    phase: str
    epoch: int  # epochs completed in ``phase``
    step: int  # steps completed in epoch ``epoch + 1`` (0 at epoch boundaries)
    done: bool  # ``phase`` finished (its final, possibly best-restored, weights saved)
    global_step: int
    checkpoint: str
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    partial: dict[str, float] = field(default_factory=dict)
    best: float = -1.0
    waited: int = 0
    best_checkpoint: str = ""

    def completed(self, phase: str) -> bool:
        """True when ``phase`` needs no more training on resume."""
        later = PHASES.index(self.phase) > PHASES.index(phase)
        return later or (self.phase == phase and self.done)


def prepare_workdir(workdir: str, config: Config, overwrite: bool,
                    may_delete: bool = True) -> Progress | None:
    """Fresh run (None) or the progress to resume; refuses finished or different runs.

    Every worker of a cluster calls this on the same ``workdir`` so all make the same decision;
    only the chief (``may_delete``) clears it for ``--overwrite``.
    """
    if overwrite and not may_delete:
        return None
    if overwrite:
        for name in RUN_FILES:
            path = os.path.join(workdir, name)
            if fs.exists(path):
                fs.remove(path)
        for name in RUN_DIRS:
            fs.rmtree(os.path.join(workdir, name))
        return None
    config_path = os.path.join(workdir, rundir.CONFIG)
    if not fs.exists(config_path):
        return None
    saved = rundir.read_config(workdir)
    changed = [k for k, v in config.flat().items()
               if saved.flat().get(k) != v and k not in RESUMABLE_CHANGES]
    if changed:
        k = changed[0]
        raise UserError(f"--workdir: {workdir!r} holds a run with a different config ({k}: "
                        f"{saved.flat()[k]!r} there, {config.flat()[k]!r} now); pass --overwrite "
                        "to replace it or choose another --workdir.")
    metrics_path = os.path.join(workdir, rundir.METRICS)
    if fs.exists(metrics_path):
        accuracy = rundir.read_json(metrics_path).get("test", {}).get("accuracy")
        raise UserError(f"--workdir: {workdir!r} holds a finished run (test accuracy "
                        f"{accuracy}); pass --overwrite to train it again or choose another "
                        "--workdir.")
    progress_path = os.path.join(workdir, PROGRESS)
    if not fs.exists(progress_path):
        return None
    return Progress(**rundir.read_json(progress_path))


class PhaseCheckpointer:
    """Saves and restores one phase's model (+ optimizer) state under ``checkpoints/<name>``.

    Checkpoints are numbered ``ckpt-N``; an older one is removed only once the progress record
    no longer points to it (``prune``), so a crash or a full disk between writing a checkpoint
    and its record always leaves the record's checkpoint in place.
    """

    def __init__(self, workdir: str, name: str, model_variables: list,
                 optimizer_variables: list):
        self.workdir = workdir
        self.directory = os.path.join(workdir, CHECKPOINTS, name)
        variables = [_tf_variable(v) for v in [*model_variables, *optimizer_variables]]
        self.size_bytes = sum(v.shape.num_elements() * v.dtype.size for v in variables)
        self._checkpoint = tf.train.Checkpoint(
            model=[_tf_variable(v) for v in model_variables],
            optimizer=[_tf_variable(v) for v in optimizer_variables])
        self._checkpoint.save_counter  # noqa: B018 - created now, so it is written and restored

    def save_checkpoint(self) -> str:
        """Writes a checkpoint; returns its path relative to the run directory. A full disk is
        one line, and the half-written checkpoint is removed (TensorFlow leaves it)."""
        numbers = [int(m.group(1)) for m in map(_CKPT.fullmatch, _listdir(self.directory)) if m]
        prefix = os.path.join(self.directory, f"ckpt-{max(numbers, default=0) + 1}")
        try:
            with diskspace.reporting_full_disk(self.directory, "a checkpoint"):
                path = self._checkpoint.write(prefix)
        except BaseException:
            for name in _listdir(self.directory):
                if name.startswith(os.path.basename(prefix)):
                    _remove(os.path.join(self.directory, name))
            raise
        return fs.relpath(path, self.workdir)

    def save(self, progress: Progress) -> None:
        """Writes a checkpoint, then the progress record that points to it, then removes the
        checkpoints the record no longer names."""
        progress.checkpoint = self.save_checkpoint()
        rundir.write_json(os.path.join(self.workdir, PROGRESS), dataclasses.asdict(progress))
        prune(self.workdir, progress)

    def restore(self, progress: Progress) -> None:
        self._checkpoint.restore(os.path.join(self.workdir, progress.checkpoint)) \
            .assert_existing_objects_matched()


_CKPT = re.compile(r"ckpt-(\d+)\.index")


def prune(workdir: str, progress: Progress) -> None:
    """Removes every checkpoint file (and emptied directory) the record does not point to."""
    keep = {os.path.join(workdir, p) for p in (progress.checkpoint, progress.best_checkpoint)
            if p}
    root = os.path.join(workdir, CHECKPOINTS)
    for directory in _listdir(root):
        folder = os.path.join(root, directory)
        for name in _listdir(folder):
            path = os.path.join(folder, name)
            if not any(path.startswith(prefix + ".") for prefix in keep):
                _remove(path)
        if not _listdir(folder):
            fs.rmdir(folder)


def remove_checkpoints(workdir: str) -> None:
    """Deletes every checkpoint of a run (a finished run is never resumed)."""
    fs.rmtree(os.path.join(workdir, CHECKPOINTS))


def _listdir(path: str) -> list[str]:
    return fs.listdir(path) if fs.isdir(path) else []


def _remove(path: str) -> None:
    """A checkpoint's file, or a directory TensorFlow left from an interrupted write."""
    if fs.isdir(path):
        fs.rmtree(path)
    else:
        fs.remove(path)


class RunProgress:
    """Where a run is, across its phases: the ``Progress`` record of the phase in progress, the
    run's global step, and the checkpoints both are saved with.

    Made from ``prepare_workdir``'s result: None for a fresh run, else the interrupted run's
    record, whose finished phases are skipped and whose phase in progress resumes exactly.

    ``source`` is the run directory that record came from when it is not ``workdir``: a
    non-chief worker of a cluster resumes from the chief's record and checkpoints but saves into
    its own temporary directory, so the checkpoints the record names are copied from the chief's
    first (every restore then reads ``workdir``, as on one machine).
    """

    def __init__(self, workdir: str, record: Progress | None, source: str | None = None):
        self.workdir = workdir
        self.record = record
        self.global_step = record.global_step if record else 0
        if record is not None and source is not None and source != workdir:
            copy_checkpoints(source, workdir, record)

    def finished(self, phase: str, model_variables: list) -> bool:
        """True when a resumed run already finished ``phase``; its final weights are loaded."""
        record = self.record
        if record is None or not record.completed(phase):
            return False
        if record.phase == phase:
            restore_model_variables(self.workdir, record.checkpoint, model_variables)
        return True

    def history(self, phase: str) -> list[dict[str, Any]]:
        return self.record.history.get(phase, []) if self.record else []

    def resuming(self, phase: str) -> bool:
        """True when ``phase`` was interrupted and ``start`` will continue it."""
        return self.record is not None and self.record.phase == phase

    def start(self, phase: str, saver: PhaseCheckpointer) -> Progress:
        """The phase's record: the interrupted one with its checkpoint restored, or a new one."""
        if self.resuming(phase):
            saver.restore(self.record)
            self.global_step = self.record.global_step
            return self.record
        history = self.record.history if self.record else {}
        self.record = Progress(phase=phase, epoch=0, step=0, done=False,
                               global_step=self.global_step, checkpoint="", history=history)
        return self.record

    def save(self, saver: PhaseCheckpointer, epoch: int, step: int,
             partial: dict[str, float] | None = None) -> None:
        """Checkpoints the phase at ``step`` of epoch ``epoch + 1`` (0: the epoch boundary),
        with the sums of a partial epoch, then writes the record that points to it."""
        record = self.record
        record.epoch, record.step, record.global_step = epoch, step, self.global_step
        record.partial = dict(partial or {})
        saver.save(record)


def copy_checkpoints(source: str, workdir: str, record: Progress) -> None:
    """Copies the checkpoints ``record`` names (its latest and its best epoch's) from run
    directory ``source`` into ``workdir``, under the same relative paths."""
    for relative in filter(None, (record.checkpoint, record.best_checkpoint)):
        folder = os.path.dirname(os.path.join(source, relative))
        target = os.path.dirname(os.path.join(workdir, relative))
        fs.makedirs(target)
        for name in fs.listdir(folder):
            if name.startswith(os.path.basename(relative) + "."):
                tf.io.gfile.copy(os.path.join(folder, name), os.path.join(target, name),
                                 overwrite=True)


def restore_model_variables(workdir: str, checkpoint_path: str, model_variables: list) -> None:
    """Loads only the model's variables from a checkpoint (relative to ``workdir``)."""
    checkpoint = tf.train.Checkpoint(model=[_tf_variable(v) for v in model_variables])
    checkpoint.restore(os.path.join(workdir, checkpoint_path)).expect_partial()


def _tf_variable(variable: Any) -> tf.Variable:
    """The tf.Variable behind a Keras 3 variable (checkpoints track tf.Variables)."""
    return getattr(variable, "value", variable)
