"""The TF-Hub image feature vector as a Keras 3 layer: loading, probing and its blocks.

``hub.KerasLayer`` subclasses the tf_keras Layer, which Keras 3 models refuse (STACK_FACTS §1),
so tfft wraps ``hub.load(handle)`` itself. ``tfft.backbones`` turns the layer into a ``Backbone``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import keras
import tensorflow as tf

from tfft.errors import UserError

BATCHNORM_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")


@keras.saving.register_keras_serializable(package="tfft")
class HubFeatureVector(keras.layers.Layer):
    """A Keras 3 layer around ``hub.load(handle)`` (hub.KerasLayer is tf_keras-only).

    The loaded module's tf.Variables are wrapped (not copied) as Keras variables so optimizers,
    checkpoints and per-variable unfreezing see them. The module runs in inference mode
    (BatchNorm statistics frozen) unless ``train_batchnorm`` is set: a Keras 3 functional model
    passes its own ``training`` to every layer, whatever the layer was called with when the model
    was built, so the layer itself must hold this decision.
    """

    def __init__(self, handle: str, train_batchnorm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.handle = handle
        self.train_batchnorm = train_batchnorm
        self._module = _load_hub_module(handle)
        trainable_ids = {id(v) for v in self._module.trainable_variables}
        self.variable_paths: tuple[str, ...] = ()
        paths = []
        for v in self._module.variables:
            path = v.name.split(":")[0]
            paths.append(path)
            self._track_variable(keras.Variable(
                initializer=v, trainable=id(v) in trainable_ids, dtype=v.dtype, shape=v.shape,
                name=_variable_name(path)))
        self.variable_paths = tuple(paths)
        self.built = True

    def path_of(self, variable: keras.Variable) -> str:
        """The module's own name of a wrapped variable (e.g. ``Conv1/kernel``)."""
        return self._path_by_name[variable.name]

    @property
    def _path_by_name(self) -> dict[str, str]:
        return {_variable_name(p): p for p in self.variable_paths}

    def call(self, inputs, training=False):
        return self._module(
            inputs, training=self.train_batchnorm and bool(training) and self.trainable)

    def get_config(self):
        return {**super().get_config(), "handle": self.handle,
                "train_batchnorm": self.train_batchnorm}


def _variable_name(path: str) -> str:
    """Keras variable names may not hold ':' or '/' (optimizer slot names break)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", path)


def _load_hub_module(handle: str):
    import tensorflow_hub as hub

    is_url = handle.startswith(("http://", "https://"))
    if not is_url and not os.path.isdir(handle):
        raise UserError(f"--hub_handle: expected a TF-Hub URL or a local SavedModel directory; "
                        f"received {handle!r} (no such directory).")
    try:
        module = hub.load(handle)
    except Exception as err:  # noqa: BLE001 - URLError, OSError, parse errors
        hint = " (offline? download it where you have network and pass --hub_handle=/local/dir)"
        raise UserError(f"--hub_handle: could not load {handle!r}"
                        f"{hint if is_url else ''}: {str(err).splitlines()[0][:200]}") from None
    if not callable(module) or not getattr(module, "variables", None):
        raise UserError(f"--hub_handle: {handle!r} is not a reusable TF-Hub image feature vector "
                        "(no callable with variables).")
    return module


def load_feature_vector(handle: str, image_size: int) -> HubFeatureVector:
    """The frozen layer of ``handle``, checked to map [batch, S, S, 3] images to [batch, dim]."""
    layer = HubFeatureVector(handle, trainable=False, name="hub_feature_vector")
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
    if os.path.isdir(handle):
        return os.path.abspath(handle)
    import tensorflow_hub as hub

    return hub.resolve(handle)
