"""The Keras Applications table: for each ``--backbone`` its constructor, input normalisation,
ordered blocks (bottom -> top) for ``--unfreeze_blocks`` and the weights file Keras downloads.

Kept apart from ``tfft.backbones`` (which builds them and resolves ``--weights``) so that adding
an architecture is one row here. Every normalisation is the family's own
``keras.applications.<family>.preprocess_input``: EfficientNetV2, ConvNeXt and MobileNetV3
rescale inside the model (their ``preprocess_input`` passes 0-255 pixels through), the others
expect inputs already mapped by it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras
import tensorflow as tf

__all__ = ["APPS", "BUNDLED_WEIGHTS", "JOINS_BLOCK_BELOW", "App", "group_layers"]

# A block key meaning "part of the block before it" (a network's last 1x1 conv or norm layer).
JOINS_BLOCK_BELOW = ""
# Weights shipped in tfft/weights/: (backbone, alpha) -> file, the 224 px ImageNet checkpoint.
BUNDLED_WEIGHTS = {
    ("mobilenet", 0.25): "mobilenet_2_5_224_tf_no_top.h5",
    ("mobilenet_v2", 0.35): "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
}


@dataclass(frozen=True)
class App:
    """One Keras Application as tfft uses it (``include_top=False``, tfft's own pooling)."""

    constructor: Callable[..., keras.Model]
    normalize: Callable[[tf.Tensor], tf.Tensor]
    block_of: Callable[[str], str]
    weights_file: Callable[[float, int], str]  # (alpha, image size) -> the file Keras fetches
    uses_alpha: bool = False


def group_layers(names: Iterable[str], block_of: Callable[[str], str]
                 ) -> tuple[tuple[str, ...], ...]:
    """Layer names grouped into blocks in order of first appearance (bottom -> top); a name
    whose key is ``JOINS_BLOCK_BELOW`` joins the block before it."""
    groups: dict[str, list[str]] = {}
    for name in names:
        key = block_of(name)
        if key == JOINS_BLOCK_BELOW and groups:
            key = list(groups)[-1]
        groups.setdefault(key, []).append(name)
    return tuple(tuple(v) for v in groups.values())


def _vgg_block(name: str) -> str:
    return name.split("_")[0]


def _resnet_block(name: str) -> str:
    prefix = name.split("_")[0]
    return "conv1" if prefix == "pool1" else prefix


def _resnet_v2_block(name: str) -> str:
    """``conv1`` ... ``conv5``; the final ``post_bn`` belongs to ``conv5``."""
    prefix = name.split("_")[0]
    return prefix if re.fullmatch(r"conv\d", prefix) else JOINS_BLOCK_BELOW


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


def _mobilenet_v3_block(name: str) -> str:
    """``stem``, then each inverted-residual block ``expanded_conv``, ``expanded_conv_1`` ...;
    the last 1x1 conv (``conv_1``) belongs to the top block."""
    match = re.match(r"expanded_conv(_\d+)?_", name)
    if match:
        return "expanded_conv" + (match.group(1) or "")
    return "stem" if name.startswith("conv_bn") or name == "conv" else JOINS_BLOCK_BELOW


def _efficientnet_v2_block(name: str) -> str:
    """``stem``, stages ``block1`` ... ``block6``; ``top_conv``/``top_bn`` join the last stage."""
    match = re.match(r"block(\d+)[a-z]+_", name)
    if match:
        return f"block{match.group(1)}"
    return "stem" if name.startswith("stem_") else JOINS_BLOCK_BELOW


def _convnext_block(name: str) -> str:
    """``stem``, ``stage0`` ... ``stage3``; the downsampling layers that open stage i belong to
    it, the final LayerNorm to ``stage3``."""
    stage = re.search(r"_stage_(\d+)_", name)
    if stage:
        return f"stage{stage.group(1)}"
    down = re.search(r"_downsampling_block_(\d+)$", name)
    if down:
        return f"stage{int(down.group(1)) + 1}"
    return "stem" if re.search(r"_(pre)?stem", name) else JOINS_BLOCK_BELOW


def _rows(image_size: int, sizes: tuple[int, ...]) -> int:
    """The checkpoint size Keras asks for: the input size if it has one, else 224."""
    return image_size if image_size in sizes else 224


def _mobilenet_file(alpha: float, image_size: int) -> str:
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}.get(alpha, str(alpha))
    return f"mobilenet_{alpha_text}_{_rows(image_size, (128, 160, 192, 224))}_tf_no_top.h5"


def _mobilenet_v2_file(alpha: float, image_size: int) -> str:
    rows = _rows(image_size, (96, 128, 160, 192, 224))
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"


def _fixed(file_name: str) -> Callable[[float, int], str]:
    return lambda _alpha, _size: file_name


def _mobilenet_v3_file(kind: str) -> Callable[[float, int], str]:
    return lambda alpha, _size: f"weights_mobilenet_v3_{kind}_224_{alpha}_float_no_top_v2.h5"


def _efficientnet_v2(variant: str) -> App:
    constructor = getattr(keras.applications, f"EfficientNetV2{variant.upper()}")
    return App(constructor, keras.applications.efficientnet_v2.preprocess_input,
               _efficientnet_v2_block, _fixed(f"efficientnetv2-{variant}_notop.h5"))


def _convnext(size: str) -> App:
    return App(getattr(keras.applications, f"ConvNeXt{size.title()}"),
               keras.applications.convnext.preprocess_input, _convnext_block,
               _fixed(f"convnext_{size}_notop.h5"))


def _mobilenet_v3(kind: str) -> App:
    return App(getattr(keras.applications, f"MobileNetV3{kind.title()}"),
               keras.applications.mobilenet_v3.preprocess_input, _mobilenet_v3_block,
               _mobilenet_v3_file(kind), uses_alpha=True)


APPS = {
    "vgg16": App(keras.applications.VGG16, keras.applications.vgg16.preprocess_input,
                 _vgg_block, _fixed("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    "resnet50": App(keras.applications.ResNet50, keras.applications.resnet50.preprocess_input,
                    _resnet_block, _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    "resnet50_v2": App(keras.applications.ResNet50V2,
                       keras.applications.resnet_v2.preprocess_input, _resnet_v2_block,
                       _fixed("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    "mobilenet_v2": App(keras.applications.MobileNetV2,
                        keras.applications.mobilenet_v2.preprocess_input,
                        _mobilenet_v2_block, _mobilenet_v2_file, uses_alpha=True),
    "mobilenet": App(keras.applications.MobileNet, keras.applications.mobilenet.preprocess_input,
                     _mobilenet_block, _mobilenet_file, uses_alpha=True),
    "mobilenet_v3_small": _mobilenet_v3("small"),
    "mobilenet_v3_large": _mobilenet_v3("large"),
    **{f"efficientnet_v2_{v}": _efficientnet_v2(v) for v in ("b0", "b1", "b2", "b3", "s")},
    "convnext_tiny": _convnext("tiny"),
    "convnext_small": _convnext("small"),
}
