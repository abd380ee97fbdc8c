"""Image sources -> raw ``tf.data`` splits -> lazily preprocessed batches.

Sources (``tfft.sources``, ``tfft.tfds_source``) yield raw examples ``(uint8 image [H, W, C],
int32 label)`` at their stored size; the conversion to the backbone's input (grayscale->RGB,
resize, normalisation, ``tfft.preprocess``) happens per batch in the pipeline, so resized copies
of a dataset never exist in memory. The same pure functions are used by the exported serving
graph, so training and serving cannot disagree.

This module is the entry point the training code, the report, ``tfft.evaluate`` and the notebooks
import: it also names the preprocessing functions and the source helpers they use.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfft import augment, distribute
from tfft.augment import Augmenter
from tfft.config import DataConfig
from tfft.errors import UserError
from tfft.image_files import list_image_folder
from tfft.preprocess import (
    ENCODED,
    Normalizer,
    decode_image,
    load_images,
    preprocess_images,
    resize_images,
    to_rgb,
)
from tfft.raw_splits import SPLITS, RawSplits, carve
from tfft.sources import load_source

__all__ = [
    "ENCODED", "Normalizer", "Splits", "carve", "decode_image", "list_image_folder",
    "load_images", "load_splits", "make_batches", "preprocess_images", "to_rgb",
]


@dataclass(frozen=True)
class Splits:
    """Raw, unbatched splits of one dataset plus the class names they share.

    Examples are (record, int32 label); a record is a uint8 image, for image folders and CSV
    files the file's path, or for TFDS datasets ``{ENCODED: the image's bytes}`` (with ``SHAPE``
    for fixed-size images, ``preprocess.fixed_shape_record``). ``load_images`` reads and decodes
    the last two after the training shuffle and the worker's share, so its buffer never holds
    decoded photos and each worker of a cluster decodes only its own examples.

    ``counts`` holds each split's examples per class id, from the labels the source knew (no
    pass over the images); a split whose labels its source did not know (TFDS) has no entry.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    sizes: dict[str, int]
    counts: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Reads ``cfg.dataset`` (and ``cfg.test_dataset`` if set) into raw train/val/test splits."""
    raw = load_source(cfg.dataset, cfg, seed, bool(cfg.test_dataset))
    if cfg.test_dataset:
        raw = _with_test(raw, load_source(cfg.test_dataset, cfg, seed, False, whole=True))
    limits = {"train": cfg.max_train_examples, "validation": cfg.max_eval_examples,
              "test": cfg.max_eval_examples}
    capped = {name: _cap(raw.split(name), limits[name]) for name in SPLITS}
    sizes = {name: _size(ds) for name, ds in capped.items()}
    counts = {name: _class_counts(labels[:limits[name]] if limits[name] > 0 else labels,
                                  len(raw.class_names))
              for name, labels in raw.labels.items()}
    return Splits(*(_known_size(capped[name], sizes[name]) for name in SPLITS), raw.class_names,
                  sizes, counts)


def _with_test(raw: RawSplits, other: RawSplits) -> RawSplits:
    """``raw`` with the test split (and its labels) of the ``--test_dataset`` source."""
    if other.class_names != raw.class_names:
        raise UserError(
            f"--test_dataset: expected the classes of --dataset {list(raw.class_names)}; "
            f"received {list(other.class_names)}."
        )
    labels = {name: y for name, y in raw.labels.items() if name != "test"}
    if "test" in other.labels:
        labels["test"] = other.labels["test"]
    return dataclasses.replace(raw, test=other.test, labels=labels)


def _class_counts(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
    return tuple(int(n) for n in np.bincount(labels, minlength=num_classes)[:num_classes])


def make_batches(
    ds: tf.data.Dataset,
    cfg: DataConfig,
    normalize: Normalizer,
    *,
    training: bool,
    seed: int,
    augmenter: Augmenter | None = None,
    drop_remainder: bool = False,
    on_device: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    num_classes: int = 0,
) -> tf.data.Dataset:
    """Shuffles (training only, or ``balanced``), batches and preprocesses examples, lazily.

    Image files are read after the shuffle, so its buffer holds paths, not decoded images.

    Same-size images are batched first and resized per batch (vectorised); mixed sizes (image
    folders) are resized per example before batching.

    ``on_device`` (``--preprocess_on=device``) leaves resizing and normalisation to the compiled
    steps (``tfft.device_inputs``): same-size images go out as uint8 batches at their stored
    size and channels; mixed sizes, which cannot be batched so, are resized per example to
    ``image_size`` here (float32, not normalised), so the device's resize is a no-op on them.
    Augmentation runs after preprocessing, so on the device too: the batches are then tagged for
    it (``tfft.augment``); either way a batch's draws depend on ``seed`` and its index only.

    With ``input_context`` (multi-worker) only this worker's share of the commonly seeded shuffle
    (``distribute.worker_share``) is read, decoded and preprocessed, in per-replica batches.
    """
    if training:
        ds = _training_order(ds, cfg, seed, num_classes)
    ds, batch_size = _share(ds, cfg.batch_size, input_context)
    ds = _batch_and_preprocess(load_images(ds), cfg, normalize, batch_size,
                               drop_remainder=drop_remainder, on_device=on_device)
    if training:
        ds = augment.augment_batches(ds, augmenter, seed, on_device)
    return ds.prefetch(tf.data.AUTOTUNE)


def _training_order(ds: tf.data.Dataset, cfg: DataConfig, seed: int,
                    num_classes: int) -> tf.data.Dataset:
    """One epoch's training examples: shuffled, or drawn class-balanced (``--sampling``)."""
    sample = sampler(cfg, num_classes, seed)
    if sample:
        return sample(ds)
    return ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)


def sampler(cfg: DataConfig, num_classes: int,
            seed: int) -> Callable[[tf.data.Dataset], tf.data.Dataset] | None:
    """``--sampling=balanced``'s draw of one epoch (``balanced``), or None (shuffle)."""
    if cfg.sampling != "balanced":
        return None
    return functools.partial(balanced, num_classes=num_classes, seed=seed,
                             shuffle_buffer=cfg.shuffle_buffer)


def balanced(ds: tf.data.Dataset, num_classes: int, seed: int,
             shuffle_buffer: int) -> tf.data.Dataset:
    """An epoch of ``(record, label)`` examples drawn with each class equally likely: as many
    as ``ds`` holds (so an epoch keeps its number of steps), each class's examples reshuffled
    and repeated as needed (the minority's repeat, the majority's are only partly seen), all
    from ``seed`` (the epoch's), so a resumed epoch draws the same ones. A class without
    examples is left out. Runs on the records, before any image is read: only labels are
    looked at."""
    if num_classes <= 0:
        raise ValueError("balanced sampling needs the number of classes")
    size = int(ds.cardinality())
    per_class = [ds.filter(lambda _, y, c=c: tf.equal(tf.cast(y, tf.int64), c))
                 .shuffle(shuffle_buffer, seed=seed * num_classes + c,
                          reshuffle_each_iteration=True).repeat()
                 for c in range(num_classes)]
    mixed = tf.data.Dataset.sample_from_datasets(per_class, [1.0 / num_classes] * num_classes,
                                                 seed=seed)
    return mixed.take(size).apply(tf.data.experimental.assert_cardinality(size))


def _share(ds: tf.data.Dataset, global_batch: int, ctx: tf.distribute.InputContext | None,
           ) -> tuple[tf.data.Dataset, int]:
    """The examples this input pipeline reads and its batch size: all of them in global
    batches, or (multi-worker) this worker's share in per-replica batches."""
    if ctx is None:
        return ds, global_batch
    return (distribute.worker_share(ds, ctx, global_batch),
            distribute.per_replica_batch(ctx, global_batch))


def _batch_and_preprocess(ds: tf.data.Dataset, cfg: DataConfig, normalize: Normalizer,
                          batch_size: int, *, drop_remainder: bool,
                          on_device: bool) -> tf.data.Dataset:
    """Decoded examples -> batches, preprocessed on the host (all of it, or with ``on_device``
    only the per-example resize of mixed sizes)."""
    autotune = tf.data.AUTOTUNE
    if ds.element_spec[0].shape.is_fully_defined():
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if on_device:
            return ds
        return ds.map(_batch_preprocessor(cfg.image_size, normalize), num_parallel_calls=autotune)
    prep = (_example_resizer(cfg.image_size) if on_device
            else _batch_preprocessor(cfg.image_size, normalize))
    ds = ds.map(prep, num_parallel_calls=autotune)
    return ds.batch(batch_size, drop_remainder=drop_remainder)


@functools.lru_cache(maxsize=16)
def _batch_preprocessor(image_size: int, normalize: Normalizer):
    """``(images, labels) -> (backbone inputs, labels)``, traced once per size and normaliser.

    ``make_batches`` runs once per epoch (each epoch's shuffle has its own seed, so a resumed
    run sees the same order); tracing a fresh Python function into every epoch's pipeline made
    building one take 55 ms, against 14 ms with this already traced one.
    """

    @tf.function
    def prep(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return preprocess_images(images, image_size, normalize), labels

    return prep


@functools.lru_cache(maxsize=16)
def _example_resizer(image_size: int):
    """``(image, label) -> (float32 image at image_size, label)``: the host's part of device
    preprocessing for mixed sizes, traced once per size like ``_batch_preprocessor``."""

    @tf.function
    def resize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return resize_images(image, image_size), label

    return resize


def _cap(ds: tf.data.Dataset, limit: int) -> tf.data.Dataset:
    return ds.take(limit) if limit > 0 else ds


def _size(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def _known_size(ds: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """``ds`` with its counted size as cardinality, so every epoch's step count is known up
    front (training runs several steps per call, and the progress bars show an ETA)."""
    if int(ds.cardinality()) >= 0:
        return ds
    return ds.apply(tf.data.experimental.assert_cardinality(size))
