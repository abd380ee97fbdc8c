"""ONNX (``.onnx``) conversion through ``tf2onnx``, the converter Keras's own
``model.export(format="onnx")`` uses on the TensorFlow backend.

Keras's exporter traces ``model.__call__`` on the model's float input; tfft converts its own
``tfft.portable`` function instead (uint8 pixels at the model's size in, float32 probabilities
out, ``training=False``), at opset ``ONNX_OPSET``. The class names travel in the file's metadata
(``labels``, one per line), beside ``labels.txt``.

The function is frozen here, not by ``tf2onnx.convert.from_function``: that takes its input
names from the unfrozen function, where constants a layer captured (EfficientNetV2's
``Normalization`` mean and variance) are inputs too, so the file demanded them as extra inputs
(Keras 3.15's own ``model.export(format="onnx")`` does the same). Freezing first turns them into
constants, and only ``pixels`` is an input.
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from tfft import portable
from tfft.config import Config
from tfft.errors import UserError
from tfft.export_formats import ONNX_OPSET
from tfft.tf_logs import quiet_tensorflow_logger


def onnx_bytes(model: keras.Model, config: Config, class_names: tuple[str, ...]) -> bytes:
    """The serialised ONNX model, with ``labels`` and ``image_size`` in its metadata."""
    import onnx
    import tf2onnx

    _numpy2_compatible_tf2onnx()
    try:
        with quiet_tensorflow_logger():
            graph_def, inputs, outputs = _frozen(portable.pixel_function(model, config))
            proto, _ = tf2onnx.convert.from_graph_def(
                graph_def, input_names=inputs, output_names=outputs, opset=ONNX_OPSET,
                tensors_to_rename={inputs[0]: portable.PIXELS,
                                   outputs[0]: portable.PROBABILITIES})
    except Exception as err:  # noqa: BLE001 - tf2onnx raises plain exceptions for unsupported ops
        first = next((s.strip() for s in str(err).splitlines() if s.strip()), type(err).__name__)
        raise UserError(f"--format=onnx: tf2onnx could not convert the model ({first[:300]})."
                        ) from None
    unconverted = sorted({node.op_type for node in proto.graph.node
                          if not onnx.defs.has(node.op_type, node.domain)})
    if unconverted:  # tf2onnx leaves them in (continue_on_error): no runtime could load the file
        raise UserError(f"--format=onnx: tf2onnx cannot convert the model's TensorFlow ops "
                        f"{', '.join(unconverted)} at opset {ONNX_OPSET}; export --format=litert "
                        f"or saved_model for this backbone.")
    onnx.helper.set_model_props(proto, {"labels": "\n".join(class_names),
                                        "image_size": str(config.data.image_size),
                                        "producer": "tfft"})
    return proto.SerializeToString()


def _frozen(function: tf.types.experimental.PolymorphicFunction,
            ) -> tuple[tf.compat.v1.GraphDef, list[str], list[str]]:
    """The function's graph with every variable and captured tensor as a constant, and its
    input and output tensor names (what tf2onnx's own ``from_function`` does, minus the
    captured inputs)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(function.get_concrete_function(),
                                               lower_control_flow=False, aggressive_inlining=True)
    return (frozen.graph.as_graph_def(add_shapes=True), [t.name for t in frozen.inputs],
            [t.name for t in frozen.outputs])


def _numpy2_compatible_tf2onnx() -> None:
    """tf2onnx 1.17 still uses ``np.object`` and numpy-1 casts; Keras ships the patch its own
    ONNX exporter applies first (a no-op once applied, and absent once tf2onnx is fixed)."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:
        return
    with warnings.catch_warnings():  # its hasattr(np, "object") probe warns under numpy 2
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()
