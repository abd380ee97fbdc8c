"""``python -m tfft.lr_find --flagfile=…``: an LR range test for the head or finetune phase.

The learning rate grows exponentially from 1e-7 to 1 over ``--lr_find_steps`` training steps (or
until the smoothed loss explodes); the model is restored afterwards. The suggested rate is a tenth
of the rate at the smoothed loss's minimum: the steepest descent point is noisier on the short
sweeps a CPU affords, and min/10 stays on the stable side of it. ``--head_learning_rate=auto`` /
``--finetune_learning_rate=auto`` run the same test inside ``tfft.train``.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from tfft import (
    accelerator,
    checkpoints,
    cli,
    distribute,
    fit,
    fs,
    loop,
    phases,
    plots,
    rundir,
    schedules,
)
from tfft.config import Config, validate
from tfft.flags import config_from_flags, define_config_flags
from tfft.phases import PhasePlan, RunSetup

START_LR, END_LR = 1e-7, 1.0
SMOOTHING = 0.9  # exponential moving average of the loss
EXPLODED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
DEFAULT_STEPS = 100

FLAGS = flags.FLAGS


@dataclass
class RangeTest:
    """One sweep: the rates tried, raw and smoothed losses, and the suggested rate."""

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float

    def to_dict(self) -> dict:
        return {"rates": self.rates, "losses": self.losses, "smoothed": self.smoothed,
                "suggestion": self.suggestion}


def suggest(rates: list[float], smoothed: list[float]) -> float:
    """A tenth of the rate at the smoothed loss's minimum, kept inside the sweep."""
    best = int(np.nanargmin(np.asarray(smoothed, dtype=np.float64)))
    return max(rates[best] / 10.0, rates[0])


def range_test(run: RunSetup, plan: PhasePlan, steps: int = DEFAULT_STEPS) -> RangeTest:
    """Sweeps the learning rate over ``steps`` training steps of the plan's model and restores
    every variable afterwards. The plan's groups keep their discriminative factors relative to
    the swept rate."""
    saved = [v.numpy() for v in run.classifier.model.variables]
    growth = (END_LR / START_LR) ** (1.0 / max(steps - 1, 1))
    with run.strategy.scope():
        optimizers = [schedules.make_optimizer(run.config.train, SweepSchedule(g.factor, growth))
                      for g in plan.groups]
        for optimizer, group in zip(optimizers, plan.groups, strict=True):
            optimizer.build(group.variables)
    step = loop.train_steps(run.strategy, plan.model, plan.groups, optimizers,
                            loop.make_loss(run.config.train.label_smoothing),
                            jit_compile=accelerator.jit_compile(run.config, run.strategy),
                            prepare=plan.prepare)
    rates, losses, smoothed, average = [], [], [], 0.0
    for iterator in itertools.islice(step_iterators(run, plan), steps):
        sums = step(iterator, tf.constant(1))
        losses.append(float(sums[0]) / max(float(sums[2]), 1.0))
        rates.append(START_LR * growth ** (len(rates)))
        average = SMOOTHING * average + (1 - SMOOTHING) * losses[-1]
        smoothed.append(average / (1 - SMOOTHING ** len(losses)))
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > EXPLODED * min(smoothed):
            break
    for variable, value in zip(run.classifier.model.variables, saved, strict=True):
        variable.assign(value)
    finite = [s if math.isfinite(s) else float("nan") for s in smoothed]
    return RangeTest(rates, losses, finite, suggest(rates, finite))


class SweepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``factor`` x an exponential sweep from ``START_LR``, ``growth`` times larger each step."""

    def __init__(self, factor: float, growth: float):
        self.factor, self.growth = factor, growth

    def __call__(self, step):
        return self.factor * START_LR * tf.pow(self.growth, tf.cast(step, tf.float32))


def step_iterators(run: RunSetup, plan: PhasePlan) -> Iterator:
    """The distributed iterator to take each step's batch from: epoch after epoch, each
    shuffled as the phase's epochs are."""
    for epoch in itertools.count():
        ds = plan.batches(phases.epoch_seed(run.config.train.seed, plan.phase, epoch))
        iterator = iter(distribute.distribute(run.strategy, ds))
        yield from itertools.repeat(iterator, loop.count_steps(ds))


def plot(result: RangeTest, path: str, title: str) -> str:
    """Loss against learning rate (log scale), with the suggestion marked."""
    return plots.plot_lr_range(result.rates, result.losses, result.smoothed, result.suggestion,
                               title, path)


def auto_learning_rate(run: RunSetup, plan: PhasePlan, workdir: str) -> float:
    """``--<phase>_learning_rate=auto``: the run's saved result, or a new range test (its plot
    goes to ``lr_find_<phase>.png`` in the run directory)."""
    path = os.path.join(workdir, rundir.LR_FIND)
    found = rundir.read_json(path) if fs.exists(path) else {}
    if plan.phase not in found:
        result = range_test(run, plan)
        plot(result, os.path.join(workdir, rundir.lr_find_png(plan.phase)),
             f"LR range test, {plan.phase} phase")
        found[plan.phase] = result.suggestion
        rundir.write_json(path, found)
    run.say(f"Phase {plan.phase}: learning rate auto -> {found[plan.phase]:.3g} (LR range test)")
    return float(found[plan.phase])


def find(config: Config, phase: str, workdir: str, steps: int = DEFAULT_STEPS) -> RangeTest:
    """The range test as ``python -m tfft.lr_find`` runs it, on a run set up exactly as
    training sets one up; the finetune phase's test starts from a trained head (the head phase
    runs first, its checkpoints in a temporary directory)."""
    config = validate(config)
    scratch = tempfile.mkdtemp(prefix="tfft-lr-find-")
    try:
        with phases.setup_run(config) as run:
            if phase == "finetune":
                choose = functools.partial(auto_learning_rate, run, workdir=scratch)
                fit.train_phase(run, "head", checkpoints.RunProgress(scratch, None), scratch,
                                choose_rate=choose)
            plan = phases.head_plan(run) if phase == "head" else phases.finetune_plan(run)
            result = range_test(run, plan, steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    fs.makedirs(workdir)
    plot(result, os.path.join(workdir, "lr_find.png"), f"LR range test, {phase} phase")
    return result


def main() -> None:
    config = validate(config_from_flags(FLAGS))
    rundir.check_writable(FLAGS.workdir, "workdir")
    result = find(config, FLAGS.lr_find_phase, FLAGS.workdir, FLAGS.lr_find_steps)
    print(f"Suggested {FLAGS.lr_find_phase} learning rate: {result.suggestion:.3g} "
          f"(plot: {os.path.join(FLAGS.workdir, 'lr_find.png')})")


if __name__ == "__main__":
    define_config_flags()
    flags.DEFINE_string("workdir", "runs/lr_find", "Where lr_find.png is written.")
    flags.DEFINE_enum("lr_find_phase", "head", ["head", "finetune"],
                      "Phase whose learning rate is searched (finetune trains the head first).")
    flags.DEFINE_integer("lr_find_steps", DEFAULT_STEPS, "Steps of the sweep.", lower_bound=2)
    cli.run(main)
