"""Feature-cache entries made by a real (tiny) extraction, for the cache tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfft import feature_cache

# Linux file times advance in clock ticks (1-10 ms): uses this far apart are told apart.
TICK_S = 0.05


def fields_of(n: int, split: str = "train") -> dict:
    """Key fields shaped like a run's (what ``tfft.cache list`` shows), told apart by ``n``."""
    return {"split": split, "dataset": "sample:mnist", "backbone": "mobilenet",
            "image_size": 32, "cache_dtype": "float32", "n": n}


def entry_of(root: Path, n: int, split: str = "train") -> tuple[str, str]:
    """(entry, key) of the ``n``-th test entry under ``root``, named as runs name them."""
    key = feature_cache.cache_key(fields_of(n, split))
    return os.path.join(str(root), f"{split}-{key[:32]}"), key


def write_entry(root: Path, n: int, *, count: int = 4, dim: int = 256, split: str = "train",
                forward=None, **kwargs) -> tuple[str, str]:
    """Extracts ``count`` x ``dim`` features (value 2n) into an entry under ``root``; returns
    (entry, key). The split is dropped at once, so nothing holds the entry afterwards."""
    fields = fields_of(n, split)
    entry, _ = entry_of(root, n, split)
    images = np.full((count, dim), n, np.float32)
    batches = tf.data.Dataset.from_tensor_slices((images, np.arange(count, dtype=np.int32)))
    feature_cache.extract(forward or (lambda x: x * 2.0), batches.batch(8), count=count, dim=dim,
                          dtype="float32", entry=entry, key_fields=fields, **kwargs)
    time.sleep(TICK_S)
    return entry_of(root, n, split)


def names(root: Path) -> set[str]:
    """The entries and temporary directories under ``root``."""
    return set(os.listdir(root)) if os.path.isdir(root) else set()
