"""Loss scaling for ``--mixed_precision=mixed_float16``, across variable groups and replicas.

float16 gradients underflow to zero below about 6e-8, so the loss is multiplied by a large
scale before the gradient and every gradient divided by it after; when a gradient overflows
(inf/NaN) the step is skipped and the scale halved, and it doubles after a run of finite steps.
Keras's ``LossScaleOptimizer`` does this around one optimizer. tfft trains several variable
groups (discriminative rates), each with its own optimizer, from one gradient, so the loss can be
scaled only once. Each group's optimizer is wrapped in a ``LossScaleOptimizer`` and the wrappers
are kept in lockstep:

- the step scales the loss by the first group's scale and every wrapper unscales by its own,
  so the scales must be equal: a group that starts training later takes the first group's
  scale state when its step is built (``share_scale``);
- every wrapper must skip the same steps: when any gradient of any group on any replica is not
  finite, every group on every replica is given non-finite gradients (``skip_together``), so all
  skip and halve together. (Under MirroredStrategy the wrapper decides from the first replica's
  gradients alone, before they are summed: an overflow on another replica alone would reach
  the weights.)

The wrappers' scale and counter are optimizer variables, so the checkpoints hold them. A skipped
step does not advance the inner optimizer's ``iterations``, which the learning-rate schedules read:
the schedule continues from the last applied step. ``mixed_bfloat16`` has float32's exponent
range and needs none of this.
"""

from __future__ import annotations

import keras
import tensorflow as tf

LOSS_SCALED_POLICY = "mixed_float16"


def loss_scaling() -> bool:
    """Whether the models built now compute in float16 (the global policy ``setup_run`` sets)."""
    return keras.mixed_precision.global_policy().name == LOSS_SCALED_POLICY


def with_loss_scaling(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """``optimizer`` wrapped in a ``LossScaleOptimizer`` under float16, as Keras's ``compile``
    does; unchanged otherwise."""
    if loss_scaling() and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def scaled(optimizers: list[keras.optimizers.Optimizer]) -> bool:
    """Whether the groups' optimizers scale the loss: all of them, or none."""
    kinds = {isinstance(o, keras.optimizers.LossScaleOptimizer) for o in optimizers}
    if len(kinds) > 1:
        raise ValueError("Either every variable group's optimizer is a LossScaleOptimizer or "
                         "none is: the loss is scaled once for all groups.")
    return kinds == {True}


def share_scale(optimizers: list[keras.optimizers.Optimizer]) -> None:
    """Gives every group the first group's loss-scale state. Groups that already trained
    together hold it already; a group joining later (gradual unfreezing) takes it over."""
    first = optimizers[0]
    for optimizer in optimizers[1:]:
        optimizer.dynamic_scale.assign(first.dynamic_scale)
        optimizer.step_counter.assign(first.step_counter)


def skip_together(grads: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """The gradients unchanged when every one on every replica is finite, else all NaN (call
    in replica context)."""
    present = [g for g in grads if g is not None]
    finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in present]))
    context = tf.distribute.get_replica_context()
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    factor = tf.where(bad > 0.0, float("nan"), 1.0)
    return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads]
