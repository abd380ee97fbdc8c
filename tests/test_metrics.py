"""``tfft.metrics``: the one confusion matrix, per-class scores and ``predict_split``."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfft import metrics
from tfft.errors import UserError


def _pixels(images: tf.Tensor) -> dict[str, tf.Tensor]:
    """A fake serve_pixels: class 1 (at 0.8) when the image is bright, else class 0 (at 0.7)."""
    bright = tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2, 3]) > 100
    p = tf.where(bright, 0.8, 0.3)
    return {"probabilities": tf.stack([1 - p, p], axis=-1)}


def _split(sizes: list[int], labels: list[int]) -> tf.data.Dataset:
    images = [np.full((s, s, 3), 200 if y else 10, np.uint8) for s, y in zip(sizes, labels,
                                                                              strict=True)]

    def examples():
        yield from zip(images, labels, strict=True)

    shape = (sizes[0], sizes[0], 3) if len(set(sizes)) == 1 else (None, None, 3)
    return tf.data.Dataset.from_generator(examples, output_signature=(
        tf.TensorSpec(shape, tf.uint8), tf.TensorSpec((), tf.int32)))


@pytest.mark.parametrize("sizes", [[8] * 5, [8, 12, 8, 16, 9]])
def test_predict_split_returns_probabilities_in_split_order(sizes):
    labels = [0, 1, 1, 0, 1]
    predictions = metrics.predict_split(_pixels, _split(sizes, labels), batch_size=2)
    assert predictions.labels.dtype == np.int64 and list(predictions.labels) == labels
    assert predictions.probabilities.dtype == np.float32
    np.testing.assert_allclose(predictions.probabilities[:, 1], [0.3, 0.8, 0.8, 0.3, 0.8])
    assert list(predictions.predicted) == labels
    np.testing.assert_allclose(predictions.confidence, [0.7, 0.8, 0.8, 0.7, 0.8])


def test_predict_split_of_an_empty_split_is_a_user_error():
    with pytest.raises(UserError, match="test split: expected at least one example"):
        metrics.predict_split(_pixels, _split([8], [0]).take(0), batch_size=2)


def test_a_class_without_examples_scores_zero_and_is_left_out_of_macro_f1():
    labels, predicted = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    matrix = metrics.confusion_matrix(labels, predicted, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    stats = metrics.per_class_metrics(matrix)
    assert stats["precision"].tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert stats["recall"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert stats["support"].tolist() == [2, 2, 0]
    scores = metrics.classification_metrics(labels, predicted, ("a", "b", "c"))
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert scores["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert scores["accuracy"] == pytest.approx(0.75) and scores["examples"] == 4
