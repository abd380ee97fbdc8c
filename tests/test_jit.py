"""``--jit_compile``: XLA-compiled steps and feature pass train the same weights as the plain ones.

Tolerance: weights and losses agree within 1e-5 absolute (measured on this CPU: at most 2.4e-7
on a tiny two-phase run, 4.5e-7 relative; XLA fuses and reorders float32 sums). XLA on this CPU
is slow for depthwise convolutions (STACK_FACTS §7), so the run test is marked large.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import on_two_cpus, tiny_config

from tfft import feature_cache, loop, predict_loop, train_lib

TOLERANCE = 1e-5


def dense_epoch(strategy: tf.distribute.Strategy, jit_compile: bool) -> dict[str, list]:
    """One epoch of a Dense model with BatchNorm and Adam (2 groups), then its eval and predict
    passes, with or without XLA: weights and sums. No dropout: TensorFlow's stateless random
    ops draw other numbers inside XLA, so dropout masks differ between the two."""
    with strategy.scope():
        keras.utils.set_random_seed(5)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        hidden = keras.layers.BatchNormalization()(hidden)
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
        groups = [loop.VariableGroup(model.trainable_variables[:4]),
                  loop.VariableGroup(model.trainable_variables[4:], factor=0.5)]
        optimizers = [keras.optimizers.Adam(0.01 * g.factor) for g in groups]
        for optimizer, group in zip(optimizers, groups, strict=True):
            optimizer.build(group.variables)
    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices((rng.normal(size=(37, 4)).astype(np.float32),
                                             (np.arange(37) % 3).astype(np.int32))).batch(8)
    loss = loop.make_loss()
    steps = loop.train_steps(strategy, model, groups, optimizers, loss, jit_compile=jit_compile)
    train = loop.run_steps(steps, strategy, ds, per_call=2)
    val = loop.run_steps(loop.eval_steps(strategy, model, loss, jit_compile=jit_compile),
                         strategy, ds)
    stats, _, probs = predict_loop.predict(strategy, model, loss, ds, jit_compile=jit_compile)
    return {"weights": [v.numpy().ravel().tolist() for v in model.weights],
            "sums": [train.loss, val.loss, stats.loss], "probs": probs.ravel().tolist()}


def check_close(plain: dict[str, list], xla: dict[str, list]) -> None:
    for a, b in zip(plain["weights"], xla["weights"], strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(xla["sums"], plain["sums"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(xla["probs"], plain["probs"], rtol=0, atol=TOLERANCE)


def test_xla_steps_match_plain_steps(monkeypatch):
    compiled = []
    real = loop.xla
    monkeypatch.setattr(loop, "xla", lambda fn, jit: compiled.append(jit) or real(fn, jit))
    strategy = tf.distribute.get_strategy()
    check_close(dense_epoch(strategy, False), dense_epoch(strategy, True))
    assert compiled == [False] * 3 + [True] * 3  # train, eval, predict: each compiled when asked


def test_xla_steps_match_plain_steps_under_mirrored_on_two_cpus():
    """The replicas' sums and the optimizers' updates stay outside XLA: under MirroredStrategy
    they touch the other replica's variables, which an XLA program may not."""
    both = "[module.dense_epoch(strategy, jit) for jit in (False, True)]"
    check_close(*on_two_cpus("test_jit", both))


@pytest.mark.large
def test_jit_compile_true_trains_the_same_weights_as_false(tmp_path, monkeypatch):
    flags, compiled = [], []
    real, real_xla = feature_cache.inference_fn, loop.xla
    monkeypatch.setattr(feature_cache, "inference_fn",
                        lambda model, jit=False, **kw: flags.append(jit) or real(model, jit, **kw))
    monkeypatch.setattr(loop, "xla", lambda fn, jit: compiled.append(jit) or real_xla(fn, jit))
    runs = {jit: train_lib.train_and_evaluate(tiny_config(jit_compile=jit, tensorboard=False),
                                              str(tmp_path / jit))
            for jit in ("false", "true")}
    # Per run: train and validation features for the head, then the frozen blocks' activations
    # for the finetune phase (each pass compiled as the run asks).
    assert flags == [False] * 4 + [True] * 4
    assert compiled.count(True) == compiled.count(False) > 0  # every step of the second run
    plain, xla = (runs[jit].classifier.model.weights for jit in ("false", "true"))
    for a, b in zip(plain, xla, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=TOLERANCE)
    rows = [[r["loss"] for rows in runs[jit].metrics["phases"].values() for r in rows]
            for jit in ("false", "true")]
    np.testing.assert_allclose(rows[1], rows[0], rtol=0, atol=TOLERANCE)
    assert runs["true"].metrics["test"]["accuracy"] == runs["false"].metrics["test"]["accuracy"]
