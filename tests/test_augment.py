"""Augmentation: finetune-only by default (the head keeps its feature cache), every name changes
training batches and nothing else, mixup/cutmix soft labels through the loss, exact resume."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfft import callbacks, loop, phases, rundir, train_lib
from tfft.augment import MIXERS, value_range
from tfft.fields import AUGMENTATIONS


@pytest.fixture(scope="module")
def plain_run():
    """One prepared run without augmentation; each test swaps in its own ``--augment``."""
    with phases.setup_run(tiny_config()) as run:
        yield run


def with_augment(run: phases.RunSetup, names: tuple[str, ...], **data) -> phases.RunSetup:
    """``run`` with other data settings, its cached augmenter and plans rebuilt from them."""
    cfg = run.config.replace(augment=names, **data)
    return dataclasses.replace(run, config=cfg)


def arrays(ds) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(x), np.asarray(y)) for x, y in ds]


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_changes_training_batches_only(plain_run, name):
    run = with_augment(plain_run, (name,))
    augmented = arrays(run.train_batches(7))
    plain = arrays(plain_run.train_batches(7))
    assert len(augmented) == len(plain)
    assert max(np.abs(a[0] - p[0]).max() for a, p in zip(augmented, plain, strict=True)) > 1e-3
    if name in MIXERS:
        for (_, soft), (_, hard) in zip(augmented, plain, strict=True):
            assert soft.shape == (len(hard), run.splits.num_classes)
            np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert all(np.array_equal(a[1], p[1]) for a, p in zip(augmented, plain, strict=True))
    again = arrays(run.train_batches(7))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(augmented, again, strict=True))
    for split in (run.splits.validation, run.splits.test):
        for a, p in zip(arrays(run.batches(split)), arrays(plain_run.batches(split)), strict=True):
            np.testing.assert_array_equal(a[0], p[0])
            np.testing.assert_array_equal(a[1], p[1])
    states = {id(v) for v in run.augmenter.seed_states}
    assert states and not states & {id(v) for v in run.classifier.model.variables}, (
        "the model (what is saved and exported) holds no augmentation layer"
    )


def test_a_resumed_epoch_skipping_batches_augments_the_rest_identically(plain_run):
    run = with_augment(plain_run, ("randaugment", "mixup"))
    whole = arrays(run.train_batches(3))
    tail = arrays(run.train_batches(3).skip(2))
    assert len(tail) == len(whole) - 2 > 0
    for a, b in zip(whole[2:], tail, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other_epoch = arrays(run.train_batches(4))
    assert not np.array_equal(other_epoch[0][1], whole[0][1]), "each epoch draws anew"


def test_value_range_is_the_normalisers_image_of_0_255():
    assert value_range(lambda x: x / 127.5 - 1.0) == (-1.0, 1.0)
    caffe = value_range(lambda x: x - tf.constant([103.9, 116.8, 123.7]))
    assert caffe == pytest.approx((-123.7, 255 - 103.9), abs=1e-3)


def test_targets_one_hot_int_labels_and_pass_soft_labels_through():
    np.testing.assert_array_equal(
        loop.targets(tf.constant([2, 0]), 3).numpy(), [[0, 0, 1], [1, 0, 0]]
    )
    soft = tf.constant([[0.25, 0.75, 0.0]], tf.float32)
    np.testing.assert_array_equal(loop.targets(soft, 3).numpy(), soft.numpy())


def test_the_train_step_takes_soft_labels_and_counts_accuracy_by_their_argmax():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    hard = np.arange(8) % 3
    strategy = tf.distribute.get_strategy()

    def sums(labels) -> loop.EpochStats:
        group = loop.VariableGroup(list(model.trainable_variables))
        steps = loop.train_steps(
            strategy, model, [group], [keras.optimizers.SGD(0.0)], loop.make_loss()
        )
        ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(4)
        return loop.run_steps(steps, strategy, ds)

    one_hot = sums(np.eye(3, dtype=np.float32)[hard])
    as_ints = sums(hard.astype(np.int32))
    assert one_hot.count == as_ints.count == 8
    assert one_hot.loss == pytest.approx(as_ints.loss, rel=1e-6)
    assert one_hot.correct == as_ints.correct
    mixed = sums(0.7 * np.eye(3, dtype=np.float32)[hard] + 0.3 * np.eye(3, dtype=np.float32)[0])
    assert np.isfinite(mixed.loss) and mixed.loss != pytest.approx(one_hot.loss)


def test_augmentation_keeps_the_head_phase_on_cached_features(plain_run):
    run = with_augment(plain_run, ("flip", "mixup"))
    assert phases.use_feature_cache(run)
    said = []
    head_too = dataclasses.replace(
        with_augment(plain_run, ("flip",), augment_head=True), say=said.append
    )
    assert not phases.use_feature_cache(head_too)
    assert said == [
        "Feature cache off: --augment_head augments the head phase's inputs every epoch."
    ]


HEAD_ONLY = dict(head_epochs=2, finetune_epochs=0, tensorboard=False)


@pytest.mark.large
def test_head_weights_with_augment_equal_the_unaugmented_head_phases(tmp_path):
    plain = train_lib.train_and_evaluate(tiny_config(**HEAD_ONLY), str(tmp_path / "plain"))
    augmented = train_lib.train_and_evaluate(
        tiny_config(augment=("randaugment", "mixup"), **HEAD_ONLY), str(tmp_path / "aug")
    )
    for a, b in zip(
        plain.classifier.head.get_weights(), augmented.classifier.head.get_weights(), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    head_too = train_lib.train_and_evaluate(
        tiny_config(augment=("randaugment", "mixup"), augment_head=True, **HEAD_ONLY),
        str(tmp_path / "head_too"),
    )
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            plain.classifier.head.get_weights(), head_too.classifier.head.get_weights(), strict=True
        )
    ), "--augment_head does augment the head phase"


class SimulatedCrash(Exception):
    """Stands for a kill in the finetune phase's second epoch, after its step checkpoint."""


class CrashInSecondFinetuneEpoch(callbacks.RunCallback):
    def on_epoch_end(self, row, model) -> None:
        if (row["phase"], row["epoch"]) == ("finetune", 2):
            raise SimulatedCrash()


RESUMABLE = dict(
    augment=("randaugment", "mixup"),
    head_epochs=1,
    finetune_epochs=2,
    checkpoint_every_steps=3,
    tensorboard=False,
)


@pytest.mark.large
def test_a_run_with_randaugment_and_mixup_killed_mid_finetune_resumes_exactly(tmp_path):
    config = tiny_config(**RESUMABLE)
    whole = train_lib.train_and_evaluate(config, str(tmp_path / "whole"))
    workdir = str(tmp_path / "resumed")
    with pytest.raises(SimulatedCrash):
        train_lib.train_and_evaluate(config, workdir, callbacks=(CrashInSecondFinetuneEpoch(),))
    record = rundir.read_json(f"{workdir}/{rundir.PROGRESS}")
    assert (record["phase"], record["epoch"], record["step"]) == ("finetune", 1, 3), record
    resumed = train_lib.train_and_evaluate(config, workdir)
    assert rundir.read_json(f"{workdir}/{rundir.METRICS}") == rundir.read_json(
        f"{tmp_path}/whole/{rundir.METRICS}"
    )
    assert resumed.metrics["phases"] == whole.metrics["phases"]
