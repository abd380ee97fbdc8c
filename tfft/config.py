"""One frozen, validated configuration for a tfft run.

Every command-line flag is a field of one of the sub-configs below and has the same name, so a
flagfile, ``config.json`` and a notebook's ``Config(...)`` all speak one vocabulary. Flags are
generated from these fields (``tfft.flags``); nothing else reads absl FLAGS.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from tfft.errors import UserError
from tfft.fields import (
    AUGMENTATIONS,
    AUTO_LR,
    BACKBONES,
    CACHE_DTYPES,
    CACHE_MODES,
    CALIBRATIONS,
    CLASS_WEIGHTS,
    DATASET_KINDS,
    DEFAULT_HUB_HANDLE,
    FRACTION,
    LR_SCHEDULES,
    NON_NEGATIVE,
    OPTIMIZERS,
    POOLINGS,
    POSITIVE,
    PRECISIONS,
    PREPROCESS_PLACES,
    SAMPLINGS,
    STRATEGIES,
    TRISTATE,
    TTA_MODES,
    UNFREEZE_SCHEDULES,
    Interval,
    check_field,
    require,
)
from tfft.fields import setting as _f

# The finetune phase's rate when left at 0, as a fraction of the head's: with the cosine default
# and two unfrozen blocks, head x 0.3 measured best in bench.compare (README, "Why the defaults").
FINETUNE_RATE = 0.3


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are turned into backbone inputs."""

    dataset: str = _f("sample:mnist", "Image source: tfds:NAME, folder:PATH, csv:FILE, npz:PATH "
                      "or sample:mnist (bundled, offline).")
    test_dataset: str = _f(
        "", "Optional separate source for the test split (same forms as --dataset).")
    tfds_data_dir: str = _f("", "TFDS data directory (where prepared datasets live).")
    image_size: int = _f(224, "Square input size the images are resized to, in pixels.", POSITIVE)
    batch_size: int = _f(32, "Global batch size (split across replicas).", POSITIVE)
    validation_fraction: float = _f(0.1, "Fraction of the training data held out for "
                                    "validation when none is given.", FRACTION)
    test_fraction: float = _f(0.2, "Fraction held out for testing when the source has no test "
                              "split (npz, folder).", FRACTION)
    max_train_examples: int = _f(0, "At most this many training examples (0 = all).", NON_NEGATIVE)
    max_eval_examples: int = _f(
        0, "Use at most this many validation and test examples each (0 = all).", NON_NEGATIVE)
    augment: tuple[str, ...] = _f(
        (), "Training-only augmentations of the finetune phase (mixup and cutmix mix labels "
        "too); the head phase keeps training on cached, unaugmented features unless "
        "--augment_head.", AUGMENTATIONS)
    augment_head: bool = _f(False, "Augment the head phase too (turns its feature cache off).")
    randaugment_magnitude: float = _f(
        0.5, "Strength of each RandAugment operation, from 0 to 1.", Interval(high=1.0))
    randaugment_ops: int = _f(2, "RandAugment operations applied to each image.", POSITIVE)
    mixup_alpha: float = _f(0.2, "MixUp's Beta(alpha, alpha) mixing parameter.", POSITIVE)
    cutmix_alpha: float = _f(1.0, "CutMix's Beta(alpha, alpha) mixing parameter.", POSITIVE)
    sampling: str = _f("none", "How training batches draw classes: as stored, or balanced (each "
                       "class equally often).", SAMPLINGS)
    shuffle_buffer: int = _f(10000, "Shuffle buffer size for the training split.", POSITIVE)


@dataclass(frozen=True)
class ModelConfig:
    """The frozen pretrained backbone and the Dense head on top of it."""

    backbone: str = _f("mobilenet_v2", "Pretrained backbone under the head.", BACKBONES)
    weights: str = _f("imagenet", "Backbone weights: imagenet, none, or a path to a weights file.")
    alpha: float = _f(1.0, "Width multiplier of mobilenet, mobilenet_v2, mobilenet_v3_*.", POSITIVE)
    hub_handle: str = _f(
        DEFAULT_HUB_HANDLE, "TF-Hub image feature vector (URL or local SavedModel dir).")
    preset: str = _f("", "KerasHub image backbone preset of --backbone=keras_hub: a preset name, "
                     "hf://..., kaggle://... or a local preset directory.")
    pooling: str = _f("avg", "How backbone feature maps become a vector.", POOLINGS)
    head_units: tuple[int, ...] = _f(
        (1024,), "Hidden Dense layer sizes of the head.", POSITIVE, element=int)
    dropout: float = _f(0.2, "Dropout rate before each head Dense layer.", FRACTION)
    l2: float = _f(0.0, "L2 weight decay on the head's Dense kernels.", NON_NEGATIVE)


@dataclass(frozen=True)
class HeadConfig:
    """Phase ``head``: train the head on the frozen backbone."""

    head_epochs: int = _f(5, "Epochs of the head phase (0 skips it).", NON_NEGATIVE)
    head_learning_rate: float = _f(
        1e-3, "Learning rate of the head phase (auto = found by an LR range test, tfft.lr_find).",
        POSITIVE, auto=AUTO_LR)


@dataclass(frozen=True)
class FinetuneConfig:
    """Phase ``finetune``: unfreeze the top blocks and train at a lower learning rate."""

    finetune_epochs: int = _f(5, "Epochs of the finetune phase (0 skips it).", NON_NEGATIVE)
    finetune_learning_rate: float = _f(
        0.0, "Learning rate of the finetune phase (auto = found by an LR range test; 0 = "
        f"head_learning_rate x {FINETUNE_RATE:g}, or auto when that is auto).", NON_NEGATIVE,
        auto=AUTO_LR)
    unfreeze_blocks: int = _f(2, "Top backbone blocks the finetune phase unfreezes.", NON_NEGATIVE)
    unfreeze_schedule: str = _f(
        "all_at_once", "When the blocks unfreeze: all at the phase start, or gradual: the top "
        "block first, one more every --unfreeze_every_epochs epochs, up to --unfreeze_blocks.",
        UNFREEZE_SCHEDULES)
    unfreeze_every_epochs: int = _f(1, "Epochs between two gradual unfreezings.", POSITIVE)
    discriminative_lr_factor: float = _f(
        1.0, "Finetune learning rate of each unfrozen block = the block above's x this factor "
        "(head and top block at the phase's rate; 1 = one rate for all).",
        Interval(high=1.0, low_open=True))
    finetune_batchnorm: bool = _f(
        False, "Train the unfrozen blocks' BatchNorm layers (batch statistics, moving averages "
        "updated); by default they stay in inference mode.")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both phases: what a run computes."""

    optimizer: str = _f("adam", "Optimizer of both phases.", OPTIMIZERS)
    momentum: float = _f(0.9, "Momentum of sgd / rmsprop.", NON_NEGATIVE)
    label_smoothing: float = _f(0.1, "Label smoothing of the cross-entropy loss.", FRACTION)
    class_weight: str = _f("none", "Loss weight of each class: none, or balanced (inverse to its "
                           "training examples).", CLASS_WEIGHTS)
    ema_decay: float = _f(
        0.0, "Exponential moving average of the weights (e.g. 0.999); validation, test, "
        "checkpoints, model.keras and the export use the averaged weights (0 = off).", FRACTION)
    calibrate: str = _f("none", "After training, fit a temperature on the validation split and "
                        "bake it into model.keras and the export.", CALIBRATIONS)
    tta: str = _f("none", "Test-time augmentation of the test evaluation: the mean over the "
                  "image and its mirror (flip) or also four corner crops (flip_crops).",
                  TTA_MODES)
    lr_schedule: str = _f(
        "cosine", "Learning-rate schedule of each phase, per step (cosine decays to 0; "
        "one_cycle rises from lr/25, then anneals to lr/1e4).", LR_SCHEDULES)
    warmup_epochs: float = _f(
        0.0, "Linear warm-up at the start of each phase, in epochs (one_cycle: its rising part; "
        "0 = 30% of the phase).", NON_NEGATIVE)
    early_stopping_patience: int = _f(0, "Stop a phase after this many epochs without "
                                      "val_accuracy gain (0 = off).", NON_NEGATIVE)
    cache_features: str = _f(
        "auto", "Head phase on cached backbone features, finetune phase (without --augment) on "
        "cached activations of the frozen blocks (auto = memory; above 1 GiB features go to "
        "disk and the finetune phase runs on images; disk = keyed files in --cache_dir, reused "
        "across runs; off = the backbone in every step).", CACHE_MODES)
    mixed_precision: str = _f(
        "auto", "Compute dtype policy (auto = mixed_bfloat16 on TPUs and GPUs of compute "
        "capability >= 8.0, mixed_float16 with loss scaling on older GPUs, float32 on CPUs; "
        "STACK_FACTS §8).", PRECISIONS)
    cache_dtype: str = _f("float32", "Storage dtype of cached features (float16: half the "
                          "memory/disk).", CACHE_DTYPES)
    seed: int = _f(42, "Random seed for splits, shuffling and initialisation.")


@dataclass(frozen=True)
class RunConfig:
    """How a run executes, not what it computes: strategy, devices, progress output, the
    accuracy gate, checkpoint cadence and paths. A resumed run may change any of these."""

    strategy: str = _f("default", "tf.distribute strategy.", STRATEGIES)
    tpu: str = _f("", "TPU address or 'local' (with --strategy=tpu).")
    num_gpus: int = _f(0, "GPUs used by --strategy=mirrored (0 = all visible).", NON_NEGATIVE)
    cpu_devices: int = _f(
        1, "Split the CPU into this many logical devices (try mirrored without GPUs).", POSITIVE)
    verbosity: int = _f(1, "0 = quiet, 1 = progress bars and summary.", NON_NEGATIVE)
    tensorboard: bool = _f(True, "Write TensorBoard logs (both phases, learning rate, sample "
                           "predictions) to WORKDIR/tensorboard.")
    checkpoint_every_steps: int = _f(0, "Also checkpoint every N steps within an epoch (0 = at "
                                     "epoch ends only).", NON_NEGATIVE)
    steps_per_execution: int = _f(
        0, "Steps run per compiled call, in training and evaluation (0 = auto: 100 on cached "
        "features, where a step is tiny, else 1); progress, NaN checks and step checkpoints "
        "happen between calls.", NON_NEGATIVE)
    assert_min_accuracy: float = _f(
        0.0, "Fail (exit status 4, no export) when the final test accuracy is below this "
        "(0 = off).", Interval(high=1.0))
    cache_dir: str = _f("", "Directory of the disk feature cache (empty = "
                        "~/.cache/tfft/features, or under $XDG_CACHE_HOME when set).")
    cache_max_gb: float = _f(20.0, "Size limit of the disk feature cache in GB; least recently "
                             "used entries are removed beyond it (0 = no limit).", NON_NEGATIVE)
    jit_compile: str = _f(
        "auto", "XLA-compile the train and eval steps and the feature pass (auto = on GPUs and "
        "TPUs, off on CPUs, where XLA is 10-18x slower).", TRISTATE)
    preprocess_on: str = _f(
        "auto", "Where images are resized and normalised: host (the tf.data pipeline) or device "
        "(the model's first ops; the pipeline sends uint8 at source size). auto = device on "
        "an accelerator, host on CPUs.", PREPROCESS_PLACES)
    keep_checkpoints: bool = _f(False, "Keep the last checkpoint of each phase when the run "
                                "completes (by default a finished run keeps model.keras, the "
                                "export and its records only).")


@dataclass(frozen=True)
class Config:
    """Everything a run needs; validated once, then passed down unchanged."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def flat(self) -> dict[str, Any]:
        """All fields by flag name."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> Config:
        """Builds a config from flag-named values; unknown names are a user error."""
        unknown = sorted(set(values) - set(flag_fields()))
        if unknown:
            raise UserError(f"Unknown config field(s) {', '.join(unknown)}.")
        return cls(**{name: sub(**{f.name: _coerce(f, values[f.name])
                                   for f in dataclasses.fields(sub) if f.name in values})
                      for name, sub in SECTIONS.items()})

    @classmethod
    def from_json(cls, text: str) -> Config:
        nested = json.loads(text)
        return cls.from_flat({k: v for section in nested.values() for k, v in section.items()})

    def replace(self, **flat_values: Any) -> Config:
        """A copy with some fields (by flag name) changed."""
        return Config.from_flat({**self.flat(), **flat_values})


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "head": HeadConfig,
                             "finetune": FinetuneConfig, "train": TrainConfig, "run": RunConfig}


def flag_fields() -> dict[str, dataclasses.Field]:
    """Every config field by its flag name."""
    return {f.name: f for sub in SECTIONS.values() for f in dataclasses.fields(sub)}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Lists from JSON or absl become the tuples the frozen config holds."""
    if "auto" in f.metadata and isinstance(value, str) and value.strip().lower() == "auto":
        return f.metadata["auto"]
    if isinstance(f.default, tuple):
        element = f.metadata.get("element", str)
        try:
            return tuple(element(v) for v in (value or ()))
        except (TypeError, ValueError):
            raise UserError(f"--{f.name}: expected a comma list of {element.__name__} values; "
                            f"received {value!r}.") from None
    return value


def validate(config: Config) -> Config:
    """Checks every user-set value once and resolves derived defaults; idempotent.

    Each field's own rule lives in its metadata (so the flag help shows what is enforced); the
    rules here parse a source's form or span fields. A UserError names flag, expected, received.
    """
    d, m, h, r = config.data, config.model, config.head, config.run
    for flag in ("dataset", "test_dataset") if d.test_dataset else ("dataset",):
        kind, colon, _ = str(getattr(d, flag)).partition(":")
        require(bool(colon) and kind in DATASET_KINDS, flag,
                 "tfds:NAME, folder:PATH, csv:FILE, npz:PATH or sample:mnist",
                getattr(d, flag))
    flat = config.flat()
    for name, f in flag_fields().items():
        check_field(f, flat[name])
    require(d.validation_fraction + d.test_fraction < 1.0, "validation_fraction",
             "validation_fraction + test_fraction < 1",
             d.validation_fraction + d.test_fraction)
    require(m.weights != "", "weights", "imagenet, none or a file path", "''")
    require(r.strategy != "tpu" or bool(r.tpu), "tpu", "a TPU address or 'local'", "''")
    if config.finetune.finetune_learning_rate == 0.0:
        auto = h.head_learning_rate == AUTO_LR
        config = config.replace(
            finetune_learning_rate=AUTO_LR if auto else h.head_learning_rate * FINETUNE_RATE)
    return config
