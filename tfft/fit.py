"""Running one phase's plan: its epochs, checkpoints, resume and early stopping.

The plan (``tfft.phases``) says what trains on what; the compiled steps are ``tfft.loop``'s; the
resume bookkeeping is ``tfft.checkpoints``'. This module turns them into epochs: it builds each
group's optimizer, runs the epoch's steps with progress, a NaN guard and step checkpoints between
compiled calls, validates, records the epoch row and tells the run's callbacks.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfft import (
    accelerator,
    checkpoints,
    class_counts,
    diskspace,
    ema,
    loop,
    phases,
    progress,
    rundir,
    schedules,
)
from tfft.callbacks import PhaseTimings, RunCallback
from tfft.classifier import count_params
from tfft.config import AUTO_LR
from tfft.errors import TrainingDiverged, UserError

ChooseRate = Callable[[phases.PhasePlan], float]


def train_phase(run: phases.RunSetup, phase: str, resume: checkpoints.RunProgress,
                workdir: str, callbacks: tuple[RunCallback, ...] = (),
                choose_rate: ChooseRate | None = None) -> list[dict[str, Any]]:
    """Trains one phase (or skips it, or takes a resumed run's finished one); its epoch rows.

    ``choose_rate(plan)`` gives the rate of a phase configured with ``auto`` (the LR range test:
    ``tfft.lr_find`` hands its own function in, so it can train a head phase itself).
    """
    if not phases.runs(run.config, phase):
        return []
    if resume.finished(phase, phases.checkpoint_variables(run.classifier, phase)):
        run.say(f"Phase {phase}: already finished in {workdir} (resumed run)")
        return resume.history(phase)
    start = time.perf_counter()
    plan = phases.head_plan(run) if phase == "head" else phases.finetune_plan(run)
    if plan.learning_rate == AUTO_LR:
        if choose_rate is None:
            raise ValueError(f"phase {phase}: learning rate auto needs choose_rate")
        plan = dataclasses.replace(plan, learning_rate=choose_rate(plan))
    rows = PhaseRunner(run, plan, resume, workdir, callbacks).fit()
    timings = PhaseTimings(phase, time.perf_counter() - start, plan.feature_seconds,
                           tuple(row["seconds"] for row in rows if "seconds" in row))
    for callback in callbacks:
        callback.on_phase_end(timings)
    return rows


class PhaseRunner:
    """Trains one phase's plan epoch by epoch: checkpoints after every epoch (and every
    ``--checkpoint_every_steps``), resumes an interrupted phase exactly where it stopped, and
    stops early (restoring the best epoch) when asked.

    Each epoch's batches come from a seed that depends only on the run's seed, the phase and the
    epoch, so a resumed epoch sees the same batches in the same order and skips those it already
    trained on. Each variable group has an optimizer whose learning-rate schedule is scaled by
    the group's factor and that starts at the group's first epoch; the schedules read their
    optimizer's checkpointed ``iterations`` and the active groups follow from the epoch, so a
    resumed phase continues both exactly.
    """

    def __init__(self, run: phases.RunSetup, plan: phases.PhasePlan,
                 resume: checkpoints.RunProgress, workdir: str,
                 callbacks: tuple[RunCallback, ...]):
        self.run, self.plan, self.resume, self.workdir = run, plan, resume, workdir
        self.callbacks = callbacks
        cfg = run.config.train
        first = plan.batches(phases.epoch_seed(cfg.seed, plan.phase, 0))
        per_epoch = max(loop.count_steps(first), 1)
        self.rates = [schedules.group_rate(cfg, plan.learning_rate, g.factor, g.first_epoch,
                                           plan.epochs, per_epoch) for g in plan.groups]
        with run.strategy.scope():
            self.optimizers = [schedules.make_optimizer(cfg, rate) for rate in self.rates]
            for optimizer, group in zip(self.optimizers, plan.groups, strict=True):
                optimizer.build(group.variables)
        self.saver = checkpoints.PhaseCheckpointer(
            workdir, plan.phase, plan.variables, [v for o in self.optimizers for v in o.variables])
        self.best_saver = checkpoints.PhaseCheckpointer(workdir, f"{plan.phase}_best",
                                                        plan.variables, [])
        self.check_free_space()
        self.loss = loop.make_loss(cfg.label_smoothing)
        self.class_weights = class_weights(run)
        # Resolved once: every step of the phase, and its validation, compile the same way.
        self.jit_compile = accelerator.jit_compile(run.config, run.strategy)
        self.prepare = plan.prepare
        self.evaluate = loop.eval_steps(run.strategy, plan.model, self.loss,
                                        jit_compile=self.jit_compile, prepare=self.prepare)
        self.steps: loop.Steps | None = None
        self.active = -1

    def fit(self) -> list[dict[str, Any]]:
        """Runs the remaining epochs; returns every epoch row of the phase."""
        plan, say = self.plan, self.run.say
        resumed = self.resume.resuming(plan.phase)
        record = self.resume.start(plan.phase, self.saver)
        if resumed:
            say(f"Resuming phase {plan.phase} at epoch {record.epoch + 1}, "
                f"step {record.step + 1} from {record.checkpoint}")
        history = record.history.setdefault(plan.phase, [])
        say(f"Phase {plan.phase}: {plan.epochs} epoch(s), learning rate {plan.learning_rate:g}, "
            f"{count_params(plan.model.trainable_weights):,} trainable parameters")
        for callback in self.callbacks:
            callback.on_phase_begin(plan.phase, plan.model, plan.epochs)
        for epoch in range(record.epoch, plan.epochs):
            row = self.train_epoch(epoch, record)
            history.append(row)
            for callback in self.callbacks:
                callback.on_epoch_end(row, plan.model)
            say(f"  {plan.phase} epoch {epoch + 1}: loss {row['loss']:.4f} acc "
                f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} val_acc "
                f"{row['val_accuracy']:.4f} ({row['seconds']:.1f}s)")
            stop = self.track_best(record, row["val_accuracy"])
            self.resume.save(self.saver, epoch + 1, 0)
            if stop:
                say(f"  early stop: no val_accuracy gain in "
                    f"{self.run.config.train.early_stopping_patience} epoch(s)")
                break
        self.finish(record)
        return history

    def train_epoch(self, epoch: int, record: checkpoints.Progress) -> dict[str, Any]:
        """One epoch (the rest of it, when resumed mid-way) and its validation: its row."""
        plan, run = self.plan, self.run
        self.activate(epoch)
        start = time.perf_counter()
        stats = loop.EpochStats(**record.partial) if record.step else loop.EpochStats()
        batches = plan.batches(phases.epoch_seed(run.config.train.seed, plan.phase, epoch))
        total = loop.count_steps(batches)
        bar = progress.progress_bar(total, f"{plan.phase} {epoch + 1}/{plan.epochs}",
                                    run.config.run.verbosity)
        after = functools.partial(self.after_call, epoch, total, bar,
                                  self.resume.global_step - record.step)
        loop.run_steps(self.steps, run.strategy, batches, stats=stats, start=record.step,
                       per_call=plan.steps_per_call,
                       every=run.config.run.checkpoint_every_steps, after_call=after)
        with ema.swapped(self.optimizers):
            val = loop.run_steps(self.evaluate, run.strategy, plan.validation,
                                 per_call=plan.steps_per_call)
        return {"epoch": epoch + 1, "phase": plan.phase, "loss": stats.mean_loss,
                "accuracy": stats.accuracy, "val_loss": val.mean_loss,
                "val_accuracy": val.accuracy,
                "learning_rate": schedules.last_step_rate(self.rates[0], self.optimizers[0]),
                "seconds": time.perf_counter() - start, "global_step": self.resume.global_step}

    def activate(self, epoch: int) -> None:
        """The train step over the groups the unfreeze schedule trains in ``epoch`` (rebuilt
        only when that set changes)."""
        plan = self.plan
        live = sum(group.first_epoch <= epoch for group in plan.groups)
        if live != self.active:
            if plan.unfreeze:
                plan.unfreeze(epoch)
            self.steps = loop.train_steps(self.run.strategy, plan.model, plan.groups[:live],
                                          self.optimizers[:live], self.loss,
                                          jit_compile=self.jit_compile, prepare=self.prepare,
                                          class_weights=self.class_weights)
            self.active = live

    def after_call(self, epoch: int, total: int, bar: keras.utils.Progbar | None,
                   epoch_start: int, done: int, stats: loop.EpochStats) -> None:
        """Between compiled calls: the global step, the NaN guard, progress, step checkpoints."""
        self.resume.global_step = epoch_start + done
        if not np.isfinite(stats.loss):
            phase = self.plan.phase
            raise TrainingDiverged(
                f"Loss became NaN/Inf in phase {phase}, epoch {epoch + 1}, by step {done}; "
                f"try a lower --{phase}_learning_rate (the last good checkpoint is in "
                f"{os.path.join(self.workdir, rundir.CHECKPOINTS)}).")
        if bar:
            bar.update(done, [("loss", stats.mean_loss), ("accuracy", stats.accuracy)])
        every = self.run.config.run.checkpoint_every_steps
        if every and done % every == 0 and done < total:
            self.resume.save(self.saver, epoch, done, dataclasses.asdict(stats))

    def track_best(self, record: checkpoints.Progress, val_accuracy: float) -> bool:
        """Early stopping: keeps the best epoch's weights (the averaged ones with
        ``--ema_decay``, which its validation scored); True when patience has run out."""
        patience = self.run.config.train.early_stopping_patience
        if not patience:
            return False
        if val_accuracy > record.best:
            record.best, record.waited = val_accuracy, 0
            with ema.swapped(self.optimizers):
                record.best_checkpoint = self.best_saver.save_checkpoint()
        else:
            record.waited += 1
        return record.waited >= patience

    def finish(self, record: checkpoints.Progress) -> None:
        """The phase's final weights (the best epoch's under early stopping, else with
        ``--ema_decay`` the averaged ones), saved as done, without optimizer slots: resuming the
        next phase needs only the weights."""
        phase = self.plan.phase
        if record.best_checkpoint:
            checkpoints.restore_model_variables(self.workdir, record.best_checkpoint,
                                                self.plan.variables)
        else:
            ema.finalize(self.optimizers)
        record.done, record.best_checkpoint = True, ""
        final = checkpoints.PhaseCheckpointer(self.workdir, f"{phase}_final",
                                              self.plan.variables, [])
        self.resume.save(final, record.epoch, 0)

    def check_free_space(self) -> None:
        """Refuses up front a phase whose checkpoints cannot fit: two of its checkpoints while
        the newer replaces the older, the best epoch's and the final weights."""
        weights = self.best_saver.size_bytes
        needed = 2 * self.saver.size_bytes + weights * (
            2 if self.run.config.train.early_stopping_patience else 1)
        diskspace.check_free(self.saver.directory, needed, f"the {self.plan.phase} phase's "
                             "checkpoints")


def class_weights(run: phases.RunSetup) -> tuple[float, ...] | None:
    """The training loss's class weights (``--class_weight``), from the training split's
    counts; refused when its source did not know them."""
    if run.config.train.class_weight == "none":
        return None
    counts = run.splits.counts.get("train")
    if not counts or not sum(counts):
        raise UserError("--class_weight: expected a dataset whose training labels are known "
                        "before training (image folder, CSV, arrays); received "
                        f"{run.config.data.dataset!r}, whose examples per class are not.")
    return class_counts.balanced_weights(counts)
