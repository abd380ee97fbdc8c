"""Disk use of a run: checkpoints that do not pile up, free space checked up front, and a full
disk that loses nothing (one line, and the same command continues once space is freed).

The full-disk tests fill a real size-limited filesystem (tmpfs, mounted here as root, as CI
runs) while the run is in progress, through the run's own write code; the record test injects
ENOSPC at the OS call (``os.fsync``) because a record is too small to aim a full disk at.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import ROOT, tiny_config

from tfft import callbacks, rundir, train_lib
from tfft.errors import UserError

RECIPE = dict(head_epochs=2, finetune_epochs=2, checkpoint_every_steps=2,
              early_stopping_patience=3, tensorboard=False)


def checkpoint_files(workdir: str) -> dict[str, int]:
    """Checkpoints (``.index`` files) in each checkpoint directory of a run."""
    root = os.path.join(workdir, rundir.CHECKPOINTS)
    return {name: len(glob.glob(os.path.join(root, name, "*.index")))
            for name in (sorted(os.listdir(root)) if os.path.isdir(root) else [])}


class CheckpointCounter(callbacks.RunCallback):
    """After every epoch: the checkpoint directories and their checkpoint counts."""

    def __init__(self, workdir: str):
        self.workdir, self.seen = workdir, []

    def on_epoch_end(self, row, model) -> None:
        self.seen.append((row["phase"], checkpoint_files(self.workdir)))


def test_checkpoints_never_pile_up_and_a_finished_run_removes_them(uninterrupted):
    counter, workdir = uninterrupted.counter, uninterrupted.workdir
    assert len(counter.seen) == 4
    for phase, files in counter.seen:
        assert all(count <= 1 for count in files.values()), (phase, files)
        mine = {name for name in files if name.startswith(phase)}
        assert mine <= {phase, f"{phase}_best"}, (phase, files)
        assert set(files) - mine <= {"head_final"}, (phase, files)
    assert checkpoint_files(workdir) == {}
    assert {"config.json", "metrics.json", "model.keras"} <= set(os.listdir(workdir))


def test_keep_checkpoints_keeps_at_most_one_per_phase_without_optimizer_slots(tmp_path):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(tiny_config(**RECIPE, keep_checkpoints=True), workdir)
    files = checkpoint_files(workdir)
    assert files and all(count == 1 for count in files.values())
    assert set(files) <= {"head_final", "finetune_final"}, files
    import tensorflow as tf

    (index,) = glob.glob(os.path.join(workdir, rundir.CHECKPOINTS, "finetune_final", "*.index"))
    names = [name for name, _ in tf.train.list_variables(index[:-len(".index")])]
    assert not any(name.startswith("optimizer") for name in names), names


def test_too_little_free_space_refuses_a_phase_before_it_trains(tmp_path, monkeypatch):
    from tfft import diskspace

    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 1 << 20)
    counter = CheckpointCounter(str(tmp_path))
    with pytest.raises(UserError, match="not enough free space .* checkpoints") as caught:
        train_lib.train_and_evaluate(tiny_config(**RECIPE), str(tmp_path), callbacks=(counter,))
    assert "\n" not in str(caught.value) and "free" in str(caught.value)
    assert counter.seen == []


@contextlib.contextmanager
def small_filesystem(path: str, size: str = "32m") -> Iterator[str]:
    """A tmpfs of ``size`` mounted at ``path`` (root only, as in CI and this sandbox)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def fill(directory: str) -> str:
    """Writes a ballast file until the filesystem is full; returns its path."""
    ballast = os.path.join(directory, "ballast")
    with open(ballast, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()
    return ballast


class FillDiskAt(callbacks.RunCallback):
    """Fills the disk when ``phase`` begins, so its first checkpoint finds no space."""

    def __init__(self, directory: str, phase: str):
        self.directory, self.phase, self.ballast = directory, phase, ""

    def on_phase_begin(self, phase, model, epochs) -> None:
        if phase == self.phase:
            self.ballast = fill(self.directory)


def read_metrics(workdir: str) -> dict:
    with open(os.path.join(workdir, rundir.METRICS)) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class Uninterrupted:
    """The RECIPE run without a full disk: its directory, metrics and checkpoints seen."""

    workdir: str
    metrics: dict
    counter: CheckpointCounter


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Uninterrupted:
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    counter = CheckpointCounter(workdir)
    train_lib.train_and_evaluate(tiny_config(**RECIPE), workdir, callbacks=(counter,))
    return Uninterrupted(workdir, read_metrics(workdir), counter)


def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_ends_identically(
        tmp_path, uninterrupted):
    with small_filesystem(str(tmp_path / "fs")) as fs:
        workdir = os.path.join(fs, "run")
        full = FillDiskAt(fs, "finetune")
        with pytest.raises(UserError, match="disk is full") as caught:
            train_lib.train_and_evaluate(tiny_config(**RECIPE), workdir, callbacks=(full,))
        assert "\n" not in str(caught.value)
        assert not glob.glob(os.path.join(workdir, rundir.CHECKPOINTS, "*", "*_temp"))
        with open(os.path.join(workdir, rundir.PROGRESS)) as f:
            record = json.load(f)
        assert glob.glob(os.path.join(workdir, record["checkpoint"] + ".*"))
        os.remove(full.ballast)
        train_lib.train_and_evaluate(tiny_config(**RECIPE), workdir)
        assert read_metrics(workdir) == uninterrupted.metrics


def test_a_full_disk_at_a_record_is_one_line_and_the_rerun_ends_identically(
        tmp_path, monkeypatch, uninterrupted):
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        if rundir.PROGRESS in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(fd)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(UserError, match="disk is full"):
        train_lib.train_and_evaluate(tiny_config(**RECIPE), str(tmp_path))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not glob.glob(str(tmp_path / ".tmp-*"))
    train_lib.train_and_evaluate(tiny_config(**RECIPE), str(tmp_path))
    assert read_metrics(str(tmp_path)) == uninterrupted.metrics


def test_the_cli_on_a_full_disk_prints_one_line_and_exits_2(tmp_path):
    with small_filesystem(str(tmp_path / "fs"), size="4m") as fs:
        fill(fs)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run(
            [sys.executable, "-m", "tfft.train", "--flagfile=configs/quickstart.cfg",
             f"--workdir={fs}/run", "--image_size=32", "--head_epochs=1", "--finetune_epochs=0",
             "--max_train_examples=32", "--max_eval_examples=16", "--verbosity=0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("tfft: error:"), lines
    assert "disk is full" in lines[0] or "not enough free space" in lines[0]


def test_a_full_disk_at_a_cache_entry_is_one_line_and_the_rerun_ends_identically(
        tmp_path, monkeypatch):
    """ENOSPC injected when the features file of a disk cache entry is flushed."""
    config = tiny_config(**RECIPE, cache_features="disk", cache_dir=str(tmp_path / "cache"))
    reference = str(tmp_path / "reference")
    train_lib.train_and_evaluate(config.replace(cache_dir=str(tmp_path / "ref_cache")), reference)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if "features.bin" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    workdir = str(tmp_path / "run")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(UserError, match="disk is full") as caught:
        train_lib.train_and_evaluate(config, workdir)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path / "cache") == [], "no partial entry is kept"
    train_lib.train_and_evaluate(config, workdir)
    assert read_metrics(workdir) == read_metrics(reference)


def test_a_full_disk_at_the_export_says_how_to_export_the_finished_run(tmp_path):
    with small_filesystem(str(tmp_path / "fs"), size="32m") as fs:
        ballast = fill(fs)
        workdir = str(tmp_path / "run")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        args = ["--flagfile=configs/quickstart.cfg", "--image_size=32", "--head_epochs=1",
                "--finetune_epochs=0", "--max_train_examples=32", "--max_eval_examples=16",
                "--verbosity=0", f"--workdir={workdir}", f"--export_dir={fs}/export"]
        done = subprocess.run([sys.executable, "-m", "tfft.train", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and f"python -m tfft.export --workdir={workdir}" in lines[0], lines
        assert os.path.exists(os.path.join(workdir, rundir.METRICS))
        os.remove(ballast)
        again = subprocess.run([sys.executable, "-m", "tfft.export", f"--workdir={workdir}",
                                f"--export_dir={fs}/export"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert os.path.isfile(os.path.join(fs, "export", "1", "saved_model.pb"))


def test_the_cache_size_limit_through_the_cli_keeps_the_newest_entries(tmp_path):
    """Two runs at two image sizes into one small cache: the second run's entries push the
    first run's least recently used one out, and ``tfft.cache list`` shows what is left."""
    cache = str(tmp_path / "cache")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def train(size: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tfft.train", "--flagfile=configs/quickstart.cfg",
             "--backbone=mobilenet", "--alpha=0.25", "--unfreeze_blocks=2",
             f"--image_size={size}", "--head_epochs=1", "--finetune_epochs=0",
             "--max_train_examples=64", "--max_eval_examples=32", "--cache_features=disk",
             f"--cache_dir={cache}", "--cache_max_gb=0.00015", "--export=false",
             f"--workdir={tmp_path / str(size)}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    first = train(32)
    assert first.returncode == 0, first.stderr
    assert len(os.listdir(cache)) == 2
    second = train(40)
    assert second.returncode == 0, second.stderr
    assert "least recently used" in second.stdout
    listing = subprocess.run([sys.executable, "-m", "tfft.cache", "list", f"--cache_dir={cache}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines() if "sample:mnist" in line]
    kept = sorted((row[-2], row[-5]) for row in rows)  # (image size, split) of each entry
    assert kept == [("32", "validation"), ("40", "train"), ("40", "validation")], listing.stdout
