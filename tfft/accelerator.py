"""What the run computes on, and the ``auto`` choices that follow from it.

``--mixed_precision``, ``--jit_compile`` and ``--preprocess_on`` default to ``auto``; this module
is the one place that turns ``auto`` into a value, from the strategy's devices, so training, the
feature pass, ``tfft.lr_find`` and the benchmarks agree. On CPUs every ``auto`` keeps today's
fast path (float32, no XLA, host preprocessing): STACK_FACTS §7-§8 measured XLA 10-18x slower and
bfloat16 no faster on this kind of CPU.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from tfft.augment import MIXERS
from tfft.config import Config

Kind = Literal["cpu", "gpu", "tpu"]
# bfloat16 runs at full speed from NVIDIA Ampere (compute capability 8.0) on; older GPUs
# (T4 7.5, V100 7.0) get their mixed-precision speed-up from float16 with loss scaling.
BFLOAT16_MIN_CAPABILITY = (8, 0)


def kind(strategy: tf.distribute.Strategy) -> Kind:
    """``tpu`` under a TPUStrategy, ``gpu`` when the strategy's replicas sit on GPUs."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = tuple(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: no devices of its own, TensorFlow places ops
        devices = ()
    if any("GPU" in device.upper() for device in devices):
        return "gpu"
    if not devices and tf.config.list_logical_devices("GPU"):
        return "gpu"
    return "cpu"


def gpu_capability() -> tuple[int, int] | None:
    """The lowest compute capability among the visible GPUs (None without GPUs)."""
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability:
            found.append(tuple(capability))
    return min(found) if found else None


def precision_policy(config: Config, strategy: tf.distribute.Strategy) -> str:
    """The Keras dtype policy name ``--mixed_precision`` resolves to on this strategy."""
    chosen = config.train.mixed_precision
    if chosen != "auto":
        return chosen
    where = kind(strategy)
    if where == "tpu":
        return "mixed_bfloat16"
    if where == "gpu":
        capability = gpu_capability()
        if capability is not None and capability >= BFLOAT16_MIN_CAPABILITY:
            return "mixed_bfloat16"
        return "mixed_float16"
    return "float32"


def jit_compile(config: Config, strategy: tf.distribute.Strategy) -> bool:
    """Whether the train/eval steps and the feature pass are XLA-compiled."""
    chosen = config.run.jit_compile
    if chosen != "auto":
        return chosen == "true"
    return kind(strategy) != "cpu"


def preprocess_on_device(config: Config, strategy: tf.distribute.Strategy) -> bool:
    """Whether resizing and normalisation run in the model's first ops instead of tf.data.

    ``auto`` stays on the host for mixup/cutmix, which mix labels in the pipeline (``device``
    refuses them), so an accelerator's default run takes every augmentation."""
    chosen = config.run.preprocess_on
    if chosen != "auto":
        return chosen == "device"
    if set(config.data.augment) & set(MIXERS):
        return False
    return kind(strategy) != "cpu"
