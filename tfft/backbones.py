"""Pretrained backbones: Keras Applications, TF-Hub modules and KerasHub presets behind one
interface.

Each backbone knows its own input normalisation, its smallest usable input size and its ordered
"blocks" (bottom -> top) so the finetune phase can unfreeze the top N of them. This module builds
them and resolves ``--weights`` (the shipped files first when Keras has no cached copy, one line
offline); the table of Keras Applications is ``tfft.applications``, the TF-Hub layer ``tfft.hub``
(``HubFeatureVector`` is named here too, for the code that imports it from here), KerasHub
presets ``tfft.keras_hub_backbone``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from tfft import fs, hub, keras_hub_backbone
from tfft.applications import APPS, BUNDLED_WEIGHTS, App, group_layers
from tfft.config import ModelConfig
from tfft.errors import UserError
from tfft.hub import HubFeatureVector

__all__ = ["BUNDLED_WEIGHTS", "MIN_IMAGE_SIZE", "Backbone", "HubFeatureVector", "build_backbone",
           "normalizer"]

MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Backbone:
    """A built backbone: normalised images [B, S, S, 3] -> feature map or feature vector."""

    name: str
    layer: keras.layers.Layer
    normalize: Callable[[tf.Tensor], tf.Tensor]
    blocks: tuple[tuple[str, ...], ...]
    outputs_vector: bool
    identity: dict[str, str] = field(default_factory=dict)


def normalizer(cfg: ModelConfig) -> Callable[[tf.Tensor], tf.Tensor]:
    """The configured backbone's input normalisation, without building the backbone (export
    needs it for a saved model; it is the function a built ``Backbone.normalize`` holds)."""
    if cfg.backbone == "hub":
        return hub.normalize
    if cfg.backbone == "keras_hub":
        return keras_hub_backbone.normalizer(cfg.preset)
    return APPS[cfg.backbone].normalize


def build_backbone(cfg: ModelConfig, image_size: int) -> Backbone:
    """Builds the configured backbone; raises UserError for anything the user can fix."""
    if image_size < MIN_IMAGE_SIZE:  # the smallest input every backbone here accepts
        raise UserError(f"--image_size: expected at least {MIN_IMAGE_SIZE} for --backbone="
                        f"{cfg.backbone}; received {image_size}.")
    if cfg.backbone == "hub":
        return _build_hub(cfg, image_size)
    if cfg.backbone == "keras_hub":
        return _build_keras_hub(cfg, image_size)
    return _build_app(cfg, image_size)


def _build_app(cfg: ModelConfig, image_size: int) -> Backbone:
    app = APPS[cfg.backbone]
    weights, identity = _resolve_weights(cfg, app, image_size)
    kwargs = {"alpha": cfg.alpha} if app.uses_alpha else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _local_weights(weights) as local:
                model = app.constructor(include_top=False, weights=local,
                                        input_shape=(image_size, image_size, 3), **kwargs)
        except Exception as err:  # noqa: BLE001 - Keras raises bare Exception for downloads
            raise _weights_error(cfg, weights, err) from None
    for warning in caught:  # only a successful build's warnings are worth showing
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    model.trainable = False
    blocks = group_layers([layer.name for layer in model.layers if layer.weights], app.block_of)
    return Backbone(cfg.backbone, model, app.normalize, blocks, False, identity)


def _resolve_weights(cfg: ModelConfig, app: App, image_size: int
                     ) -> tuple[str | None, dict[str, str]]:
    """Maps --weights to what Keras takes, preferring the bundled file when offline.

    A shipped file is the 224 px ImageNet checkpoint, which serves every input size (Keras
    would ask for a size-specific file at some sizes, e.g. MobileNetV2 at 96-192 px); a copy of
    the file Keras itself would load, in Keras's cache, still wins.
    """
    identity = {"backbone": cfg.backbone, "weights": cfg.weights}
    if cfg.weights == "none":
        return None, identity
    if cfg.weights == "imagenet":
        bundled = BUNDLED_WEIGHTS.get((cfg.backbone, cfg.alpha))
        if bundled:
            cached = os.path.join(_keras_home(), "models", app.weights_file(cfg.alpha, image_size))
            path = cached if os.path.isfile(cached) else str(
                importlib.resources.files("tfft") / "weights" / bundled)
            return path, {**identity, "weights_file": path, "weights_sha256": _sha256(path)}
        return "imagenet", identity
    if not fs.isfile(cfg.weights):
        raise UserError(f"--weights: expected imagenet, none or an existing weights file; "
                        f"received {cfg.weights!r}.")
    return cfg.weights, {**identity, "weights_sha256": _sha256(cfg.weights)}


def _local_weights(weights: str | None) -> contextlib.AbstractContextManager[str | None]:
    """A weights file on another filesystem (``gs://...``) as a local copy: Keras reads h5
    files with h5py, which opens local files only."""
    if weights in (None, "imagenet"):
        return contextlib.nullcontext(weights)
    return fs.local_copy(weights)


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
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _build_hub(cfg: ModelConfig, image_size: int) -> Backbone:
    layer = hub.load_feature_vector(cfg.hub_handle, image_size)
    paths = layer.variable_paths
    blocks = hub.merge_batchnorm_groups(group_layers(paths, hub.block_key(paths)))
    identity = {"backbone": "hub", "hub_handle": cfg.hub_handle,
                "hub_resolved_path": hub.resolved_path(cfg.hub_handle), "hub_form": layer.form}
    return Backbone("hub", layer, hub.normalize, blocks, True, identity)


def _build_keras_hub(cfg: ModelConfig, image_size: int) -> Backbone:
    layer = keras_hub_backbone.load_features(cfg, image_size)
    return Backbone("keras_hub", layer, keras_hub_backbone.normalizer(cfg.preset),
                    keras_hub_backbone.blocks(layer), layer.pools_tokens,
                    keras_hub_backbone.identity(cfg, layer))
