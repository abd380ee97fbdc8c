"""What a feature-cache entry is keyed by: everything that changes the features.

The key is a sha256 over the data source and its files, split, seed, fractions, caps, backbone,
its weights, image size, pooling, storage dtype and library versions, so a stale entry is never
reused (``tfft.feature_cache`` writes and reads the entries).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.config import Config

FORMAT_VERSION = 1


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
        # The policy in force (``auto`` resolved), since it changes the features computed.
        "mixed_precision": keras.mixed_precision.global_policy().name,
        "tensorflow": tf.__version__, "keras": keras.__version__,
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
