"""Raw image sources -> unbatched (train, validation, test) ``tf.data`` splits and class names.

``--dataset`` names one of: ``sample:mnist`` (shipped with tfft), ``npz:FILE``, ``folder:DIR``
(class subfolders, or split folders of them: ``tfft.layouts``), ``csv:FILE`` (paths and labels:
``tfft.csv_labels``) or ``tfds:NAME`` (``tfft.tfds_source``). Every source yields examples at
their stored size, with the labels of each split when it knows them (``tfft.raw_splits``); the
checks run before any training, so a bad file is one clear line instead of a decoder error
minutes into a run.
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np
import tensorflow as tf

from tfft.config import DataConfig
from tfft.csv_labels import from_csv
from tfft.errors import UserError
from tfft.layouts import from_folder
from tfft.raw_splits import SPLITS, RawSplits, carve
from tfft.tfds_source import load_tfds

SAMPLES = {"mnist": "mnist_sample.npz"}


def load_source(spec: str, cfg: DataConfig, seed: int, separate_test: bool,
                whole: bool = False) -> RawSplits:
    """The raw splits of one ``--dataset`` spec; ``whole`` puts every example in the test split
    (``--test_dataset``), ``separate_test`` carves no test split (one is given separately)."""
    kind, _, arg = spec.partition(":")
    test_fraction = 0.0 if separate_test else cfg.test_fraction
    fractions = (0.0, 1.0) if whole else (cfg.validation_fraction, test_fraction)
    if kind == "sample":
        if arg not in SAMPLES:
            raise UserError(f"--dataset: expected sample:{'|'.join(SAMPLES)}; received {spec!r}.")
        path = importlib.resources.files("tfft") / "sample_data" / SAMPLES[arg]
        return _from_npz(str(path), fractions, seed)
    if kind == "npz":
        return _from_npz(arg, fractions, seed)
    if kind == "folder":
        return from_folder(arg, fractions, seed)
    if kind == "csv":
        return from_csv(arg, fractions, seed)
    return load_tfds(arg, cfg.tfds_data_dir or None, fractions)


def _from_arrays(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))


def _from_npz(path: str, fractions: tuple[float, float], seed: int) -> RawSplits:
    arrays = _read_npz(path)
    if "x_train" in arrays:
        x, y = _check_xy(path, arrays["x_train"], arrays.get("y_train"))
        x_test, y_test = _check_xy(path, arrays.get("x_test"), arrays.get("y_test"))
        train_idx, val_idx, _ = carve(len(x), (fractions[0], 0.0), seed)
        test_idx = np.random.default_rng(seed).permutation(len(x_test))
        parts = ((x, y, train_idx), (x, y, val_idx), (x_test, y_test, test_idx))
    elif "x" in arrays:
        x, y = _check_xy(path, arrays["x"], arrays.get("y"))
        idx = carve(len(x), fractions, seed)
        parts = tuple((x, y, i) for i in idx)
    else:
        raise UserError(f"--dataset: expected arrays 'x' and 'y' in {path!r}; "
                        f"received {sorted(arrays)}.")
    n_classes = int(max(p[1].max(initial=0) for p in parts)) + 1
    names = tuple(str(n) for n in arrays.get("class_names", range(n_classes)))
    train, val, test = (_from_arrays(xx[i], yy[i]) for xx, yy, i in parts)
    labels = {name: yy[i].astype(np.int32) for name, (_, yy, i) in zip(SPLITS, parts, strict=True)}
    return RawSplits(train, val, test, names, labels)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise UserError(f"--dataset: npz file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise UserError(f"--dataset: {path!r} is not a readable .npz file ({err}).") from None


def _check_xy(path: str, x: np.ndarray | None, y: np.ndarray | None):
    if x is None or y is None:
        raise UserError(f"--dataset: expected both images and labels in {path!r}.")
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise UserError(f"--dataset: expected uint8 images [N,H,W] or [N,H,W,1|3] in {path!r}; "
                        f"received {x.dtype} {list(x.shape)}.")
    if len(x) != len(y) or not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0:
        raise UserError(f"--dataset: expected one non-negative integer label per image in "
                        f"{path!r}; received {len(y)} labels of {y.dtype} for {len(x)} images.")
    return (x[..., None] if x.ndim == 3 else x), y
