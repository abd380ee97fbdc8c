"""The test pass's loop: eval sums plus every example's label and probabilities, gathered from
every replica, in one pass over a dataset (``tfft.final_model`` and the tests use it).

Kept beside ``tfft.loop``, whose train and eval steps return sums only: prediction also moves
each batch's probabilities back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft import distribute, loop
from tfft.device_inputs import Prepare


def predict_steps(strategy: tf.distribute.Strategy, model: keras.Model,
                  loss: keras.losses.Loss, *, jit_compile: bool = False,
                  prepare: Prepare | None = None) -> Callable[[Any], tuple]:
    """One step that gives the eval sums and, gathered from every replica, the labels and
    float32 probabilities of the batch: the test pass keeps its predictions for the report."""
    num_classes = model.output_shape[-1]

    def forward(x, y):
        if prepare is not None:
            x = prepare(x, False)
        probs = tf.cast(model(x, training=False), tf.float32)
        return loop.batch_sums(loss(tf.one_hot(y, num_classes), probs), probs, y), probs, y

    replica_step = loop.xla(forward, jit_compile)

    @tf.function(autograph=False)
    def step(iterator) -> tuple:
        sums, probs, labels = strategy.run(replica_step, args=iterator.get_next())
        reduced = [strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]
        return reduced, strategy.gather(probs, axis=0), strategy.gather(labels, axis=0)

    return step


def predict(strategy: tf.distribute.Strategy, model: keras.Model, loss: keras.losses.Loss,
            ds: tf.data.Dataset, after_call: loop.AfterCall | None = None, *,
            jit_compile: bool = False, prepare: Prepare | None = None,
            ) -> tuple[loop.EpochStats, np.ndarray, np.ndarray]:
    """Loss and accuracy over ``ds`` plus every example's label and probabilities, in one pass
    (one step per batch)."""
    step = predict_steps(strategy, model, loss, jit_compile=jit_compile, prepare=prepare)
    stats = loop.EpochStats()
    labels, probabilities = [], []
    iterator = iter(distribute.distribute(strategy, ds))
    for done in range(1, loop.count_steps(ds) + 1):
        sums, probs, y = step(iterator)
        stats.add(sums)
        probabilities.append(probs.numpy())
        labels.append(y.numpy())
        if after_call:
            after_call(done, stats)
    classes = model.output_shape[-1]
    return (stats, np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
            np.concatenate(probabilities) if probabilities else np.zeros((0, classes), np.float32))
