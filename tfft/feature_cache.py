"""Backbone features for the head phase, computed once: in memory or in a keyed disk cache.

A frozen backbone without augmentation maps every example to the same feature vector each epoch,
so the head phase trains on those vectors instead of running the backbone every step. Features
are written as they stream out of the backbone (into a preallocated array, or appended to a file),
so extraction never holds more than one copy of them, and a disk entry never holds any in RAM.

A disk entry is a directory named by a key (``tfft.cache_keys``) over everything that changes the
features (data source and its files, split, seed, fractions, caps, backbone, its weights, image
size, pooling, storage dtype, library versions), so a stale entry is never reused. Entries are
written into a temporary directory that is renamed into place only when complete: readers see whole
entries or none (on another filesystem the move goes file by file, ``meta.json`` last, and ``read``
refuses an entry whose files do not match it), and two processes racing on one key both end with the
same entry. Its size is known before the backbone runs, so a disk without room for it is refused
up front; a disk that fills up anyway ends as one line, with the temporary entry removed. Last use,
the size limit and locks against removal while in use are ``tfft.cache_store``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import keras
import numpy as np
import tensorflow as tf

from tfft import cache_store, diskspace, fs
from tfft.cache_keys import FORMAT_VERSION, cache_key, key_fields
from tfft.cache_store import FEATURES_FILE, LABELS_FILE, META_FILE
from tfft.config import Config
from tfft.errors import UserError

# The key functions are called through this module (``feature_cache.key_fields``).
__all__ = ["FEATURES_FILE", "LABELS_FILE", "LABEL_DTYPE", "MEMORY_LIMIT_BYTES", "META_FILE",
           "CachedSplit", "Forward", "cache_key", "entry_bytes", "entry_path", "extract",
           "inference_fn", "key_fields", "on_disk", "read"]

LABEL_DTYPE = np.dtype("<i4")

# ``--cache_features=auto`` keeps features in RAM up to this size, and streams them to disk above
# it (VGG16 with flatten at 224 px over 54,000 MNIST digits would need 5.4 GB of float32 RAM).
MEMORY_LIMIT_BYTES = 1 << 30

Forward = Callable[[tf.Tensor], tf.Tensor]
Sample = Callable[[tf.data.Dataset], tf.data.Dataset]  # --sampling=balanced (tfft.data.balanced)


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
    # A disk entry's share-locked meta.json: the entry is not removed while this split lives.
    lock: IO[bytes] | None = field(default=None, repr=False, compare=False)

    def batches(self, batch_size: int, *, shuffle_buffer: int = 0, seed: int | None = None,
                drop_remainder: bool = False, sample: Sample | None = None) -> tf.data.Dataset:
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
        if sample or shuffle_buffer:
            ds = sample(ds) if sample else ds.shuffle(shuffle_buffer, seed=seed,
                                                      reshuffle_each_iteration=True)
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


def inference_fn(model: keras.Model, jit_compile: bool = False,
                 prepare: Callable[[tf.Tensor, bool], tf.Tensor] | None = None) -> Forward:
    """The model in inference mode as one traced function per model (and options).

    Its batch size is left free, so both splits and their last partial batches share a single
    trace (a trace of a backbone costs about a second on 2 CPU cores); Keras layers need no
    AutoGraph conversion, which would add to that. With ``prepare`` (preprocessing on the
    device: ``prepare(x, False)`` runs first) the input's size and dtype are the pipeline's, not
    the model's, so only the rank is fixed. ``jit_compile`` compiles it with XLA (one program
    per batch shape).
    """
    traced = _INFERENCE.setdefault(model, {})
    if (jit_compile, prepare) not in traced:
        if prepare is None:
            spec = tf.TensorSpec((None, *model.input.shape[1:]), model.input.dtype)
            forward = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                                  autograph=False, jit_compile=jit_compile)
        else:
            forward = tf.function(lambda x: model(prepare(x, False), training=False),
                                  autograph=False, jit_compile=jit_compile,
                                  reduce_retracing=True)
        traced[(jit_compile, prepare)] = forward
    return traced[(jit_compile, prepare)]


def extract(forward: Forward, batches: Iterable[tuple[tf.Tensor, tf.Tensor]], *, count: int,
            dim: int, dtype: str, entry: str = "", key_fields: dict[str, Any] | None = None,
            on_batch: Callable[[int], None] | None = None, cache_max_gb: float = 0.0,
            say: Callable[[str], None] | None = None) -> CachedSplit:
    """Runs ``forward`` once over ``batches`` of a ``count``-example split.

    With ``entry`` the features are appended to a new disk entry there (atomically renamed into
    place at the end), after checking that it fits on the disk; then least recently used entries
    beside it are removed beyond ``cache_max_gb`` (0 = no limit), which ``say`` reports.
    Otherwise they fill one preallocated array.
    """
    if not entry:
        return _fill(_MemorySink(count, dim, dtype), forward, batches, on_batch)
    split = (key_fields or {}).get("split") or os.path.basename(entry).split("-")[0]
    what = (f"{split} features in the --cache_dir feature cache ({count:,} x {dim:,} {dtype}; "
            "python -m tfft.cache clear removes old entries)")
    diskspace.check_free(entry, entry_bytes(count, dim, dtype), what)
    with diskspace.reporting_full_disk(entry, what, "no partial entry is kept"):
        cached = _fill(_DiskSink(entry, dim, dtype, key_fields or {}), forward, batches,
                       on_batch)
    removed = cache_store.evict(os.path.dirname(entry), cache_max_gb, keep=entry)
    if removed and say:
        freed = diskspace.format_bytes(sum(e.size for e in removed))
        say(f"Feature cache: removed {len(removed)} least recently used entries ({freed}) to "
            f"stay within --cache_max_gb={cache_max_gb:g}.")
    return cached


def entry_bytes(count: int, dim: int, dtype: str) -> int:
    """Bytes of a disk entry's features and labels (its meta.json is a few hundred more)."""
    return count * (dim * np.dtype(dtype).itemsize + LABEL_DTYPE.itemsize)


def _fill(sink: _MemorySink | _DiskSink, forward: Forward,
          batches: Iterable[tuple[tf.Tensor, tf.Tensor]],
          on_batch: Callable[[int], None] | None) -> CachedSplit:
    """Streams the features of ``batches`` into ``sink``; a failure discards what it holds."""
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
            self.tmp = cache_store.temporary_entry(parent, os.path.basename(entry))
        except OSError as err:
            if diskspace.is_disk_full(err):
                raise
            raise UserError(f"--cache_dir: expected a writable directory for the feature cache; "
                            f"received {parent!r} ({err.strerror or err}).") from None
        self.features = _open(os.path.join(self.tmp, FEATURES_FILE), "wb")
        self.labels = _open(os.path.join(self.tmp, LABELS_FILE), "wb")
        self.count = 0

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        rows = features.reshape(len(features), -1).astype(f"<{np.dtype(self.dtype).str[1:]}")
        self.features.write(rows.tobytes())
        self.labels.write(labels.astype(LABEL_DTYPE).tobytes())
        self.count += len(rows)

    def finish(self) -> CachedSplit:
        for f in (self.features, self.labels):
            f.flush()
            if fs.is_local(self.tmp):
                os.fsync(f.fileno())
            f.close()
        meta = {"format": FORMAT_VERSION, "count": self.count, "dim": self.dim,
                "dtype": self.dtype, "key": cache_key(self.key_fields), "fields": self.key_fields}
        with _open(os.path.join(self.tmp, META_FILE), "w") as f:
            f.write(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if fs.isdir(self.entry) and read(self.entry, meta["key"]) is None:
            fs.rmtree(self.entry)  # an incomplete or foreign entry
        try:
            fs.rename(self.tmp, self.entry)
        except OSError:  # another process finished the same key first; its entry is equal
            fs.rmtree(self.tmp)
        entry = read(self.entry, meta["key"])
        if entry is None:
            raise RuntimeError(f"Feature cache entry {self.entry} unreadable right after writing.")
        return entry

    def abort(self) -> None:
        """Removes the temporary entry; closing may fail again on a full disk, and must not
        hide the first error."""
        for f in (self.features, self.labels):
            with contextlib.suppress(OSError):
                f.close()
        fs.rmtree(self.tmp)


def _open(path: str, mode: str) -> IO[Any]:
    """A local file through the builtin ``open`` (tests wrap this module's ``open``), any other
    through ``tfft.fs``."""
    return open(path, mode) if fs.is_local(path) else fs.open(path, mode)  # noqa: SIM115


# ---------------------------------------------------------------- disk entries


def read(entry: str, key: str) -> CachedSplit | None:
    """The complete entry for ``key`` at ``entry``, or None when absent, foreign or truncated.

    The split holds the entry (see ``cache_store.hold``) while it lives, and the entry is marked
    as just used, so the size limit removes entries nobody has used for longest.
    """
    lock = cache_store.hold(entry)
    if lock is None:
        return None
    try:
        meta = json.load(lock)
        labels = np.frombuffer(fs.read_bytes(os.path.join(entry, LABELS_FILE)), LABEL_DTYPE)
        size = fs.size(os.path.join(entry, FEATURES_FILE))
        count, dim, dtype = meta.get("count"), meta.get("dim"), meta.get("dtype")
        complete = (meta.get("format") == FORMAT_VERSION and meta.get("key") == key
                    and len(labels) == count and size == count * dim * np.dtype(dtype).itemsize)
    except (OSError, ValueError, TypeError, AttributeError):
        complete = False
    if not complete:
        lock.close()
        return None
    cache_store.touch(entry)
    return CachedSplit(count, dim, dtype, labels.astype(np.int32), path=entry, lock=lock)


def entry_path(config: Config, split: str, key: str) -> str:
    """Where the entry of ``key`` lives: ``<cache_dir>/<split>-<key prefix>``."""
    return os.path.join(cache_store.cache_root(config.run.cache_dir), f"{split}-{key[:32]}")
