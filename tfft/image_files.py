"""Image files in folders of class subfolders, and their checks, before any training.

What counts: files with an image extension in any letter case (``.JPG``, ``.Png``), in class
folders and their subfolders, symbolic links followed (each real folder once, so a link cycle
ends). Hidden names (``.ipynb_checkpoints/``, ``.DS_Store``, macOS's ``._photo.jpg`` resource
forks) and files without an image extension are skipped and counted. Every file that counts is
checked (``tfft.image_checks``), so a bad one is a line naming it, not a decoder error mid-epoch.
"""

from __future__ import annotations

import os

import numpy as np

from tfft.errors import UserError
from tfft.image_checks import image_problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def visible_folders(root: str) -> list[str]:
    """The sorted names of ``root``'s subfolders (links to folders included), hidden ones left
    out. A folder name that is not valid UTF-8 could not become a class name in the run files."""
    names = sorted(d for d in os.listdir(root)
                   if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"--dataset: expected folder names in UTF-8 in {root!r}; received "
                            f"{name!r}; rename it.") from None
    return names


def class_files(folder: str) -> tuple[list[str], int]:
    """The image files under one class folder, sorted, and how many other files it holds."""
    found, skipped, seen = [], 0, set()
    for dirpath, dirnames, names in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen)
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append((dirpath, name))
            else:
                skipped += 1
    return [os.path.join(dirpath, name) for dirpath, name in sorted(found)], skipped


def list_classes(root: str, classes: list[str]) -> tuple[list[list[str]], int]:
    """Each class folder's image files (in ``classes`` order) and the skipped count."""
    per_class, skipped = [], 0
    for name in classes:
        files, other = class_files(os.path.join(root, name))
        per_class.append(files)
        skipped += other
    return per_class, skipped


def list_image_folder(root: str) -> tuple[list[str], np.ndarray, tuple[str, ...], int]:
    """Files and labels of a folder of class subfolders; returns how many files were skipped."""
    if not os.path.isdir(root):
        raise UserError(f"--dataset: image folder {root!r} does not exist.")
    classes = visible_folders(root)
    if len(classes) < 2:
        raise UserError(f"--dataset: expected at least 2 class subfolders in {root!r}; "
                        f"received {len(classes)}.")
    per_class, paths, skipped = checked_images(root, classes)
    labels = np.repeat(np.arange(len(classes), dtype=np.int32), [len(f) for f in per_class])
    return paths, labels, tuple(classes), skipped


def checked_images(root: str, classes: list[str]) -> tuple[list[list[str]], list[str], int]:
    """The image files of each class folder of ``root``, all of them, and how many other files
    were skipped; refuses a folder without images and the first file TensorFlow could not
    train on."""
    per_class, skipped = list_classes(root, classes)
    paths = [path for files in per_class for path in files]
    if not paths:
        raise UserError(f"--dataset: expected JPEG/PNG/BMP/GIF images in the class subfolders "
                        f"of {root!r}; received none.")
    check_images(paths)
    return per_class, paths, skipped


def check_images(paths: list[str]) -> None:
    """Refuses the first file TensorFlow could not train on, naming it."""
    for path in paths:
        problem = image_problem(path)
        if problem is not None:
            raise UserError(f"--dataset: {path!r} {problem}.")
