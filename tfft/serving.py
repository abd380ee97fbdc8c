"""The serving computations over a Keras classifier: raw images in, class names out.

All preprocessing is inside the graph and reuses ``tfft.preprocess`` and the backbone's own
normalisation, so serving cannot disagree with training. ``tfft.export`` writes these functions
as SavedModel signatures; ``tfft.evaluate`` runs them unexported on a run's ``model.keras``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from tfft import backbones, tta
from tfft.config import Config
from tfft.errors import UserError
from tfft.preprocess import decode_image, preprocess_images


class ServingFunctions:
    """The two serving computations over a Keras classifier, as graph-only ``tf.function``s.

    ``images`` takes encoded image bytes [batch] of any size; ``pixels`` takes uint8
    [batch, height, width, 1 or 3]. Both return ``probabilities``, ``class_ids``,
    ``class_names``, ``top_k_class_names`` and ``top_k_probabilities``. With ``tta`` (a
    ``tfft.tta`` mode) the probabilities are the mean over the test-time views.
    """

    def __init__(self, model: keras.Model, class_names: Sequence[str], config: Config,
                 top_k: int = 5, tta_mode: str = "none"):
        names = check_class_names(class_names)
        if tta_mode not in tta.MODES:
            raise UserError(f"--tta: expected one of {', '.join(tta.MODES)}; received "
                            f"{tta_mode!r}.")
        self.tta_mode = tta_mode
        if top_k < 1:
            raise UserError(f"--top_k: expected a positive number; received {top_k}.")
        self.model = model
        self.image_size = config.data.image_size
        self.normalize = backbones.normalizer(config.model)
        self.top_k = min(top_k, len(names))
        self.class_names = names
        self.names = tf.constant(list(names))
        self.images = tf.function(
            self._from_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.pixels = tf.function(
            self._from_pixels,
            input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="pixels")])

    def _from_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.image_size

        def one(encoded: tf.Tensor) -> tf.Tensor:
            pixels = decode_image(encoded)[tf.newaxis]
            return preprocess_images(pixels, size, self.normalize)[0]

        inputs = tf.map_fn(one, images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return self._outputs(inputs)

    def _from_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = preprocess_images(pixels, self.image_size, self.normalize)
        return self._outputs(tf.ensure_shape(inputs, [None, self.image_size, self.image_size, 3]))

    def _outputs(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tta.mean_probabilities(
            lambda views: self.model(views, training=False), inputs, self.tta_mode)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(self.names, class_ids),
            "top_k_class_names": tf.gather(self.names, top.indices),
            "top_k_probabilities": top.values,
        }


def check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """Class names must survive one-per-line ``labels.txt``."""
    names = tuple(str(n) for n in class_names)
    bad = [n for n in names if not n or "\n" in n or "\r" in n]
    if len(names) < 2 or bad:
        raise UserError(f"class names: expected at least 2 non-empty single-line names; "
                        f"received {list(names)[:20]}.")
    return names
