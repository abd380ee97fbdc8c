"""LiteRT and ONNX conversion across backbones and the known traps: a model trained under
``--strategy=mirrored --cpu_devices=2`` with ``--augment`` (through the CLI), a model built under
a distribution strategy in process, VGG16, MobileNetV2, EfficientNetV2-B0 and a TF-Hub feature
vector (untrained, 32 px: conversion, not accuracy, is what can break here).

Measured 2026-12-01 (2 cores): every one converts with builtin ops only, full-integer int8
included; ONNX agrees with the Keras model to <= 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, tiny_config
from test_export import real_digits
from test_litert_onnx import op_names

from tfft import applications, backbones, classifier, export, model_files, portable
from tfft.export_formats import LITERT, ONNX, ONNX_FILE, TFLITE_FILE, ExportOptions
from tfft.runtimes import PortableModel

pytestmark = pytest.mark.large

NAMES = [f"class{i}" for i in range(5)]
BACKBONES = {
    "vgg16": dict(backbone="vgg16", weights="none"),
    "mobilenet_v2": dict(backbone="mobilenet_v2", alpha=0.35, weights="none"),
    "efficientnet_v2_b0": dict(backbone="efficientnet_v2_b0", weights="none"),
    "hub": dict(backbone="hub", weights="none"),
    "mirrored_in_process": dict(strategy="mirrored"),
}


def probabilities(path: str, pixels: np.ndarray) -> np.ndarray:
    runtime = PortableModel(model_files.resolve_model(path))
    return runtime.pixels(tf.constant(pixels))["probabilities"].numpy()


def assert_files_answer_like(version_dir: str, reference_fn, size: int, float_litert: bool):
    """The version's ONNX (and float LiteRT) file give ``reference_fn``'s probabilities on uint8
    pixels at the model's size; a full-integer LiteRT file runs, builtin ops only."""
    pixels = portable.model_pixels(tf.constant(real_digits(3000, 8)[0][..., None]), size).numpy()
    reference = reference_fn(pixels)
    onnx = probabilities(os.path.join(version_dir, ONNX_FILE), pixels)
    assert np.max(np.abs(onnx - reference)) <= 1e-4
    tflite = os.path.join(version_dir, TFLITE_FILE)
    assert not any(n.startswith("Flex") or n == "CUSTOM" for n in op_names(tflite))
    got = probabilities(tflite, pixels)
    if float_litert:
        assert np.max(np.abs(got - reference)) <= 1e-4
    else:
        assert got.shape == reference.shape and np.allclose(got.sum(-1), 1, atol=0.05)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_converts_to_full_integer_litert_and_onnx(name, tmp_path, request):
    if name == "efficientnet_v2_b0" and name not in applications.APPS:
        pytest.skip("efficientnet_v2_b0 is not a tfft backbone yet")
    overrides = dict(BACKBONES[name], image_size=32)
    if name == "hub":
        overrides["hub_handle"] = request.getfixturevalue("hub_feature_vector")
    config = tiny_config(**overrides)
    keras.utils.set_random_seed(3)
    strategy = (tf.distribute.MirroredStrategy(["/cpu:0"]) if name == "mirrored_in_process"
                else tf.distribute.get_strategy())
    with strategy.scope():
        backbone = backbones.build_backbone(config.model, 32)
        model = classifier.build_classifier(backbone, len(NAMES), config.model, 32).model
    version_dir = export.export_model(model, NAMES, config, str(tmp_path / "export"),
                                      options=ExportOptions((LITERT, ONNX), "int8"))
    live = portable.pixel_function(model, config)
    assert_files_answer_like(version_dir, lambda x: live(x)["probabilities"].numpy(), 32,
                             float_litert=False)


def test_a_mirrored_run_with_augmentation_exports_every_format_from_the_cli(tmp_path):
    """The Keras 3 traps at once: weights that are MirroredVariables over 2 logical CPUs, and a
    run trained with augmentation layers; tfft's files call the model with training=False."""
    workdir = str(tmp_path / "run")
    flags = ["--dataset=sample:mnist", "--backbone=mobilenet", "--alpha=0.25",
             "--weights=imagenet", "--image_size=32", "--batch_size=16", "--head_units=16",
             "--dropout=0", "--head_epochs=1", "--finetune_epochs=1", "--unfreeze_blocks=2",
             "--max_train_examples=64", "--max_eval_examples=32", "--verbosity=0",
             "--strategy=mirrored", "--cpu_devices=2", "--augment=flip,rotate",
             "--export_formats=saved_model,litert", "--export_formats=onnx",
             f"--workdir={workdir}"]
    run = subprocess.run([sys.executable, "-m", "tfft.train", *flags], capture_output=True,
                         text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    version_dir = os.path.join(workdir, "export", "1")
    assert {TFLITE_FILE, ONNX_FILE, "saved_model.pb", "labels.txt"} <= set(os.listdir(version_dir))
    signature = tf.saved_model.load(version_dir).signatures["serve_pixels"]
    assert_files_answer_like(
        version_dir, lambda x: signature(pixels=tf.constant(x))["probabilities"].numpy(), 32,
        float_litert=True)
