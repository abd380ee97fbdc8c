"""SavedModel export for TF Serving: raw images in, class names and probabilities out.

``python -m tfft.export --workdir=RUN [--export_dir=DIR] [--top_k=5]`` writes ``DIR/<version>/``
(version = 1 + the highest existing integer version, default ``DIR = RUN/export``), the layout
TF Serving polls. A version appears by one ``rename`` of a finished temporary directory beside
it, so a reader never sees a half-written version and an existing version is never replaced
(``tfft.publishing``).

Signatures (``tfft.serving``: all preprocessing is inside the graph and reuses ``tfft.preprocess``
and the backbone's own normalisation, so serving cannot disagree with training):

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
from collections.abc import Iterator, Sequence

import keras

from tfft import data as data_lib
from tfft import publishing, rundir
from tfft.config import Config
from tfft.publishing import resolve_version_dir, versions
from tfft.serving import ServingFunctions, check_class_names

__all__ = ["CONFIG_FILE", "IMAGES_SIGNATURE", "LABELS_FILE", "PIXELS_SIGNATURE",
           "ServingFunctions", "check_class_names", "define_flags", "export_model", "export_run",
           "main", "resolve_version_dir", "run_class_names", "versions"]

LABELS_FILE = "labels.txt"
CONFIG_FILE = "config.json"
IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serve_pixels"


def export_model(model: keras.Model, class_names: Sequence[str], config: Config,
                 export_dir: str, top_k: int = 5) -> str:
    """Writes the next version of ``model`` under ``export_dir``; returns the version dir."""
    serving = ServingFunctions(model, class_names, config, top_k)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(IMAGES_SIGNATURE, serving.images)
    archive.add_endpoint(PIXELS_SIGNATURE, serving.pixels)
    tmp = publishing.staging_dir(export_dir)
    try:
        with _quiet_tensorflow_logger():
            archive.write_out(tmp, verbose=False)
        assets = os.path.join(tmp, "assets")
        os.makedirs(assets, exist_ok=True)
        _write(os.path.join(assets, LABELS_FILE), "\n".join(serving.class_names) + "\n")
        _write(os.path.join(assets, CONFIG_FILE), config.to_json() + "\n")
        return publishing.publish(tmp, export_dir)
    finally:
        publishing.discard(tmp)


def _write(path: str, text: str) -> None:
    """Plain write: the whole version directory is published atomically, not each file."""
    with open(path, "w") as f:
        f.write(text)


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
