"""Test-time augmentation: views and their mean."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfft import tta


def batch(n: int = 3, size: int = 16) -> tf.Tensor:
    return tf.constant(np.random.default_rng(0).normal(size=(n, size, size, 3)), tf.float32)


@pytest.mark.parametrize(("mode", "count"), [("none", 1), ("flip", 2), ("flip_crops", 6)])
def test_views_keep_the_batch_shape(mode, count):
    x = batch()
    out = tta.views(x, mode)
    assert len(out) == count
    assert all(v.shape == x.shape for v in out)
    np.testing.assert_array_equal(out[0], x)


def test_flip_mirrors_and_corner_crops_differ():
    x = batch()
    flipped, *crops = tta.views(x, "flip_crops")[1:]
    np.testing.assert_array_equal(flipped.numpy()[:, :, ::-1], x.numpy())
    top_left = x.numpy()[:, :14, :14]
    np.testing.assert_allclose(
        tf.image.resize(top_left, (16, 16)).numpy(), crops[0].numpy(), atol=1e-6)
    assert len({round(float(tf.reduce_sum(c)), 3) for c in crops}) == 4


def test_mean_probabilities_is_the_mean_over_views():
    x = batch()

    def predict(inputs):  # a position-dependent "model": mirror or crop changes its output
        weights = tf.linspace(0.0, 1.0, 16)[tf.newaxis, tf.newaxis, :, tf.newaxis]
        score = tf.reduce_mean(inputs * weights, axis=[1, 2, 3])
        return tf.nn.softmax(tf.stack([score, -score], axis=-1))

    expected = np.mean([predict(v).numpy() for v in tta.views(x, "flip_crops")], axis=0)
    got = tta.mean_probabilities(predict, x, "flip_crops").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, predict(x).numpy(), atol=1e-4)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="flip_crops"):
        tta.views(batch(), "rotate")
