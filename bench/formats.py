"""``python -m bench.formats --workdir=RUN``: every export format of one run, side by side.

Exports the run's ``model.keras`` once per format into a temporary directory (the SavedModel,
LiteRT float32 / dynamic / float16 / int8, ONNX), then measures in one process, interleaved so
a busy machine slows every row alike:

- file size (the SavedModel: ``saved_model.pb`` plus ``variables/``);
- CPU latency of one image and of a batch of 32, uint8 pixels already at the model's size
  (median of ``--repeats`` calls after warm-up): the SavedModel through its ``serve_pixels``
  signature, the files in their runtimes (LiteRT interpreter, ONNX Runtime) with as many threads
  as the machine has cores, as TensorFlow uses;
- top-1 accuracy on the run's test split, through ``tfft.evaluate``'s code (each format's own
  resize: the SavedModel's inside, the app-side one for the files).

Prints one row per format with ratios to the SavedModel; ``--markdown`` prints the README table.
Not part of the test suite (about 2 minutes for the quickstart on 2 cores).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from absl import flags

from tfft import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "A finished run directory (model.keras).")
flags.DEFINE_integer("repeats", 30, "Timed calls per format and batch size (median reported).",
                     lower_bound=3)
flags.DEFINE_boolean("markdown", False, "Also print the table as Markdown (for the README).")

# name -> (ExportOptions formats, --quantize); the SavedModel's version also holds float32 files
FORMATS = {"SavedModel": ("saved_model", "none"), "LiteRT float32": ("litert", "none"),
           "LiteRT dynamic": ("litert", "dynamic"), "LiteRT float16": ("litert", "float16"),
           "LiteRT int8": ("litert", "int8"), "ONNX (onnxruntime)": ("onnx", "none")}
BATCHES = (1, 32)


@dataclass
class Row:
    """One format: where it is, how to call it, and what was measured."""

    name: str
    path: str
    size: int
    call: Callable[[np.ndarray], object]  # uint8 [batch, S, S, 3] at the model's size
    pixels: Callable  # tfft.metrics.PixelsFn, for the accuracy
    latency: dict[int, list[float]]
    accuracy: float = 0.0


def export_all(workdir: str, export_dir: str) -> dict[str, str]:
    """Format name -> the path its runtime loads, every format exported from ``workdir``."""
    from tfft import export
    from tfft.export_formats import MODEL_FILES, ExportOptions

    paths = {}
    first = export.export_run(workdir, export_dir, options=ExportOptions(
        ("saved_model", "litert", "onnx")))
    for name, (fmt, quantize) in FORMATS.items():
        if fmt == "saved_model":
            paths[name] = first
        elif quantize == "none":
            paths[name] = os.path.join(first, MODEL_FILES[fmt])
        else:
            version = export.export_run(workdir, export_dir,
                                        options=ExportOptions((fmt,), quantize))
            paths[name] = os.path.join(version, MODEL_FILES[fmt])
    return paths


def load_row(name: str, path: str) -> Row:
    """A format's callables: the raw runtime call (timed) and serve_pixels (accuracy)."""
    import tensorflow as tf

    from tfft import export, model_files
    from tfft.runtimes import PortableModel

    if FORMATS[name][0] == "saved_model":
        signature = tf.saved_model.load(path).signatures[export.PIXELS_SIGNATURE]
        variables = os.path.join(path, "variables")
        size = os.path.getsize(os.path.join(path, "saved_model.pb")) + sum(
            os.path.getsize(os.path.join(variables, f)) for f in os.listdir(variables))

        def pixels(x):
            return signature(pixels=tf.constant(x))

        return Row(name, path, size, pixels, pixels, {b: [] for b in BATCHES})
    runtime = PortableModel(model_files.resolve_model(path))
    return Row(name, path, os.path.getsize(path), runtime.runner, runtime.pixels,
               {b: [] for b in BATCHES})


def time_rows(rows: list[Row], size: int, repeats: int) -> None:
    """Median-ready latencies, the formats interleaved call by call after one warm-up each."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for b in BATCHES}
    for batch, x in inputs.items():
        for row in rows:
            row.call(x)  # warm-up: allocation, graph tracing
        for _ in range(repeats):
            for row in rows:
                start = time.perf_counter()
                row.call(x)
                row.latency[batch].append(time.perf_counter() - start)


def measure_accuracy(rows: list[Row], workdir: str) -> None:
    """Top-1 accuracy of every format on the run's test split (tfft.evaluate's pipeline)."""
    from tfft import evaluate, metrics, rundir

    config = rundir.read_config(workdir)
    test = evaluate.load_test_split(config)
    for row in rows:
        predictions = metrics.predict_split(row.pixels, test, config.data.batch_size)
        row.accuracy = float(np.mean(predictions.predicted == predictions.labels))


def table(rows: list[Row]) -> list[tuple[str, ...]]:
    """Formatted cells: size, latencies and their ratios to the SavedModel, accuracy."""
    base = rows[0]
    ms = {r.name: {b: 1000 * statistics.median(r.latency[b]) for b in BATCHES} for r in rows}
    cells = []
    for r in rows:
        latencies = [f"{ms[r.name][b]:.2f} ms (x{ms[r.name][b] / ms[base.name][b]:.2f})"
                     for b in BATCHES]
        cells.append((r.name, f"{r.size / 1e6:.2f} MB (x{r.size / base.size:.2f})",
                      *latencies, f"{r.accuracy:.4f}"))
    return cells


def main() -> None:
    from tfft import rundir

    config = rundir.read_config(FLAGS.workdir)
    with tempfile.TemporaryDirectory() as export_dir:
        paths = export_all(FLAGS.workdir, export_dir)
        rows = [load_row(name, path) for name, path in paths.items()]
        time_rows(rows, config.data.image_size, FLAGS.repeats)
        measure_accuracy(rows, FLAGS.workdir)
    header = ("format", "size", "1 image", "batch of 32", "test accuracy")
    for cells in [header, *table(rows)]:
        print(f"{cells[0]:20s} {cells[1]:18s} {cells[2]:20s} {cells[3]:20s} {cells[4]}")
    if FLAGS.markdown:
        print(f"\nMeasured {datetime.date.today()} on {platform.machine()} "
              f"({os.cpu_count()} CPU cores), {config.data.image_size} px, "
              f"median of {FLAGS.repeats} calls\n")
        print("| " + " | ".join(header) + " |")
        print("|---" * len(header) + "|")
        for cells in table(rows):
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    cli.run(main)
