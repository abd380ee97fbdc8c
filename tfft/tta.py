"""Test-time augmentation: the mean of the model's probabilities over a few views of each image.

Views act on backbone inputs (after resizing and normalisation), so the same function serves the
run's test pass, ``tfft.evaluate`` and, with ``--export_tta``, the exported signatures. ``flip``
adds the mirror image (2 views); ``flip_crops`` adds four corner crops of 7/8 of the side, each
resized back to the input size (6 views). Crops keep the central object in every view for the
object-centred photos transfer learning sees most; the flip assumes left-right symmetry of the
classes (wrong for digits or text: leave ``none`` there, the default).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

MODES = ("none", "flip", "flip_crops")
CROP_FRACTION = 7 / 8

Predict = Callable[[tf.Tensor], tf.Tensor]  # backbone inputs [B, H, W, 3] -> probabilities


def views(inputs: tf.Tensor, mode: str) -> list[tf.Tensor]:
    """The views of a batch of backbone inputs ``[B, H, W, C]`` (the batch itself first)."""
    if mode not in MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; expected one of {MODES}")
    out = [inputs]
    if mode in ("flip", "flip_crops"):
        out.append(tf.image.flip_left_right(inputs))
    if mode == "flip_crops":
        out.extend(corner_crops(inputs))
    return out


def corner_crops(inputs: tf.Tensor) -> list[tf.Tensor]:
    """Four corner crops of ``CROP_FRACTION`` of each side, resized back (bilinear)."""
    shape = tf.shape(inputs)
    height, width = shape[1], shape[2]
    crop_h = tf.cast(tf.math.round(tf.cast(height, tf.float32) * CROP_FRACTION), tf.int32)
    crop_w = tf.cast(tf.math.round(tf.cast(width, tf.float32) * CROP_FRACTION), tf.int32)
    crops = []
    for top, left in ((0, 0), (0, 1), (1, 0), (1, 1)):
        y = top * (height - crop_h)
        x = left * (width - crop_w)
        crop = inputs[:, y:y + crop_h, x:x + crop_w, :]
        resized = tf.image.resize(crop, tf.stack([height, width]))
        crops.append(tf.ensure_shape(tf.cast(resized, inputs.dtype), inputs.shape))
    return crops


def mean_probabilities(predict: Predict, inputs: tf.Tensor, mode: str) -> tf.Tensor:
    """The mean of ``predict`` over the views, in float32 (one batched call per view)."""
    if mode == "none":
        return tf.cast(predict(inputs), tf.float32)
    probs = [tf.cast(predict(view), tf.float32) for view in views(inputs, mode)]
    return tf.add_n(probs) / float(len(probs))


class TestTimeAugmentation(keras.layers.Layer):
    """``model``'s probabilities averaged over the views of its input: the run's test pass
    only, never saved (exports get the views in their serving functions, ``tfft.serving``)."""

    def __init__(self, model: keras.Model, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.model, self.mode = model, mode

    def call(self, inputs):
        return mean_probabilities(lambda view: self.model(view, training=False), inputs,
                                  self.mode)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.model.output_shape[-1])


def with_tta(model: keras.Model, mode: str) -> keras.Model:
    """``model`` itself for ``none``; else a model with the same input averaging the views."""
    if mode == "none":
        return model
    inputs = keras.Input(model.input_shape[1:], dtype=model.input.dtype)
    outputs = TestTimeAugmentation(model, mode, name=f"tta_{mode}")(inputs)
    return keras.Model(inputs, outputs, name=f"{model.name}_tta_{mode}")
