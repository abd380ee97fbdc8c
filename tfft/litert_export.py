"""LiteRT (``.tflite``) conversion: builtin ops only, four quantisation modes.

The converter is TensorFlow's (``tf.lite.TFLiteConverter``; the ``ai-edge-litert`` package holds
only the interpreter), fed the way Keras's own ``model.export(format="litert")`` feeds it: a
SavedModel written by ``keras.export.ExportArchive``. Unlike Keras's exporter, tfft does not
enable ``SELECT_TF_OPS``: a file needing flex ops fails on phones whose runtime lacks them, so such
a model is refused with one line naming the ops.

``--quantize``: ``none`` (float32), ``dynamic`` (int8 weights, float activations), ``float16``
(float16 weights) and ``int8`` (full-integer post-training quantisation, calibrated on
``REPRESENTATIVE_IMAGES`` training images through tfft's own input pipeline; uint8 in and out).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from tfft import data as data_lib
from tfft import portable
from tfft.config import Config
from tfft.errors import UserError
from tfft.export_formats import REPRESENTATIVE_IMAGES
from tfft.tf_logs import native_stderr_discarded, quiet_tensorflow_logger

SOURCE_DIR = ".litert-source"  # the SavedModel the converter reads, inside the staging dir
# Backbones whose every op has a builtin LiteRT kernel, int8 included (measured 2026-12-01 at
# 32 px; tests/test_litert_onnx*.py convert the first five and the TF-Hub feature vector).
CLEAN_BACKBONES = ("mobilenet", "mobilenet_v2", "vgg16", "efficientnet_v2_b0", "hub",
                   "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "resnet50_v2",
                   "convnext_tiny")
NEEDS_FLEX = re.compile(r"TF Select ops: ([^\n]+)|'tf\.(\w+)' op is neither a custom op")
NOT_QUANTIZABLE = re.compile(r"[Qq]uantization (?:is )?not (?:yet )?supported for op: '?([\w.]+)")


def tflite_bytes(model: keras.Model, config: Config, quantize: str, resize_inside: bool,
                 staging: str) -> bytes:
    """The ``.tflite`` flatbuffer of ``model``; the converter's SavedModel goes in ``staging``
    (so a full disk or a killed export there is cleaned up with the version) and is removed."""
    source = os.path.join(staging, SOURCE_DIR)
    function = portable.pixel_function(model, config, resize_inside)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", function)
    try:
        with quiet_tensorflow_logger():
            archive.write_out(source, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(source)
            configure(converter, quantize, lambda: representative_data(config, resize_inside))
            return _convert(converter, quantize)
    finally:
        shutil.rmtree(source, ignore_errors=True)


def configure(converter: tf.lite.TFLiteConverter, quantize: str, calibration) -> None:
    """Builtin ops only, plus the optimisation ``quantize`` asks for."""
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8


def _convert(converter: tf.lite.TFLiteConverter, quantize: str) -> bytes:
    try:
        with native_stderr_discarded():
            return converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises ConverterError and others
        raise conversion_error(str(err), quantize) from None


def conversion_error(text: str, quantize: str) -> UserError:
    """One line for a model the converter refused: the ops it needs, and what would work."""
    flex = NEEDS_FLEX.findall(text)
    if flex:
        ops = sorted({op.strip() for match in flex for group in match
                      for op in group.split(",") if op.strip()})
        return UserError(f"--format=litert: the model needs TensorFlow ops without a builtin "
                         f"LiteRT kernel ({', '.join(ops)}); tfft does not enable flex ops "
                         f"(SELECT_TF_OPS), which mobile runtimes may lack. Backbones that "
                         f"convert cleanly: {', '.join(CLEAN_BACKBONES)}.")
    unquantizable = NOT_QUANTIZABLE.findall(text)
    if unquantizable and quantize == "int8":
        return UserError(f"--quantize=int8: op {', '.join(sorted(set(unquantizable)))} has no "
                         f"int8 kernel; use --quantize=dynamic or float16 for this model.")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "unknown error")
    return UserError(f"--format=litert: the converter refused the model ({first[:300]}).")


def representative_data(config: Config, resize_inside: bool,
                        count: int = REPRESENTATIVE_IMAGES) -> Iterator[list[np.ndarray]]:
    """Calibration inputs for ``--quantize=int8``: ``count`` shuffled training images, through
    tfft's pipeline (``load_splits``, then ``make_batches`` resizing as training does), as the
    file's input: uint8 at the model's size, or each image as stored with ``resize_inside``."""
    splits = data_lib.load_splits(config.data, config.train.seed)
    train = splits.train.shuffle(min(max(splits.sizes["train"], 1), 10_000),
                                 seed=config.train.seed).take(count)
    if resize_inside:
        for image, _ in data_lib.load_images(train):
            yield [data_lib.to_rgb(image[tf.newaxis]).numpy()]
        return
    batches = data_lib.make_batches(train, config.data, _unnormalized, training=False,
                                    seed=config.train.seed)
    for images, _ in batches:
        yield [tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8).numpy()]


def _unnormalized(images: tf.Tensor) -> tf.Tensor:
    """The pipeline's normaliser slot, left as raw 0-255 values: the file normalises itself."""
    return images
