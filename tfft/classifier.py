"""The classifier: frozen backbone -> pooling -> Dense head, and its (un)freezing.

The head is its own Keras model over feature vectors, shared by the full model, so the head phase
can train it on cached backbone features and the result is the same full model either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tfft.backbones import Backbone
from tfft.config import ModelConfig
from tfft.errors import UserError


@dataclass(frozen=True)
class Classifier:
    """The full model and the two sub-models that share its layers."""

    model: keras.Model  # normalised images -> class probabilities
    features: keras.Model  # normalised images -> feature vectors (backbone + pooling)
    head: keras.Model  # feature vectors -> class probabilities
    backbone: Backbone


def build_classifier(
    backbone: Backbone, num_classes: int, cfg: ModelConfig, image_size: int
) -> Classifier:
    """Wires backbone, pooling and head into one functional model (backbone in inference mode)."""
    images = keras.Input((image_size, image_size, 3), name="images")
    maps = backbone.layer(images, training=False)
    vectors = maps if backbone.outputs_vector else _pooling(cfg.pooling)(maps)
    head = build_head(vectors.shape[-1], num_classes, cfg)
    probabilities = head(vectors)
    features = keras.Model(images, vectors, name="features")
    model = keras.Model(images, probabilities, name="classifier")
    return Classifier(model, features, head, backbone)


def build_head(feature_dim: int, num_classes: int, cfg: ModelConfig) -> keras.Model:
    """Dropout + Dense layers over feature vectors, softmax output in float32."""
    features = keras.Input((feature_dim,), name="features")
    x = features
    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 > 0 else None
    for i, units in enumerate(cfg.head_units):
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer,
                               name=f"head_dense_{i}")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout, name="head_dropout_out")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                       kernel_regularizer=regularizer, name="probabilities")(x)
    return keras.Model(features, probabilities, name="head")


def _pooling(kind: str) -> keras.layers.Layer:
    return {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[kind](name=f"pool_{kind}")


def freeze_backbone(clf: Classifier) -> None:
    """Head phase: nothing in the backbone trains."""
    clf.backbone.layer.trainable = False


def unfreeze_top_blocks(clf: Classifier, n: int, train_batchnorm: bool = False) -> None:
    """Finetune phase: the top ``n`` blocks train; BatchNorm stays frozen unless asked.

    Frozen BatchNorm layers run in inference mode (Keras 3 BatchNormalization only uses batch
    statistics when it is trainable), so their moving statistics never change; the hub layer
    makes the same decision itself. ``train_batchnorm`` (--finetune_batchnorm) lets the unfrozen
    blocks' BatchNorm train: scale/offset learn, batch statistics are used and the moving averages
    update (a hub module can only switch all of its BatchNorm layers to training mode at once).
    """
    blocks = clf.backbone.blocks
    if n > len(blocks):
        raise UserError(f"--unfreeze_blocks: expected at most {len(blocks)} for --backbone="
                        f"{clf.backbone.name}; received {n}.")
    selected = {name for block in blocks[len(blocks) - n:] for name in block} if n else set()
    layer = clf.backbone.layer
    layer.trainable = n > 0
    if isinstance(layer, keras.Model):
        for sub in layer.layers:
            is_bn = isinstance(sub, keras.layers.BatchNormalization)
            sub.trainable = sub.name in selected and (train_batchnorm or not is_bn)
    else:
        layer.train_batchnorm = train_batchnorm
        for variable in layer.variables:
            path = layer.path_of(variable)
            leaf = path.rsplit("/", 1)[-1]
            is_bn = leaf in ("gamma", "beta", "moving_mean", "moving_variance")
            variable.trainable = (path in selected and not leaf.startswith("moving_")
                                  and (train_batchnorm or not is_bn))


def trainable_blocks(clf: Classifier, n: int) -> list[list]:
    """The trainable variables of each of the top ``n`` backbone blocks, top block first.

    Call after ``unfreeze_top_blocks(clf, n, ...)``; the finetune phase gives each block its own
    learning rate (discriminative rates) and unfreezing time (gradual unfreezing) from this.
    """
    blocks = clf.backbone.blocks[len(clf.backbone.blocks) - n:][::-1] if n else ()
    layer = clf.backbone.layer
    if isinstance(layer, keras.Model):
        by_name = {sub.name: sub for sub in layer.layers}
        return [[v for name in block for v in by_name[name].trainable_weights]
                for block in blocks]
    return [[v for v in layer.trainable_weights if layer.path_of(v) in set(block)]
            for block in blocks]


@dataclass(frozen=True)
class FrozenBottom:
    """The classifier cut below its top ``n`` backbone blocks: ``bottom`` maps normalised images
    to the activations there (frozen in both phases, so the same every epoch), ``top`` maps those
    activations, flattened, to class probabilities through the same layers as ``model``."""

    bottom: keras.Model
    top: keras.Model


def split_below_top_blocks(clf: Classifier, n: int) -> FrozenBottom | None:
    """The cut at the input of the lowest of the top ``n`` blocks, when one tensor crosses it.

    None for a TF-Hub layer (no layers to cut between), for ``n`` of 0 or every block (nothing
    to train, or nothing frozen below), and where another tensor skips across the cut (Keras
    cannot build the top from the cut alone, or the two halves miss weights).
    """
    layer, blocks = clf.backbone.layer, clf.backbone.blocks
    if not isinstance(layer, keras.Model) or not 0 < n < len(blocks):
        return None
    top_names = {name for block in blocks[len(blocks) - n:] for name in block}
    first = next((sub for sub in layer.layers if sub.name in top_names), None)
    cut = getattr(first, "input", None)
    if not isinstance(cut, keras.KerasTensor):
        return None
    try:
        upper = keras.Model(cut, layer.output)
    except ValueError:  # a tensor from below the cut skips over it
        return None
    bottom = keras.Model(layer.input, cut, name="frozen_bottom")
    if len(bottom.weights) + len(upper.weights) != len(layer.weights) or not bottom.weights:
        return None
    rows = keras.Input((int(np.prod(cut.shape[1:])),), name="activations")
    maps = upper(keras.layers.Reshape(tuple(cut.shape[1:]))(rows), training=False)
    vectors = maps if clf.backbone.outputs_vector else clf.features.layers[-1](maps)
    return FrozenBottom(bottom, keras.Model(rows, clf.head(vectors), name="unfrozen_top"))


def count_params(variables: list) -> int:
    """Number of scalars in a list of variables."""
    return int(sum(tf.size(v).numpy() for v in variables))
