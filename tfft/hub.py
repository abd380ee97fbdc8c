"""The TF-Hub image feature vector as a Keras 3 layer: loading, probing and its blocks.

``hub.KerasLayer`` subclasses the tf_keras Layer, which Keras 3 models refuse (STACK_FACTS §1),
so tfft wraps ``hub.load(handle)`` itself, in either of its forms (``tfft.hub_module``: a TF2
reusable SavedModel or a TF1 Hub format signature). ``tfft.backbones`` turns the layer into a
``Backbone``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import keras
import tensorflow as tf

from tfft import fs
from tfft.errors import UserError
from tfft.hub_module import load_module

BATCHNORM_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")


@keras.saving.register_keras_serializable(package="tfft")
class HubFeatureVector(keras.layers.Layer):
    """A Keras 3 layer around ``hub.load(handle)`` (hub.KerasLayer is tf_keras-only).

    The loaded module's tf.Variables are wrapped (not copied) as Keras variables so optimizers,
    checkpoints and per-variable unfreezing see them. The module runs in inference mode
    (BatchNorm statistics frozen) unless ``train_batchnorm`` is set: a Keras 3 functional model
    passes its own ``training`` to every layer, whatever the layer was called with when the model
    was built, so the layer itself must hold this decision. A TF1 Hub format signature is an
    inference graph: there ``train_batchnorm`` can only let BatchNorm's scale and offset learn.
    """

    def __init__(self, handle: str, train_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.handle = handle
        self.train_batchnorm = train_batchnorm
        self._module = load_module(handle)
        self.form = self._module.form
        self.input_size = self._module.input_size
        paths = []
        for v in self._module.variables:
            path = v.name.split(":")[0]
            paths.append(path)
            self._track_variable(keras.Variable(
                initializer=v, trainable=id(v) in self._module.trainable_ids, dtype=v.dtype,
                shape=v.shape, name=_variable_name(path)))
        self.variable_paths: tuple[str, ...] = tuple(paths)
        self.built = True

    def path_of(self, variable: keras.Variable) -> str:
        """The module's own name of a wrapped variable (e.g. ``Conv1/kernel``)."""
        return self._path_by_name[variable.name]

    @property
    def _path_by_name(self) -> dict[str, str]:
        return {_variable_name(p): p for p in self.variable_paths}

    def call(self, inputs, training=False):
        return self._module.call(
            inputs, self.train_batchnorm and bool(training) and self.trainable)

    def get_config(self):
        return {**super().get_config(), "handle": self.handle,
                "train_batchnorm": self.train_batchnorm}


def _variable_name(path: str) -> str:
    """Keras variable names may not hold ':' or '/' (optimizer slot names break)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", path)


def load_feature_vector(handle: str, image_size: int) -> HubFeatureVector:
    """The frozen layer of ``handle``, checked to map [batch, S, S, 3] images to [batch, dim]."""
    layer = HubFeatureVector(handle, trainable=False, name="hub_feature_vector")
    if layer.input_size not in (None, image_size):
        raise UserError(f"--image_size: expected {layer.input_size} for --hub_handle={handle!r} "
                        f"({layer.form} takes [batch, {layer.input_size}, {layer.input_size}, 3] "
                        f"images); received {image_size}.")
    try:
        probe = layer(tf.zeros((1, image_size, image_size, 3)))
    except Exception as err:  # noqa: BLE001 - signature mismatch of a foreign module
        reason = str(err).splitlines()[0][:160]
        raise UserError(f"--hub_handle: {handle!r} does not take [batch, {image_size}, "
                        f"{image_size}, 3] float images ({reason}).") from None
    if len(probe.shape) != 2:
        raise UserError(f"--hub_handle: expected an image feature vector (output [batch, dim]); "
                        f"{handle!r} returns shape {list(probe.shape)}.")
    return layer


def normalize(images: tf.Tensor) -> tf.Tensor:
    """TF-Hub image modules take RGB floats in [0, 1]."""
    return images / 255.0


def block_key(paths: tuple[str, ...]) -> Callable[[str], str]:
    """Block = first variable-name component below the scope all variables share."""
    split = [p.split("/") for p in paths]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    return lambda path: path.split("/")[common] if "/" in path else path


def merge_batchnorm_groups(
    groups: tuple[tuple[str, ...], ...]
) -> tuple[tuple[str, ...], ...]:
    """A group of only BatchNorm variables belongs to the layer below it (Keras-made modules)."""
    merged: list[tuple[str, ...]] = []
    for group in groups:
        if merged and all(p.rsplit("/", 1)[-1] in BATCHNORM_LEAVES for p in group):
            merged[-1] = merged[-1] + group
        else:
            merged.append(group)
    return tuple(merged)


def resolved_path(handle: str) -> str:
    """Where the module's files are: the directory itself, or TF-Hub's cache for a URL."""
    if fs.isdir(handle):
        return fs.abspath(handle)
    import tensorflow_hub as hub

    return hub.resolve(handle)
