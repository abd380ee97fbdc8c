"""The compiled steps of ``tfft.loop`` on a two-layer Dense model (no backbone, no config).

Each scenario trains one epoch of 37 examples in batches of 8 (the last batch holds 5, which two
replicas split 3 + 2) with plain SGD, and compares the final weights against a reference: a
plain eager loop that takes each batch's mean loss. Under the default strategy in this process,
and under ``mirrored`` over 2 logical CPUs in a subprocess (logical devices must be set before
TensorFlow starts).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from conftest import on_two_cpus

from tfft import distribute, loop

EXAMPLES, BATCH, CLASSES, LR = 37, 8, 3, 0.5


def dense_model() -> keras.Model:
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(hidden))


def batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, 4)).astype(np.float32)
    y = rng.integers(0, CLASSES, EXAMPLES).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def built(strategy: tf.distribute.Strategy) -> tuple[keras.Model, keras.optimizers.Optimizer]:
    with strategy.scope():
        model = dense_model()
        optimizer = keras.optimizers.SGD(LR)
        optimizer.build(model.trainable_variables)
    return model, optimizer


def train_epoch(strategy, per_call: int = 1, start: int = 0, model=None, optimizer=None,
                stats: loop.EpochStats | None = None):
    """One epoch (from batch ``start``) through tfft's steps; the model and the stats."""
    if model is None:
        model, optimizer = built(strategy)
    steps = loop.train_steps(strategy, model, [loop.VariableGroup(model.trainable_variables)],
                             [optimizer], loop.make_loss())
    stats = loop.run_steps(steps, strategy, batches(), stats=stats, start=start,
                           per_call=per_call)
    return model, stats


def reference_epoch() -> tuple[keras.Model, float]:
    """Eager SGD on each batch's mean loss: what every strategy must compute."""
    model, loss, total = dense_model(), loop.make_loss(), 0.0
    for x, y in batches():
        with tf.GradientTape() as tape:
            per_example = loss(tf.one_hot(y, CLASSES), model(x, training=True))
            mean = tf.reduce_mean(per_example)
        grads = tape.gradient(mean, model.trainable_variables)
        for variable, grad in zip(model.trainable_variables, grads, strict=True):
            variable.assign_sub(LR * grad)
        total += float(tf.reduce_sum(per_example))
    return model, total


def resumed_epoch(strategy, stop_after: int = 2) -> keras.Model:
    """Two batches, a checkpoint, then a new model and optimizer restored from it that skip the
    two batches done (as a killed and restarted run does)."""
    model, optimizer = built(strategy)
    steps = loop.train_steps(strategy, model, [loop.VariableGroup(model.trainable_variables)],
                             [optimizer], loop.make_loss())
    iterator = iter(distribute.distribute(strategy, batches()))
    partial = loop.EpochStats()
    partial.add(steps(iterator, tf.constant(stop_after)))
    values = [v.numpy() for v in [*model.variables, *optimizer.variables]]
    fresh, fresh_optimizer = built(strategy)
    for variable, value in zip([*fresh.variables, *fresh_optimizer.variables], values,
                               strict=True):
        variable.assign(value)
    return train_epoch(strategy, start=stop_after, model=fresh, optimizer=fresh_optimizer,
                       stats=partial)[0]


def max_diff(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.max(np.abs(x.numpy() - y.numpy())))
               for x, y in zip(a.weights, b.weights, strict=True))


def scenario_diffs(strategy: tf.distribute.Strategy) -> dict[str, float]:
    """Largest weight (and loss) differences of each scenario from its reference."""
    reference, reference_loss = reference_epoch()
    one, stats = train_epoch(strategy, per_call=1)
    several, several_stats = train_epoch(strategy, per_call=3)
    return {
        "one_per_call_vs_reference": max_diff(one, reference),
        "several_per_call_vs_one": max_diff(several, one),
        "loss_vs_reference": abs(stats.loss - reference_loss),
        "several_loss_vs_one": abs(several_stats.loss - stats.loss),
        "count": stats.count,
        "resumed_vs_uninterrupted": max_diff(resumed_epoch(strategy), one),
    }


def check(diffs: dict[str, float]) -> None:
    assert diffs["count"] == EXAMPLES
    for name, value in diffs.items():
        if name != "count":
            assert value < 1e-5, (name, value)


def test_call_sizes_cut_at_checkpoint_steps():
    assert list(loop.call_sizes(0, 7, 3)) == [(3, 3), (3, 6), (1, 7)]
    assert list(loop.call_sizes(2, 7, 100, every=4)) == [(2, 4), (3, 7)]


def test_default_strategy_steps_match_the_reference():
    check(scenario_diffs(tf.distribute.get_strategy()))


def test_mirrored_on_two_cpus_matches_the_reference():
    check(on_two_cpus("test_loop", "module.scenario_diffs(strategy)"))
