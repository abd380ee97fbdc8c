"""``--mixed_precision=mixed_float16``: loss scaling across variable groups and replicas, resume,
and float32 outputs.

The step tests use a two-layer Dense model whose kernels and biases are two variable groups
(two LossScaleOptimizers): an input row of 1e36 makes the scaled kernel gradients overflow
while the bias gradients stay finite, so a step where only one group (or only one replica)
sees an overflow shows whether all of them skip together. The run tests train the bundled
MNIST digits at 64 px, with gradual unfreezing and discriminative rates (two finetune groups,
the second joining in the second epoch).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import on_two_cpus, tiny_config

from tfft import callbacks, export, loop, rundir, train_lib

HUGE = 1e36  # finite in float32, but times the 2**15 loss scale its gradients overflow
INITIAL_SCALE = 2.0**15


def two_group_step(strategy: tf.distribute.Strategy) -> dict[str, list]:
    """One step on a batch whose last row overflows the kernel gradients, then one ordinary
    step; the groups' weights, scales, counters and iterations after each."""
    with strategy.scope():
        keras.utils.set_random_seed(3)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
        kernels = [v for v in model.trainable_variables if "kernel" in v.path]
        biases = [v for v in model.trainable_variables if "bias" in v.path]
        groups = [loop.VariableGroup(kernels), loop.VariableGroup(biases, factor=0.5)]
        optimizers = [keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
                      for _ in groups]
        for optimizer, group in zip(optimizers, groups, strict=True):
            optimizer.build(group.variables)
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    x[7] = HUGE  # the last row of the first batch: the second replica's share under mirrored
    y = np.arange(16, dtype=np.int32) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    steps = loop.train_steps(strategy, model, groups, optimizers, loop.make_loss())
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    def state() -> dict[str, list]:
        return {"weights": [v.numpy().tolist() for v in model.trainable_variables],
                "scales": [float(o.dynamic_scale.numpy()) for o in optimizers],
                "counters": [int(o.step_counter.numpy()) for o in optimizers],
                "iterations": [int(o.iterations.numpy()) for o in optimizers]}

    before = state()
    steps(iterator, tf.constant(1))
    skipped = state()
    steps(iterator, tf.constant(1))
    return {"before": before, "skipped": skipped, "after": state()}


def check_skipped_together(result: dict[str, dict]) -> None:
    before, skipped, after = result["before"], result["skipped"], result["after"]
    assert skipped["weights"] == before["weights"]  # exactly: no group moved
    assert skipped["scales"] == [INITIAL_SCALE / 2] * 2
    assert skipped["counters"] == [0, 0] and skipped["iterations"] == [0, 0]
    assert all(np.all(np.isfinite(w)) for w in after["weights"])
    assert all(not np.array_equal(a, b) for a, b in zip(after["weights"], before["weights"],
                                                          strict=True))
    assert after["scales"] == [INITIAL_SCALE / 2] * 2
    assert after["counters"] == [1, 1] and after["iterations"] == [1, 1]


def test_an_inf_gradient_in_one_group_skips_the_step_in_every_group():
    check_skipped_together(two_group_step(tf.distribute.get_strategy()))


def test_an_inf_gradient_on_one_replica_skips_the_step_on_every_replica():
    """Keras's LossScaleOptimizer alone would check only the first replica's gradients."""
    check_skipped_together(on_two_cpus("test_precision", "module.two_group_step(strategy)"))


# ---------------------------------------------------------------- whole runs

RUN = dict(image_size=64, max_train_examples=512, max_eval_examples=400, head_epochs=5,
           head_learning_rate=1e-2, finetune_epochs=2, finetune_learning_rate=1e-4,
           unfreeze_blocks=2, unfreeze_schedule="gradual", discriminative_lr_factor=0.5,
           tensorboard=False)
STEPS_PER_EPOCH = 512 // 16


class SimulatedCrash(Exception):
    """Stands for a kill during the finetune phase's second epoch, before its checkpoint."""


class CrashInSecondFinetuneEpoch(callbacks.RunCallback):
    def on_epoch_end(self, row, model) -> None:
        if (row["phase"], row["epoch"]) == ("finetune", 2):
            raise SimulatedCrash()


@pytest.fixture(scope="module")
def float16_run(tmp_path_factory) -> train_lib.RunResult:
    workdir = str(tmp_path_factory.mktemp("float16"))
    return train_lib.train_and_evaluate(tiny_config(mixed_precision="mixed_float16", **RUN),
                                        workdir)


@pytest.mark.large
def test_float16_run_is_finite_and_as_accurate_as_float32(float16_run, tmp_path):
    float32 = train_lib.train_and_evaluate(tiny_config(mixed_precision="float32", **RUN),
                                           str(tmp_path))
    rows = [r for rows in float16_run.metrics["phases"].values() for r in rows]
    assert len(rows) == 7 and all(np.isfinite(r["loss"]) for r in rows)
    assert float32.metrics["test"]["accuracy"] > 0.6  # the comparison means something
    assert abs(float16_run.metrics["test"]["accuracy"]
               - float32.metrics["test"]["accuracy"]) <= 0.02


def loss_scale_state(checkpoint: str) -> tuple[float, int, int]:
    """(dynamic scale, step counter, applied steps) of the first group's LossScaleOptimizer in
    a phase checkpoint: its variables come first, in the order ``.variables`` lists them."""
    reader = tf.train.load_checkpoint(checkpoint)
    template = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    template.build([keras.Variable(np.zeros(2, np.float32))])
    leaves = [v.path.split("/")[-1] for v in template.variables]

    def value(index: int) -> np.ndarray:
        return reader.get_tensor(f"optimizer/{index}/.ATTRIBUTES/VARIABLE_VALUE")

    return (float(value(leaves.index("dynamic_scale"))),
            int(value(leaves.index("step_counter"))),
            int(value(leaves.index("iteration", 1))))  # the inner optimizer's


@pytest.mark.large
def test_interrupted_float16_run_resumes_exactly_and_checkpoints_the_loss_scale(
        float16_run, tmp_path):
    config = tiny_config(mixed_precision="mixed_float16", **RUN)
    with pytest.raises(SimulatedCrash):
        train_lib.train_and_evaluate(config, str(tmp_path),
                                     callbacks=(CrashInSecondFinetuneEpoch(),))
    record = rundir.read_json(str(tmp_path / rundir.PROGRESS))
    assert (record["phase"], record["epoch"]) == ("finetune", 1)
    scale, counter, applied = loss_scale_state(str(tmp_path / record["checkpoint"]))
    skipped = STEPS_PER_EPOCH - applied  # no growth within 2,000 steps: one halving per skip
    assert scale == INITIAL_SCALE * 0.5**skipped
    assert 0 < counter <= applied and (skipped or counter == STEPS_PER_EPOCH)
    resumed = train_lib.train_and_evaluate(config, str(tmp_path))
    assert resumed.metrics["phases"] == float16_run.metrics["phases"]
    assert resumed.metrics["test"] == float16_run.metrics["test"]


def test_float16_model_and_export_output_float32(float16_run, tmp_path):
    model = float16_run.classifier.model
    assert model.get_layer("head").get_layer("head_dense_0").compute_dtype == "float16"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    live = model(x, training=False)
    assert live.dtype == tf.float32
    version = export.export_model(model, float16_run.class_names, float16_run.config,
                                  str(tmp_path / "export"))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    served = tf.saved_model.load(version).signatures["serve_pixels"](pixels=tf.constant(pixels))
    assert served["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(served["probabilities"].numpy().sum(axis=-1), 1.0, rtol=1e-3)
