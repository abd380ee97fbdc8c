"""Dataset layouts: split folders (train/ val/ test/) and CSV label files, in the library and
through ``python -m tfft.train``."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, write_image_folder

from tfft import data as data_lib
from tfft.config import DataConfig
from tfft.errors import UserError

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# No export: these tests check what training reads and prints, not the SavedModel.
TINY = ["--backbone=mobilenet", "--alpha=0.25", "--weights=imagenet", "--image_size=32",
        "--head_units=16", "--head_epochs=1", "--finetune_epochs=0", "--verbosity=1",
        "--export=false"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfft.train", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def load(dataset: str, **fields) -> data_lib.Splits:
    return data_lib.load_splits(DataConfig(dataset=dataset, **fields), seed=0)


def labels_of(ds) -> list[int]:
    return sorted(int(y) for _, y in ds)


def split_folder(root, train: dict, val: dict | None = None, test: dict | None = None,
                 val_name: str = "val") -> str:
    write_image_folder(os.path.join(root, "train"), train, size=32)
    for name, classes, seed in ((val_name, val, 1), ("test", test, 2)):
        if classes is not None:
            write_image_folder(os.path.join(root, name), classes, size=32, seed=seed)
    return str(root)


def write_csv(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- split folders


def test_split_folders_are_used_as_they_are(tmp_path):
    root = split_folder(tmp_path / "d", {"cat": 6, "dog": 4}, {"cat": 2, "dog": 3},
                        {"cat": 1, "dog": 5}, val_name="validation")
    splits = load(f"folder:{root}")
    assert splits.class_names == ("cat", "dog")
    assert splits.sizes == {"train": 10, "validation": 5, "test": 6}
    assert splits.counts == {"train": (6, 4), "validation": (2, 3), "test": (1, 5)}
    assert labels_of(splits.test) == [0] + [1] * 5
    path, _ = next(iter(splits.validation))
    assert os.sep + "validation" + os.sep in path.numpy().decode()


def test_absent_split_folders_are_carved_from_train(tmp_path):
    only_test = load(f"folder:{split_folder(tmp_path / 'a', {'a': 10, 'b': 10}, test={'a': 3})}",
                     validation_fraction=0.2, test_fraction=0.3)
    assert only_test.sizes == {"train": 16, "validation": 4, "test": 3}
    only_train = load(f"folder:{split_folder(tmp_path / 'b', {'a': 10, 'b': 10})}",
                      validation_fraction=0.2, test_fraction=0.3)
    assert only_train.sizes == {"train": 10, "validation": 4, "test": 6}
    assert sum(only_train.counts["test"]) == 6


def test_a_class_named_train_beside_other_classes_is_a_plain_folder(tmp_path):
    root = write_image_folder(str(tmp_path / "d"), {"train": 5, "bus": 5}, size=32)
    assert load(f"folder:{root}").class_names == ("bus", "train")


def test_a_split_folder_lacking_a_class_warns_in_one_line(tmp_path, caplog):
    root = split_folder(tmp_path / "d", {"cat": 4, "dog": 4, "emu": 4}, {"cat": 2},
                        {"cat": 2, "dog": 2, "emu": 0})
    with caplog.at_level("WARNING", logger="tfft"):
        splits = load(f"folder:{root}")
    assert splits.counts["validation"] == (2, 0, 0) and splits.counts["test"] == (2, 2, 0)
    lines = [r.getMessage() for r in caplog.records if "training class" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in line for line in lines), lines
    assert "val has no images of 2 training class(es): dog, emu" in lines[0]
    assert "test has no images of 1 training class(es): emu" in lines[1]


@pytest.mark.parametrize("case,needle", [
    ("unknown class", "received also zebra, which train/ lacks"),
    ("other folder", "received also extra/"),
    ("val and validation", "expected one folder per split"),
    ("empty val", "val'; received none"),
])
def test_bad_split_folders_are_refused_in_one_line(tmp_path, case, needle):
    root = split_folder(tmp_path / "d", {"cat": 3, "dog": 3}, {"cat": 1, "dog": 1},
                        {"cat": 1, "dog": 1})
    if case == "unknown class":
        write_image_folder(os.path.join(root, "test"), {"zebra": 1}, size=32)
    elif case == "other folder":
        os.makedirs(os.path.join(root, "extra", "x"))
    elif case == "val and validation":
        write_image_folder(os.path.join(root, "validation"), {"cat": 1}, size=32)
    else:
        for name in ("cat", "dog"):
            os.remove(os.path.join(root, "val", name, "0.jpg"))
    with pytest.raises(UserError) as err:
        load(f"folder:{root}")
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


# ---------------------------------------------------------------- CSV label files


def csv_images(tmp_path) -> str:
    """Images for the CSV tests: a/ 8 cat-coloured, b/ 8 dog-coloured (one name with a space)."""
    write_image_folder(str(tmp_path / "img"), {"a": 8, "b": 8}, size=32)
    os.rename(tmp_path / "img" / "b" / "7.jpg", tmp_path / "img" / "b" / "seven ø.jpg")
    return str(tmp_path / "img")


def test_csv_split_column_and_blank_rows(tmp_path):
    csv_images(tmp_path)
    rows = ["Label,Path,Split,notes"]
    rows += [f"dog,img/b/{i}.jpg,train,x" for i in range(5)]
    rows += [f"cat,img/a/{i}.jpg,,x" for i in range(5)]  # no split: a training row
    rows += ["cat,img/a/5.jpg,val,", "dog,img/b/5.jpg,validation,", "",
             "cat,img/a/6.jpg,test,", 'dog,"img/b/seven ø.jpg",TEST,']
    splits = load(f"csv:{write_csv(tmp_path / 'labels.csv', chr(10).join(rows))}",
                  validation_fraction=0.2, test_fraction=0.2)
    assert splits.class_names == ("cat", "dog")
    assert splits.sizes == {"train": 10, "validation": 2, "test": 2}
    assert splits.counts == {"train": (5, 5), "validation": (1, 1), "test": (1, 1)}
    images = [image.numpy() for image, _ in data_lib.load_images(splits.test)]
    assert [im.shape for im in images] == [(32, 32, 3)] * 2


def test_csv_without_split_column_is_carved_like_a_folder(tmp_path):
    root = csv_images(tmp_path)
    rows = [f"{os.path.join(root, 'a', f'{i}.jpg')},cat" for i in range(8)]  # absolute paths
    rows += [f"img/b/{i}.jpg,dog" for i in range(7)]
    path = write_csv(tmp_path / "labels.csv", "\ufeffpath,label\n" + "\n".join(rows) + "\n")
    splits = load(f"csv:{path}", validation_fraction=0.2, test_fraction=0.2)
    assert splits.sizes == {"train": 9, "validation": 3, "test": 3}
    assert sum(map(sum, splits.counts.values())) == 15
    assert splits.counts == load(f"csv:{path}", validation_fraction=0.2,
                                 test_fraction=0.2).counts, "seeded"


BAD_CSVS = {
    "missing column": ("file,label\nimg/a/0.jpg,cat\n", "columns path,label"),
    "unknown split": ("path,label,split\nimg/a/0.jpg,cat,train\nimg/b/0.jpg,dog,train\n"
                      "img/a/1.jpg,cat,holdout\n", "line 4: expected split train"),
    "missing file": ("path,label\nimg/a/0.jpg,cat\nimg/b/0.jpg,dog\nimg/a/99.jpg,cat\n",
                     "line 4: expected an image file; "),
    "label only in test": ("path,label,split\nimg/a/0.jpg,cat,\nimg/b/0.jpg,dog,\n"
                           "img/b/1.jpg,emu,test\n", "line 4: expected a label of the training"),
    "not an image": ("path,label\nimg/a/0.jpg,cat\nimg/b/0.jpg,dog\nnotes.txt,cat\n",
                     "notes.txt' is not a JPEG/PNG/BMP/GIF image"),
    "empty label": ("path,label\nimg/a/0.jpg,cat\nimg/b/0.jpg,\n", "line 3: expected a path"),
    "short row": ("path,label\nimg/a/0.jpg,cat\nimg/b/0.jpg\n", "line 3: expected the columns"),
    "one class": ("path,label\nimg/a/0.jpg,cat\nimg/a/1.jpg,cat\n", "at least 2 labels"),
    "no rows": ("path,label\n\n", "received none"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_files_are_refused_in_one_line_naming_file_and_line(tmp_path, case):
    csv_images(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    text, needle = BAD_CSVS[case]
    path = write_csv(tmp_path / "labels.csv", text)
    with pytest.raises(UserError) as err:
        load(f"csv:{path}")
    message = str(err.value)
    assert path in message and needle in message and "\n" not in message, message


def test_csv_that_is_not_there_or_not_utf8(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(f"csv:{tmp_path}/none.csv")
    (tmp_path / "latin1.csv").write_bytes("path,label\ncaf\xe9.jpg,x\n".encode("latin-1"))
    with pytest.raises(UserError, match="expected UTF-8 text"):
        load(f"csv:{tmp_path}/latin1.csv")


# ---------------------------------------------------------------- through the CLI


def test_cli_trains_on_split_folders_and_prints_class_counts(tmp_path):
    root = split_folder(tmp_path / "d", {"cat": 25, "dog": 5, "emu": 6}, {"cat": 3, "dog": 3},
                        {"cat": 4, "dog": 4, "emu": 4})
    proc = run_cli(f"--dataset=folder:{root}", *TINY, f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Dataset folder:" in proc.stdout and "train 36, validation 6, test 12" in proc.stdout
    assert "Examples per class, train: cat 25, dog 5, emu 6" in proc.stdout
    assert "Examples per class, validation: cat 3, dog 3, emu 0" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert any("val has no images of 1 training class(es): emu" in w for w in warnings), warnings
    assert "Warning: Imbalanced training split: cat has 25 examples, dog 5 (5.0x)" in proc.stdout
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| emu | 6 | 0 | 4 |" in report and "| **all** | **36** | **6** | **12** |" in report


def test_cli_trains_on_a_csv_file(tmp_path):
    csv_images(tmp_path)
    rows = [f"img/{d}/{i}.jpg,{label},{'test' if i >= 6 else ''}"
            for d, label in (("a", "cat"), ("b", "dog")) for i in range(7)]
    path = write_csv(tmp_path / "labels.csv", "path,label,split\n" + "\n".join(rows))
    proc = run_cli(f"--dataset=csv:{path}", *TINY, "--validation_fraction=0.2",
                   f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train 10, validation 2, test 2 examples" in proc.stdout
    assert "Examples per class, test: cat 1, dog 1" in proc.stdout
    assert os.path.exists(tmp_path / "run" / "model.keras")


def test_cli_bad_layouts_are_one_line_exit_2_and_write_nothing(tmp_path):
    root = split_folder(tmp_path / "d", {"cat": 3, "dog": 3}, test={"cat": 1, "zebra": 1})
    csv_images(tmp_path)
    cases = {
        "zebra": (f"--dataset=folder:{root}", "zebra, which train/ lacks"),
        "column": ("--dataset=csv:" + write_csv(tmp_path / "a.csv", "file,label\nx.jpg,a\n"),
                   "columns path,label"),
        "split": ("--dataset=csv:" + write_csv(
            tmp_path / "b.csv", "path,label,split\nimg/a/0.jpg,cat,\nimg/b/0.jpg,dog,dev\n"),
            "b.csv' line 3: expected split train"),
        "file": ("--dataset=csv:" + write_csv(
            tmp_path / "c.csv", "path,label\nimg/a/0.jpg,cat\nimg/b/gone.jpg,dog\n"),
            "c.csv' line 3: expected an image file"),
    }

    def check(name: str) -> tuple[str, list[str]]:
        flag, needle = cases[name]
        workdir = tmp_path / "wd" / name
        proc = run_cli(flag, *TINY, f"--workdir={workdir}")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        problems = [] if proc.returncode == 2 else [f"exit {proc.returncode}"]
        if len(lines) != 1 or needle not in lines[0] or not lines[0].startswith("tfft: error:"):
            problems.append(f"stderr {proc.stderr[-600:]!r}")
        if os.path.exists(workdir):
            problems.append("workdir created")
        return name, problems

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        failures = {name: p for name, p in pool.map(check, cases) if p}
    assert not failures, failures


def test_plain_folder_splits_are_unchanged(tmp_path):
    """The carve of a plain folder is the one tfft made before split folders existed."""
    root = write_image_folder(str(tmp_path / "f"), {"b_dog": 10, "a_cat": 10}, fmt="PNG")
    splits = load(f"folder:{root}", validation_fraction=0.2, test_fraction=0.2)
    paths, labels, _, _ = data_lib.list_image_folder(root)
    train, val, test = data_lib.carve(len(paths), (0.2, 0.2), 0)
    for ds, idx in ((splits.train, train), (splits.validation, val), (splits.test, test)):
        assert [p.numpy().decode() for p, _ in ds] == [paths[i] for i in idx]
    assert splits.counts["test"] == tuple(np.bincount(labels[test], minlength=2))
