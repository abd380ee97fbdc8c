"""``--backbone=keras_hub``: tiny presets the test saves itself with ``save_to_preset`` (a
pre-activation ResNet and a two-layer ViT): forward shapes, blocks (stages / transformer layers),
trainable counts, frozen BatchNorm, the preset's own normalisation, an export round trip, and the
one-line errors (no keras-hub, no preset, offline, not an image backbone)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import keras
import keras_hub  # the keras-hub extra, part of the test extra
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfft import export, rundir, train_lib
from tfft.backbones import build_backbone, normalizer
from tfft.classifier import build_classifier, count_params, unfreeze_top_blocks
from tfft.config import ModelConfig
from tfft.data import preprocess_images
from tfft.errors import UserError

SIZE = 32
BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")


def save_preset(backbone: keras.Model, converter, path: str) -> str:
    backbone.save_to_preset(path)
    converter.save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def resnet_preset(tmp_path_factory) -> str:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=True, image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE), scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))])
    return save_preset(backbone, converter, str(tmp_path_factory.mktemp("resnet_preset")))


@pytest.fixture(scope="module")
def vit_preset(tmp_path_factory) -> str:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(SIZE, SIZE, 3), patch_size=8,
                                            num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    converter = keras_hub.layers.ViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 127.5,
                                                   offset=-1.0)
    return save_preset(backbone, converter, str(tmp_path_factory.mktemp("vit_preset")))


def cfg(preset: str, **overrides) -> ModelConfig:
    return ModelConfig(**{"backbone": "keras_hub", "preset": preset, "head_units": (8,),
                          **overrides})


def params(layer, pattern: str) -> int:
    """Parameters of the variables whose path matches, BatchNorm and LayerNorm excluded."""
    return count_params([v for v in layer.variables if re.search(pattern, layer.path_of(v))
                         and v.path.rsplit("/", 1)[-1] not in BN_LEAVES])


def counts(clf) -> list[int]:
    out = []
    for n in (0, 1, 2):
        unfreeze_top_blocks(clf, n)
        out.append(count_params(clf.model.trainable_weights))
    return out


def test_resnet_preset_stages_counts_and_frozen_batchnorm(resnet_preset):
    backbone = build_backbone(cfg(resnet_preset), SIZE)
    assert [sorted({p.split("_")[0] for p in block}) for block in backbone.blocks] == [
        ["conv1"], ["stack0"], ["post", "stack1"]]
    clf = build_classifier(backbone, 3, cfg(resnet_preset), SIZE)
    x = tf.random.uniform((2, SIZE, SIZE, 3))
    assert backbone.layer(x).shape == (2, 4, 4, 32) and clf.model(x).shape == (2, 3)
    head = count_params(clf.head.trainable_weights)
    top, below = params(backbone.layer, r"^(stack1|post)_"), params(backbone.layer, r"^stack0_")
    assert counts(clf) == [head, head + top, head + top + below]
    moving = {v.path: v.numpy() for v in backbone.layer.variables if "moving_" in v.path}
    assert moving and not any(v.path.rsplit("/", 1)[-1] in BN_LEAVES
                              for v in clf.model.trainable_weights)
    clf.model(x, training=True)  # BatchNorm stays in inference mode
    assert all(np.array_equal(moving[v.path], v.numpy()) for v in backbone.layer.variables
               if "moving_" in v.path)


def test_vit_preset_blocks_are_transformer_layers(vit_preset):
    backbone = build_backbone(cfg(vit_preset), SIZE)
    assert backbone.outputs_vector and backbone.layer(tf.zeros((2, SIZE, SIZE, 3))).shape == (
        2, 16)
    assert [block[0].split("/")[1] for block in backbone.blocks[1:]] == [
        "transformer_block_1", "transformer_block_2"]
    clf = build_classifier(backbone, 3, cfg(vit_preset), SIZE)
    head = count_params(clf.head.trainable_weights)
    top = params(backbone.layer, "transformer_block_2/")
    assert counts(clf) == [head, head + top,
                           head + top + params(backbone.layer, "transformer_block_1/")]


def test_preset_weights_and_normalisation_are_the_presets(resnet_preset):
    pretrained = build_backbone(cfg(resnet_preset), SIZE).layer.backbone
    saved = keras_hub.models.Backbone.from_preset(resnet_preset)
    random_init = build_backbone(cfg(resnet_preset, weights="none"), SIZE).layer.backbone
    kernel = saved.get_layer("conv1_conv").kernel.numpy()
    np.testing.assert_array_equal(pretrained.get_layer("conv1_conv").kernel.numpy(), kernel)
    assert not np.allclose(random_init.get_layer("conv1_conv").kernel.numpy(), kernel)
    pixels = tf.constant(np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)),
                         tf.float32)
    converter = keras_hub.layers.ImageConverter.from_preset(resnet_preset)
    np.testing.assert_allclose(normalizer(cfg(resnet_preset))(pixels).numpy(),
                               np.asarray(converter(pixels)), atol=1e-5)


SERVE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tfft"] = sys.modules["keras_hub"] = None  # the export needs neither
    import numpy as np
    import tensorflow as tf

    version_dir, inputs_path, outputs_path = sys.argv[1:]
    served = tf.saved_model.load(version_dir).signatures["serve_pixels"]
    np.save(outputs_path, served(pixels=tf.constant(np.load(inputs_path)))["probabilities"])
""")


def test_a_run_exports_and_serves_without_tfft(resnet_preset, tmp_path):
    workdir = str(tmp_path / "run")
    result = train_lib.train_and_evaluate(
        tiny_config(backbone="keras_hub", preset=resnet_preset, unfreeze_blocks=1), workdir)
    _, reloaded = rundir.load_run(workdir)
    version_dir = export.export_run(workdir, str(tmp_path / "export"))
    digits = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    np.save(tmp_path / "in.npy", digits)
    (tmp_path / "serve.py").write_text(SERVE_SCRIPT)
    run = subprocess.run([sys.executable, str(tmp_path / "serve.py"), version_dir,
                          str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    inputs = preprocess_images(tf.constant(digits), SIZE, result.classifier.backbone.normalize)
    live = result.classifier.model(inputs, training=False).numpy()
    np.testing.assert_allclose(reloaded(inputs, training=False).numpy(), live, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), live, atol=1e-5)


def one_line_error(model_cfg: ModelConfig) -> str:
    with pytest.raises(UserError) as e:
        build_backbone(model_cfg, SIZE)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_without_the_extra_one_line_says_how_to_install(monkeypatch, resnet_preset):
    monkeypatch.setitem(sys.modules, "keras_hub", None)
    assert 'pip install "tfft[keras-hub]"' in one_line_error(cfg(resnet_preset))


def test_preset_errors_name_the_preset(tmp_path):
    assert one_line_error(cfg("")).startswith("--preset: expected a KerasHub preset")
    assert "no such directory" in one_line_error(cfg(str(tmp_path / "nope")))
    text = keras_hub.models.BertBackbone(vocabulary_size=16, num_layers=1, num_heads=1,
                                         hidden_dim=4, intermediate_dim=8,
                                         max_sequence_length=8)
    text.save_to_preset(str(tmp_path / "bert"))
    message = one_line_error(cfg(str(tmp_path / "bert")))
    assert "expected an image backbone" in message and "BertBackbone" in message


@pytest.mark.parametrize("preset", ["resnet_18_imagenet", "hf://keras/resnet_18_imagenet"])
def test_remote_preset_offline_is_one_fast_line(monkeypatch, tmp_path, preset):
    def no_dns(*_args, **_kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    for var in ("HOME", "KAGGLEHUB_CACHE", "HF_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    start = time.monotonic()
    message = one_line_error(cfg(preset))
    assert time.monotonic() - start < 10
    assert message.startswith(f"--preset: could not load {preset!r} (offline?")
