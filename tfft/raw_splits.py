"""What every source returns: raw (train, validation, test) datasets, class names and labels.

Sources know their labels without looking at a single image (an npz's ``y``, the class folder or
CSV row of each file), so they hand them over beside the datasets, in dataset order: ``tfft.data``
counts the classes of every split from them, with no pass over the data. Also here: the seeded
carving of the splits a source lacks, shared by every source.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

SPLITS = ("train", "validation", "test")

log = logging.getLogger("tfft")


@dataclass(frozen=True)
class RawSplits:
    """One source's raw splits; ``labels`` holds each split's labels in dataset order, and no
    entry for a split whose labels are unknown until read (TFDS)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def split(self, name: str) -> tf.data.Dataset:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


@dataclass(frozen=True)
class LabelledFiles:
    """Image files of one split and their class ids, in the same order."""

    paths: list[str]
    labels: np.ndarray

    def take(self, idx: np.ndarray) -> LabelledFiles:
        return LabelledFiles([self.paths[i] for i in idx], self.labels[idx])


def carve(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Seeded split of ``range(n)`` into (train, validation, test) index arrays.

    Each part stays in shuffled order, so ``--max_*_examples`` takes a random subset even from
    sources stored sorted by class.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fractions[0]))
    n_test = int(round(n * fractions[1]))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def file_splits(given: dict[str, LabelledFiles], class_names: tuple[str, ...],
                fractions: tuple[float, float], seed: int) -> RawSplits:
    """Raw splits of labelled image files: each split in ``given`` as it is (in seeded shuffled
    order), each missing one carved from ``given["train"]`` with its fraction, as for a single
    folder. Records are file paths, read and decoded only after the training shuffle."""
    train = given["train"]
    kept = (0.0 if "validation" in given else fractions[0],
            0.0 if "test" in given else fractions[1])
    carved = dict(zip(SPLITS, carve(len(train.paths), kept, seed), strict=True))
    parts = {name: train.take(carved[name]) if name == "train" or name not in given
             else given[name].take(np.random.default_rng(seed).permutation(len(given[name].paths)))
             for name in SPLITS}
    datasets = [files_dataset(parts[name]) for name in SPLITS]
    return RawSplits(*datasets, class_names, {name: parts[name].labels for name in SPLITS})


def warn_missing_classes(given: dict[str, LabelledFiles], class_names: tuple[str, ...],
                         where: dict[str, str]) -> None:
    """One line per given validation or test split that lacks some training classes: its
    metrics then cover the other classes only, which a user should know before reading them."""
    for name in SPLITS[1:]:
        if name in given:
            present = set(np.unique(given[name].labels).tolist())
            missing = [c for i, c in enumerate(class_names) if i not in present]
            if missing:
                log.warning("%s has no images of %d training class(es): %s; its metrics cover "
                            "the other classes only.", where[name], len(missing),
                            ", ".join(missing[:10]) + (", …" if len(missing) > 10 else ""))


def files_dataset(files: LabelledFiles) -> tf.data.Dataset:
    """(path, int32 label) records; paths as the file system's bytes, so names that are not
    valid UTF-8 are read as they are."""
    paths = tf.constant([os.fsencode(p) for p in files.paths], tf.string, shape=[len(files.paths)])
    return tf.data.Dataset.from_tensor_slices((paths, files.labels.astype(np.int32)))
