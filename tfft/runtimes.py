"""LiteRT and ONNX Runtime behind tfft's ``serve_pixels`` interface, for predict and evaluate.

A ``PortableModel`` takes what a SavedModel's ``serve_pixels`` takes (uint8 [batch, H, W, 1 or
3], any size) and returns ``{"probabilities": ...}``, so ``tfft.evaluate`` measures every format
with the same code. It does what an app does before calling the file: RGB, and the bilinear
resize to the model's size (``tfft.portable.model_pixels``) unless the file resizes itself; a
full-integer file's uint8 input and output are (de)quantised with the file's own parameters.
Each runtime is an optional extra, imported only here and only when its file is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfft import fs
from tfft.errors import UserError
from tfft.export_formats import LITERT, ONNX, missing_runtime
from tfft.model_files import ModelPath
from tfft.portable import PROBABILITIES, model_pixels
from tfft.preprocess import to_rgb
from tfft.tf_logs import native_stderr_discarded

Runner = Callable[[np.ndarray], np.ndarray]  # uint8 [batch, S, S, 3] -> float32 [batch, classes]


class PortableModel:
    """A ``.tflite`` or ``.onnx`` file, callable like ``serve_pixels``."""

    def __init__(self, model: ModelPath, threads: int = 0):
        loaders = {LITERT: LiteRTRunner, ONNX: OnnxRunner}
        self.path = model.path
        self.runner = loaders[model.format](model.path, threads or os.cpu_count() or 1)
        self.image_size = self.runner.image_size  # None: the file resizes itself

    def pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 [batch, H, W, 1 or 3] -> ``{"probabilities": float32 [batch, classes]}``."""
        images = tf.convert_to_tensor(images)
        batch = model_pixels(images, self.image_size) if self.image_size else to_rgb(images)
        return {PROBABILITIES: tf.constant(self.runner(np.asarray(batch)))}


class LiteRTRunner:
    """The LiteRT interpreter (``ai-edge-litert``) over one file, resized to each batch."""

    def __init__(self, path: str, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise missing_runtime(LITERT, path) from None
        try:
            # Both runtimes open files themselves; a file on another filesystem goes in as bytes.
            source = {"model_path": path} if fs.is_local(path) else {
                "model_content": fs.read_bytes(path)}
            self.interpreter = Interpreter(**source, num_threads=threads)
        except ValueError as err:
            raise UserError(f"--model: could not load {path!r} as a LiteRT model "
                            f"({str(err).strip().splitlines()[0][:200]}).") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        check_image_input(path, list(self.input["shape_signature"]))
        size = int(self.input["shape_signature"][1])
        self.image_size = size if size > 0 else None
        self.shape: tuple[int, ...] = ()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input["index"], list(batch.shape))
            with native_stderr_discarded():  # the first allocation prints the delegate's INFO
                self.interpreter.allocate_tensors()
            self.shape = batch.shape
        self.interpreter.set_tensor(self.input["index"], quantized(batch, self.input))
        self.interpreter.invoke()
        return dequantized(self.interpreter.get_tensor(self.output["index"]), self.output)


def check_image_input(path: str, shape: list) -> None:
    """tfft's files take one [batch, height, width, 3] input; another model's file is refused."""
    if len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"--model: expected a tfft export taking uint8 [batch, height, width, 3] "
                        f"pixels; {path!r} takes an input of shape {list(shape)}.")


def quantized(values: np.ndarray, details: dict) -> np.ndarray:
    """Values as a tensor's dtype wants them: through its (scale, zero point) if it has one."""
    scale, zero_point = details["quantization"]
    dtype = np.dtype(details["dtype"])
    if not scale:
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale + zero_point), info.min, info.max).astype(dtype)


def dequantized(values: np.ndarray, details: dict) -> np.ndarray:
    """A tensor's values as float32, through its (scale, zero point) if it has one."""
    scale, zero_point = details["quantization"]
    if not scale:
        return values.astype(np.float32)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class OnnxRunner:
    """An ONNX Runtime CPU session over one file."""

    def __init__(self, path: str, threads: int):
        try:
            import onnxruntime
        except ImportError:
            raise missing_runtime(ONNX, path) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            source = path if fs.is_local(path) else fs.read_bytes(path)
            self.session = onnxruntime.InferenceSession(source, options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph
            raise UserError(f"--model: could not load {path!r} as an ONNX model "
                            f"({str(err).strip().splitlines()[0][:200]}).") from None
        self.input = self.session.get_inputs()[0].name
        check_image_input(path, self.session.get_inputs()[0].shape)
        size = self.session.get_inputs()[0].shape[1]
        self.image_size = size if isinstance(size, int) else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch.astype(np.uint8)})[0].astype(np.float32)
