"""Compiled train and eval steps under any tf.distribute strategy, and the loops that
run them over a dataset.

One training code path for every strategy: a custom step run with ``strategy.run`` (Keras 3
``model.fit`` fails under MultiWorkerMirroredStrategy, STACK_FACTS §4b). Everything here is a
function of a model, its variable groups, their optimizers, a loss and a dataset — no tfft
config, no classifier — so the training run, ``tfft.lr_find``, the benchmarks and the tests drive
the very same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft import distribute, precision
from tfft.device_inputs import Prepare  # (raw batch, training) -> the model's inputs

Steps = Callable[[Any, tf.Tensor], list[tf.Tensor]]  # (iterator, n) -> sums over n steps
AfterCall = Callable[[int, "EpochStats"], None]  # (steps done in the epoch, stats so far)
Weights = tuple[float, ...] | None  # per class id


@dataclass
class EpochStats:
    """Sums over an epoch, reduced across replicas."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, sums: list[tf.Tensor]) -> None:
        self.loss += float(sums[0])
        self.correct += float(sums[1])
        self.count += float(sums[2])

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.count, 1.0)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1.0)


@dataclass
class VariableGroup:
    """Variables trained together by one optimizer: at ``factor`` x the phase's learning rate,
    from epoch ``first_epoch`` of the phase on.

    Discriminative learning rates are separate optimizers, not scaled gradients: Adam, AdamW and
    RMSprop divide by a running gradient scale, so scaling a gradient barely changes the step.
    A group's own optimizer with a scaled learning rate makes the step itself scale, exactly, for
    every optimizer, and keeps each group's state (and its ``iterations``) in the checkpoint.
    """

    variables: list
    factor: float = 1.0
    first_epoch: int = 0


def make_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Per-example cross-entropy over class probabilities (the head ends in a softmax)."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)


def train_steps(strategy: tf.distribute.Strategy, model: keras.Model,
                groups: list[VariableGroup], optimizers: list[keras.optimizers.Optimizer],
                loss: keras.losses.Loss, *, jit_compile: bool = False,
                prepare: Prepare | None = None, class_weights: Weights = None) -> Steps:
    """One gradient over the groups' variables per step; each group's optimizer applies its
    part, so each group moves at its own learning rate, whatever the optimizer.

    ``class_weights`` (``--class_weight``) weight each example's loss by ``targets @ weights``
    (soft labels mix theirs), in training only: validation and test losses stay unweighted.

    With ``LossScaleOptimizer``s (float16) the loss is scaled once, by the first group's scale,
    and all groups skip a step with a non-finite gradient together (``tfft.precision``).
    ``jit_compile`` compiles the forward and backward pass with XLA; the cross-replica sums and
    the optimizers' updates stay outside it, since under MirroredStrategy they reach variables on
    the other replicas' devices, which XLA refuses.
    """
    variables = [v for group in groups for v in group.variables]
    bounds = np.cumsum([0] + [len(group.variables) for group in groups]).tolist()
    scaled = precision.scaled(optimizers)
    if scaled:
        precision.share_scale(optimizers)
    gradients = xla(gradient_fn(model, variables, loss, prepare, class_weights), jit_compile)

    def replica_step(x, y):
        scale = tf.convert_to_tensor(optimizers[0].dynamic_scale) if scaled else None
        sums, grads = gradients(x, y, global_batch_size(y), scale)
        if scaled:
            grads = precision.skip_together(grads)
        for optimizer, lo, hi in zip(optimizers, bounds, bounds[1:], strict=False):
            optimizer.apply_gradients(zip(grads[lo:hi], variables[lo:hi], strict=True))
        return sums

    return compile_steps(strategy, replica_step)


def gradient_fn(model: keras.Model, variables: list, loss: keras.losses.Loss,
                prepare: Prepare | None, class_weights: Weights = None) -> Callable:
    """``(x, y, global batch, loss scale or None) -> (batch sums, gradients)`` of one replica's
    batch: the part of a train step that only touches this replica's copies of the weights."""
    num_classes = model.output_shape[-1]
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def gradients(x, y, global_batch, scale):
        if prepare is not None:
            x = prepare(x, True)
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            target = targets(y, num_classes)
            per_example = loss(target, probs)
            if weights is not None:
                per_example *= tf.cast(tf.linalg.matvec(target, weights), per_example.dtype)
            total = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            if model.losses:
                total += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            if scale is not None:
                total = total * scale
        return batch_sums(per_example, probs, y), tape.gradient(total, variables)

    return gradients


def eval_steps(strategy: tf.distribute.Strategy, model: keras.Model,
               loss: keras.losses.Loss, *, jit_compile: bool = False,
               prepare: Prepare | None = None) -> Steps:
    """Loss and accuracy sums of ``model`` in inference mode."""
    num_classes = model.output_shape[-1]

    def replica_step(x, y):
        if prepare is not None:
            x = prepare(x, False)
        probs = model(x, training=False)
        return batch_sums(loss(tf.one_hot(y, num_classes), probs), probs, y)

    return compile_steps(strategy, xla(replica_step, jit_compile))


def xla(fn: Callable, jit_compile: bool) -> Callable:
    """``fn`` compiled with XLA on its own (called per replica inside the compiled loop, which
    XLA cannot compile itself: it reads a dataset iterator), or ``fn`` unchanged.

    The compiled function is called from a plain one: ``strategy.run`` given a ``tf.function``
    lifts it around every replica (except when all are GPUs), and one XLA program may not reach
    variables on several devices.
    """
    if not jit_compile:
        return fn
    compiled = tf.function(fn, jit_compile=True, autograph=False, reduce_retracing=True)

    def per_replica(*args):
        return compiled(*args)

    return per_replica


def compile_steps(strategy: tf.distribute.Strategy, replica_step: Callable) -> Steps:
    """``replica_step`` under the strategy, as ``steps(iterator, n)``: ``n`` steps on the next
    ``n`` batches of ``iterator`` in one compiled call, their sums reduced across replicas and
    added up.

    One trace serves every call: ``n`` is a tensor, the iterator's element spec leaves the batch
    size free (so a last partial batch retraces nothing), and AutoGraph is off (the loop is an
    explicit ``tf.while_loop``; converting Keras code would add about a second).
    """

    def one_step(batch) -> list[tf.Tensor]:
        sums = strategy.run(replica_step, args=batch)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

    @tf.function(autograph=False)
    def steps(iterator, n: tf.Tensor) -> list[tf.Tensor]:
        def body(i, sums):
            new = one_step(iterator.get_next())
            return i + 1, [a + b for a, b in zip(sums, new, strict=True)]

        zeros = [tf.zeros([], tf.float32) for _ in range(3)]
        return tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), zeros))[1]

    return steps


def count_steps(ds: tf.data.Dataset) -> int:
    """Batches in ``ds``: always known, ``data.load_splits`` and the feature cache assert every
    split's size."""
    n = int(ds.cardinality())
    if n < 0:
        raise ValueError("tfft needs datasets of known cardinality; assert it with "
                         "tf.data.experimental.assert_cardinality")
    return n


def call_sizes(start: int, steps: int, per_call: int,
               every: int = 0) -> Iterator[tuple[int, int]]:
    """(steps in the call, steps done after it) for each compiled call from step ``start`` to
    ``steps``: at most ``per_call`` a call, cut at every multiple of ``every`` (when set), so
    step checkpoints land where asked."""
    i = start
    while i < steps:
        n = min(per_call, steps - i, every - i % every if every else steps)
        i += n
        yield n, i


def run_steps(steps: Steps, strategy: tf.distribute.Strategy, batches: tf.data.Dataset, *,
              stats: EpochStats | None = None, start: int = 0, per_call: int = 1,
              every: int = 0, after_call: AfterCall | None = None) -> EpochStats:
    """Runs ``steps`` over the batches of one epoch from batch ``start`` on (a resumed epoch
    skips the batches it already trained on), ``per_call`` steps per compiled call, adding to
    ``stats``. ``after_call`` runs between calls (progress, NaN checks, step checkpoints)."""
    stats = stats if stats is not None else EpochStats()
    total = count_steps(batches)
    iterator = iter(distribute.distribute(strategy, batches.skip(start)))
    for n, done in call_sizes(start, total, per_call, every):
        stats.add(steps(iterator, tf.constant(n)))
        if after_call:
            after_call(done, stats)
    return stats


def global_batch_size(labels: tf.Tensor) -> tf.Tensor:
    """Examples in this step across all replicas (and workers).

    ``compute_average_loss`` would otherwise assume every replica holds as many examples as this
    one, which misweights a final partial batch split unevenly (e.g. 9 -> 5 + 4), so the
    gradient would differ from the same step under the default strategy.
    """
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)
    return tf.cast(total, tf.int32)


def targets(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Per-example target distributions ``[B, C]`` float32: one-hot of int labels, or soft labels
    (MixUp/CutMix training batches, ``tfft.augment``) as they are."""
    if labels.dtype.is_integer:
        return tf.one_hot(labels, num_classes)
    return tf.cast(labels, tf.float32)


def batch_sums(per_example: tf.Tensor, probs: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
    """Summed loss, correct predictions and example count of one batch (float32); soft labels
    count as their most likely class."""
    if not labels.dtype.is_integer:
        labels = tf.argmax(labels, axis=-1)
    predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
    return [
        tf.reduce_sum(tf.cast(per_example, tf.float32)),
        tf.reduce_sum(tf.cast(predicted == labels, tf.float32)),
        tf.cast(tf.shape(labels)[0], tf.float32),
    ]
