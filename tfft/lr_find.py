"""``python -m tfft.lr_find --flagfile=…``: an LR range test for the head or finetune phase.

The learning rate grows exponentially from 1e-7 to 1 over ``--lr_find_steps`` training steps (or
until the smoothed loss explodes); the model is restored afterwards. The suggested rate is a tenth
of the rate at the smoothed loss's minimum: the steepest descent point is noisier on the short
sweeps a CPU affords, and min/10 stays on the stable side of it. ``--head_learning_rate=auto`` /
``--finetune_learning_rate=auto`` run the same test inside ``tfft.train``.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from absl import flags

from tfft import cli
from tfft.flags import config_from_flags, define_config_flags

if TYPE_CHECKING:
    from tfft.train_lib import Trainer

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


def range_test(trainer: Trainer, phase: str, model, train, groups=None,
               steps: int = DEFAULT_STEPS) -> RangeTest:
    """Sweeps the learning rate over ``steps`` training steps of ``model`` and restores it.

    ``groups`` (finetune) keep their discriminative factors relative to the swept rate.
    """
    import keras
    import tensorflow as tf

    from tfft import distribute
    from tfft.train_lib import VariableGroup, epoch_seed, make_optimizer

    groups = groups or [VariableGroup(list(model.trainable_variables))]
    saved = [v.numpy() for v in trainer.clf.model.variables]
    growth = (END_LR / START_LR) ** (1.0 / max(steps - 1, 1))

    class Sweep(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, factor: float):
            self.factor = factor

        def __call__(self, step):
            return self.factor * START_LR * tf.pow(growth, tf.cast(step, tf.float32))

    with trainer.strategy.scope():
        optimizers = [make_optimizer(trainer.config, Sweep(g.factor)) for g in groups]
        for optimizer, group in zip(optimizers, groups, strict=True):
            optimizer.build(group.variables)
    step = trainer._train_step(model, groups, optimizers)
    def iterators():  # one per step, epoch after epoch, shuffled as the phase's epochs are
        for epoch in itertools.count():
            ds = train(epoch_seed(trainer.seed, phase, epoch))
            iterator = iter(distribute.distribute(trainer.strategy, ds))
            yield from itertools.repeat(iterator, trainer.steps(ds))

    one = tf.constant(1)
    rates, losses, smoothed, average = [], [], [], 0.0
    for iterator in itertools.islice(iterators(), steps):
        sums = step(iterator, one)
        loss = float(sums[0]) / max(float(sums[2]), 1.0)
        rates.append(START_LR * growth ** len(rates))
        losses.append(loss)
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed.append(average / (1 - SMOOTHING ** len(losses)))
        if not math.isfinite(smoothed[-1]) or smoothed[-1] > EXPLODED * min(smoothed):
            break
    for variable, value in zip(trainer.clf.model.variables, saved, strict=True):
        variable.assign(value)
    finite = [s if math.isfinite(s) else float("nan") for s in smoothed]
    return RangeTest(rates, losses, finite, suggest(rates, finite))


def plot(result: RangeTest, path: str, title: str) -> None:
    """Loss against learning rate (log scale), with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.rates, result.losses, alpha=0.3, label="loss")
    ax.plot(result.rates, result.smoothed, label="smoothed loss")
    ax.axvline(result.suggestion, color="red", linestyle="--",
               label=f"suggested {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def auto_learning_rate(trainer: Trainer, phase: str, model, train, groups=None) -> float:
    """``--<phase>_learning_rate=auto``: the run's saved result, or a new range test (its plot
    goes to ``lr_find_<phase>.png`` in the run directory)."""
    from tfft import rundir

    path = os.path.join(trainer.workdir, rundir.LR_FIND)
    found = rundir.read_json(path) if os.path.exists(path) else {}
    if phase not in found:
        result = range_test(trainer, phase, model, train, groups)
        plot(result, os.path.join(trainer.workdir, f"lr_find_{phase}.png"),
             f"LR range test, {phase} phase")
        found[phase] = result.suggestion
        rundir.write_json(path, found)
    trainer.say(f"Phase {phase}: learning rate auto -> {found[phase]:.3g} (LR range test)")
    return float(found[phase])


def find(config, phase: str, workdir: str, steps: int = DEFAULT_STEPS) -> RangeTest:
    """The range test as ``python -m tfft.lr_find`` runs it; the finetune phase's test starts
    from a trained head (the head phase runs first, with its checkpoints in a temp dir)."""
    import shutil

    from tfft import data as data_lib
    from tfft import distribute, train_lib
    from tfft.backbones import build_backbone
    from tfft.classifier import build_classifier, freeze_backbone

    strategy = distribute.make_strategy(config.run)
    train_lib.seed_everything(config.train.seed)
    splits = data_lib.load_splits(config.data, config.train.seed)
    with strategy.scope():
        backbone = build_backbone(config.model, config.data.image_size)
        clf = build_classifier(backbone, splits.num_classes, config.model,
                               config.data.image_size)
    scratch = tempfile.mkdtemp(prefix="tfft-lr-find-")
    try:
        say = print if config.run.verbosity else (lambda _msg: None)
        trainer = train_lib.Trainer(clf, config, splits, strategy, say, (), scratch)
        freeze_backbone(clf)
        if phase == "head":
            model, train, _ = trainer.head_phase_data()
            result = range_test(trainer, phase, model, train, steps=steps)
        else:
            trainer.run_head_phase()
            groups = trainer.finetune_groups()
            result = range_test(trainer, phase, clf.model, trainer._train_batches, groups, steps)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    plot(result, os.path.join(workdir, "lr_find.png"), f"LR range test, {phase} phase")
    return result


def main() -> None:
    from tfft import rundir
    from tfft.config import validate

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
