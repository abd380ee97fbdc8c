"""SavedModel export for TF Serving: raw images in, class names and probabilities out.

``python -m tfft.export --workdir=RUN [--export_dir=DIR] [--top_k=5]`` writes ``DIR/<version>/``
(version = 1 + the highest existing integer version, default ``DIR = RUN/export``), the layout
TF Serving polls. A version appears by one ``rename`` of a finished temporary directory beside
it, so a reader never sees a half-written version and an existing version is never replaced.

Signatures (all preprocessing is inside the graph and reuses ``tfft.data`` and the backbone's own
normalisation, so serving cannot disagree with training):

- ``serving_default``: ``images`` tf.string [batch] of encoded JPEG/PNG/BMP/GIF bytes, any size,
  gray or colour (what TF Serving's REST API delivers for ``{"b64": ...}``);
- ``serve_pixels``: ``pixels`` tf.uint8 [batch, height, width, channels], 1 or 3 channels.

Both return ``probabilities`` [batch, classes], ``class_ids`` [batch], ``class_names`` [batch],
``top_k_class_names`` and ``top_k_probabilities`` [batch, k]. ``assets/labels.txt`` (one class
name per line) and ``assets/config.json`` (the run's config) travel with every version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator, Sequence

import keras
import tensorflow as tf

from tfft import backbones, rundir
from tfft import data as data_lib
from tfft.config import Config
from tfft.errors import UserError

LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.json"
IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serve_pixels"
OUTPUT_NAMES = ("probabilities", "class_ids", "class_names", "top_k_class_names",
                "top_k_probabilities")
_TMP_PREFIX = ".tmp-export-"


# ---------------------------------------------------------------- serving functions


class ServingFunctions:
    """The two serving computations over a Keras classifier, as graph-only ``tf.function``s.

    Used by the export and, unexported, by ``tfft.evaluate`` on a run's ``model.keras``.
    """

    def __init__(self, model: keras.Model, class_names: Sequence[str], config: Config,
                 top_k: int = 5):
        names = check_class_names(class_names)
        if top_k < 1:
            raise UserError(f"--top_k: expected a positive number; received {top_k}.")
        self.model = model
        self.image_size = config.data.image_size
        self.normalize = backbones.normalizer(config.model)
        self.top_k = min(top_k, len(names))
        self.class_names = names
        self.names = tf.constant(list(names))
        self.images = tf.function(
            self._from_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.pixels = tf.function(
            self._from_pixels,
            input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="pixels")])

    def _from_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        size = self.image_size

        def one(encoded: tf.Tensor) -> tf.Tensor:
            pixels = data_lib.decode_image(encoded)[tf.newaxis]
            return data_lib.preprocess_images(pixels, size, self.normalize)[0]

        inputs = tf.map_fn(one, images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
        return self._outputs(inputs)

    def _from_pixels(self, pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        inputs = data_lib.preprocess_images(pixels, self.image_size, self.normalize)
        return self._outputs(tf.ensure_shape(inputs, [None, self.image_size, self.image_size, 3]))

    def _outputs(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities = tf.cast(self.model(inputs, training=False), tf.float32)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        top = tf.math.top_k(probabilities, k=self.top_k)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(self.names, class_ids),
            "top_k_class_names": tf.gather(self.names, top.indices),
            "top_k_probabilities": top.values,
        }


def check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """Class names must survive one-per-line ``labels.txt``."""
    names = tuple(str(n) for n in class_names)
    bad = [n for n in names if not n or "\n" in n or "\r" in n]
    if len(names) < 2 or bad:
        raise UserError(f"class names: expected at least 2 non-empty single-line names; "
                        f"received {list(names)[:20]}.")
    return names


# ---------------------------------------------------------------- export


def export_model(model: keras.Model, class_names: Sequence[str], config: Config,
                 export_dir: str, top_k: int = 5) -> str:
    """Writes the next version of ``model`` under ``export_dir``; returns the version dir."""
    serving = ServingFunctions(model, class_names, config, top_k)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(IMAGES_SIGNATURE, serving.images)
    archive.add_endpoint(PIXELS_SIGNATURE, serving.pixels)
    os.makedirs(export_dir, exist_ok=True)
    remove_stale_temp_dirs(export_dir)
    tmp = os.path.join(export_dir, f"{_TMP_PREFIX}{_owner_tag()}-{uuid.uuid4().hex[:8]}")
    try:
        with _quiet_tensorflow_logger():
            archive.write_out(tmp, verbose=False)
        assets = os.path.join(tmp, "assets")
        os.makedirs(assets, exist_ok=True)
        _write(os.path.join(assets, LABELS_FILE), "\n".join(serving.class_names) + "\n")
        _write(os.path.join(assets, CONFIG_FILE), config.to_json() + "\n")
        _fsync_tree(tmp)
        return _publish(tmp, export_dir)
    finally:
        if os.path.isdir(tmp):
            _remove_tree(tmp)


@contextlib.contextmanager
def _quiet_tensorflow_logger() -> Iterator[None]:
    """SavedModel writing logs INFO lines per function and shard; users need none of them.

    A filter rather than a level: TensorFlow's saver resets absl's verbosity while it runs.
    """
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    only_warnings = _WarningsOnly()
    for logger in loggers:
        logger.addFilter(only_warnings)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(only_warnings)


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def export_run(workdir: str, export_dir: str | None = None, top_k: int = 5) -> str:
    """Exports a run directory's ``model.keras``; returns the new version directory."""
    config, model = rundir.load_run(workdir)
    names = run_class_names(workdir, config)
    return export_model(model, names, config, export_dir or os.path.join(workdir, rundir.EXPORT),
                        top_k)


def run_class_names(workdir: str, config: Config) -> tuple[str, ...]:
    """Class names of a run: ``metrics.json`` if it records them, else the data source's."""
    metrics_path = os.path.join(workdir, rundir.METRICS)
    if os.path.isfile(metrics_path):
        names = rundir.read_json(metrics_path).get("class_names")
        if names:
            return tuple(names)
    return data_lib.load_splits(config.data, config.train.seed).class_names


# ---------------------------------------------------------------- versions


def versions(export_dir: str) -> list[int]:
    """Integer version directories of an export base directory, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(n) for n in os.listdir(export_dir)
                  if re.fullmatch(r"\d+", n) and os.path.isdir(os.path.join(export_dir, n)))


def resolve_version_dir(path: str, flag: str = "--model") -> str:
    """A SavedModel dir as given, or the newest version of an export base directory."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if found:
        return os.path.join(path, str(found[-1]))
    raise UserError(f"{flag}: expected a SavedModel directory (EXPORT_DIR/<version>) or an "
                    f"export directory holding versions; {path!r} is neither.")


def _publish(tmp: str, export_dir: str) -> str:
    """Renames a finished temp dir to the next free version; never replaces an existing one."""
    version = (versions(export_dir) or [0])[-1] + 1
    while True:
        target = os.path.join(export_dir, str(version))
        if not os.path.lexists(target):
            try:
                os.rename(tmp, target)
            except OSError:
                if not os.path.lexists(target):
                    raise
            else:
                _fsync_dir(export_dir)
                return target
        version += 1


def _write(path: str, text: str) -> None:
    """Plain write: the whole version directory is published atomically, not each file."""
    with open(path, "w") as f:
        f.write(text)


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_stale_temp_dirs(export_dir: str) -> None:
    """Deletes temp dirs left by killed exports of this host (their process is gone)."""
    host = socket.gethostname()
    pattern = re.compile(re.escape(_TMP_PREFIX + host) + r"-(\d+)-[0-9a-f]+")
    for name in os.listdir(export_dir):
        match = pattern.fullmatch(name)
        if match and not _process_alive(int(match.group(1))):
            _remove_tree(os.path.join(export_dir, name))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: str) -> None:
    """Flushes every file and directory so a crash after the rename cannot lose contents."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- command line


def main() -> None:
    from absl import flags

    flag_values = flags.FLAGS
    version_dir = export_run(flag_values.workdir, flag_values.export_dir or None,
                             flag_values.top_k)
    print(version_dir)


def define_flags() -> None:
    """``--workdir``, ``--export_dir``, ``--top_k`` (shared by ``tfft.train``'s export step)."""
    from absl import flags

    if "workdir" not in flags.FLAGS:
        flags.DEFINE_string("workdir", "runs/default", "Run directory (config, metrics, model).")
    flags.DEFINE_string("export_dir", "", "Export base directory; versions are written to "
                        "EXPORT_DIR/<n> (default: WORKDIR/export).")
    flags.DEFINE_integer("top_k", 5, "How many best classes the serving signatures return.",
                         lower_bound=1)

if __name__ == "__main__":
    from tfft import cli

    define_flags()
    cli.run(main)
