"""One frozen, validated configuration for a tfft run.

Every command-line flag is a field of one of the sub-configs below and has the same name, so a
flagfile, ``config.json`` and a notebook's ``Config(...)`` all speak one vocabulary. Flags are
generated from these fields (``tfft.flags``); nothing else reads absl FLAGS.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from tfft.errors import UserError

DEFAULT_HUB_HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"

BACKBONES = ("hub", "mobilenet", "mobilenet_v2", "resnet50", "vgg16")
POOLINGS = ("avg", "max", "flatten")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
AUGMENTATIONS = ("flip", "rotate", "zoom", "crop")
CACHE_MODES = ("auto", "memory", "disk", "off")
CACHE_DTYPES = ("float32", "float16")
PRECISIONS = ("float32", "mixed_bfloat16")
DATASET_KINDS = ("tfds", "folder", "npz", "sample")
LR_SCHEDULES = ("constant", "cosine", "one_cycle")
UNFREEZE_SCHEDULES = ("all_at_once", "gradual")
# A learning rate of "auto" (flag or Config.replace) is held as this value; the run then picks
# the rate with an LR range test (tfft.lr_find) before the phase starts.
AUTO_LR = -1.0


def _f(default: Any, help_text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying the help text its generated flag shows."""
    return field(default=default, metadata={"help": help_text, **kwargs})


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are turned into backbone inputs."""

    dataset: str = _f(
        "sample:mnist",
        "Image source: tfds:NAME, folder:PATH, npz:PATH or sample:mnist (bundled, offline).",
    )
    test_dataset: str = _f(
        "", "Optional separate source for the test split (same forms as --dataset)."
    )
    tfds_data_dir: str = _f("", "TFDS data directory (where prepared datasets live).")
    image_size: int = _f(224, "Square input size the images are resized to, in pixels.")
    batch_size: int = _f(32, "Global batch size (split across replicas).")
    validation_fraction: float = _f(
        0.1, "Fraction of the training data held out for validation when none is given."
    )
    test_fraction: float = _f(
        0.2, "Fraction held out for testing when the source has no test split (npz, folder)."
    )
    max_train_examples: int = _f(0, "Use at most this many training examples (0 = all).")
    max_eval_examples: int = _f(
        0, "Use at most this many validation and test examples each (0 = all)."
    )
    augment: tuple[str, ...] = _f(
        (), "Training-only augmentations, comma list of: flip, rotate, zoom, crop."
    )
    shuffle_buffer: int = _f(10000, "Shuffle buffer size for the training split.")


@dataclass(frozen=True)
class ModelConfig:
    """The frozen pretrained backbone and the Dense head on top of it."""

    backbone: str = _f("mobilenet_v2", f"Backbone: one of {', '.join(BACKBONES)}.")
    weights: str = _f("imagenet", "Backbone weights: imagenet, none, or a path to a weights file.")
    alpha: float = _f(1.0, "Width multiplier of mobilenet / mobilenet_v2.")
    hub_handle: str = _f(
        DEFAULT_HUB_HANDLE, "TF-Hub image feature vector (URL or local SavedModel dir)."
    )
    pooling: str = _f("avg", "How backbone feature maps become a vector: avg, max or flatten.")
    head_units: tuple[int, ...] = _f((1024,), "Hidden Dense layer sizes of the head, comma list.")
    dropout: float = _f(0.2, "Dropout rate before each head Dense layer.")
    l2: float = _f(0.0, "L2 weight decay on the head's Dense kernels.")


@dataclass(frozen=True)
class HeadConfig:
    """Phase ``head``: train the head on the frozen backbone."""

    head_epochs: int = _f(5, "Epochs of the head phase (0 skips it).")
    head_learning_rate: float = _f(
        1e-3, "Learning rate of the head phase, or auto (LR range test, tfft.lr_find).",
        auto=AUTO_LR)


@dataclass(frozen=True)
class FinetuneConfig:
    """Phase ``finetune``: unfreeze the top blocks and train at a lower learning rate."""

    finetune_epochs: int = _f(5, "Epochs of the finetune phase (0 skips it).")
    finetune_learning_rate: float = _f(
        0.0, "Learning rate of the finetune phase, or auto (LR range test, tfft.lr_find) "
        "(0 = head_learning_rate / 10, or auto when that is auto).", auto=AUTO_LR
    )
    unfreeze_blocks: int = _f(1, "Number of top backbone blocks unfrozen in the finetune phase.")
    unfreeze_schedule: str = _f(
        "all_at_once", "all_at_once, or gradual: the top block first, one more block every "
        "--unfreeze_every_epochs epochs, up to --unfreeze_blocks.")
    unfreeze_every_epochs: int = _f(1, "Epochs between two unfreezings of the gradual schedule.")
    discriminative_lr_factor: float = _f(
        1.0, "Finetune learning rate of each unfrozen block = the block above's x this factor "
        "(head and top block at the phase's rate; 1 = one rate for all).")
    finetune_batchnorm: bool = _f(
        False, "Train the unfrozen blocks' BatchNorm layers (batch statistics, moving averages "
        "updated); by default they stay in inference mode.")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both phases: what a run computes."""

    optimizer: str = _f("adam", f"Optimizer: one of {', '.join(OPTIMIZERS)}.")
    momentum: float = _f(0.9, "Momentum of sgd / rmsprop.")
    label_smoothing: float = _f(0.0, "Label smoothing of the cross-entropy loss.")
    lr_schedule: str = _f(
        "constant", "Learning-rate schedule of each phase, per step: constant, cosine (decay to "
        "0) or one_cycle (rise from lr/25, then anneal to lr/1e4).")
    warmup_epochs: float = _f(
        0.0, "Linear warm-up at the start of each phase, in epochs (one_cycle: its rising part; "
        "0 = 30% of the phase).")
    early_stopping_patience: int = _f(
        0, "Stop a phase after this many epochs without val_accuracy gain (0 = off)."
    )
    cache_features: str = _f(
        "auto",
        "Head phase on cached backbone features: auto (= memory unless augmentation), memory, "
        "disk (keyed files in --cache_dir, reused across runs), off.",
    )
    mixed_precision: str = _f(
        "float32", "Compute dtype policy: float32, or mixed_bfloat16 (TPUs and recent GPUs; "
        "slower on CPUs, STACK_FACTS §8).")
    cache_dtype: str = _f(
        "float32", "Storage dtype of cached features: float32, or float16 (half the memory/disk)."
    )
    seed: int = _f(42, "Random seed for splits, shuffling and initialisation.")


@dataclass(frozen=True)
class RunConfig:
    """How a run executes, not what it computes: strategy, devices, progress output, the
    accuracy gate, checkpoint cadence and paths. A resumed run may change any of these."""

    strategy: str = _f("default", f"tf.distribute strategy: one of {', '.join(STRATEGIES)}.")
    tpu: str = _f("", "TPU address or 'local' (with --strategy=tpu).")
    num_gpus: int = _f(0, "GPUs used by --strategy=mirrored (0 = all visible).")
    cpu_devices: int = _f(
        1, "Split the CPU into this many logical devices (try mirrored without GPUs)."
    )
    verbosity: int = _f(1, "0 = quiet, 1 = progress bars and summary.")
    tensorboard: bool = _f(
        True, "Write TensorBoard logs (both phases, learning rate, sample predictions) to "
        "WORKDIR/tensorboard.")
    checkpoint_every_steps: int = _f(
        0, "Also checkpoint every N steps within an epoch (0 = at epoch ends only).")
    steps_per_execution: int = _f(
        0, "Steps run per compiled call, in training and evaluation (0 = auto: 100 on cached "
        "features, where a step is tiny, else 1); progress, NaN checks and step checkpoints "
        "happen between calls.")
    assert_min_accuracy: float = _f(
        0.0, "Fail (exit status 4, no export) when the final test accuracy is below this "
        "(0 = off).")
    cache_dir: str = _f(
        "", "Directory of the disk feature cache (empty = ~/.cache/tfft/features, or under "
        "$XDG_CACHE_HOME when set)."
    )


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
        known = set(flag_fields())
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"Unknown config field(s) {', '.join(unknown)}.")
        sections = {}
        for name, sub in SECTIONS.items():
            kwargs = {f.name: _coerce(f, values[f.name]) for f in dataclasses.fields(sub)
                      if f.name in values}
            sections[name] = sub(**kwargs)
        return cls(**sections)

    @classmethod
    def from_json(cls, text: str) -> Config:
        nested = json.loads(text)
        return cls.from_flat({k: v for section in nested.values() for k, v in section.items()})

    def replace(self, **flat_values: Any) -> Config:
        """A copy with some fields (by flag name) changed."""
        return Config.from_flat({**self.flat(), **flat_values})


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "head": HeadConfig,
    "finetune": FinetuneConfig,
    "train": TrainConfig,
    "run": RunConfig,
}


def flag_fields() -> dict[str, dataclasses.Field]:
    """Every config field by its flag name."""
    return {f.name: f for sub in SECTIONS.values() for f in dataclasses.fields(sub)}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Lists from JSON or absl become the tuples the frozen config holds."""
    if "auto" in f.metadata and isinstance(value, str) and value.strip().lower() == "auto":
        return f.metadata["auto"]
    if isinstance(f.default, tuple):
        element = int if f.name == "head_units" else str
        try:
            return tuple(element(v) for v in (value or ()))
        except (TypeError, ValueError):
            raise UserError(f"--{f.name}: expected a comma list of {element.__name__} values; "
                            f"received {value!r}.") from None
    return value


def validate(config: Config) -> Config:
    """Checks every user-set value once and resolves derived defaults.

    Raises UserError naming the flag, what was expected and what was received.
    """
    d, m, h, f, t = config.data, config.model, config.head, config.finetune, config.train
    r = config.run
    kind = d.dataset.split(":", 1)[0]
    _require(":" in d.dataset and kind in DATASET_KINDS, "dataset",
             "tfds:NAME, folder:PATH, npz:PATH or sample:mnist", d.dataset)
    if d.test_dataset:
        test_kind = d.test_dataset.split(":", 1)[0]
        _require(":" in d.test_dataset and test_kind in DATASET_KINDS, "test_dataset",
                 "tfds:NAME, folder:PATH, npz:PATH or sample:mnist", d.test_dataset)
    _choice("backbone", m.backbone, BACKBONES)
    _choice("pooling", m.pooling, POOLINGS)
    _choice("optimizer", t.optimizer, OPTIMIZERS)
    _choice("strategy", r.strategy, STRATEGIES)
    _choice("cache_features", t.cache_features, CACHE_MODES)
    _choice("cache_dtype", t.cache_dtype, CACHE_DTYPES)
    _choice("mixed_precision", t.mixed_precision, PRECISIONS)
    for aug in d.augment:
        _choice("augment", aug, AUGMENTATIONS)
    for name in ("image_size", "batch_size", "shuffle_buffer", "cpu_devices"):
        _positive(name, config.flat()[name])
    for name in ("head_epochs", "finetune_epochs", "unfreeze_blocks", "early_stopping_patience",
                 "checkpoint_every_steps", "steps_per_execution",
                 "max_train_examples", "max_eval_examples", "num_gpus", "verbosity"):
        _non_negative(name, config.flat()[name])
    if h.head_learning_rate != AUTO_LR:
        _positive("head_learning_rate", h.head_learning_rate)
    if f.finetune_learning_rate != AUTO_LR:
        _non_negative("finetune_learning_rate", f.finetune_learning_rate)
    _choice("lr_schedule", t.lr_schedule, LR_SCHEDULES)
    _choice("unfreeze_schedule", f.unfreeze_schedule, UNFREEZE_SCHEDULES)
    _positive("unfreeze_every_epochs", f.unfreeze_every_epochs)
    _non_negative("warmup_epochs", t.warmup_epochs)
    _require(_finite(f.discriminative_lr_factor) and 0.0 < f.discriminative_lr_factor <= 1.0,
             "discriminative_lr_factor", "a number in (0, 1]", f.discriminative_lr_factor)
    _require(_finite(r.assert_min_accuracy) and 0.0 <= r.assert_min_accuracy <= 1.0,
             "assert_min_accuracy", "a number in [0, 1]", r.assert_min_accuracy)
    _positive("alpha", m.alpha)
    for units in m.head_units:
        _positive("head_units", units)
    for name in ("dropout", "label_smoothing"):
        value = config.flat()[name]
        _require(0.0 <= value < 1.0, name, "a number in [0, 1)", value)
    _non_negative("l2", m.l2)
    _non_negative("momentum", t.momentum)
    _require(0.0 <= d.validation_fraction < 1.0, "validation_fraction", "a number in [0, 1)",
             d.validation_fraction)
    _require(0.0 <= d.test_fraction < 1.0, "test_fraction", "a number in [0, 1)",
             d.test_fraction)
    _require(d.validation_fraction + d.test_fraction < 1.0, "validation_fraction",
             "validation_fraction + test_fraction < 1",
             d.validation_fraction + d.test_fraction)
    _require(m.weights != "", "weights", "imagenet, none or a file path", "''")
    _require(r.strategy != "tpu" or bool(r.tpu), "tpu", "a TPU address or 'local'", "''")
    if f.finetune_learning_rate == 0.0:
        auto = h.head_learning_rate == AUTO_LR
        config = config.replace(
            finetune_learning_rate=AUTO_LR if auto else h.head_learning_rate / 10)
    return config


def _require(ok: bool, flag: str, expected: str, received: Any) -> None:
    if not ok:
        raise UserError(f"--{flag}: expected {expected}; received {received!r}.")


def _choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, flag, "one of " + ", ".join(choices), value)


def _positive(flag: str, value: float) -> None:
    _require(_finite(value) and value > 0, flag, "a positive number", value)


def _non_negative(flag: str, value: float) -> None:
    _require(_finite(value) and value >= 0, flag, "a number >= 0", value)


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
