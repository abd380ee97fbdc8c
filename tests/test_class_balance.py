"""Unbalanced classes: ``--class_weight=balanced`` weights the training loss by inverse class
frequency, ``--sampling=balanced`` draws every class equally often; on a 10:1 folder both raise
the minority class's test recall over the unweighted, as-stored run."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfft import class_counts, data, fit, loop, train_lib
from tfft.errors import UserError

SHADES = {"many": 100, "few": 124}  # grey levels: close, so the minority is hard to separate


def write_shades(root: str, counts: dict[str, int], seed: int) -> str:
    """Grey images of one noisy shade per class (heavy noise: the classes overlap a little)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        os.makedirs(os.path.join(root, name))
        for i in range(count):
            image = np.clip(SHADES[name] + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(image.astype(np.uint8)).save(os.path.join(root, name, f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("shades")
    return (write_shades(str(root / "train"), {"many": 200, "few": 20}, 0),
            write_shades(str(root / "test"), {"many": 40, "few": 40}, 1))


def minority_recall(folders, **overrides) -> float:
    train, test = folders
    config = tiny_config(dataset=f"folder:{train}", test_dataset=f"folder:{test}",
                         head_epochs=4, finetune_epochs=0, head_units=(), batch_size=16,
                         head_learning_rate=0.01, max_train_examples=0, max_eval_examples=0,
                         validation_fraction=0.1, **overrides)
    result = train_lib.train_and_evaluate(config, f"{train}-run-{sorted(overrides.items())}")
    few = result.class_names.index("few")
    predictions = result.test_predictions
    return float(np.mean(predictions.predicted[predictions.labels == few] == few))


@pytest.mark.large
def test_balanced_weights_and_sampling_raise_the_minority_recall(folders):
    plain = minority_recall(folders)
    weighted = minority_recall(folders, class_weight="balanced")
    sampled = minority_recall(folders, sampling="balanced")
    assert weighted > plain + 0.1, (plain, weighted)
    assert sampled > plain + 0.1, (plain, sampled)


def test_balanced_weights_are_inverse_to_the_counts_and_zero_for_empty_classes():
    assert class_counts.balanced_weights((90, 10, 0)) == pytest.approx((100 / 270, 100 / 30, 0))
    assert class_counts.balanced_weights((5, 5)) == (1.0, 1.0)


def test_class_weight_is_refused_when_the_training_counts_are_unknown():
    config = tiny_config(class_weight="balanced")
    run = SimpleNamespace(config=config, splits=SimpleNamespace(counts={}))
    with pytest.raises(UserError, match="^--class_weight: "):
        fit.class_weights(run)
    assert fit.class_weights(SimpleNamespace(config=tiny_config(), splits=None)) is None


def test_the_train_step_weights_each_example_by_its_class():
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(
        2, activation="softmax", kernel_initializer="zeros")])
    x, y = tf.constant([[1.0, 0.0], [0.0, 1.0]]), tf.constant([0, 1])
    strategy = tf.distribute.get_strategy()
    batches = tf.data.Dataset.from_tensors((x, y))

    def train_loss(weights):
        optimizer = tf.keras.optimizers.SGD(0.0)
        steps = loop.train_steps(strategy, model, [loop.VariableGroup(model.trainable_variables)],
                                 [optimizer], loop.make_loss(), class_weights=weights)
        return loop.run_steps(steps, strategy, batches).loss

    plain = train_loss(None)  # zero kernel: each example's loss is log 2
    assert plain == pytest.approx(2 * np.log(2), rel=1e-5)
    assert train_loss((3.0, 0.5)) == pytest.approx(3.5 * np.log(2), rel=1e-5)


def test_balanced_sampling_draws_classes_equally_keeps_the_size_and_follows_the_seed():
    labels = np.array([0] * 90 + [1] * 10, np.int32)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(100), labels))
    drawn = data.balanced(ds, 2, seed=3, shuffle_buffer=100)
    assert int(drawn.cardinality()) == 100
    first = [(int(r), int(y)) for r, y in drawn]
    assert len(first) == 100 and 35 <= sum(y for _, y in first) <= 65
    assert all(labels[r] == y for r, y in first), "records keep their labels"
    assert first == [(int(r), int(y)) for r, y in data.balanced(ds, 2, 3, 100)]
    assert first != [(int(r), int(y)) for r, y in data.balanced(ds, 2, 4, 100)]


def test_balanced_sampling_leaves_out_a_class_without_examples():
    ds = tf.data.Dataset.from_tensor_slices((np.arange(6), np.array([0, 0, 0, 2, 2, 2], np.int32)))
    assert {int(y) for _, y in data.balanced(ds, 3, seed=0, shuffle_buffer=6)} == {0, 2}
