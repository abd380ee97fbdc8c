"""Fine-tuning recipes: optimizers, learning-rate schedules, gradual unfreezing plans,
discriminative rates.

Everything here is a pure function of the config, the phase's epoch count and its steps per
epoch, so a resumed run recomputes the same plan: the schedules read the optimizer's
``iterations`` (checkpointed with the optimizer) and the unfreeze plan reads the epoch.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfft import precision
from tfft.config import TrainConfig

ONE_CYCLE_START_DIVISOR = 25.0  # one-cycle starts at lr / 25 ...
ONE_CYCLE_END_DIVISOR = 1e4  # ... and anneals to lr / 1e4 (Smith & Topin's defaults)
ONE_CYCLE_RAMP_FRACTION = 0.3  # ramp-up share of the phase when --warmup_epochs is 0


@keras.saving.register_keras_serializable(package="tfft")
class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate at a step of one phase, for one group of variables.

    ``offset`` shifts the optimizer's step onto the phase's step axis: a block unfrozen later in
    the phase has its own optimizer (whose ``iterations`` start at 0 when it starts training),
    yet follows the phase's curve. ``factor`` is the group's discriminative multiplier.
    """

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 offset: int = 0, factor: float = 1.0):
        self.kind, self.base_lr, self.total_steps = kind, float(base_lr), max(int(total_steps), 1)
        self.warmup_steps, self.offset, self.factor = int(warmup_steps), int(offset), float(factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + float(self.offset)
        return self.factor * self.base_lr * self._fraction(step)

    def _fraction(self, step: tf.Tensor) -> tf.Tensor:
        total, warm = float(self.total_steps), float(self.warmup_steps)
        if self.kind == "one_cycle":
            ramp = warm if warm > 0 else max(1.0, ONE_CYCLE_RAMP_FRACTION * total)
            start, end = 1.0 / ONE_CYCLE_START_DIVISOR, 1.0 / ONE_CYCLE_END_DIVISOR
            up = tf.clip_by_value(step / ramp, 0.0, 1.0)
            down = tf.clip_by_value((step - ramp) / max(total - ramp, 1.0), 0.0, 1.0)
            rising = start + (1.0 - start) * _cosine_rise(up)
            falling = end + (1.0 - end) * (1.0 - _cosine_rise(down))
            return tf.where(step < ramp, rising, falling)
        warmup = tf.minimum((step + 1.0) / warm, 1.0) if warm > 0 else tf.constant(1.0)
        if self.kind == "cosine":
            progress = tf.clip_by_value((step - warm) / max(total - warm, 1.0), 0.0, 1.0)
            return warmup * (1.0 - _cosine_rise(progress))
        return warmup

    def get_config(self) -> dict:
        return {"kind": self.kind, "base_lr": self.base_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "offset": self.offset, "factor": self.factor}


def _cosine_rise(x: tf.Tensor) -> tf.Tensor:
    """0 -> 1 along half a cosine as ``x`` goes 0 -> 1."""
    return 0.5 * (1.0 - tf.cos(math.pi * x))


def unfrozen_blocks_at(epoch: int, unfreeze_blocks: int, schedule: str, every: int) -> int:
    """Blocks trained in ``epoch`` (0-based): all at once, or the top one first and one more
    every ``every`` epochs (ULMFiT-style gradual unfreezing) up to ``unfreeze_blocks``."""
    if schedule == "all_at_once" or unfreeze_blocks == 0:
        return unfreeze_blocks
    return min(unfreeze_blocks, 1 + epoch // max(every, 1))


def first_epoch_of_block(depth: int, schedule: str, every: int) -> int:
    """The epoch in which the block ``depth`` places below the top (0 = top) starts training
    (the inverse of ``unfrozen_blocks_at``)."""
    return depth * max(every, 1) if schedule == "gradual" else 0


def discriminative_factor(depth: int, factor: float) -> float:
    """Learning-rate multiplier of the block ``depth`` places below the top (head and top = 1)."""
    return factor ** depth


def make_optimizer(cfg: TrainConfig,
                   learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                   ) -> keras.optimizers.Optimizer:
    """The optimizer ``--optimizer`` names, at a fixed rate or a schedule; under float16 in a
    ``LossScaleOptimizer`` (``tfft.precision``), whose ``iterations`` are the inner optimizer's
    applied steps (a skipped step leaves the schedule where it was).

    ``--ema_decay`` makes the optimizer keep the moving average of its variables (``tfft.ema``);
    the inner optimizer keeps it, so it averages applied steps only."""
    name, momentum = cfg.optimizer, cfg.momentum
    ema = {"use_ema": cfg.ema_decay > 0, "ema_momentum": cfg.ema_decay}
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, **ema)
    elif name == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate, momentum=momentum, **ema)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, **ema)
    else:
        optimizer = keras.optimizers.Adam(learning_rate, **ema)
    return precision.with_loss_scaling(optimizer)


def group_rate(cfg: TrainConfig, learning_rate: float, factor: float, first_epoch: int,
               epochs: int, steps_per_epoch: int) -> float | PhaseSchedule:
    """The learning rate of a group of variables trained at ``factor`` x the phase's rate from
    ``first_epoch`` on: a float when constant, else its per-step schedule."""
    if cfg.lr_schedule == "constant" and cfg.warmup_epochs == 0:
        return learning_rate * factor
    return PhaseSchedule(
        cfg.lr_schedule, learning_rate, epochs * steps_per_epoch,
        round(cfg.warmup_epochs * steps_per_epoch), first_epoch * steps_per_epoch,
        factor)


def last_step_rate(rate: float | PhaseSchedule, optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's last step (a metrics row's ``learning_rate``)."""
    if isinstance(rate, PhaseSchedule):
        return float(rate(max(int(optimizer.iterations.numpy()) - 1, 0)))
    return float(rate)
