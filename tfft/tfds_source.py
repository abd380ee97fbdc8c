"""``--dataset=tfds:NAME``: a TensorFlow Datasets image classification dataset as raw splits.

Offline, an unprepared dataset is one line saying how to prepare it, and nothing is written to
the data directory: the prepared data is read through the builder's own ``as_dataset``, which only
checks that the version directory exists. ``tfds.load`` is left for the download (with network),
because before reading it asks ``is_prepared()``, which logs an absl warning ("Variant folder ...
has no dataset_info.json") above tfft's one-line error. Without network, ``tfds.load(...,
download=True)`` would retry for minutes (STACK_FACTS §2), so the network is probed first.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable

import tensorflow as tf

from tfft.errors import UserError
from tfft.preprocess import ENCODED, fixed_shape_record
from tfft.raw_splits import RawSplits

DOWNLOAD_HOST = "storage.googleapis.com"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"


def load_tfds(name: str, data_dir: str | None, fractions: tuple[float, float]) -> RawSplits:
    """Raw train, validation and test splits and class names of a TFDS dataset, downloaded if
    need be.

    ``fractions`` (validation, test) carve the splits the dataset lacks from its train split.
    The labels are not known without reading every record (for ImageNet, 140 GB), so the raw
    splits carry none and the run's class counts are left out.
    """
    import tensorflow_datasets as tfds

    builder = _builder(name, data_dir)
    info = builder.info
    features = info.features  # a tfds FeaturesDict: supports "in" and [], not .get
    label = features["label"] if "label" in features else None  # noqa: SIM401
    if label is None or not hasattr(label, "names"):
        raise UserError(
            f"--dataset: expected an image classification dataset with a 'label' "
            f"feature; {name!r} has {sorted(info.features)}."
        )
    split_names = tfds_split_names(set(info.splits.keys()) or {"train", "test"}, fractions)
    image_key = (info.supervised_keys or ("image",))[0]
    cast = _record_maker(features[image_key] if image_key in features else None)  # noqa: SIM401
    read = dict(
        split=list(split_names),
        as_supervised=True,
        shuffle_files=False,
        decoders={image_key: tfds.decode.SkipDecoding()} if cast else None,
    )
    train, val, test = (ds.map(cast or _cast_label) for ds in _read(builder, name, data_dir, read))
    return RawSplits(train, val, test, tuple(label.names))


def _builder(name: str, data_dir: str | None):
    """The dataset's builder; constructing it reads the data directory but writes nothing."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # noqa: BLE001 - TFDS raises several types for unknown names
        raise UserError(f"--dataset: unknown TFDS dataset {name!r} ({_first_line(err)}).") from None


def _read(builder, name: str, data_dir: str | None, read: dict) -> list[tf.data.Dataset]:
    """The requested splits: prepared data as it is, else downloaded where there is network."""
    import tensorflow_datasets as tfds

    try:
        return builder.as_dataset(**read)
    except Exception as err:  # noqa: BLE001 - not prepared: download if we can, else say how
        if not _online():
            raise UserError(
                f"--dataset: TFDS dataset {name!r} is not prepared in "
                f"{data_dir or DEFAULT_DATA_DIR} and there is no network to download it; "
                f"prepare it where you have network (tfds build {name}) and pass "
                "--tfds_data_dir=DIR."
            ) from err
    return tfds.load(name, data_dir=data_dir, download=True, **read)


def tfds_split_names(available: set[str], fractions: tuple[float, float]) -> tuple[str, str, str]:
    """TFDS split strings for train/validation/test, carving what the dataset lacks from train."""
    val_pct = int(round(100 * fractions[0]))
    test_pct = int(round(100 * fractions[1])) if "test" not in available else 0
    test = "test" if "test" in available else f"train[{100 - test_pct}%:]"
    if "validation" in available:
        return f"train[:{100 - test_pct}%]", "validation", test
    return (
        f"train[:{100 - test_pct - val_pct}%]",
        f"train[{100 - test_pct - val_pct}%:{100 - test_pct}%]",
        test,
    )


def _record_maker(image_feature: object) -> Callable | None:
    """How the image feature's bytes, read undecoded, become a record; None for features
    TFDS must decode itself (fixed-size ones other than uint8 images of 1 or 3 channels).

    Images stay encoded until after the training shuffle and the multi-worker share
    (``tfft.distribute.worker_share``): each worker then decodes only its own share, and the
    shuffle buffer holds bytes (a 10,000-example buffer of decoded 500 x 375 photos would take
    5.6 GB). Fixed-size images (MNIST, CIFAR) keep their shape in the record
    (``preprocess.fixed_shape_record``), so they decode to it and are resized a batch at a time.
    """
    shape = tuple(getattr(image_feature, "shape", None) or ())
    if len(shape) == 3 and None in shape[:2]:
        return _encoded_record  # decoded to RGB, whatever its channels (preprocess.decode_image)
    dtype = getattr(image_feature, "tf_dtype", None)
    if len(shape) != 3 or shape[-1] not in (1, 3) or dtype != tf.uint8:
        return None
    return functools.partial(_fixed_size_record, shape=shape)


def _cast_label(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return image, tf.cast(label, tf.int32)


def _encoded_record(encoded: tf.Tensor, label: tf.Tensor) -> tuple[dict, tf.Tensor]:
    encoded, label = _cast_label(encoded, label)
    return {ENCODED: encoded}, label


def _fixed_size_record(
    encoded: tf.Tensor, label: tf.Tensor, shape: tuple[int, int, int]
) -> tuple[dict, tf.Tensor]:
    encoded, label = _cast_label(encoded, label)
    return fixed_shape_record(encoded, shape), label


def _online(host: str = DOWNLOAD_HOST, timeout: float = 3.0) -> bool:
    """True when the download host is reachable; fails in well under a second when offline."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
