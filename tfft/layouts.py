"""``--dataset=folder:DIR``: one folder of class subfolders, or split folders of them.

Many datasets arrive split already: ``DIR/train/``, ``DIR/val/`` (or ``validation/``) and
``DIR/test/``, each with one subfolder per class. Such a folder's splits are used as they are,
and a split folder that is absent is carved from ``train/`` with ``--validation_fraction`` /
``--test_fraction``, as a plain folder is. The classes are ``train/``'s: a class folder in
``val/`` or ``test/`` that ``train/`` lacks is refused (the model could never predict it), one
that ``train/`` has and they lack is a warning line (their metrics cover the other classes).

``DIR`` is read as split folders when it holds ``train/`` and nothing but split folders, or
``train/`` with ``val/``, ``validation/`` or ``test/`` (then any other folder is an error);
otherwise its subfolders are classes, so a class may still be called ``train``.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from tfft.errors import UserError
from tfft.image_files import checked_images, list_image_folder, visible_folders
from tfft.raw_splits import LabelledFiles, RawSplits, file_splits, warn_missing_classes

SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation",
                 "test": "test"}

log = logging.getLogger("tfft")


def from_folder(root: str, fractions: tuple[float, float], seed: int) -> RawSplits:
    """The raw splits of an image folder in either layout."""
    if not os.path.isdir(root):
        raise UserError(f"--dataset: image folder {root!r} does not exist.")
    folders = split_folders(root)
    if folders is None:
        paths, labels, classes, skipped = list_image_folder(root)
        warn_skipped(skipped, root)
        return file_splits({"train": LabelledFiles(paths, labels)}, classes, fractions, seed)
    return from_split_folders(root, folders, fractions, seed)


def split_folders(root: str) -> dict[str, str] | None:
    """Split name -> its folder's name when ``root`` is laid out in split folders, else None."""
    names = visible_folders(root)
    splits = {name: SPLIT_FOLDERS[name.lower()] for name in names
              if name.lower() in SPLIT_FOLDERS}
    if "train" not in splits.values():
        return None
    others = [name for name in names if name not in splits]
    if others and set(splits.values()) == {"train"}:
        return None  # class folders, one of them called train
    if others:
        raise UserError(f"--dataset: expected only the split folders train/, val/ (or "
                        f"validation/) and test/ in {root!r}, as it holds "
                        f"{', '.join(n + '/' for n in splits)}; received also "
                        f"{', '.join(n + '/' for n in others)}.")
    if len(set(splits.values())) < len(splits):
        raise UserError(f"--dataset: expected one folder per split in {root!r}; received "
                        f"{', '.join(n + '/' for n in splits)}.")
    return {split: name for name, split in splits.items()}


def from_split_folders(root: str, folders: dict[str, str], fractions: tuple[float, float],
                       seed: int) -> RawSplits:
    """Each split folder's files, labelled by ``train/``'s sorted class folders."""
    train_dir = os.path.join(root, folders["train"])
    classes = tuple(visible_folders(train_dir))
    if len(classes) < 2:
        raise UserError(f"--dataset: expected at least 2 class subfolders in {train_dir!r}; "
                        f"received {len(classes)}.")
    given, skipped = {}, 0
    for split, name in folders.items():
        given[split], other = split_files(os.path.join(root, name), classes, train_dir)
        skipped += other
    warn_skipped(skipped, root)
    warn_missing_classes(given, classes, {s: os.path.join(root, n) for s, n in folders.items()})
    return file_splits(given, classes, fractions, seed)


def split_files(folder: str, classes: tuple[str, ...], train_dir: str
                ) -> tuple[LabelledFiles, int]:
    """One split folder's checked image files, labelled by their class's index in ``classes``,
    and how many other files it holds."""
    present = visible_folders(folder)
    unknown = [name for name in present if name not in classes]
    if unknown:
        raise UserError(f"--dataset: expected the class folders of {train_dir!r} in {folder!r}; "
                        f"received also {', '.join(unknown)}, which train/ lacks (add its "
                        f"training images or remove it).")
    per_class, paths, skipped = checked_images(folder, present)
    ids = [classes.index(name) for name in present]
    labels = np.repeat(np.asarray(ids, np.int32), [len(files) for files in per_class])
    return LabelledFiles(paths, labels), skipped


def warn_skipped(skipped: int, root: str) -> None:
    if skipped:
        log.warning("Skipped %d non-image file(s) in %s.", skipped, root)
