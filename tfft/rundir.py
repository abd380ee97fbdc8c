"""The run directory: every file name in it, its readers, and atomic writes.

One home for the layout, so checkpoints, export, the report, TensorBoard and ``tfft.evaluate``
agree on where things are. Every write goes to a temporary file beside the target and is renamed
into place, so a reader sees either the old file or the whole new one (on any filesystem:
``tfft.fs``).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from tfft import diskspace, fs
from tfft.config import Config
from tfft.errors import UserError

if TYPE_CHECKING:
    import keras

CONFIG = "config.json"
METRICS = "metrics.json"
MODEL = "model.keras"
PROGRESS = "progress.json"  # where an interrupted run stopped (tfft.checkpoints)
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
EXPORT = "export"  # default base directory of the versioned SavedModels
LR_FIND = "lr_find.json"  # rates --*_learning_rate=auto found, by phase (tfft.lr_find)
METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
SAMPLES_PNG = "sample_predictions.png"
CALIBRATION_PNG = "calibration.png"  # reliability diagram of the test predictions
REPORT_MD = "report.md"
EVALUATION = "evaluation.json"  # tfft.evaluate's results
EVALUATION_CONFUSION_PNG = "evaluation_confusion_matrix.png"  # the report keeps its own


def lr_find_png(phase: str) -> str:
    """The plot of the LR range test ``--<phase>_learning_rate=auto`` ran."""
    return f"lr_find_{phase}.png"


def check_writable(path: str, flag: str) -> None:
    """Refuses, before any work starts, a directory that cannot be created or written.

    A path on another filesystem (``gs://...``) is not checked here, before TensorFlow starts:
    its first write reports what is wrong.
    """
    if not fs.is_local(path):
        return
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise UserError(f"--{flag}: expected a writable directory; {path!r} is not writable "
                        f"({existing!r} is not a writable directory).")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` so a reader sees either the old file or the whole new one
    (``fs.write_atomic``: on the local disk, with the mode ``open(path, "w")`` would give, so a
    serving or monitoring process of another user can read the run's files)."""
    with diskspace.reporting_full_disk(path, "a record"):
        fs.write_atomic(path, text)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    return json.loads(fs.read_text(path))


def read_config(workdir: str) -> Config:
    """The config a run directory was trained with (``config.json``; older layouts load too)."""
    return Config.from_json(fs.read_text(os.path.join(workdir, CONFIG)))


def save_model(model: Any, path: str) -> None:
    """Saves a Keras model atomically (Keras insists on the ``.keras`` suffix; it writes a path
    on another filesystem through gfile itself)."""
    directory = os.path.dirname(fs.abspath(path))
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    try:
        with diskspace.reporting_full_disk(path, "the model"):
            model.save(tmp)
            fs.rename(tmp, path, overwrite=True)
    except BaseException:
        if fs.exists(tmp):
            fs.remove(tmp)
        raise


def load_run(workdir: str) -> tuple[Config, keras.Model]:
    """The config and trained Keras model of a run directory (``safe_mode=True``)."""
    import keras

    config_path = os.path.join(workdir, CONFIG)
    model_path = os.path.join(workdir, MODEL)
    for path in (config_path, model_path):
        if not fs.isfile(path):
            raise UserError(f"--workdir: expected a finished run directory holding "
                            f"{CONFIG} and {MODEL}; {path!r} does not exist.")
    config = read_config(workdir)
    try:
        model = keras.saving.load_model(model_path, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - zip, h5 and deserialisation errors
        raise UserError(f"--workdir: could not load {model_path!r} "
                        f"({str(err).strip().splitlines()[0][:200]}).") from None
    return config, model
