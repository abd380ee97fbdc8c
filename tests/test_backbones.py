"""Backbones: trainable counts per phase, hub wrapper behaviour, offline one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfft.backbones import build_backbone
from tfft.classifier import (
    build_classifier,
    count_params,
    freeze_backbone,
    unfreeze_top_blocks,
)
from tfft.config import ModelConfig
from tfft.errors import UserError


def counts(model_cfg: ModelConfig, size: int, n_blocks: int) -> tuple[int, int, int]:
    clf = build_classifier(build_backbone(model_cfg, size), 3, model_cfg, size)
    freeze_backbone(clf)
    head = count_params(clf.model.trainable_weights)
    unfreeze_top_blocks(clf, n_blocks)
    finetune = count_params(clf.model.trainable_weights)
    return head, finetune, count_params(clf.head.trainable_weights)


def test_vgg16_blocks_and_counts():
    cfg = ModelConfig(backbone="vgg16", weights="none", pooling="flatten", head_units=(8,))
    backbone = build_backbone(cfg, 32)
    assert [b[0].split("_")[0] for b in backbone.blocks] == [f"block{i}" for i in range(1, 6)]
    head, finetune, head_only = counts(cfg, 32, 1)
    assert head == head_only == (512 * 8 + 8) + (8 * 3 + 3)
    block5 = 3 * (3 * 3 * 512 * 512 + 512)
    assert finetune == head + block5


def test_mobilenet_v2_unfreezes_stages_without_batchnorm():
    cfg = ModelConfig(backbone="mobilenet_v2", weights="none", alpha=0.35, head_units=(8,))
    head1, finetune1, _ = counts(cfg, 32, 1)
    _, finetune2, _ = counts(cfg, 32, 2)
    assert head1 < finetune1 < finetune2
    clf = build_classifier(build_backbone(cfg, 32), 3, cfg, 32)
    unfreeze_top_blocks(clf, 1)
    names = {w.path for w in clf.model.trainable_weights}
    assert any("Conv_1/kernel" in n for n in names)
    assert not any("bn" in n.lower() or "BN" in n for n in names), "BatchNorm stays frozen"


def test_unfreeze_more_blocks_than_exist_is_a_user_error():
    cfg = ModelConfig(backbone="vgg16", weights="none")
    clf = build_classifier(build_backbone(cfg, 32), 3, cfg, 32)
    with pytest.raises(UserError, match="--unfreeze_blocks: expected at most 5"):
        unfreeze_top_blocks(clf, 6)


def test_image_size_below_minimum():
    with pytest.raises(UserError, match="--image_size"):
        build_backbone(ModelConfig(backbone="vgg16", weights="none"), 16)


def test_hub_backbone_counts_and_blocks(hub_feature_vector):
    cfg = ModelConfig(backbone="hub", hub_handle=hub_feature_vector, head_units=(8,))
    backbone = build_backbone(cfg, 32)
    assert backbone.outputs_vector and len(backbone.blocks) > 5
    head, finetune1, head_only = counts(cfg, 32, 1)
    _, finetune3, _ = counts(cfg, 32, 3)
    assert head == head_only
    assert head < finetune1 < finetune3


def test_hub_variables_change_in_finetune_not_in_head(hub_feature_vector, tmp_path):
    from conftest import tiny_config

    from tfft import train_lib

    original = {v.name.split(":")[0]: v.numpy()
                for v in tf.saved_model.load(hub_feature_vector).variables}

    def changed_paths(config, workdir) -> tuple[set[str], set[str]]:
        layer = train_lib.train_and_evaluate(config, workdir).classifier.backbone.layer
        blocks = build_backbone(config.model, 32).blocks
        top = {p for block in blocks[-config.finetune.unfreeze_blocks:] for p in block
               if p.rsplit("/", 1)[-1] not in ("gamma", "beta", "moving_mean", "moving_variance")}
        changed = {layer.path_of(v) for v in layer.variables
                   if not np.allclose(v.numpy(), original[layer.path_of(v)])}
        return changed, top

    config = tiny_config(backbone="hub", hub_handle=hub_feature_vector, head_epochs=1,
                         finetune_epochs=0, unfreeze_blocks=3, cache_features="off",
                         head_learning_rate=0.01, finetune_learning_rate=0.01)
    changed, _ = changed_paths(config, str(tmp_path / "head"))
    assert changed == set(), "head phase leaves the hub backbone untouched"
    changed, top = changed_paths(config.replace(finetune_epochs=1), str(tmp_path / "both"))
    assert changed, "finetune phase trains the unfrozen hub variables"
    assert changed <= top, f"only the top 3 blocks train; also changed: {changed - top}"


def test_hub_handle_errors(tmp_path):
    with pytest.raises(UserError, match="--hub_handle"):
        build_backbone(ModelConfig(backbone="hub", hub_handle=str(tmp_path / "nope")), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--hub_handle"):
        build_backbone(ModelConfig(backbone="hub", hub_handle=str(tmp_path / "empty")), 32)


def test_hub_handle_that_is_not_a_feature_vector(tmp_path):
    import keras

    from tfft.hub_format import save_feature_vector

    inputs = keras.Input((32, 32, 3))
    maps = keras.layers.Conv2D(4, 3)(inputs)
    save_feature_vector(keras.Model(inputs, maps), str(tmp_path / "maps"))
    with pytest.raises(UserError, match="feature vector"):
        build_backbone(ModelConfig(backbone="hub", hub_handle=str(tmp_path / "maps")), 32)


def test_hub_handle_offering_neither_form_says_what_it_offers(tmp_path):
    """A Keras ``model.export`` directory: a SavedModel with ``serve``, but neither a reusable
    ``__call__`` (TF2) nor an image_feature_vector/default signature (TF1 Hub format)."""
    import keras

    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)).export(
        str(tmp_path / "exported"), verbose=False)
    with pytest.raises(UserError) as e:
        build_backbone(ModelConfig(backbone="hub", hub_handle=str(tmp_path / "exported")), 32)
    message = str(e.value)
    assert "offers neither" in message and "TF1 Hub format" in message and "\n" not in message
    assert "signatures ['serve', 'serving_default']" in message




def test_imagenet_weights_offline_one_line(offline):
    with pytest.raises(UserError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") as e:
        build_backbone(ModelConfig(backbone="vgg16", weights="imagenet"), 32)
    assert "--weights" in str(e.value) and "\n" not in str(e.value)


def test_hub_url_offline_one_line(offline):
    with pytest.raises(UserError, match="offline") as e:
        build_backbone(ModelConfig(backbone="hub"), 224)
    assert "--hub_handle" in str(e.value) and "\n" not in str(e.value)


def test_bundled_mobilenet_weights_are_real_imagenet_weights(offline):
    """alpha 0.25 imagenet resolves to the shipped file when Keras has no cached copy."""
    backbone = build_backbone(ModelConfig(backbone="mobilenet", alpha=0.25), 32)
    assert backbone.identity["weights_sha256"].startswith("dbdb03ee")
    kernel = backbone.layer.get_layer("conv1").kernel.numpy()
    random_init = build_backbone(ModelConfig(backbone="mobilenet", alpha=0.25, weights="none"),
                                 32).layer.get_layer("conv1").kernel.numpy()
    assert not np.allclose(kernel, random_init)


def test_weights_file_for_another_architecture(tmp_path):
    path = str(tmp_path / "other.weights.h5")
    import keras

    keras.applications.MobileNet(weights=None, include_top=False, alpha=0.25,
                                 input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(UserError, match="--weights"):
        build_backbone(ModelConfig(backbone="vgg16", weights=path), 32)


def test_feature_model_matches_full_model_pipeline():
    cfg = ModelConfig(backbone="mobilenet", alpha=0.25, weights="none", head_units=(4,),
                      dropout=0.0)
    clf = build_classifier(build_backbone(cfg, 32), 3, cfg, 32)
    x = tf.random.uniform((2, 32, 32, 3))
    np.testing.assert_allclose(clf.model(x).numpy(), clf.head(clf.features(x)).numpy(),
                               atol=1e-6)
