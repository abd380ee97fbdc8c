"""The Keras Applications backbones added with tfft.applications, with ``--weights=none`` at 32 px:
forward shapes, trainable counts for 0, 1 and 2 unfrozen blocks, BatchNorm frozen (LayerNorm,
which keeps no statistics, trains with its block), normalisation equal to the family's own
``preprocess_input``, and the one-line offline error naming the file Keras would download."""

from __future__ import annotations

import functools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft import fields
from tfft.applications import APPS
from tfft.backbones import build_backbone, normalizer
from tfft.classifier import build_classifier, count_params, unfreeze_top_blocks
from tfft.config import ModelConfig
from tfft.errors import UserError

SIZE = 32
# backbone: (keras.applications family, feature channels, layers of the top block, of the next)
NEW = {
    "efficientnet_v2_b0": ("efficientnet_v2", 1280, r"^(block6|top_)", r"^block5"),
    "efficientnet_v2_b1": ("efficientnet_v2", 1280, r"^(block6|top_)", r"^block5"),
    "efficientnet_v2_b2": ("efficientnet_v2", 1408, r"^(block6|top_)", r"^block5"),
    "efficientnet_v2_b3": ("efficientnet_v2", 1536, r"^(block6|top_)", r"^block5"),
    "efficientnet_v2_s": ("efficientnet_v2", 1280, r"^(block6|top_)", r"^block5"),
    "convnext_tiny": ("convnext", 768, r"(_stage_3_|_downsampling_block_2$|^layer_normalization)",
                      r"(_stage_2_|_downsampling_block_1$)"),
    "convnext_small": ("convnext", 768, r"(_stage_3_|_downsampling_block_2$|^layer_normalization)",
                       r"(_stage_2_|_downsampling_block_1$)"),
    "mobilenet_v3_small": ("mobilenet_v3", 576, r"^(expanded_conv_10_|conv_1)",
                           r"^expanded_conv_9_"),
    "mobilenet_v3_large": ("mobilenet_v3", 960, r"^(expanded_conv_14_|conv_1)",
                           r"^expanded_conv_13_"),
    "resnet50_v2": ("resnet_v2", 2048, r"^(conv5_|post_)", r"^conv4_"),
}
# What the model does to its input itself: these families take 0-255 pixels.
IN_MODEL_PREPROCESSING = {"efficientnet_v2": "Rescaling", "mobilenet_v3": "Rescaling",
                          "convnext": "Normalization"}


def cfg(name: str, **overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": name, "weights": "none", "head_units": (8,), **overrides})


@functools.cache
def built(name: str):
    """One build per backbone for the tests that only look at it (building takes 1-3 s)."""
    return build_backbone(cfg(name), SIZE)


def params_of(backbone_model: keras.Model, pattern: str) -> int:
    """Trainable-when-unfrozen parameters of the layers named by ``pattern``: every weight of a
    layer that is not BatchNormalization (those stay frozen)."""
    return sum(count_params(layer.weights) for layer in backbone_model.layers
               if re.search(pattern, layer.name)
               and not isinstance(layer, keras.layers.BatchNormalization))


def test_every_keras_application_is_a_backbone_choice():
    assert set(fields.BACKBONES) == set(APPS) | {"hub", "keras_hub"}
    assert set(NEW) <= set(APPS)


@pytest.mark.parametrize("name", list(NEW))
def test_shapes_counts_and_frozen_batchnorm(name):
    _, channels, top, below = NEW[name]
    clf = build_classifier(built(name), 3, cfg(name), SIZE)
    x = tf.random.uniform((2, SIZE, SIZE, 3), 0, 255)
    assert clf.backbone.layer(x).shape == (2, 1, 1, channels)
    assert clf.model(x).shape == (2, 3)
    base = clf.backbone.layer
    head = count_params(clf.head.trainable_weights)
    trainable = []
    for n in (0, 1, 2):
        unfreeze_top_blocks(clf, n)
        trainable.append(count_params(clf.model.trainable_weights))
    assert trainable == [head, head + params_of(base, top),
                         head + params_of(base, top) + params_of(base, below)]
    assert params_of(base, top) > 0 and params_of(base, below) > 0
    batchnorms = [layer for layer in base.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert not any(layer.trainable for layer in batchnorms)
    moving = [layer.moving_mean.numpy() for layer in batchnorms]
    clf.model(x, training=True)  # a training-mode pass: frozen BatchNorm keeps its statistics
    assert all(np.array_equal(before, layer.moving_mean.numpy())
               for before, layer in zip(moving, batchnorms, strict=True))


def test_convnext_layernorm_trains_with_its_block():
    clf = build_classifier(build_backbone(cfg("convnext_tiny"), SIZE), 3, cfg("convnext_tiny"),
                           SIZE)
    unfreeze_top_blocks(clf, 1)
    names = {w.path for w in clf.model.trainable_weights}
    assert any("stage_3_block_2_layernorm" in n for n in names)
    assert not any("stage_2_" in n for n in names)


@pytest.mark.parametrize("name", list(NEW))
def test_normalisation_is_the_familys_preprocess_input(name):
    family = NEW[name][0]
    pixels = tf.constant(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)), tf.float32)
    expected = getattr(keras.applications, family).preprocess_input(tf.identity(pixels))
    np.testing.assert_allclose(normalizer(cfg(name))(pixels).numpy(), np.asarray(expected),
                               atol=1e-6)


def test_families_that_rescale_inside_the_model_take_0_to_255_pixels():
    for name, (family, *_rest) in NEW.items():
        layers = {type(layer).__name__ for layer in built(name).layer.layers[:3]}
        if family in IN_MODEL_PREPROCESSING:
            assert IN_MODEL_PREPROCESSING[family] in layers, name
        else:
            assert not layers & {"Rescaling", "Normalization"}, name




@pytest.mark.parametrize("name", list(NEW))
def test_imagenet_offline_is_one_line_naming_the_file(offline, name):
    with pytest.raises(UserError) as e:
        build_backbone(cfg(name, weights="imagenet"), SIZE)
    message = str(e.value)
    expected_file = APPS[name].weights_file(1.0, SIZE)
    assert message.startswith(f"--weights=imagenet: could not download {expected_file} for "
                              f"--backbone={name} (offline?)"), message
    assert "\n" not in message and "--weights=PATH" in message
