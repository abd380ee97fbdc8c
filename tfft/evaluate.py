"""``python -m tfft.evaluate --workdir=RUN`` (or ``--model=EXPORT_DIR[/<version>]``, or
``--model=.../model.tflite`` / ``.../model.onnx``).

Evaluates a trained classifier on a test split and reports accuracy, per-class precision /
recall / F1 and the confusion matrix; writes ``evaluation.json`` and
``evaluation_confusion_matrix.png`` (not the run report's ``confusion_matrix.png``).

Both kinds of model are evaluated through the same serving computation (``serve_pixels``) on
raw uint8 images: a run's ``model.keras`` through ``tfft.export.ServingFunctions`` in memory, an
exported SavedModel through its own signature, a LiteRT or ONNX file in its runtime
(``tfft.runtimes``, resizing as an app does). So the numbers describe what serving answers, and
the accuracy a quantised file keeps is one command.
The test split is the run's (from ``config.json``, or the config in the export's assets), or
the whole of ``--test_dataset``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from tfft import calibration, export, metrics, model_files, plots, rundir
from tfft import data as data_lib
from tfft.config import Config
from tfft.errors import UserError
from tfft.export_formats import SAVED_MODEL

EVALUATION_FILE = rundir.EVALUATION
CONFUSION_FILE = rundir.EVALUATION_CONFUSION_PNG  # the run report keeps its own


@dataclass(frozen=True)
class LoadedModel:
    """A classifier to evaluate: its serve_pixels computation, config and class names."""

    pixels: metrics.PixelsFn
    config: Config
    class_names: tuple[str, ...]
    source: str


def load_for_evaluation(workdir: str = "", model: str = "", tta: str = "none") -> LoadedModel:
    """A run's ``model.keras`` (``workdir``), averaged over ``tta``'s test-time views, or an
    exported model (``model``: its views, if any, are baked in at export, ``--export_tta``)."""
    if model:
        if tta != "none":
            raise UserError(f"--tta: applies to a run's model.keras (--workdir); an export "
                            f"serves the views it was exported with (--export_tta); received "
                            f"--tta={tta} with --model={model}.")
        return _load_export(model_files.resolve_model(model), workdir)
    if not workdir:
        raise UserError("--workdir/--model: expected a run directory or an exported model; "
                        "received neither.")
    config, keras_model = rundir.load_run(workdir)
    names = export.run_class_names(workdir, config)
    serving = export.ServingFunctions(keras_model, names, config, tta_mode=tta)
    return LoadedModel(serving.pixels, config, names,
                       os.path.join(workdir, rundir.MODEL))


def _load_export(model: model_files.ModelPath, workdir: str) -> LoadedModel:
    """An exported SavedModel through its ``serve_pixels``, or a model file in its runtime."""
    config = model_files.read_config(model, workdir)
    names = model_files.read_labels(model)
    if model.format != SAVED_MODEL:
        from tfft.runtimes import PortableModel

        return LoadedModel(PortableModel(model).pixels, config, names, model.path)
    loaded = tf.saved_model.load(model.path)
    signature = loaded.signatures.get(export.PIXELS_SIGNATURE)
    if signature is None:
        raise UserError(f"--model: {model.path!r} has no {export.PIXELS_SIGNATURE!r} "
                        "signature (not a tfft export).")
    return LoadedModel(lambda x: signature(pixels=x), config, names, model.path)


def load_test_split(config: Config, test_dataset: str = "") -> tf.data.Dataset:
    """The run's raw test split, or all of ``test_dataset`` (capped like the run's)."""
    if test_dataset:
        config = config.replace(test_dataset=test_dataset)
    return data_lib.load_images(data_lib.load_splits(config.data, config.train.seed).test)


def evaluate(workdir: str = "", model: str = "", test_dataset: str = "",
             output_dir: str = "", tta: str = "none") -> dict[str, Any]:
    """Evaluates; writes ``evaluation.json`` and its confusion-matrix image to ``output_dir``.

    ``output_dir`` defaults to ``workdir``, or the current directory for ``model`` alone.
    """
    loaded = load_for_evaluation(workdir, model, tta)
    ds = load_test_split(loaded.config, test_dataset)
    predictions = metrics.predict_split(loaded.pixels, ds, loaded.config.data.batch_size)
    labels = predictions.labels
    if labels.max(initial=0) >= len(loaded.class_names):
        raise UserError(f"--test_dataset: labels go up to {int(labels.max())}, but the model "
                        f"knows {len(loaded.class_names)} classes.")
    result = metrics.classification_metrics(labels, predictions.predicted, loaded.class_names)
    result["model"] = loaded.source
    result["tta"] = tta
    result["ece"] = calibration.expected_calibration_error(predictions.probabilities, labels)
    result["test_dataset"] = test_dataset or loaded.config.data.test_dataset or (
        loaded.config.data.dataset + " (test split)")
    out = output_dir or workdir or "."
    result["confusion_matrix_png"] = plots.plot_confusion_matrix(
        result["confusion_matrix"], loaded.class_names, os.path.join(out, CONFUSION_FILE))
    rundir.write_json(os.path.join(out, EVALUATION_FILE), result)
    return result


def format_report(result: dict[str, Any]) -> str:
    """The human-readable summary the command prints."""
    names = result["class_names"]
    width = max(12, *(len(n) for n in names))
    lines = [f"Model {result['model']} on {result['test_dataset']}",
             f"Test accuracy: {result['accuracy']:.4f} ({result['examples']} examples), "
             f"macro F1 {result['macro_f1']:.4f}, calibration error (ECE) {result['ece']:.4f}"
             + ("" if result.get("tta", "none") == "none" else f", TTA {result['tta']}"), "",
             f"{'class':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name in names:
        row = result["per_class"][name]
        lines.append(f"{name:<{width}} {row['precision']:>9.4f} {row['recall']:>9.4f} "
                     f"{row['f1']:>9.4f} {row['support']:>8d}")
    lines.append(f"\nWrote {result['confusion_matrix_png']}")
    return "\n".join(lines)


def main() -> None:
    """Evaluates the flags' model and prints the report."""
    from absl import flags

    values = flags.FLAGS
    result = evaluate(values.workdir, values.model, values.test_dataset, values.output_dir,
                      values.tta)
    print(format_report(result))


def define_flags() -> None:
    """The command's flags, defined only when it runs (importing tfft.evaluate defines none)."""
    from absl import flags

    flags.DEFINE_string("workdir", "", "Run directory (config.json, model.keras) to evaluate.")
    flags.DEFINE_string("model", "", "Exported model to evaluate instead of the run's "
                        "model.keras: a SavedModel (EXPORT_DIR/<version>, or EXPORT_DIR for its "
                        "newest version), or a .tflite or .onnx file.")
    flags.DEFINE_string("test_dataset", "", "Evaluate on all of this source (tfds:, folder:, "
                        "npz:, sample:) instead of the run's test split.")
    flags.DEFINE_string("output_dir", "", "Where evaluation.json and "
                        "evaluation_confusion_matrix.png go (default: --workdir, or the current "
                        "directory).")
    flags.DEFINE_enum("tta", "none", ["none", "flip", "flip_crops"],
                      "Test-time augmentation of a run's model.keras: the mean probabilities "
                      "over the image and its mirror (flip), or also four corner crops.")


if __name__ == "__main__":
    from tfft import cli

    define_flags()
    cli.run(main)
