"""Pretrained backbones: Keras Applications and TF-Hub feature vectors behind one interface.

Each backbone knows its own input normalisation, its smallest usable input size and its ordered
"blocks" (bottom -> top) so the finetune phase can unfreeze the top N of them. This module holds
the Keras Applications table and where their weights come from; the TF-Hub layer is
``tfft.hub`` (``HubFeatureVector`` is named here too, for the code that imports it from here).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from tfft import hub
from tfft.config import ModelConfig
from tfft.errors import UserError
from tfft.hub import HubFeatureVector

__all__ = ["BUNDLED_WEIGHTS", "MIN_IMAGE_SIZE", "Backbone", "HubFeatureVector", "build_backbone",
           "normalizer"]

MIN_IMAGE_SIZE = 32
BUNDLED_WEIGHTS = {("mobilenet", 0.25): "mobilenet_2_5_224_tf_no_top.h5"}


@dataclass(frozen=True)
class Backbone:
    """A built backbone: normalised images [B, S, S, 3] -> feature map or feature vector."""

    name: str
    layer: keras.layers.Layer
    normalize: Callable[[tf.Tensor], tf.Tensor]
    blocks: tuple[tuple[str, ...], ...]
    outputs_vector: bool
    identity: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _App:
    constructor: Callable[..., keras.Model]
    normalize: Callable[[tf.Tensor], tf.Tensor]
    block_of: Callable[[str], str]
    uses_alpha: bool = False


def _vgg_block(name: str) -> str:
    return name.split("_")[0]


def _resnet_block(name: str) -> str:
    prefix = name.split("_")[0]
    return "conv1" if prefix == "pool1" else prefix


_MOBILENET_V2_STAGES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 3, 7: 3, 8: 3, 9: 3,
                        10: 4, 11: 4, 12: 4, 13: 5, 14: 5, 15: 5, 16: 6}


def _mobilenet_v2_block(name: str) -> str:
    match = re.match(r"block_(\d+)_", name)
    if match:
        return f"stage{_MOBILENET_V2_STAGES[int(match.group(1))]}"
    if name.startswith(("Conv_1", "out_relu")):
        return "stage6"
    return "stem"


def _mobilenet_block(name: str) -> str:
    match = re.match(r"conv_(?:dw|pw|pad)_(\d+)", name)
    return f"block{int(match.group(1))}" if match else "stem"


_APPS = {
    "vgg16": _App(keras.applications.VGG16, keras.applications.vgg16.preprocess_input,
                  _vgg_block),
    "resnet50": _App(keras.applications.ResNet50, keras.applications.resnet50.preprocess_input,
                     _resnet_block),
    "mobilenet_v2": _App(keras.applications.MobileNetV2,
                         keras.applications.mobilenet_v2.preprocess_input,
                         _mobilenet_v2_block, uses_alpha=True),
    "mobilenet": _App(keras.applications.MobileNet, keras.applications.mobilenet.preprocess_input,
                      _mobilenet_block, uses_alpha=True),
}


def normalizer(cfg: ModelConfig) -> Callable[[tf.Tensor], tf.Tensor]:
    """The configured backbone's input normalisation, without building the backbone (export
    needs it for a saved model; it is the function a built ``Backbone.normalize`` holds)."""
    if cfg.backbone == "hub":
        return hub.normalize
    return _APPS[cfg.backbone].normalize


def build_backbone(cfg: ModelConfig, image_size: int) -> Backbone:
    """Builds the configured backbone; raises UserError for anything the user can fix."""
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image_size: expected at least {MIN_IMAGE_SIZE} for --backbone="
                        f"{cfg.backbone}; received {image_size}.")
    if cfg.backbone == "hub":
        return _build_hub(cfg, image_size)
    return _build_app(cfg, image_size)


def _build_app(cfg: ModelConfig, image_size: int) -> Backbone:
    app = _APPS[cfg.backbone]
    weights, identity = _resolve_weights(cfg, image_size)
    kwargs = {"alpha": cfg.alpha} if app.uses_alpha else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = app.constructor(include_top=False, weights=weights,
                                    input_shape=(image_size, image_size, 3), **kwargs)
        except Exception as err:  # noqa: BLE001 - Keras raises bare Exception for downloads
            raise _weights_error(cfg, weights, err) from None
    for warning in caught:  # only a successful build's warnings are worth showing
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    model.trainable = False
    blocks = _group([layer.name for layer in model.layers if layer.weights], app.block_of)
    return Backbone(cfg.backbone, model, app.normalize, blocks, False, identity)


def _resolve_weights(cfg: ModelConfig, image_size: int) -> tuple[str | None, dict[str, str]]:
    """Maps --weights to what Keras takes, preferring the bundled file when offline."""
    identity = {"backbone": cfg.backbone, "weights": cfg.weights}
    if cfg.weights == "none":
        return None, identity
    if cfg.weights == "imagenet":
        bundled = BUNDLED_WEIGHTS.get((cfg.backbone, cfg.alpha))
        if bundled:
            rows = image_size if image_size in (128, 160, 192, 224) else 224
            cached = os.path.join(_keras_home(), "models", bundled.replace("224", str(rows)))
            path = cached if os.path.isfile(cached) else str(
                importlib.resources.files("tfft") / "weights" / bundled)
            return path, {**identity, "weights_file": path, "weights_sha256": _sha256(path)}
        return "imagenet", identity
    if not os.path.isfile(cfg.weights):
        raise UserError(f"--weights: expected imagenet, none or an existing weights file; "
                        f"received {cfg.weights!r}.")
    return cfg.weights, {**identity, "weights_sha256": _sha256(cfg.weights)}


def _weights_error(cfg: ModelConfig, weights: str | None, err: Exception) -> UserError:
    text = str(err)
    url = re.search(r"URL fetch failure on (\S+):\s", text)
    if url:
        fname = url.group(1).rsplit("/", 1)[-1]
        return UserError(
            f"--weights=imagenet: could not download {fname} for --backbone={cfg.backbone} "
            f"(offline?); put it in {os.path.join(_keras_home(), 'models')}/ or pass "
            "--weights=PATH."
        )
    if "alpha" in text:
        return UserError(f"--alpha: {text.splitlines()[0]} (received {cfg.alpha}).")
    if weights not in (None, "imagenet"):
        return UserError(f"--weights: {weights!r} does not hold {cfg.backbone} weights for this "
                         f"configuration ({text.splitlines()[0][:200]}).")
    return UserError(f"--backbone={cfg.backbone}: could not be built ({text.splitlines()[0]}).")


def _keras_home() -> str:
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _group(names: Iterable[str], key: Callable[[str], str]) -> tuple[tuple[str, ...], ...]:
    """Groups names into blocks by key, keeping the order of first appearance (bottom -> top)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(key(name), []).append(name)
    return tuple(tuple(v) for v in groups.values())


def _build_hub(cfg: ModelConfig, image_size: int) -> Backbone:
    layer = hub.load_feature_vector(cfg.hub_handle, image_size)
    paths = layer.variable_paths
    blocks = hub.merge_batchnorm_groups(_group(paths, hub.block_key(paths)))
    identity = {"backbone": "hub", "hub_handle": cfg.hub_handle,
                "hub_resolved_path": hub.resolved_path(cfg.hub_handle)}
    return Backbone("hub", layer, hub.normalize, blocks, True, identity)
