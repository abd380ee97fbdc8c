"""The vocabulary of config fields: allowed choices, numeric ranges, and the rule checks.

Each config field carries its rule in its metadata (``setting``), so ``validate``, the flag help
and the docs read one source. Kept apart from ``tfft.config`` so the config itself is only the
sections and their fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tfft.errors import UserError

DEFAULT_HUB_HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"

BACKBONES = ("convnext_small", "convnext_tiny", "efficientnet_v2_b0", "efficientnet_v2_b1",
             "efficientnet_v2_b2", "efficientnet_v2_b3", "efficientnet_v2_s", "hub", "keras_hub",
             "mobilenet", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet50",
             "resnet50_v2", "vgg16")
POOLINGS = ("avg", "max", "flatten")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
AUGMENTATIONS = ("flip", "rotate", "zoom", "crop", "translate", "contrast", "brightness",
                 "randaugment", "random_erasing", "mixup", "cutmix")
TTA_MODES = ("none", "flip", "flip_crops")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLINGS = ("none", "balanced")
CALIBRATIONS = ("none", "temperature")
CACHE_MODES = ("auto", "memory", "disk", "off")
CACHE_DTYPES = ("float32", "float16")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
TRISTATE = ("auto", "true", "false")
PREPROCESS_PLACES = ("auto", "host", "device")
DATASET_KINDS = ("tfds", "folder", "csv", "npz", "sample")
LR_SCHEDULES = ("constant", "cosine", "one_cycle")
UNFREEZE_SCHEDULES = ("all_at_once", "gradual")
# A learning rate of "auto" (flag or Config.replace) is held as this value; the run then picks
# the rate with an LR range test (tfft.lr_find) before the phase starts.
AUTO_LR = -1.0


@dataclass(frozen=True)
class Interval:
    """A field's numbers: from 0 up to ``high``, each end open or closed (all tfft ranges start
    at 0). ``describe`` is the "expected ..." of both the error message and the flag's help."""

    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: Any) -> bool:
        return finite(value) and (value > 0 if self.low_open else value >= 0) and (
            value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        if self.high == math.inf:
            return "a positive number" if self.low_open else "a number >= 0"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a number in {low}0, {self.high:g}{high}"


POSITIVE, NON_NEGATIVE = Interval(low_open=True), Interval()
FRACTION = Interval(high=1.0, high_open=True)


def setting(default: Any, help_text: str, rule: tuple[str, ...] | Interval | None = None,
       **metadata: Any) -> Any:
    """A field with its flag's help and the rule ``validate`` applies: allowed strings (metadata
    ``choices``) or an Interval (``bounds``), per element for a tuple field. ``auto``: the
    sentinel "auto" becomes, exempt from the rule; ``element``: a tuple's element type (str)."""
    rules = {} if rule is None else {"choices" if isinstance(rule, tuple) else "bounds": rule}
    return field(default=default, metadata={"help": help_text, **rules, **metadata})


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Applies a field's metadata rules to its value, or to each element of a tuple field."""
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
    for item in value if isinstance(f.default, tuple) else (value,):
        if "auto" in f.metadata and item == f.metadata["auto"]:
            continue
        if choices is not None:
            require(item in choices, f.name, "one of " + ", ".join(choices), item)
        if bounds is not None:
            require(bounds.admits(item), f.name, bounds.describe(), item)


def require(ok: bool, flag: str, expected: str, received: Any) -> None:
    if not ok:
        raise UserError(f"--{flag}: expected {expected}; received {received!r}.")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
