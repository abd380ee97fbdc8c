"""What ``--model=PATH`` names: a SavedModel version, an export directory, or a model file.

``tfft.predict`` and ``tfft.evaluate`` take the same paths: ``EXPORT_DIR/<version>`` (a
SavedModel), ``EXPORT_DIR`` (its newest version), or ``.../model.tflite`` / ``.../model.onnx``
(the runtime is chosen by the suffix). The class names and the run's config are read from beside
the model: a SavedModel's ``assets/``, a model file's own directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tfft import fs
from tfft.config import Config
from tfft.errors import UserError
from tfft.export_formats import CONFIG_FILE, LABELS_FILE, MODEL_FILES, SAVED_MODEL, SUFFIX_FORMATS
from tfft.publishing import versions


@dataclass(frozen=True)
class ModelPath:
    """A resolved ``--model``: its format and the path its runtime loads."""

    format: str  # saved_model, litert or onnx
    path: str  # the version directory of a SavedModel, else the file

    def beside(self, name: str) -> str:
        """Where a file that travels with the model (labels, config) is."""
        if self.format == SAVED_MODEL:
            return os.path.join(self.path, "assets", name)
        return os.path.join(os.path.dirname(self.path), name)


def resolve_model(path: str, flag: str = "--model") -> ModelPath:
    """The model ``path`` names; one line naming what to pass instead when it names none."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SUFFIX_FORMATS:
        if not fs.isfile(path):
            raise UserError(f"{flag}: expected an existing {suffix} file; {path!r} does not exist.")
        return ModelPath(SUFFIX_FORMATS[suffix], path)
    if fs.isfile(os.path.join(path, "saved_model.pb")):
        return ModelPath(SAVED_MODEL, path)
    files = [os.path.join(path, f) for f in MODEL_FILES.values()
             if fs.isfile(os.path.join(path, f))]
    if files:
        raise UserError(f"{flag}: {path!r} holds no SavedModel, only "
                        f"{', '.join(os.path.basename(f) for f in files)}; pass the file, "
                        f"e.g. {flag}={files[0]}.")
    found = versions(path)
    if found:
        return resolve_model(os.path.join(path, str(found[-1])), flag)
    raise UserError(f"{flag}: expected a SavedModel directory (EXPORT_DIR/<version>), an export "
                    f"directory holding versions, or a .tflite/.onnx file; {path!r} is none of "
                    "them.")


def read_labels(model: ModelPath) -> tuple[str, ...]:
    """The class names exported with ``model`` (``labels.txt``, one per line)."""
    path = model.beside(LABELS_FILE)
    if not fs.isfile(path):
        raise UserError(f"--model: expected class names in {path!r}; the file does not exist.")
    return tuple(line for line in fs.read_text(path).split("\n") if line.strip())


def read_config(model: ModelPath, workdir: str = "") -> Config:
    """The config of the run ``model`` was exported from (or of ``workdir``, when given)."""
    path = os.path.join(workdir, CONFIG_FILE) if workdir else model.beside(CONFIG_FILE)
    if not fs.isfile(path):
        raise UserError(f"--model: expected the run's config at {path!r} "
                        "(pass --workdir=RUN of the exported run).")
    return Config.from_json(fs.read_text(path))
