"""Backbone features for the head phase, computed once: in memory or in a keyed disk cache.

A frozen backbone without augmentation maps every example to the same feature vector each epoch,
so the head phase trains on those vectors instead of running the backbone every step. Features
are written as they stream out of the backbone (into a preallocated array, or appended to a file),
so extraction never holds more than one copy of them, and a disk entry never holds any in RAM.

A disk entry is a directory named by a key over everything that changes the features (data
source and its files, split, seed, fractions, caps, backbone, its weights, image size, pooling,
storage dtype, library versions), so a stale entry is never reused. Entries are written into a
temporary directory that is renamed into place only when complete: readers see whole entries or
none, and two processes racing on one key both end with the same entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.config import Config
from tfft.errors import UserError

FORMAT_VERSION = 1
FEATURES_FILE = "features.bin"
LABELS_FILE = "labels.bin"
META_FILE = "meta.json"
LABEL_DTYPE = np.dtype("<i4")

# ``--cache_features=auto`` keeps features in RAM up to this size, and streams them to disk above
# it (VGG16 with flatten at 224 px over 54,000 MNIST digits would need 5.4 GB of float32 RAM).
MEMORY_LIMIT_BYTES = 1 << 30

Forward = Callable[[tf.Tensor], tf.Tensor]


def on_disk(mode: str, count: int, dim: int, dtype: str, say: Callable[[str], None]) -> bool:
    """Whether a split's features go to the disk cache (``disk``, or ``auto`` when too big)."""
    size = count * dim * np.dtype(dtype).itemsize
    if mode == "auto" and size > MEMORY_LIMIT_BYTES:
        say(f"Feature cache on disk (--cache_dir): {count:,} x {dim:,} {dtype} features would "
            f"take {size / 2**30:.1f} GiB of RAM (auto keeps at most "
            f"{MEMORY_LIMIT_BYTES / 2**30:.0f} GiB in memory).")
        return True
    return mode == "disk"


@dataclass(frozen=True)
class CachedSplit:
    """One split's features and labels: arrays in memory, or a complete disk entry."""

    count: int
    dim: int
    dtype: str
    labels: np.ndarray
    features: tf.Tensor | None = None
    path: str = ""

    def batches(self, batch_size: int, *, shuffle_buffer: int = 0, seed: int | None = None,
                drop_remainder: bool = False) -> tf.data.Dataset:
        """Batches of (float32 features, int32 labels), streamed from disk for a disk entry.

        Memory and disk entries shuffle identically (same element count, buffer and seed), so
        the head trains on the same batches either way.
        """
        if self.features is not None:
            rows = tf.data.Dataset.from_tensor_slices(self.features)
        else:
            record = self.dim * np.dtype(self.dtype).itemsize
            rows = tf.data.FixedLengthRecordDataset(
                os.path.join(self.path, FEATURES_FILE), record, buffer_size=1 << 20,
            ).apply(tf.data.experimental.assert_cardinality(self.count))
        ds = tf.data.Dataset.zip((rows, tf.data.Dataset.from_tensor_slices(self.labels)))
        if shuffle_buffer:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if self.features is None or self.features.dtype != tf.float32:
            ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _decode(self, rows: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        if self.features is None:
            rows = tf.io.decode_raw(rows, tf.dtypes.as_dtype(self.dtype))
        return tf.cast(rows, tf.float32), labels


# ---------------------------------------------------------------- extraction

_INFERENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_fn(model: keras.Model) -> Forward:
    """The model in inference mode as one traced function per model.

    Its batch size is left free, so both splits and their last partial batches share a single
    trace (a trace of a backbone costs about a second on 2 CPU cores); Keras layers need no
    AutoGraph conversion, which would add to that.
    """
    if model not in _INFERENCE:
        spec = tf.TensorSpec((None, *model.input.shape[1:]), model.input.dtype)
        _INFERENCE[model] = tf.function(lambda x: model(x, training=False),
                                        input_signature=[spec], autograph=False)
    return _INFERENCE[model]


def extract(forward: Forward, batches: Iterable[tuple[tf.Tensor, tf.Tensor]], *, count: int,
            dim: int, dtype: str, entry: str = "", key_fields: dict[str, Any] | None = None,
            on_batch: Callable[[int], None] | None = None) -> CachedSplit:
    """Runs ``forward`` once over ``batches`` of a ``count``-example split.

    With ``entry`` the features are appended to a new disk entry there (atomically renamed into
    place at the end); otherwise they fill one preallocated array.
    """
    sink = _DiskSink(entry, dim, dtype, key_fields or {}) if entry else _MemorySink(count, dim,
                                                                                     dtype)
    try:
        for i, (images, labels) in enumerate(batches):
            sink.add(forward(images).numpy(), labels.numpy())
            if on_batch:
                on_batch(i + 1)
        return sink.finish()
    except BaseException:
        sink.abort()
        raise


class _MemorySink:
    """Fills one preallocated array, so extraction never needs a second copy to concatenate."""

    def __init__(self, count: int, dim: int, dtype: str):
        self.features = np.empty((count, dim), dtype)
        self.labels = np.empty((count,), LABEL_DTYPE)
        self.dim, self.dtype, self.filled = dim, dtype, 0

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        end = self.filled + len(features)
        if end > len(self.features):
            raise RuntimeError(f"The split yielded more than its {len(self.features)} examples.")
        self.features[self.filled:end] = features.reshape(len(features), -1)
        self.labels[self.filled:end] = labels
        self.filled = end

    def finish(self) -> CachedSplit:
        """Hands the rows over as one tensor, which datasets slice without copying each epoch."""
        features = tf.convert_to_tensor(self.features[:self.filled])
        self.features = np.empty((0, self.dim), self.dtype)
        return CachedSplit(self.filled, self.dim, self.dtype, self.labels[:self.filled], features)

    def abort(self) -> None:
        """Nothing to clean up in memory."""


class _DiskSink:
    """Appends rows to files in a temporary directory that becomes the entry when complete."""

    def __init__(self, entry: str, dim: int, dtype: str, key_fields: dict[str, Any]):
        self.entry, self.dim, self.dtype, self.key_fields = entry, dim, dtype, key_fields
        parent = os.path.dirname(entry)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(entry)}-")
        except OSError as err:
            raise UserError(f"--cache_dir: expected a writable directory for the feature cache; "
                            f"received {parent!r} ({err.strerror or err}).") from None
        self.features = open(os.path.join(self.tmp, FEATURES_FILE), "wb")  # noqa: SIM115
        self.labels = open(os.path.join(self.tmp, LABELS_FILE), "wb")  # noqa: SIM115
        self.count = 0

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        rows = features.reshape(len(features), -1).astype(f"<{np.dtype(self.dtype).str[1:]}")
        self.features.write(rows.tobytes())
        self.labels.write(labels.astype(LABEL_DTYPE).tobytes())
        self.count += len(rows)

    def finish(self) -> CachedSplit:
        for f in (self.features, self.labels):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta = {"format": FORMAT_VERSION, "count": self.count, "dim": self.dim,
                "dtype": self.dtype, "key": cache_key(self.key_fields), "fields": self.key_fields}
        with open(os.path.join(self.tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True, default=str)
        if os.path.isdir(self.entry) and read(self.entry, meta["key"]) is None:
            shutil.rmtree(self.entry, ignore_errors=True)  # an incomplete or foreign entry
        try:
            os.rename(self.tmp, self.entry)
        except OSError:  # another process finished the same key first; its entry is equal
            shutil.rmtree(self.tmp, ignore_errors=True)
        entry = read(self.entry, meta["key"])
        if entry is None:
            raise RuntimeError(f"Feature cache entry {self.entry} unreadable right after writing.")
        return entry

    def abort(self) -> None:
        for f in (self.features, self.labels):
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- disk entries and keys


def read(entry: str, key: str) -> CachedSplit | None:
    """The complete entry for ``key`` at ``entry``, or None when absent, foreign or truncated."""
    try:
        with open(os.path.join(entry, META_FILE)) as f:
            meta = json.load(f)
        labels = np.fromfile(os.path.join(entry, LABELS_FILE), LABEL_DTYPE)
        size = os.path.getsize(os.path.join(entry, FEATURES_FILE))
    except (OSError, ValueError):
        return None
    count, dim, dtype = meta.get("count"), meta.get("dim"), meta.get("dtype")
    if (meta.get("format") != FORMAT_VERSION or meta.get("key") != key or len(labels) != count
            or size != count * dim * np.dtype(dtype).itemsize):
        return None
    return CachedSplit(count, dim, dtype, labels.astype(np.int32), path=entry)


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/tfft/features``, else ``~/.cache/tfft/features``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfft", "features")


def entry_path(config: Config, split: str, key: str) -> str:
    """Where the entry of ``key`` lives: ``<cache_dir>/<split>-<key prefix>``."""
    root = config.run.cache_dir or default_cache_dir()
    return os.path.join(os.path.abspath(os.path.expanduser(root)), f"{split}-{key[:32]}")


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the key fields."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def key_fields(config: Config, split: str, identity: dict[str, str],
               features: keras.Model) -> dict[str, Any]:
    """Everything that changes the features of ``split`` (see the module docstring)."""
    d, m = config.data, config.model
    return {
        "format": FORMAT_VERSION, "split": split, "dataset": d.dataset,
        "source_files": source_stamp(d.dataset), "test_dataset": d.test_dataset,
        "tfds_data_dir": d.tfds_data_dir, "seed": config.train.seed,
        "validation_fraction": d.validation_fraction, "test_fraction": d.test_fraction,
        "max_train_examples": d.max_train_examples, "max_eval_examples": d.max_eval_examples,
        "image_size": d.image_size, "backbone": m.backbone, "weights": m.weights,
        "alpha": m.alpha, "hub_handle": m.hub_handle, "pooling": m.pooling,
        "identity": identity, "weights_digest": weights_digest(features),
        "feature_shape": list(features.output.shape[1:]), "cache_dtype": config.train.cache_dtype,
        "mixed_precision": config.train.mixed_precision, "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def weights_digest(model: keras.Model) -> str:
    """sha256 over the model's weight values, so any change of weights makes a new key."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def source_stamp(dataset: str) -> str:
    """Size and mtime of a local source's files (npz file, image folder); '' otherwise.

    TFDS datasets are versioned and immutable, and the bundled sample ships with the package.
    """
    kind, _, path = dataset.partition(":")
    if kind not in ("npz", "folder") or not os.path.exists(path):
        return ""
    digest = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    for name in files:
        stat = os.stat(name)
        digest.update(f"{os.path.relpath(name, path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()
