"""Pure image functions shared by the training pipeline and the exported serving graph.

One home for "stored pixels -> backbone inputs", so training (``tfft.data``) and serving
(``tfft.serving``) cannot disagree. Every function works eagerly, inside ``tf.data`` and inside a
traced serving function.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

ENCODED = "encoded"  # the key of an encoded image record (see tfft.data.Splits)
SHAPE = "shape"  # with ENCODED: an empty uint8 [H, W, C, 0] whose static shape is the image's
Normalizer = Callable[[tf.Tensor], tf.Tensor]


def to_rgb(images: tf.Tensor) -> tf.Tensor:
    """Grayscale (1 channel) -> RGB; RGB passes through; works on one image or a batch."""
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 1:
        return tf.image.grayscale_to_rgb(images)
    return tf.cond(
        tf.shape(images)[-1] == 1,
        lambda: tf.image.grayscale_to_rgb(images),
        lambda: images[..., :3],
    )


def preprocess_images(images: tf.Tensor, image_size: int, normalize: Normalizer) -> tf.Tensor:
    """uint8 images of any size and 1 or 3 channels -> normalised float32 backbone inputs.

    Every backbone's normalisation is a per-channel affine map, and bilinear resizing (weights
    summing to 1) commutes with it, so the values are the same to float rounding in either
    order; the normalisation runs on the smaller of the two. Images smaller than the input are
    normalised first (20% less pipeline work for 28 px digits at 224 px, on cores the backbone
    shares); larger ones are resized first, straight from uint8: normalising an 8000 x 6000
    photo first made a 576 MB float copy of it (2.2 GB peak for a batch, against 0.9 GB).
    """
    images = to_rgb(images)
    size = (image_size, image_size)

    def normalize_first() -> tf.Tensor:
        return tf.image.resize(normalize(tf.cast(images, tf.float32)), size)

    def resize_first() -> tf.Tensor:
        return normalize(tf.image.resize(images, size))

    height, width = images.shape[-3], images.shape[-2]
    if height is not None and width is not None:
        return resize_first() if height * width > image_size**2 else normalize_first()
    shape = tf.shape(images)
    return tf.cond(shape[-3] * shape[-2] > image_size**2, resize_first, normalize_first)


def resize_images(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """uint8 images of any size and 1 or 3 channels -> float32 RGB at ``image_size``, not
    normalised: the host's share of ``--preprocess_on=device`` for sources of mixed image sizes,
    which cannot be batched at their stored size. Kept float (not rounded back to uint8), so
    ``preprocess_images`` on the device normalises exactly these values; its resize of an image
    already at ``image_size`` is the identity."""
    return tf.image.resize(to_rgb(images), (image_size, image_size))


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 RGB [H, W, 3] (first frame of a GIF)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def fixed_shape_record(encoded: tf.Tensor, shape: tuple[int, int, int]) -> dict[str, tf.Tensor]:
    """The record of an encoded image whose decoded shape is known (MNIST, CIFAR from TFDS).

    The shape travels in the record's static spec, through the shuffle, ``--max_*_examples``
    and the multi-worker share, to ``load_images``, whatever reads the raw split: an empty
    tensor holds it, so the record costs no more memory than the bytes.
    """
    return {ENCODED: encoded, SHAPE: tf.zeros((*shape, 0), tf.uint8)}


def decode_fixed_shape(encoded: tf.Tensor, shape: tf.TensorShape) -> tf.Tensor:
    """PNG/JPEG bytes of an image of known ``shape`` -> uint8 [H, W, C] of that static shape,
    with its own channel count (1 for MNIST), decoded as TFDS would decode it."""
    image = tf.io.decode_image(encoded, channels=shape[-1], expand_animations=False)
    return tf.ensure_shape(image, shape)


def load_images(ds: tf.data.Dataset) -> tf.data.Dataset:
    """(uint8 image, label) examples of a raw split, whose records may be image file paths
    (image folders) or ``{ENCODED: bytes}`` (TFDS images, with ``SHAPE`` those of a fixed
    shape): those are read and decoded here, lazily, after the shuffle and the worker's share."""
    spec = ds.element_spec[0]
    if isinstance(spec, dict) and SHAPE in spec:
        shape = spec[SHAPE].shape[:-1]

        def read(record: dict, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return decode_fixed_shape(record[ENCODED], shape), label
    elif isinstance(spec, dict):

        def read(record: dict, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return decode_image(record[ENCODED]), label
    elif spec.dtype == tf.string:

        def read(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return decode_image(tf.io.read_file(path)), label
    else:
        return ds
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)
