"""What each phase trains, with what: plain data computed from the config.

``setup_run`` prepares a run the one way training, ``tfft.lr_find`` and the benchmarks all use
(logical CPU devices, the strategy, seeds and op determinism, the mixed-precision policy, the
data splits, the classifier built under the strategy). ``head_plan`` and ``finetune_plan`` then
say, for each phase, which model trains on which batches (a function of the epoch's shuffle
seed), what validates it, for how many epochs at which rate, which variable groups train from
which epoch and what its checkpoints hold. The loop that runs a plan is ``tfft.train_lib``; the
steps it runs are ``tfft.loop``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from tfft import accelerator, device_inputs, distribute, feature_cache, progress, schedules
from tfft import augment as augment_lib
from tfft import data as data_lib
from tfft.backbones import build_backbone
from tfft.checkpoints import PHASES
from tfft.classifier import (
    Classifier,
    build_classifier,
    count_params,
    freeze_backbone,
    trainable_blocks,
    unfreeze_top_blocks,
)
from tfft.config import Config, FinetuneConfig
from tfft.device_inputs import Prepare
from tfft.loop import VariableGroup, count_steps

AUTO_STEPS_ON_FEATURES = 100
Batches = Callable[[int], tf.data.Dataset]  # epoch shuffle seed -> that epoch's batches


@dataclass(frozen=True)
class RunSetup:
    """Everything a run trains with, prepared once by ``setup_run``."""

    config: Config
    strategy: tf.distribute.Strategy
    splits: data_lib.Splits
    classifier: Classifier
    say: progress.Say

    def batches(self, ds: tf.data.Dataset, training: bool = False, seed: int | None = None,
                sharded: bool = True, augment: bool = False,
                ) -> tf.data.Dataset | distribute.WorkerBatches:
        """Batches of a raw split (shuffled when ``training``, augmented when ``augment`` too),
        preprocessed unless ``on_device``: then ``prepare`` does it, and augments, in the steps.

        Under MultiWorkerMirroredStrategy (unless not ``sharded``: every worker needs the whole
        split) they are ``WorkerBatches``: each worker reads and decodes only its share.
        """
        cfg = self.config
        drop = distribute.needs_static_shapes(self.strategy)
        make = functools.partial(
            data_lib.make_batches, ds, cfg.data, self.classifier.backbone.normalize,
            training=training, seed=cfg.train.seed if seed is None else seed,
            augmenter=self.augmenter if training and augment else None, drop_remainder=drop,
            on_device=self.on_device, num_classes=self.splits.num_classes)
        if not sharded or not distribute.shards_input(self.strategy):
            return make()
        return distribute.WorkerBatches(lambda ctx: make(input_context=ctx), int(ds.cardinality()),
                                        cfg.data.batch_size, self.strategy.num_replicas_in_sync)

    def train_batches(self, seed: int, augment: bool = True,
                      ) -> tf.data.Dataset | distribute.WorkerBatches:
        """One epoch of shuffled training batches, augmented unless not ``augment``."""
        return self.batches(self.splits.train, training=True, seed=seed, augment=augment)

    @functools.cached_property
    def augmenter(self) -> augment_lib.Augmenter | None:
        """The finetune phase's ``--augment`` layers (the head's too with ``--augment_head``)."""
        return augment_lib.make_augmenter(self.config.data, self.config.train.seed,
                                          self.classifier.backbone.normalize,
                                          self.splits.num_classes, self.on_device)

    @functools.cached_property
    def on_device(self) -> bool:
        """``--preprocess_on`` resolved: resizing and normalisation in the compiled steps."""
        return accelerator.preprocess_on_device(self.config, self.strategy)

    @functools.cached_property
    def prepare(self) -> Prepare | None:
        """The steps' transform of ``batches`` (None: preprocessed), augmenting tagged ones."""
        if not self.on_device:
            return None
        augmenter = self.augmenter.on_device if self.augmenter else None
        return device_inputs.make_prepare(self.config.data.image_size,
                                          self.classifier.backbone.normalize, augmenter)


@dataclass(frozen=True)
class PhasePlan:
    """One phase: ``model`` trains on ``batches(seed)`` for ``epochs`` at ``learning_rate``
    (``config.AUTO_LR``: the LR range test picks it), each group from its first epoch on, with
    ``unfreeze(epoch)`` setting the trainable flags when a group starts; ``variables`` are what
    the phase can change and its checkpoints hold."""

    phase: str
    model: keras.Model
    batches: Batches
    validation: tf.data.Dataset
    epochs: int
    learning_rate: float
    groups: list[VariableGroup]
    variables: list
    steps_per_call: int
    unfreeze: Callable[[int], None] | None = None
    feature_seconds: float = 0.0  # the head phase's one-off feature extraction
    # (raw batch, training) -> the model's inputs, in the compiled steps (device preprocessing)
    prepare: Prepare | None = None


def run_strategy(config: Config) -> tf.distribute.Strategy:
    """The run's strategy, after splitting the CPU into ``--cpu_devices`` logical devices."""
    distribute.configure_cpu_devices(config.run.cpu_devices)
    return distribute.make_strategy(config.run)


@contextlib.contextmanager
def setup_run(config: Config, strategy: tf.distribute.Strategy | None = None,
              ) -> Iterator[RunSetup]:
    """Prepares a run; the caller's mixed-precision policy (process-global) is restored on exit.

    Same seed on CPU -> same splits, initial weights, shuffles and metrics.
    """
    strategy = strategy or run_strategy(config)
    caller_policy = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(config.train.seed)
        tf.config.experimental.enable_op_determinism()
        keras.mixed_precision.set_global_policy(accelerator.precision_policy(config, strategy))
        splits = data_lib.load_splits(config.data, config.train.seed)
        with strategy.scope():
            backbone = build_backbone(config.model, config.data.image_size)
            clf = build_classifier(backbone, splits.num_classes, config.model,
                                   config.data.image_size)
        yield RunSetup(config, strategy, splits, clf, progress.printer(config.run.verbosity))
    finally:
        keras.mixed_precision.set_global_policy(caller_policy)


def runs(config: Config, phase: str) -> bool:
    """Whether ``phase`` trains at all (0 epochs, or no block to unfreeze, skips it)."""
    if phase == "head":
        return config.head.head_epochs > 0
    return config.finetune.finetune_epochs > 0 and config.finetune.unfreeze_blocks > 0


def epoch_seed(seed: int, phase: str, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of the run's seed, the phase and the epoch."""
    return seed * 1000 + PHASES.index(phase) * 500 + epoch


def checkpoint_variables(clf: Classifier, phase: str) -> list:
    """The model variables a phase can change, which its checkpoints hold: the head's in the
    head phase (the backbone is frozen there, and rebuilt identically on resume), every one in
    the finetune phase. Saving the head alone makes a head-phase checkpoint a few kilobytes
    instead of the whole backbone (about 0.1 s per epoch for MobileNet, 58 MB for VGG16)."""
    return clf.head.variables if phase == "head" else clf.model.variables


def head_plan(run: RunSetup) -> PhasePlan:
    """The head on the frozen backbone: on cached, unaugmented features unless
    ``--augment_head`` (augmentation changes them every epoch) or ``--cache_features=off``."""
    cfg, clf = run.config, run.classifier
    freeze_backbone(clf)
    start = time.perf_counter()
    if use_feature_cache(run):
        model, (train, val), prepare = clf.head, cached_features(run), None
    else:
        model, val = clf.model, run.batches(run.splits.validation)
        train = functools.partial(run.train_batches, augment=cfg.data.augment_head)
        prepare = run.prepare
    seconds = time.perf_counter() - start
    return PhasePlan("head", model, train, val, cfg.head.head_epochs,
                     cfg.head.head_learning_rate, [VariableGroup(list(model.trainable_variables))],
                     checkpoint_variables(clf, "head"), steps_per_call(cfg, model is clf.head),
                     feature_seconds=seconds, prepare=prepare)


def cached_features(run: RunSetup) -> tuple[Batches, tf.data.Dataset]:
    """Backbone features of train and validation, computed once, as batched datasets; training
    batches come from a function of the epoch's shuffle seed, like the pipeline's."""
    cfg = run.config.data
    drop = distribute.needs_static_shapes(run.strategy)
    train = extract_features(run, run.splits.train, "train")
    val = extract_features(run, run.splits.validation, "validation")

    def train_batches(seed: int) -> tf.data.Dataset:
        return train.batches(cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer, seed=seed,
                             drop_remainder=drop,
                             sample=data_lib.sampler(cfg, run.splits.num_classes, seed))

    return train_batches, val.batches(cfg.batch_size, drop_remainder=drop)


def extract_features(run: RunSetup, ds: tf.data.Dataset, name: str) -> feature_cache.CachedSplit:
    """Runs the frozen backbone over one split once (or reads its disk cache entry)."""
    model, cfg = run.classifier.features, run.config
    size, dim = run.splits.sizes.get(name, 0), int(np.prod(model.output.shape[1:]))
    entry, fields = "", None
    if feature_cache.on_disk(cfg.train.cache_features, size, dim, cfg.train.cache_dtype,
                             run.say):
        fields = feature_cache.key_fields(cfg, name, run.classifier.backbone.identity, model)
        key = feature_cache.cache_key(fields)
        entry = feature_cache.entry_path(cfg, name, key)
        cached = feature_cache.read(entry, key)
        if cached is not None:
            run.say(f"Features ({name}): {cached.count:,} read from {entry}")
            return cached
    batches = run.batches(ds, sharded=False)  # the whole split on every worker
    bar = progress.progress_bar(count_steps(batches), f"Features ({name})", cfg.run.verbosity,
                                metrics=())
    return feature_cache.extract(
        feature_cache.inference_fn(model, accelerator.jit_compile(cfg, run.strategy),
                                   prepare=run.prepare), batches, count=size, dim=dim,
        dtype=cfg.train.cache_dtype, entry=entry, key_fields=fields,
        on_batch=bar.update if bar else None, cache_max_gb=cfg.run.cache_max_gb, say=run.say)


def use_feature_cache(run: RunSetup) -> bool:
    """On cached features unless ``--cache_features=off`` or ``--augment_head``."""
    if run.config.train.cache_features == "off":
        return False
    if run.config.data.augment_head and run.augmenter is not None:
        run.say("Feature cache off: --augment_head augments the head phase's inputs every epoch.")
        return False
    return True


def finetune_plan(run: RunSetup) -> PhasePlan:
    """The top blocks unfrozen, per block group, with the unfreeze schedule."""
    cfg, clf = run.config, run.classifier
    groups = finetune_groups(clf, cfg.finetune)
    unfreeze = functools.partial(unfreeze_for_epoch, clf, cfg.finetune)
    return PhasePlan("finetune", clf.model, run.train_batches,
                     run.batches(run.splits.validation), cfg.finetune.finetune_epochs,
                     cfg.finetune.finetune_learning_rate, groups,
                     checkpoint_variables(clf, "finetune"), steps_per_call(cfg, False), unfreeze,
                     prepare=run.prepare)


def finetune_groups(clf: Classifier, cfg: FinetuneConfig) -> list[VariableGroup]:
    """One group per unfrozen block (the head joins the top one), top first, each with its
    discriminative factor and the epoch the unfreeze schedule starts training it; blocks that
    share both are one group (by default: one group, one optimizer)."""
    unfreeze_top_blocks(clf, cfg.unfreeze_blocks, cfg.finetune_batchnorm)
    blocks = trainable_blocks(clf, cfg.unfreeze_blocks)
    blocks[0] = [*clf.head.trainable_variables, *blocks[0]]
    groups: list[VariableGroup] = []
    for depth, variables in enumerate(blocks):
        factor = schedules.discriminative_factor(depth, cfg.discriminative_lr_factor)
        first = schedules.first_epoch_of_block(depth, cfg.unfreeze_schedule,
                                               cfg.unfreeze_every_epochs)
        if groups and (groups[-1].factor, groups[-1].first_epoch) == (factor, first):
            groups[-1].variables.extend(variables)
        else:
            groups.append(VariableGroup(list(variables), factor, first))
    return groups


def unfreeze_for_epoch(clf: Classifier, cfg: FinetuneConfig, epoch: int) -> None:
    """Sets the trainable flags (and BatchNorm modes) the unfreeze schedule gives ``epoch``."""
    unfreeze_top_blocks(clf, schedules.unfrozen_blocks_at(
        epoch, cfg.unfreeze_blocks, cfg.unfreeze_schedule, cfg.unfreeze_every_epochs),
        cfg.finetune_batchnorm)


def steps_per_call(config: Config, on_features: bool) -> int:
    """Steps per compiled call: ``--steps_per_execution``, or for 0 (auto) 100 for the head on
    cached features (a step of a few microseconds of compute, so per-call Python and dispatch
    overhead would dominate) and 1 otherwise (a step through the backbone takes long enough that
    one call per step costs nothing measurable, and progress updates every step)."""
    chosen = config.run.steps_per_execution
    if chosen:
        return chosen
    return AUTO_STEPS_ON_FEATURES if on_features else 1


def parameter_counts(clf: Classifier, config: Config) -> dict[str, int]:
    """Trainable parameters in each phase (the backbone is left frozen afterwards)."""
    freeze_backbone(clf)
    head = count_params(clf.model.trainable_weights)
    unfreeze_top_blocks(clf, config.finetune.unfreeze_blocks, config.finetune.finetune_batchnorm)
    finetune = count_params(clf.model.trainable_weights)
    freeze_backbone(clf)
    return {"total": count_params(clf.model.weights), "head_trainable": head,
            "finetune_trainable": finetune}
