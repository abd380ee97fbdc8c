"""Save a Keras backbone as a TF-Hub "reusable SavedModel" image feature vector.

Lets users (and tests, and the offline notebooks) turn any Keras feature extractor into a local
``--hub_handle`` directory: ``__call__(images, training)`` plus ``variables``,
``trainable_variables`` and ``regularization_losses``, the interface ``hub.load`` consumers use.
Plain ``tf.saved_model.save(keras_model)`` does not give this interface (STACK_FACTS §1).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf


def save_feature_vector(model: keras.Model, path: str) -> None:
    """Writes ``model`` (float images in [0, 1] -> [batch, dim]) as a TF-Hub feature vector."""
    root = tf.train.Checkpoint()
    root.model = model
    root.variables = [v.value for v in model.variables]
    root.trainable_variables = [v.value for v in model.trainable_variables]
    root.regularization_losses = []
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)

    @tf.function
    def call(inputs, training=False):
        return model(inputs, training=training)

    root.__call__ = call
    call.get_concrete_function(spec, True)
    call.get_concrete_function(spec, False)
    tf.saved_model.save(root, path)


def wrap_keras_application(
    backbone: keras.Model, normalize_from_unit: Callable[[tf.Tensor], tf.Tensor] | None = None
) -> keras.Model:
    """A feature-vector model over a Keras Application that takes [0, 1] images like TF-Hub's.

    ``normalize_from_unit`` maps [0, 1] inputs to what ``backbone`` expects (e.g. the
    application's ``preprocess_input`` of ``x * 255``).
    """
    inputs = keras.Input(backbone.input_shape[1:])
    x = normalize_from_unit(inputs) if normalize_from_unit else inputs
    x = backbone(x, training=False)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_feature_vector")
