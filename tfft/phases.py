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

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from tfft import cached_inputs, schedules
from tfft.cached_inputs import Batches, use_feature_cache
from tfft.checkpoints import PHASES
from tfft.classifier import (
    Classifier,
    count_params,
    freeze_backbone,
    trainable_blocks,
    unfreeze_top_blocks,
)
from tfft.config import Config, FinetuneConfig
from tfft.device_inputs import Prepare
from tfft.loop import VariableGroup
from tfft.run_setup import RunSetup, run_strategy, setup_run

__all__ = ["AUTO_STEPS_ON_FEATURES", "Batches", "PhasePlan", "RunSetup", "finetune_plan",
           "head_plan", "run_strategy", "setup_run", "use_feature_cache"]

AUTO_STEPS_ON_FEATURES = 100


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
    feature_seconds: float = 0.0  # the one-off feature or activation extraction
    # (raw batch, training) -> the model's inputs, in the compiled steps (device preprocessing)
    prepare: Prepare | None = None


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
        model, (train, val), prepare = clf.head, cached_inputs.cached_features(run), None
    else:
        model, val = clf.model, run.batches(run.splits.validation)
        train = functools.partial(run.train_batches, augment=cfg.data.augment_head)
        prepare = run.prepare
    seconds = time.perf_counter() - start
    return PhasePlan("head", model, train, val, cfg.head.head_epochs,
                     cfg.head.head_learning_rate, [VariableGroup(list(model.trainable_variables))],
                     checkpoint_variables(clf, "head"), steps_per_call(cfg, model is clf.head),
                     feature_seconds=seconds, prepare=prepare)


def finetune_plan(run: RunSetup) -> PhasePlan:
    """The top blocks unfrozen, per block group, with the unfreeze schedule: on cached
    activations of the frozen blocks below them when nothing changes those between epochs
    (``tfft.cached_inputs``), else on image batches."""
    cfg, clf = run.config, run.classifier
    groups = finetune_groups(clf, cfg.finetune)
    unfreeze = functools.partial(unfreeze_for_epoch, clf, cfg.finetune)
    start, split = time.perf_counter(), cached_inputs.frozen_bottom(run)
    if split is not None:
        model, prepare = split.top, None
        train, val = cached_inputs.cached_activations(run, split)
    else:
        model, prepare = clf.model, run.prepare
        train, val = run.train_batches, run.batches(run.splits.validation)
    return PhasePlan("finetune", model, train, val, cfg.finetune.finetune_epochs,
                     cfg.finetune.finetune_learning_rate, groups,
                     checkpoint_variables(clf, "finetune"), steps_per_call(cfg, False), unfreeze,
                     feature_seconds=time.perf_counter() - start, prepare=prepare)


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
