"""``--dataset=csv:FILE``: image files and their labels listed in a CSV file.

The file is UTF-8 (a spreadsheet's byte-order mark is fine), comma-separated, with a header row
naming the columns ``path`` and ``label`` and optionally ``split`` (any order, any letter case;
other columns are ignored). Paths are relative to the CSV file's folder (absolute ones are kept);
labels are class names, sorted for the class ids. ``split`` is ``train``, ``validation`` (or
``val``) or ``test``; a row without one is a training row, and a split no row names is carved
from the training rows with the fractions, so a CSV without the column is split like a plain
folder. The classes are the training rows' labels: a validation or test row with another label
is refused, and a training class absent from a given split is a warning line.

Each refusal is one line naming the CSV file and the line in it.
"""

from __future__ import annotations

import csv
import os
from typing import NamedTuple

import numpy as np

from tfft.errors import UserError
from tfft.image_checks import image_problem
from tfft.raw_splits import LabelledFiles, RawSplits, file_splits, warn_missing_classes

REQUIRED = ("path", "label")
SPLIT_VALUES = {"": "train", "train": "train", "val": "validation", "validation": "validation",
                "test": "test"}


class Row(NamedTuple):
    """One image of the CSV file: its line number, full path, label and split."""

    line: int
    path: str
    label: str
    split: str


def from_csv(csv_path: str, fractions: tuple[float, float], seed: int) -> RawSplits:
    """The raw splits of the images a CSV file lists."""
    rows = read_rows(csv_path)
    classes = tuple(sorted({row.label for row in rows if row.split == "train"}))
    if len(classes) < 2:
        raise UserError(f"--dataset: expected at least 2 labels among the training rows of "
                        f"{csv_path!r}; received {len(classes)}.")
    ids = {name: i for i, name in enumerate(classes)}
    for row in rows:
        check_row(csv_path, row, ids)
    given = {}
    for split in dict.fromkeys(row.split for row in rows):
        chosen = [row for row in rows if row.split == split]
        labels = np.asarray([ids[row.label] for row in chosen], np.int32)
        given[split] = LabelledFiles([row.path for row in chosen], labels)
    warn_missing_classes(given, classes, {split: f"{csv_path} ({split} rows)" for split in given})
    return file_splits(given, classes, fractions, seed)


def read_rows(csv_path: str) -> list[Row]:
    """Every non-empty row after the header, checked for its columns and split value."""
    if not os.path.isfile(csv_path):
        raise UserError(f"--dataset: CSV file {csv_path!r} does not exist.")
    folder = os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            columns = header_columns(csv_path, next(reader, []))
            rows = [parse_row(csv_path, reader.line_num, values, columns, folder)
                    for values in reader if any(v.strip() for v in values)]
    except UnicodeDecodeError as err:
        raise UserError(f"--dataset: expected UTF-8 text in {csv_path!r}; received a byte "
                        f"that is not ({err.reason} at byte {err.start}).") from None
    except csv.Error as err:
        raise UserError(f"--dataset: {csv_path!r} is not a readable CSV file ({err}).") from None
    if not rows:
        raise UserError(f"--dataset: expected rows of path,label after the header of "
                        f"{csv_path!r}; received none.")
    return rows


def header_columns(csv_path: str, header: list[str]) -> dict[str, int]:
    """Column name -> index for path, label and (if present) split."""
    names = [name.strip().lower() for name in header]
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise UserError(f"--dataset: expected a header row with the columns path,label "
                        f"(optionally split) in {csv_path!r}; received {header!r}.")
    return {name: names.index(name) for name in (*REQUIRED, "split") if name in names}


def parse_row(csv_path: str, line: int, values: list[str], columns: dict[str, int],
              folder: str) -> Row:
    """One row as a Row; a short row, an empty path or label or an unknown split is refused."""
    where = f"--dataset: {csv_path!r} line {line}"
    if len(values) <= max(columns[name] for name in REQUIRED):
        raise UserError(f"{where}: expected the columns {','.join(columns)}; received "
                        f"{values!r}.")
    path, label = values[columns["path"]].strip(), values[columns["label"]].strip()
    split_column = columns.get("split", len(values))
    raw_split = values[split_column].strip() if split_column < len(values) else ""
    if not path or not label:
        raise UserError(f"{where}: expected a path and a label; received {values!r}.")
    if raw_split.lower() not in SPLIT_VALUES:
        raise UserError(f"{where}: expected split train, validation (or val), test or empty; "
                        f"received {raw_split!r}.")
    return Row(line, os.path.join(folder, path), label, SPLIT_VALUES[raw_split.lower()])


def check_row(csv_path: str, row: Row, classes: dict[str, int]) -> None:
    """Refuses a row whose label no training row has, or whose file is missing or unreadable
    for TensorFlow."""
    where = f"--dataset: {csv_path!r} line {row.line}"
    if row.label not in classes:
        names = ", ".join(list(classes)[:10]) + (", …" if len(classes) > 10 else "")
        raise UserError(f"{where}: expected a label of the training rows ({names}) for a "
                        f"{row.split} row; received {row.label!r}.")
    if not os.path.isfile(row.path):
        what = "is a folder" if os.path.isdir(row.path) else "does not exist"
        raise UserError(f"{where}: expected an image file; {row.path!r} {what}.")
    problem = image_problem(row.path)
    if problem is not None:
        raise UserError(f"{where}: {row.path!r} {problem}.")
