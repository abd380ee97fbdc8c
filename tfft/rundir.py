"""The run directory: what a run writes, always atomically (write to a temp file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

CONFIG = "config.json"
METRICS = "metrics.json"
MODEL = "model.keras"
LR_FIND = "lr_find.json"  # rates --*_learning_rate=auto found, by phase (tfft.lr_find)


def check_writable(path: str, flag: str) -> None:
    """Refuses, before any work starts, a directory that cannot be created or written."""
    from tfft.errors import UserError

    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK):
        raise UserError(f"--{flag}: expected a writable directory; {path!r} is not writable "
                        f"({existing!r} is not a writable directory).")


def write_text(path: str, text: str) -> None:
    """Writes ``text`` so a reader sees either the old file or the whole new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def save_model(model: Any, path: str) -> None:
    """Saves a Keras model atomically (Keras insists on the ``.keras`` suffix)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    model.save(tmp)
    os.replace(tmp, path)
