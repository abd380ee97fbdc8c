"""Image sources -> raw ``tf.data`` splits -> lazily preprocessed batches.

Sources yield raw examples ``(uint8 image [H, W, C], int32 label)`` at their stored size; the
conversion to the backbone's input (grayscale->RGB, resize, normalisation) happens per batch in
the pipeline, so resized copies of a dataset never exist in memory. The same pure functions are
used by the exported serving graph, so training and serving cannot disagree.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfft.config import DataConfig
from tfft.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
SAMPLES = {"mnist": "mnist_sample.npz"}
ENCODED = "encoded"  # the key of an encoded image record (see Splits)
Normalizer = Callable[[tf.Tensor], tf.Tensor]

log = logging.getLogger("tfft")


@dataclass(frozen=True)
class Splits:
    """Raw, unbatched splits of one dataset plus the class names they share.

    Examples are (record, int32 label); a record is a uint8 image, for image folders the
    file's path, or for TFDS datasets of varying image sizes ``{ENCODED: the image's bytes}``.
    ``load_images`` reads and decodes the last two after the training shuffle, so its buffer
    never holds decoded photos.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    sizes: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- preprocessing (pure functions)


def to_rgb(images: tf.Tensor) -> tf.Tensor:
    """Grayscale (1 channel) -> RGB; RGB passes through; works on one image or a batch."""
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 1:
        return tf.image.grayscale_to_rgb(images)
    return tf.cond(
        tf.shape(images)[-1] == 1,
        lambda: tf.image.grayscale_to_rgb(images),
        lambda: images[..., :3],
    )


def preprocess_images(images: tf.Tensor, image_size: int, normalize: Normalizer) -> tf.Tensor:
    """uint8 images of any size and 1 or 3 channels -> normalised float32 backbone inputs.

    Normalised before resizing: every backbone's normalisation is a per-channel affine map, and
    bilinear resizing (weights summing to 1) commutes with it, so the values are the same to
    float rounding while the normalisation runs on the stored pixels instead of the resized
    ones (20% less pipeline work for 28 px digits at 224 px, on cores the backbone shares).
    """
    images = normalize(tf.cast(to_rgb(images), tf.float32))
    return tf.image.resize(images, (image_size, image_size))


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF bytes -> uint8 RGB [H, W, 3] (first frame of a GIF)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


# ---------------------------------------------------------------- pipelines


def make_batches(
    ds: tf.data.Dataset,
    cfg: DataConfig,
    normalize: Normalizer,
    *,
    training: bool,
    seed: int,
    augmenter: Callable[[tf.Tensor], tf.Tensor] | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Shuffles (training only), batches and preprocesses raw examples, lazily.

    Image files are read after the shuffle, so its buffer holds paths, not decoded images.

    Same-size images are batched first and resized per batch (vectorised); mixed sizes (image
    folders) are resized per example before batching.
    """
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = load_images(ds)
    prep = _batch_preprocessor(cfg.image_size, normalize)
    autotune = tf.data.AUTOTUNE
    if ds.element_spec[0].shape.is_fully_defined():
        ds = ds.batch(cfg.batch_size, drop_remainder=drop_remainder)
        ds = ds.map(prep, num_parallel_calls=autotune)
    else:
        ds = ds.map(prep, num_parallel_calls=autotune)
        ds = ds.batch(cfg.batch_size, drop_remainder=drop_remainder)
    if training and augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x), y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


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


def load_images(ds: tf.data.Dataset) -> tf.data.Dataset:
    """(uint8 image, label) examples of a raw split, whose records may be image file paths
    (image folders) or ``{ENCODED: bytes}`` (TFDS photos): those are read and decoded here,
    lazily."""
    spec = ds.element_spec[0]
    if isinstance(spec, dict):
        def read(record: dict, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return decode_image(record[ENCODED]), label
    elif spec.dtype == tf.string:
        def read(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return decode_image(tf.io.read_file(path)), label
    else:
        return ds
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def make_augmenter(names: tuple[str, ...], seed: int) -> Callable[[tf.Tensor], tf.Tensor] | None:
    """Keras preprocessing layers for the requested augmentations (training split only)."""
    import keras

    layers = {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed),
        "rotate": lambda: keras.layers.RandomRotation(0.05, seed=seed),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=seed),
        "crop": lambda: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
    }
    if not names:
        return None
    pipeline = keras.Sequential([layers[n]() for n in names])
    return lambda images: pipeline(images, training=True)


# ---------------------------------------------------------------- sources


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Reads ``cfg.dataset`` (and ``cfg.test_dataset`` if set) into raw train/val/test splits."""
    separate_test = bool(cfg.test_dataset)
    train, validation, test, names = _load_source(cfg.dataset, cfg, seed, separate_test)
    if separate_test:
        _, _, test, test_names = _load_source(cfg.test_dataset, cfg, seed, False, whole=True)
        if test_names != names:
            raise UserError(
                f"--test_dataset: expected the classes of --dataset {list(names)}; "
                f"received {list(test_names)}."
            )
    train = _cap(train, cfg.max_train_examples)
    validation = _cap(validation, cfg.max_eval_examples)
    test = _cap(test, cfg.max_eval_examples)
    sizes = {"train": _size(train), "validation": _size(validation), "test": _size(test)}
    return Splits(_known_size(train, sizes["train"]), _known_size(validation, sizes["validation"]),
                  _known_size(test, sizes["test"]), names, sizes)


def _load_source(
    spec: str, cfg: DataConfig, seed: int, separate_test: bool, whole: bool = False
) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset, tuple[str, ...]]:
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
    return _from_tfds(arg, cfg, seed, fractions)


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


def _from_npz(path: str, fractions: tuple[float, float], seed: int):
    if not os.path.isfile(path):
        raise UserError(f"--dataset: npz file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise UserError(f"--dataset: {path!r} is not a readable .npz file ({err}).") from None
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


def _from_folder(root: str, fractions: tuple[float, float], seed: int):
    paths, labels, classes, skipped = list_image_folder(root)
    if skipped:
        log.warning("Skipped %d non-image file(s) in %s.", skipped, root)
    path_array = np.asarray(paths)

    def subset(idx: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((path_array[idx], labels[idx]))

    train, val, test = (subset(i) for i in carve(len(paths), fractions, seed))
    return train, val, test, classes


def _from_tfds(name: str, cfg: DataConfig, seed: int, fractions: tuple[float, float]):
    import tensorflow_datasets as tfds

    data_dir = cfg.tfds_data_dir or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001 - TFDS raises several types for unknown names
        raise UserError(f"--dataset: unknown TFDS dataset {name!r} ({_first_line(err)}).") from None
    info = builder.info
    features = info.features  # a tfds FeaturesDict: supports "in" and [], not .get
    label = features["label"] if "label" in features else None  # noqa: SIM401
    if label is None or not hasattr(label, "names"):
        raise UserError(f"--dataset: expected an image classification dataset with a 'label' "
                        f"feature; {name!r} has {sorted(info.features)}.")
    available = set(info.splits.keys()) or {"train", "test"}
    split_names = _tfds_split_names(available, fractions)
    image_key = (info.supervised_keys or ("image",))[0]
    encoded = _variable_size(features[image_key] if image_key in features else None)  # noqa: SIM401
    decoders = {image_key: tfds.decode.SkipDecoding()} if encoded else None
    load = dict(name=name, data_dir=data_dir, as_supervised=True, shuffle_files=False,
                decoders=decoders)
    try:
        datasets = tfds.load(split=list(split_names), download=False, **load)
    except Exception as err:  # noqa: BLE001 - not prepared: download if we can, else say how
        if not _online():
            where = data_dir or "~/tensorflow_datasets"
            raise UserError(
                f"--dataset: TFDS dataset {name!r} is not prepared in {where} and there is no "
                "network to download it; prepare it where you have network "
                f"(tfds build {name}) and pass --tfds_data_dir=DIR."
            ) from err
        datasets = tfds.load(split=list(split_names), download=True, **load)
    cast = _encoded_record if encoded else _cast_label
    train, val, test = (ds.map(cast) for ds in datasets)
    return train, val, test, tuple(label.names)


def _variable_size(image_feature: object) -> bool:
    """True for a TFDS image feature of varying height or width (photos, usually large): such
    images stay encoded until after the training shuffle, so its buffer holds bytes (a 10,000-
    example buffer of decoded 500 x 375 photos would take 5.6 GB). Fixed-size images (MNIST,
    CIFAR) are small, and arrive decoded so that they can be resized a batch at a time."""
    shape = getattr(image_feature, "shape", None)
    return shape is not None and len(shape) == 3 and None in shape[:2]


def _encoded_record(encoded: tf.Tensor, label: tf.Tensor) -> tuple[dict, tf.Tensor]:
    encoded, label = _cast_label(encoded, label)
    return {ENCODED: encoded}, label


def _tfds_split_names(available: set[str], fractions: tuple[float, float]) -> tuple[str, str, str]:
    """TFDS split strings for train/validation/test, carving what the dataset lacks from train."""
    val_pct = int(round(100 * fractions[0]))
    test_pct = int(round(100 * fractions[1])) if "test" not in available else 0
    test = "test" if "test" in available else f"train[{100 - test_pct}%:]"
    if "validation" in available:
        return f"train[:{100 - test_pct}%]", "validation", test
    return (f"train[:{100 - test_pct - val_pct}%]",
            f"train[{100 - test_pct - val_pct}%:{100 - test_pct}%]", test)


def _cast_label(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return image, tf.cast(label, tf.int32)


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """True when the download host is reachable; fails in well under a second when offline."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
