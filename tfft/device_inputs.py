"""The device-side half of ``--preprocess_on=device``: raw batches -> backbone inputs inside the
compiled steps.

With host preprocessing the ``tf.data`` pipeline resizes and normalises every batch on the CPU
(``tfft.data.make_batches``); for 28 px digits at 224 px that is ~19 MB written per batch of 32
before the copy to the accelerator. On the device the pipeline sends uint8 at the stored size
(or, for sources of mixed sizes, float32 already at ``image_size``) and the steps run
``tfft.preprocess.preprocess_images`` — the very function the exported serving graph runs
(``tfft.serving``) — as the model's first ops, followed in training by the augmentation, which
must see preprocessed images: augmented training batches arrive tagged with their index and
epoch seed (``tfft.augment.tag``), so the step draws what the host pipeline would. The Keras
model itself is unchanged: it still takes backbone inputs, so ``model.keras`` and the export are
the same in either mode.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tfft.augment import IMAGES
from tfft.preprocess import Normalizer, preprocess_images

Prepare = Callable[[tf.Tensor, bool], tf.Tensor]  # (raw batch, training) -> backbone inputs
Augmenter = Callable[[tf.Tensor, dict], tf.Tensor]  # (inputs, the batch's tags) -> augmented


def make_prepare(
    image_size: int, normalize: Normalizer, augmenter: Augmenter | None = None
) -> Prepare:
    """The transform the compiled steps apply to each batch before the model: preprocessing
    always, then ``augmenter`` when ``training`` and the batch is tagged (the train step;
    evaluation, prediction and the feature pass call it with ``training=False``)."""

    def prepare(images: tf.Tensor | dict, training: bool) -> tf.Tensor:
        tags = images if isinstance(images, dict) else None
        inputs = preprocess_images(images if tags is None else tags[IMAGES], image_size, normalize)
        inputs = tf.ensure_shape(inputs, [None, image_size, image_size, 3])
        if training and augmenter is not None and tags is not None:
            inputs = augmenter(inputs, tags)
        return inputs

    return prepare
