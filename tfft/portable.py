"""The computation LiteRT and ONNX files hold: uint8 pixels in, float32 probabilities out.

Phone and browser runtimes have no image decoder or string tensors, so these files take what an
app has at hand, a uint8 RGB bitmap: at the model's size (the app resizes it, as camera pipelines
do), or of any size with ``resize_inside`` (bilinear resize in the model). The backbone's
normalisation is inside either way, and the model is called with ``training=False``, which is
what lets models trained under a distribution strategy or with augmentation convert.
``model_pixels`` is that app-side resize, used by tfft's own runtimes and the int8 calibration.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfft import backbones
from tfft.config import Config
from tfft.preprocess import to_rgb

PIXELS = "pixels"
PROBABILITIES = "probabilities"


def pixel_function(model: keras.Model, config: Config, resize_inside: bool = False,
                   ) -> tf.types.experimental.PolymorphicFunction:
    """``pixels`` uint8 [batch, S, S, 3] (or [batch, H, W, 3]) -> ``probabilities`` float32.

    The resize is written as the ``ResizeBilinear`` op on float32 input: ``tf.image.resize`` of
    cast uint8 is folded by the converter into a uint8-input resize, which needs a flex op.
    Normalising after the resize equals training's normalise-then-resize (an affine map per
    channel commutes with bilinear weights that sum to 1).
    """
    size = config.data.image_size
    normalize = backbones.normalizer(config.model)
    shape = [None, None, None, 3] if resize_inside else [None, size, size, 3]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8, name=PIXELS)])
    def pixels_to_probabilities(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.cast(pixels, tf.float32)
        if resize_inside:
            images = tf.raw_ops.ResizeBilinear(images=images, size=[size, size],
                                               half_pixel_centers=True)
        probabilities = model(normalize(images), training=False)
        return {PROBABILITIES: tf.cast(probabilities, tf.float32)}

    return pixels_to_probabilities


def model_pixels(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [batch, H, W, 1 or 3] -> uint8 RGB [batch, size, size, 3], resized bilinearly and
    rounded: what an app does to a bitmap before handing it to a model without its own resize."""
    resized = tf.image.resize(tf.cast(to_rgb(images), tf.float32), (size, size))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
