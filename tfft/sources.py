"""Raw image sources -> unbatched (train, validation, test) ``tf.data`` splits and class names.

``--dataset`` names one of: ``sample:mnist`` (shipped with tfft), ``npz:FILE``, ``folder:DIR``
(one subfolder per class) or ``tfds:NAME`` (``tfft.tfds_source``). Every source yields examples
at their stored size; the checks here run before any training, so a bad file is one clear line
instead of a decoder error minutes into a run.
"""

from __future__ import annotations

import importlib.resources
import logging
import os

import numpy as np
import tensorflow as tf

from tfft.config import DataConfig
from tfft.errors import UserError
from tfft.tfds_source import load_tfds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
SAMPLES = {"mnist": "mnist_sample.npz"}
RawSplits = tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset, tuple[str, ...]]

log = logging.getLogger("tfft")


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
        return _from_folder(arg, fractions, seed)
    return load_tfds(arg, cfg.tfds_data_dir or None, fractions)


def carve(n: int, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Seeded split of ``range(n)`` into (train, validation, test) index arrays.

    Each part stays in shuffled order, so ``--max_*_examples`` takes a random subset even from
    sources stored sorted by class.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fractions[0]))
    n_test = int(round(n * fractions[1]))
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


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
    return train, val, test, names


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


def list_image_folder(root: str) -> tuple[list[str], np.ndarray, tuple[str, ...], int]:
    """Files and labels of a folder of class subfolders; returns how many files were skipped."""
    if not os.path.isdir(root):
        raise UserError(f"--dataset: image folder {root!r} does not exist.")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if len(classes) < 2:
        raise UserError(f"--dataset: expected at least 2 class subfolders in {root!r}; "
                        f"received {len(classes)}.")
    paths, labels, skipped = [], [], 0
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
            for fname in sorted(files):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(dirpath, fname))
                    labels.append(label)
                else:
                    skipped += 1
    if not paths:
        raise UserError(f"--dataset: expected JPEG/PNG/BMP/GIF images in the class subfolders "
                        f"of {root!r}; received none.")
    for path in paths:
        _check_image_signature(path)
    return paths, np.asarray(labels, np.int32), tuple(classes), skipped


def _check_image_signature(path: str) -> None:
    """Refuses a file whose name says image but whose first bytes say otherwise.

    Found now, a corrupt file is one clear line; found by the decoder mid-training, it would
    be a TensorFlow stack trace after minutes of work.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(IMAGE_SIGNATURES):
        raise UserError(f"--dataset: {path!r} is not a JPEG/PNG/BMP/GIF image (corrupt or "
                        f"mislabelled file; its first bytes are {head[:4]!r}).")


def _from_folder(root: str, fractions: tuple[float, float], seed: int) -> RawSplits:
    paths, labels, classes, skipped = list_image_folder(root)
    if skipped:
        log.warning("Skipped %d non-image file(s) in %s.", skipped, root)
    path_array = np.asarray(paths)

    def subset(idx: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((path_array[idx], labels[idx]))

    train, val, test = (subset(i) for i in carve(len(paths), fractions, seed))
    return train, val, test, classes
