"""KerasHub image backbones as ``--backbone=keras_hub --preset=NAME|hf://...|kaggle://...|DIR``.

An optional extra (``pip install "tfft[keras-hub]"``): ``keras_hub`` is imported only when this
backbone is asked for. The preset's backbone is wrapped in one Keras layer that runs it in
inference mode and addresses its variables by path, the way ``tfft.hub`` does for TF-Hub modules,
because KerasHub nests transformer layers inside one encoder layer: blocks are the stages of a
convolutional backbone or the transformer layers of a ViT-style one, found from the variable
paths. Its normalisation is the preset's own image converter's ``scale`` and ``offset``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from tfft.applications import JOINS_BLOCK_BELOW, group_layers
from tfft.config import ModelConfig
from tfft.errors import UserError
from tfft.hub import merge_batchnorm_groups

INSTALL = 'pip install "tfft[keras-hub]"'
REMOTE_HINT = ("offline? where you have network, save it with keras_hub's save_to_preset "
               "(the backbone and its image converter) and pass --preset=/local/dir")


def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise UserError(f"--backbone=keras_hub: expected the keras-hub package, which is not "
                        f"installed; install it with {INSTALL}.") from None
    return keras_hub


@keras.saving.register_keras_serializable(package="tfft")
class KerasHubFeatures(keras.layers.Layer):
    """A KerasHub backbone as tfft's backbone layer: images -> feature maps (convolutional) or
    mean-pooled token features (transformers, whose output is [batch, tokens, dim]).

    Like ``HubFeatureVector`` it holds the BatchNorm decision itself (``train_batchnorm``) and
    names its variables by path (``path_of``) so ``tfft.classifier`` unfreezes them one by one.
    A reloaded ``model.keras`` builds the preset's architecture without its weights and restores
    the trained ones.
    """

    def __init__(self, preset: str, load_weights: bool = True, train_batchnorm: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.preset = preset
        self.train_batchnorm = train_batchnorm
        self.backbone = load_preset_backbone(preset, load_weights)
        self.pools_tokens = len(self.backbone.outputs[0].shape) == 3
        self.built = True

    def path_of(self, variable: keras.Variable) -> str:
        return variable.path

    def call(self, inputs, training=False):
        outputs = self.backbone(
            inputs, training=self.train_batchnorm and bool(training) and self.trainable)
        return keras.ops.mean(outputs, axis=1) if self.pools_tokens else outputs

    def get_config(self):
        return {**super().get_config(), "preset": self.preset,
                "train_batchnorm": self.train_batchnorm}

    @classmethod
    def from_config(cls, config):
        return cls(**config, load_weights=False)


def load_features(cfg: ModelConfig, image_size: int) -> KerasHubFeatures:
    """The frozen layer of ``--preset``, checked against ``--weights`` and ``--image_size``."""
    if not cfg.preset:
        raise UserError("--preset: expected a KerasHub preset (a name, hf://..., kaggle://... or "
                        "a local preset directory) for --backbone=keras_hub; received ''.")
    if cfg.weights not in ("imagenet", "none"):
        raise UserError(f"--weights: expected imagenet (the preset's own weights) or none for "
                        f"--backbone=keras_hub; received {cfg.weights!r}.")
    layer = KerasHubFeatures(cfg.preset, load_weights=cfg.weights == "imagenet",
                             trainable=False, name="keras_hub_backbone")
    fixed = layer.backbone.inputs[0].shape[1]
    if fixed not in (None, image_size):
        raise UserError(f"--image_size: expected {fixed} for --preset={cfg.preset!r} (its "
                        f"backbone takes [batch, {fixed}, {fixed}, 3] images); received "
                        f"{image_size}.")
    return layer


def load_preset_backbone(preset: str, load_weights: bool) -> keras.Model:
    """``keras_hub.models.Backbone.from_preset``, as one line when it cannot be loaded."""
    keras_hub = _keras_hub()
    _check_local(preset)
    try:
        with _offline_when_unreachable(preset):
            backbone = keras_hub.models.Backbone.from_preset(preset, load_weights=load_weights)
    except Exception as err:  # noqa: BLE001 - network, file and format errors of any kind
        hint = "" if os.path.isdir(preset) else f" ({REMOTE_HINT})"
        raise UserError(f"--preset: could not load {preset!r}{hint}: "
                        f"{str(err).strip().splitlines()[0][:200]}") from None
    inputs = backbone.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[-1] not in (3, None):
        names = [getattr(x, "name", "?") for x in inputs]
        raise UserError(f"--preset: expected an image backbone (one input [batch, H, W, 3]); "
                        f"{preset!r} is a {type(backbone).__name__} with inputs {names}.")
    return backbone


def _check_local(preset: str) -> None:
    looks_local = preset.startswith(("/", ".", "~")) or os.sep in preset.split("://")[0]
    if "://" not in preset and looks_local and not os.path.isdir(preset):
        raise UserError(f"--preset: expected a KerasHub preset name, hf://..., kaggle://... or "
                        f"an existing preset directory; received {preset!r} (no such directory).")


@contextlib.contextmanager
def _offline_when_unreachable(preset: str) -> Iterator[None]:
    """Hugging Face downloads retry for about 25 s without network; when huggingface.co does
    not even resolve, ask its client for the local cache only, which answers at once."""
    if not preset.startswith("hf://") or _resolves("huggingface.co"):
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _converter_affine(preset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The preset image converter's ``scale`` and ``offset`` (per channel or one number)."""
    keras_hub = _keras_hub()
    try:
        with _offline_when_unreachable(preset):
            converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as err:  # noqa: BLE001 - a preset without an image converter, or offline
        raise UserError(f"--preset: {preset!r} has no loadable image converter, which says how "
                        f"its images are normalised ({str(err).strip().splitlines()[0][:160]}); "
                        "save the backbone's keras_hub ImageConverter beside it with "
                        "save_to_preset.") from None

    def numbers(value, default: float) -> tuple[float, ...]:
        if value is None:
            return (default,)
        return tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value]))

    return numbers(converter.scale, 1.0), numbers(converter.offset, 0.0)


def normalizer(preset: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """0-255 RGB pixels -> what the preset's backbone takes (``x * scale + offset``, the image
    converter's arithmetic; tfft resizes itself, before or after, as for every backbone)."""
    scale, offset = _converter_affine(preset)

    def normalize(images: tf.Tensor) -> tf.Tensor:
        return images * tf.constant(scale, tf.float32) + tf.constant(offset, tf.float32)

    return normalize


def block_of(path: str) -> str:
    """A variable's block: its first path component holding a number, up to that number
    (``stack1_block0_1_conv`` -> ``stack1``, ``vit_encoder/transformer_block_2/...`` ->
    ``transformer_block_2``); paths without one (embeddings, a final norm) join the block
    before them, or open the first."""
    for part in path.split("/")[:-1]:
        match = re.match(r"\D*\d+", part)
        if match:
            return match.group(0)
    return JOINS_BLOCK_BELOW


def blocks(layer: KerasHubFeatures) -> tuple[tuple[str, ...], ...]:
    """Bottom -> top; a block of BatchNorm variables alone joins the one below it."""
    paths = [layer.path_of(v) for v in layer.variables]
    return merge_batchnorm_groups(group_layers(paths, block_of))


def identity(cfg: ModelConfig, layer: KerasHubFeatures) -> dict[str, str]:
    return {"backbone": "keras_hub", "preset": cfg.preset, "weights": cfg.weights,
            "preset_class": type(layer.backbone).__name__}
