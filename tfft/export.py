"""Export for serving: a TF Serving SavedModel, a LiteRT ``.tflite`` and an ONNX file.

``python -m tfft.export --workdir=RUN [--format=saved_model|litert|onnx ...] [--quantize=MODE]
[--litert_preprocess] [--export_dir=DIR] [--top_k=5]`` writes ``DIR/<version>/`` (version = 1 +
the highest existing integer version, default ``DIR = RUN/export``), the layout TF Serving polls.
``--format`` repeats or takes a comma list (default ``saved_model``); every format asked for lands
in the same version: the SavedModel's files, ``model.tflite`` (``tfft.litert_export``) and
``model.onnx`` (``tfft.onnx_export``), with ``labels.txt`` and ``config.json`` beside the model
files. A version appears by one ``rename`` of a finished temporary directory beside it, so a
reader never sees a half-written version or file and an existing version is never replaced
(``tfft.publishing``). Each weight is stored once. An export that would not fit
(``estimated_bytes``) is refused before any work, and a disk that fills up while writing ends in
one line (exit 2) with no version and no temporary directory left behind.

SavedModel signatures (``tfft.serving``: all preprocessing is inside the graph and reuses
``tfft.preprocess`` and the backbone's own normalisation, so serving cannot disagree with
training):

- ``serving_default``: ``images`` tf.string [batch] of encoded JPEG/PNG/BMP/GIF bytes, any size,
  gray or colour (what TF Serving's REST API delivers for ``{"b64": ...}``);
- ``serve_pixels``: ``pixels`` tf.uint8 [batch, height, width, channels], 1 or 3 channels.

Both return ``probabilities`` [batch, classes], ``class_ids`` [batch], ``class_names`` [batch],
``top_k_class_names`` and ``top_k_probabilities`` [batch, k]. ``assets/labels.txt`` (one class
name per line) and ``assets/config.json`` (the run's config) travel with every version.
The LiteRT and ONNX files take uint8 pixels and return float32 probabilities (``tfft.portable``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from tfft import data as data_lib
from tfft import diskspace, export_formats, fs, publishing, rundir
from tfft.config import Config
from tfft.export_formats import (
    CONFIG_FILE,
    LABELS_FILE,
    LITERT,
    MODEL_FILES,
    ONNX,
    SAVED_MODEL,
    ExportOptions,
)
from tfft.publishing import resolve_version_dir, versions
from tfft.serving import ServingFunctions, check_class_names
from tfft.tf_logs import quiet_tensorflow_logger

__all__ = ["CONFIG_FILE", "IMAGES_SIGNATURE", "LABELS_FILE", "PIXELS_SIGNATURE", "ExportOptions",
           "ServingFunctions", "check_class_names", "define_flags", "estimated_bytes",
           "export_model", "export_run",
           "main", "resolve_version_dir", "run_class_names", "versions"]

IMAGES_SIGNATURE = "serving_default"
PIXELS_SIGNATURE = "serve_pixels"
WHAT = "an export version"
# saved_model.pb grows with the layers (both signatures trace the model): measured 0.29 MB for
# VGG16's 30 weight tensors, 1.0 MB for MobileNet's 139 and 2.0 MB for MobileNetV2's 264.
GRAPH_BYTES_PER_TENSOR = 16 << 10
GRAPH_BASE_BYTES = 1 << 20
# Bytes per float32 weight byte in a .tflite file, by --quantize (measured: 1.00, 0.33, 0.54,
# 0.36 for the quickstart MobileNet; int8 and dynamic keep biases and scales in 32 bits).
LITERT_WEIGHT_SHARE = {"none": 1.0, "dynamic": 0.4, "float16": 0.55, "int8": 0.4}


def export_model(model: keras.Model, class_names: Sequence[str], config: Config,
                 export_dir: str, top_k: int = 5, options: ExportOptions | None = None) -> str:
    """Writes the next version of ``model`` in ``options.formats`` under ``export_dir``;
    returns the version dir.

    An export that would not fit is refused before any work; a disk that fills up while writing
    ends as one line and leaves neither a version nor a temporary directory behind.
    """
    options = export_formats.check_options(options or ExportOptions())
    serving = ServingFunctions(model, class_names, config, top_k, options.tta)
    diskspace.check_free(export_dir, estimated_bytes(model, options.formats, options.quantize),
                         WHAT)
    archive = _archive(model, serving) if SAVED_MODEL in options.formats else None
    with diskspace.reporting_full_disk(export_dir, WHAT, "no version was written"):
        tmp = publishing.staging_dir(export_dir)
        try:
            if archive is not None:
                _write_version(archive, tmp, serving.class_names, config)
            _write_model_files(model, tmp, serving.class_names, config, options)
            return publishing.publish(tmp, export_dir)
        finally:
            publishing.discard(tmp)


def estimated_bytes(model: keras.Model, formats: Sequence[str] = (SAVED_MODEL,),
                    quantize: str = "none") -> int:
    """About what one version takes on disk: each weight once per format (plus the serving
    graph), and the SavedModel the LiteRT converter reads while it runs (each weight twice)."""
    weights = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    graph = GRAPH_BASE_BYTES + GRAPH_BYTES_PER_TENSOR * len(model.weights)
    total = weights + graph if SAVED_MODEL in formats else 0
    if LITERT in formats:
        total += int(weights * (2 + LITERT_WEIGHT_SHARE[quantize])) + graph
    if ONNX in formats:
        total += weights + graph
    return total


def _archive(model: keras.Model, serving: ServingFunctions) -> keras.export.ExportArchive:
    """Both signatures over the model, saving each weight once.

    ``ExportArchive.track(model)`` lists the model's Keras variables, while the signatures
    capture the ``tf.Variable`` each of them wraps: two checkpoint objects per weight, so every
    version held (and TF Serving loaded) all weights twice. The collections name the captured
    ``tf.Variable``s themselves, so a reloaded version still offers ``variables``,
    ``trainable_variables`` and ``non_trainable_variables`` (what ``hub.load`` users read) at
    no extra bytes.
    """
    archive = keras.export.ExportArchive()
    archive.add_endpoint(IMAGES_SIGNATURE, serving.images)
    archive.add_endpoint(PIXELS_SIGNATURE, serving.pixels)
    captured = _captured_variables([serving.images, serving.pixels])
    trainable = _as_captured(model.trainable_weights, captured)
    frozen = _as_captured(model.non_trainable_weights, captured)
    archive.add_variable_collection("variables", trainable + frozen)
    archive.add_variable_collection("trainable_variables", trainable)
    archive.add_variable_collection("non_trainable_variables", frozen)
    return archive


def _captured_variables(functions: Sequence[tf.types.experimental.GenericFunction],
                        ) -> dict[int, tf.Variable]:
    """The variables the serving graphs read, by id: the ones the SavedModel saves anyway."""
    return {id(v): v for fn in functions for v in fn.get_concrete_function().variables}


def _as_captured(weights: Sequence[keras.Variable], captured: dict[int, tf.Variable],
                 ) -> list[tf.Variable]:
    """Each weight as the ``tf.Variable`` the graphs captured; a weight they never read is left out.

    A model built under a distribution strategy holds distributed variables; a graph traced
    outside its scope captures one replica of each, and a collection naming the distributed
    variable would save that weight a second time.
    """
    found = []
    for weight in weights:
        value = weight.value
        replicas = (value.distribute_strategy.experimental_local_results(value)
                    if isinstance(value, tf.distribute.DistributedValues) else ())
        found.extend(v for v in (value, *replicas) if id(v) in captured)
    return found


def _write_version(archive: keras.export.ExportArchive, tmp: str, class_names: Sequence[str],
                   config: Config) -> None:
    """The SavedModel and its assets, into the temporary directory that ``publish`` renames."""
    with quiet_tensorflow_logger():
        archive.write_out(tmp, verbose=False)
    assets = os.path.join(tmp, "assets")
    os.makedirs(assets, exist_ok=True)
    _write(os.path.join(assets, LABELS_FILE), "\n".join(class_names) + "\n")
    _write(os.path.join(assets, CONFIG_FILE), config.to_json() + "\n")


def _write(path: str, text: str) -> None:
    """Plain write: the whole version directory is published atomically, not each file."""
    with open(path, "w") as f:
        f.write(text)


def _write_model_files(model: keras.Model, tmp: str, class_names: Sequence[str],
                       config: Config, options: ExportOptions) -> None:
    """``model.tflite`` / ``model.onnx`` with ``labels.txt`` and ``config.json`` beside them.

    Plain writes into the temporary version directory: ``publish`` renames the whole directory,
    so no reader ever opens a half-written file under a version number.
    """
    portable = [name for name in options.formats if name in MODEL_FILES]
    if not portable:
        return
    os.makedirs(tmp, exist_ok=True)
    for name in portable:
        with open(os.path.join(tmp, MODEL_FILES[name]), "wb") as f:
            f.write(_model_bytes(name, model, tmp, tuple(class_names), config, options))
    _write(os.path.join(tmp, LABELS_FILE), "\n".join(class_names) + "\n")
    _write(os.path.join(tmp, CONFIG_FILE), config.to_json() + "\n")


def _model_bytes(name: str, model: keras.Model, tmp: str, class_names: tuple[str, ...],
                 config: Config, options: ExportOptions) -> bytes:
    """One portable file's contents, from its converter (imported only when asked for)."""
    if name == LITERT:
        from tfft import litert_export

        return litert_export.tflite_bytes(model, config, options.quantize,
                                          options.litert_preprocess, tmp)
    from tfft import onnx_export

    return onnx_export.onnx_bytes(model, config, class_names)


def export_run(workdir: str, export_dir: str | None = None, top_k: int = 5,
               options: ExportOptions | None = None) -> str:
    """Exports a run directory's ``model.keras``; returns the new version directory."""
    options = export_formats.check_options(options or ExportOptions())  # before loading
    config, model = rundir.load_run(workdir)
    names = run_class_names(workdir, config)
    return export_model(model, names, config, export_dir or os.path.join(workdir, rundir.EXPORT),
                        top_k, options)


def run_class_names(workdir: str, config: Config) -> tuple[str, ...]:
    """Class names of a run: ``metrics.json`` if it records them, else the data source's."""
    metrics_path = os.path.join(workdir, rundir.METRICS)
    if fs.isfile(metrics_path):
        names = rundir.read_json(metrics_path).get("class_names")
        if names:
            return tuple(names)
    return data_lib.load_splits(config.data, config.train.seed).class_names


# ---------------------------------------------------------------- command line


def main() -> None:
    from absl import flags

    values = flags.FLAGS
    options = ExportOptions(export_formats.parse_formats(values.format), values.quantize,
                            values.litert_preprocess, values.export_tta)
    print(export_run(values.workdir, values.export_dir or None, values.top_k, options))


def define_flags() -> None:
    """``--workdir``, ``--format``, ``--quantize``, ``--litert_preprocess``, ``--export_dir``,
    ``--top_k``."""
    from absl import flags

    export_formats.define_format_flag(
        "format", [SAVED_MODEL], f"What to export: {', '.join(export_formats.FORMATS)} (repeat "
        "the flag or give a comma list); all go into the same version directory.")
    export_formats.define_litert_flags()
    export_formats.define_tta_flag()
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
