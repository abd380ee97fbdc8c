"""Inputs computed once for the phases: what a frozen part of the model gives every epoch.

Without augmentation the frozen backbone maps an example to the same feature vector each epoch,
so the head phase trains on cached features; in the finetune phase the blocks below the lowest
unfrozen one stay frozen too, so it trains the unfrozen top on cached activations from below
it (``tfft.classifier.split_below_top_blocks``): each step then runs only the top, whose
forward and backward pass is a fraction of one through the whole backbone when few blocks are
unfrozen (``bench.compare`` times whole runs). Features follow ``--cache_features`` (memory,
or keyed disk entries: ``tfft.feature_cache``); activations, many times larger, stay in memory
under ``auto`` and go to disk entries only with ``disk``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfft import accelerator, distribute, feature_cache, progress
from tfft import data as data_lib
from tfft.classifier import FrozenBottom, split_below_top_blocks
from tfft.loop import count_steps
from tfft.run_setup import RunSetup

Batches = Callable[[int], tf.data.Dataset]  # epoch shuffle seed -> that epoch's batches


def use_feature_cache(run: RunSetup) -> bool:
    """On cached features unless ``--cache_features=off`` or ``--augment_head``."""
    if run.config.train.cache_features == "off":
        return False
    if run.config.data.augment_head and run.augmenter is not None:
        run.say("Feature cache off: --augment_head augments the head phase's inputs every epoch.")
        return False
    return True


def cached_features(run: RunSetup, model: keras.Model | None = None, what: str = "Features",
                    mode: str = "") -> tuple[Batches, tf.data.Dataset]:
    """``model``'s outputs (the backbone's features) on train and validation, computed once, as
    batched datasets; training batches come from a function of the epoch's shuffle seed, like
    the pipeline's."""
    cfg = run.config.data
    drop = distribute.needs_static_shapes(run.strategy)
    model = model or run.classifier.features
    train = extract(run, model, run.splits.train, "train", what, mode)
    val = extract(run, model, run.splits.validation, "validation", what, mode)

    def train_batches(seed: int) -> tf.data.Dataset:
        return train.batches(cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer, seed=seed,
                             drop_remainder=drop,
                             sample=data_lib.sampler(cfg, run.splits.num_classes, seed))

    return train_batches, val.batches(cfg.batch_size, drop_remainder=drop)


def extract(run: RunSetup, model: keras.Model, ds: tf.data.Dataset, name: str,
            what: str = "Features", mode: str = "") -> feature_cache.CachedSplit:
    """Runs the frozen ``model`` over one split once (or reads its disk cache entry); ``mode``
    replaces ``--cache_features``."""
    cfg = run.config
    size, dim = run.splits.sizes.get(name, 0), int(np.prod(model.output.shape[1:]))
    entry, fields = "", None
    if feature_cache.on_disk(mode or cfg.train.cache_features, size, dim,
                             cfg.train.cache_dtype, run.say):
        fields = feature_cache.key_fields(cfg, name, run.classifier.backbone.identity, model)
        key = feature_cache.cache_key(fields)
        entry = feature_cache.entry_path(cfg, name, key)
        cached = feature_cache.read(entry, key)
        if cached is not None:
            run.say(f"{what} ({name}): {cached.count:,} read from {entry}")
            return cached
    batches = run.batches(ds, sharded=False)  # the whole split on every worker
    bar = progress.progress_bar(count_steps(batches), f"{what} ({name})", cfg.run.verbosity,
                                metrics=())
    return feature_cache.extract(
        feature_cache.inference_fn(model, accelerator.jit_compile(cfg, run.strategy),
                                   prepare=run.prepare), batches, count=size, dim=dim,
        dtype=cfg.train.cache_dtype, entry=entry, key_fields=fields,
        on_batch=bar.update if bar else None, cache_max_gb=cfg.run.cache_max_gb, say=run.say)


def frozen_bottom(run: RunSetup) -> FrozenBottom | None:
    """The finetune phase's cut, when it can train on cached activations: nothing augments its
    inputs, ``--cache_features`` is not off, the backbone can be cut below its top
    ``--unfreeze_blocks``, and (under ``auto``) the activations fit the in-memory limit."""
    cfg = run.config
    if cfg.train.cache_features == "off" or run.augmenter is not None:
        return None
    split = split_below_top_blocks(run.classifier, cfg.finetune.unfreeze_blocks)
    if split is None:
        return None
    count = sum(run.splits.sizes.get(name, 0) for name in ("train", "validation"))
    dim = int(np.prod(split.bottom.output.shape[1:]))
    size = count * dim * np.dtype(cfg.train.cache_dtype).itemsize
    if cfg.train.cache_features == "auto" and size > feature_cache.MEMORY_LIMIT_BYTES:
        run.say(f"Finetune on images: the frozen blocks' activations would take "
                f"{size / 2**30:.1f} GiB of RAM (auto caches at most "
                f"{feature_cache.MEMORY_LIMIT_BYTES / 2**30:.0f} GiB; --cache_features=disk "
                "caches them on disk).")
        return None
    return split


def cached_activations(run: RunSetup, split: FrozenBottom) -> tuple[Batches, tf.data.Dataset]:
    """The frozen bottom's activations on train and validation, computed once (in memory under
    ``auto``, as ``frozen_bottom`` checked the size)."""
    mode = "memory" if run.config.train.cache_features == "auto" else ""
    return cached_features(run, split.bottom, "Activations", mode)
