"""The exponential moving average of the weights (``--ema_decay``) that validation, the best
epoch's checkpoint and the phase's final weights use, while training steps on the raw weights.

Keras optimizers keep the average themselves (``use_ema=True``: one ``average`` slot per
variable, updated after every applied step and an optimizer variable, so the phase checkpoints
hold it and a resumed run continues it exactly). tfft trains each variable group with its own
optimizer, under float16 inside a ``LossScaleOptimizer``: the average lives in the inner one.
``swapped`` puts the averages into the model for a while (validation, the best checkpoint) and
the raw weights back after; ``finalize`` makes them the weights for good at a phase's end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


def inner(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that applies the steps (and keeps the averages): a loss-scaling
    wrapper's inner optimizer, else ``optimizer`` itself."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def pairs(optimizers: list[keras.optimizers.Optimizer]) -> list[tuple]:
    """(model variable, its average) of every optimizer that averages and has applied a step.

    An optimizer that has not stepped yet (a block gradual unfreezing has not reached) holds
    no average of its variables (the slot is zeros until the first step): its variables are
    left as they are. Keras keeps the pairing in the optimizer's private lists (same order).
    """
    found = []
    for optimizer in map(inner, optimizers):
        if not optimizer.use_ema or int(optimizer.iterations.numpy()) == 0:
            continue
        averages = optimizer._model_variables_moving_average  # noqa: SLF001 (Keras's slots)
        found.extend((var, avg) for var, avg in zip(optimizer._trainable_variables, averages,  # noqa: SLF001
                                                   strict=True) if avg is not None)
    return found


@contextlib.contextmanager
def swapped(optimizers: list[keras.optimizers.Optimizer]) -> Iterator[None]:
    """The averaged weights in the model inside the block, the raw ones again after it."""
    found = pairs(optimizers)
    raw = [var.numpy() for var, _ in found]
    for var, avg in found:
        var.assign(avg)
    try:
        yield
    finally:
        for (var, _), value in zip(found, raw, strict=True):
            var.assign(value)


def finalize(optimizers: list[keras.optimizers.Optimizer]) -> None:
    """The averaged weights become the model's (the phase's final weights)."""
    for var, avg in pairs(optimizers):
        var.assign(avg)
