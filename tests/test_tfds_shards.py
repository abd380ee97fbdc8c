"""Fixed-size TFDS images (MNIST, CIFAR) stay encoded until after the shuffle and the worker's
share, then decode to their stored shape and channels.

The reference everywhere is TFDS decoding the same split on read (the behaviour before): the
mock data of ``tfds.testing.mock_data`` is seeded, so both reads see the same examples.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import tiny_config

from tfft import data, distribute, evaluate, metrics, preprocess, report
from tfft.config import DataConfig
from tfft.tfds_source import tfds_split_names

SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
EXAMPLES = 24


@pytest.fixture(autouse=True)
def mock_tfds():
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        yield


def _normalize(images: tf.Tensor) -> tf.Tensor:
    return images / 255.0


def _cfg(name: str, **fields) -> DataConfig:
    values = {"image_size": 16, "batch_size": 4, "validation_fraction": 0.25, **fields}
    return DataConfig(dataset=f"tfds:{name}", **values)


def _tfds_decoded(name: str, split: int) -> tf.data.Dataset:
    """Split ``split`` (0 train, 1 validation, 2 test) as TFDS decodes it on read."""
    split_name = tfds_split_names({"train", "test"}, (0.25, 0.0))[split]
    ds = tfds.builder(name).as_dataset(split=split_name, as_supervised=True, shuffle_files=False)
    return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))


def _arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(x.numpy(), y.numpy()) for x, y in ds]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_raw_split_is_encoded_and_decodes_to_the_same_images(name):
    shape = SHAPES[name]
    splits = data.load_splits(_cfg(name), seed=0)
    assert splits.train.element_spec[0] == {
        preprocess.ENCODED: tf.TensorSpec([], tf.string),
        preprocess.SHAPE: tf.TensorSpec((*shape, 0), tf.uint8),
    }
    decoded = data.load_images(splits.train)
    assert decoded.element_spec[0] == tf.TensorSpec(shape, tf.uint8), "static shape, own channels"
    images, labels = _arrays(decoded)
    want_images, want_labels = _arrays(_tfds_decoded(name, 0))
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_batches_equal_those_of_tfds_decoded_images(name):
    cfg = _cfg(name)
    splits = data.load_splits(cfg, seed=0)
    got = data.make_batches(splits.train, cfg, _normalize, training=True, seed=5)
    want = data.make_batches(_tfds_decoded(name, 0), cfg, _normalize, training=True, seed=5)
    assert got.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    pairs = list(zip(got, want, strict=True))
    assert len(pairs) == EXAMPLES // cfg.batch_size
    for (x, y), (want_x, want_y) in pairs:
        np.testing.assert_array_equal(x.numpy(), want_x.numpy())
        np.testing.assert_array_equal(y.numpy(), want_y.numpy())


def _counting_decode(monkeypatch) -> list[bytes]:
    """The encoded images ``load_images`` decodes from now on, one entry per decode."""
    decoded: list[bytes] = []
    real = preprocess.decode_fixed_shape

    def record(encoded: tf.Tensor) -> tf.Tensor:
        decoded.append(bytes(encoded.numpy()))
        return encoded

    def counting(encoded: tf.Tensor, shape: tf.TensorShape) -> tf.Tensor:
        seen = tf.ensure_shape(tf.py_function(record, [encoded], tf.string), [])
        return real(seen, shape)

    monkeypatch.setattr(preprocess, "decode_fixed_shape", counting)
    return decoded


def test_each_of_two_workers_decodes_only_its_share(monkeypatch):
    cfg = _cfg("mnist", batch_size=6)
    splits = data.load_splits(cfg, seed=0)
    examples = splits.sizes["train"]
    everything = [bytes(r[preprocess.ENCODED].numpy()) for r, _ in splits.train]
    decoded = _counting_decode(monkeypatch)

    def build(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        return data.make_batches(
            splits.train, cfg, _normalize, training=True, seed=3, input_context=ctx
        )

    single = [(x.numpy(), y.numpy()) for x, y in build(None)]
    assert sorted(decoded) == sorted(everything), "one worker decodes the whole split"
    passes = distribute.WorkerBatches(build, examples, cfg.batch_size, 2)
    shares, batches = [], []
    for worker in (0, 1):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        decoded.clear()
        batches.append([(x.numpy(), y.numpy()) for x, y in passes.for_worker(ctx)])
        shares.append(list(decoded))
        assert len(decoded) == distribute.shard_count(examples, ctx, cfg.batch_size) == 12
    assert sorted(shares[0] + shares[1]) == sorted(everything)
    for (x, y), part0, part1 in zip(single, *batches, strict=True):
        np.testing.assert_array_equal(np.concatenate([part0[0], part1[0]]), x)
        np.testing.assert_array_equal(np.concatenate([part0[1], part1[1]]), y)


def test_report_images_and_evaluation_read_the_encoded_test_split():
    config = tiny_config(
        dataset="tfds:mnist", batch_size=8, max_eval_examples=0, validation_fraction=0.25
    )
    splits = data.load_splits(config.data, config.train.seed)
    want_images, want_labels = _arrays(_tfds_decoded("mnist", 2))
    shown = report.first_images(splits.test, count=3)
    np.testing.assert_array_equal(np.stack(shown), want_images[:3])
    test = evaluate.load_test_split(config)
    sizes: list[tuple[int, ...]] = []

    def pixels(images: tf.Tensor) -> dict[str, tf.Tensor]:
        sizes.append(tuple(images.shape))
        return {"probabilities": tf.one_hot(tf.zeros(tf.shape(images)[:1], tf.int32), 10)}

    predictions = metrics.predict_split(pixels, test, config.data.batch_size)
    np.testing.assert_array_equal(predictions.labels, want_labels)
    assert sizes == [(8, 28, 28, 1)] * (EXAMPLES // 8), "batched at the stored shape"


def test_a_tfds_test_dataset_beside_an_npz_training_set(tmp_path):
    x = np.zeros((20, 28, 28), np.uint8)
    names = np.array([str(i) for i in range(10)])
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 10, class_names=names)
    splits = data.load_splits(
        DataConfig(dataset=f"npz:{tmp_path}/d.npz", test_dataset="tfds:mnist"), seed=0
    )
    assert splits.train.element_spec[0] == tf.TensorSpec((28, 28, 1), tf.uint8), "unchanged"
    assert preprocess.SHAPE in splits.test.element_spec[0]
    images, labels = _arrays(data.load_images(splits.test))
    want_images, want_labels = _arrays(_tfds_decoded("mnist", 2))  # mnist's own test split
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
