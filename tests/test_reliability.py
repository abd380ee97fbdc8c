"""Reliability: resume after SIGKILL, one-line errors for bad input, NaN guard, determinism."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, tiny_config, write_image_folder

from tfft import train_lib

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
# Small but slow enough (backbone in the loop in both phases) for a kill to land mid-phase.
RESUMABLE = ["--flagfile=configs/quickstart.cfg", "--image_size=48", "--batch_size=16",
             "--head_units=16", "--max_train_examples=160", "--max_eval_examples=32",
             "--head_epochs=3", "--finetune_epochs=2", "--unfreeze_blocks=3",
             "--cache_features=off", "--checkpoint_every_steps=3", "--verbosity=1"]
# For the runs that finish: the export is not what these tests check (the killed runs keep the
# default, so the time after a phase's checkpoint, where a kill lands, stays as long).
NO_EXPORT = "--export=false"


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfft.train", *args]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def read_metrics(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(*RESUMABLE, NO_EXPORT, f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    return read_metrics(workdir)


def kill_during(phase: str, workdir, rng: random.Random) -> dict:
    """Starts training and SIGKILLs it at a random moment after ``phase`` has checkpointed.

    Returns the progress record the killed run left behind.
    """
    progress_path = os.path.join(workdir, "progress.json")
    proc = subprocess.Popen(train_cmd(*RESUMABLE, f"--workdir={workdir}"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _progress_phase(progress_path) != phase:
            assert proc.poll() is None, "run ended before the phase checkpointed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    with open(progress_path) as f:
        return json.load(f)


def _progress_phase(path: str) -> str | None:
    try:
        with open(path) as f:
            return json.load(f)["phase"]
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("phase,seed", [("head", 1), ("finetune", 2), ("head", 3)])
def test_sigkill_then_rerun_resumes_and_matches_uninterrupted(uninterrupted, tmp_path,
                                                             phase, seed):
    """Exact on CPU: the resumed run's metrics.json equals the uninterrupted run's."""
    progress = kill_during(phase, tmp_path, random.Random(seed))
    assert not os.path.exists(tmp_path / "metrics.json"), "killed before the end"
    assert progress["phase"] == phase
    proc = run_cli(*RESUMABLE, NO_EXPORT, f"--workdir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert "Resuming phase" in proc.stdout or "already finished" in proc.stdout
    resumed = read_metrics(tmp_path)
    for rows in resumed["phases"].values():
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)), "no lost/repeated"
    assert resumed == uninterrupted


def test_same_seed_gives_identical_metrics_json(tmp_path):
    config = tiny_config(head_epochs=2, finetune_epochs=1)
    for name in ("a", "b"):
        train_lib.train_and_evaluate(config, str(tmp_path / name))
    a, b = ((tmp_path / n / "metrics.json").read_bytes() for n in ("a", "b"))
    assert a == b


def test_nan_loss_exits_3_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run_cli("--flagfile=configs/quickstart.cfg", "--backbone=mobilenet", "--alpha=0.25",
                   "--image_size=32", "--head_units=16",
                   "--max_train_examples=64", "--max_eval_examples=16", "--head_epochs=1",
                   "--finetune_epochs=1", "--optimizer=sgd", "--finetune_learning_rate=1e30",
                   "--verbosity=0", f"--workdir={tmp_path}")
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "NaN" in lines[0] and "finetune" in lines[0]
    assert "--finetune_learning_rate" in lines[0]
    with open(tmp_path / "progress.json") as f:
        progress = json.load(f)
    assert progress["phase"] == "head" and progress["done"]
    reader = tf.train.load_checkpoint(str(tmp_path / progress["checkpoint"]))
    tensors = [np.asarray(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()]
    floats = [t for t in tensors if t.dtype.kind == "f"]
    # The finished head phase keeps its final weights: the head (16 hidden units over MobileNet
    # v1 alpha 0.25's 256 features here), without optimizer slots.
    assert any(t.shape == (256, 16) for t in floats), [t.shape for t in floats]
    assert all(np.all(np.isfinite(t)) for t in floats)


def test_finished_or_different_run_is_refused_unless_overwrite(tmp_path):
    args = ["--flagfile=configs/quickstart.cfg", "--image_size=32", "--max_train_examples=16",
            "--max_eval_examples=16", "--head_epochs=1", "--finetune_epochs=0", "--verbosity=0",
            NO_EXPORT, f"--workdir={tmp_path}"]
    assert run_cli(*args).returncode == 0
    before = (tmp_path / "metrics.json").read_bytes()
    again = run_cli(*args)
    assert again.returncode == 2 and "finished run" in again.stderr
    other = run_cli(*args, "--head_epochs=2")
    assert other.returncode == 2 and "different config" in other.stderr
    assert "head_epochs" in other.stderr
    assert (tmp_path / "metrics.json").read_bytes() == before
    assert run_cli(*args, "--head_epochs=2", "--overwrite").returncode == 0
    assert len(read_metrics(tmp_path)["phases"]["head"]) == 2


# ---------------------------------------------------------------- every bad input, one line


def write_bad_inputs(tmp: str) -> tuple[str, str, str, str]:
    """Broken image folders, a plain file, another architecture's weights and a module of
    feature maps; returns (folders, plain file, weights file, module dir)."""
    import keras

    from tfft.hub_format import save_feature_vector

    folders = os.path.join(tmp, "folders")
    write_image_folder(os.path.join(folders, "one_class"), {"only": 3})
    os.makedirs(os.path.join(folders, "empty"))
    write_image_folder(os.path.join(folders, "no_images"), {"a": 0, "b": 0})
    corrupt = write_image_folder(os.path.join(folders, "corrupt"), {"a": 3, "b": 3})
    with open(os.path.join(corrupt, "b", "broken.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")
    not_a_dir = os.path.join(tmp, "plain_file")
    with open(not_a_dir, "w") as f:
        f.write("x")
    other_weights = os.path.join(tmp, "mobilenet.weights.h5")
    keras.applications.MobileNet(weights=None, include_top=False, alpha=0.25,
                                 input_shape=(32, 32, 3)).save_weights(other_weights)
    feature_maps = os.path.join(tmp, "feature_maps_module")
    inputs = keras.Input((32, 32, 3))
    save_feature_vector(keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs)), feature_maps)
    return folders, not_a_dir, other_weights, feature_maps


def bad_input_cases(tmp: str) -> list[tuple[str, list[str], str]]:
    """(name, CLI args, text the single stderr line must contain)."""
    folders, not_a_dir, other_weights, feature_maps = write_bad_inputs(tmp)
    small = ["--image_size=32", "--max_train_examples=16", "--max_eval_examples=8"]
    return [
        ("unknown flag", ["--bogus_flag=1"], "bogus_flag"),
        ("unknown backbone", ["--backbone=vgg61"], "--backbone"),
        ("unknown dataset kind", ["--dataset=imagenet"], "--dataset"),
        ("unknown tfds-less sample", ["--dataset=sample:cifar"], "--dataset"),
        ("unknown strategy", ["--strategy=magic"], "--strategy"),
        ("unknown optimizer", ["--optimizer=adamax"], "--optimizer"),
        ("non-positive image size", ["--image_size=0"], "--image_size"),
        ("non-numeric batch size", ["--batch_size=big"], "batch_size"),
        ("negative epochs", ["--head_epochs=-1"], "--head_epochs"),
        ("non-numeric epochs", ["--finetune_epochs=two"], "finetune_epochs"),
        ("zero learning rate", ["--head_learning_rate=0"], "--head_learning_rate"),
        ("non-numeric learning rate", ["--finetune_learning_rate=fast"],
         "finetune_learning_rate"),
        ("image size below minimum", ["--backbone=vgg16", "--weights=none",
                                      "--image_size=16"], "--image_size"),
        ("missing flagfile", ["--flagfile=configs/nope.cfg"], "nope.cfg"),
        ("folder missing", [f"--dataset=folder:{folders}/absent", *small], "absent"),
        ("folder empty", [f"--dataset=folder:{folders}/empty", *small], "empty"),
        ("folder one class", [f"--dataset=folder:{folders}/one_class", *small], "one_class"),
        ("folder no images", [f"--dataset=folder:{folders}/no_images", *small], "no_images"),
        ("corrupt image", [f"--dataset=folder:{folders}/corrupt", *small], "broken.jpg"),
        ("hub handle not a feature vector", ["--backbone=hub", f"--hub_handle={feature_maps}",
                                             *small], "--hub_handle"),
        ("weights for another architecture", ["--backbone=vgg16", f"--weights={other_weights}",
                                              *small], "--weights"),
        ("unfreeze more blocks than exist", ["--unfreeze_blocks=99", *small],
         "--unfreeze_blocks"),
        ("workdir not writable", [*small], "--workdir"),
        ("disk cache dir not writable", ["--cache_features=disk",
                                         f"--cache_dir={not_a_dir}/cache", *small],
         "--cache_dir"),
    ]


def test_every_bad_input_is_one_line_exit_2_and_leaves_workdir_untouched(tmp_path):
    cases = bad_input_cases(str(tmp_path))
    not_writable = os.path.join(str(tmp_path), "plain_file", "run")

    def check(case):
        name, args, needle = case
        workdir = not_writable if name == "workdir not writable" else str(tmp_path / "wd" / name)
        proc = run_cli("--flagfile=configs/quickstart.cfg", "--verbosity=0", *args,
                       f"--workdir={workdir}", timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit {proc.returncode}")
        if len(lines) != 1 or needle not in lines[0]:
            problems.append(f"stderr {proc.stderr[-600:]!r}")
        if "Traceback" in proc.stderr:
            problems.append("traceback")
        if os.path.exists(workdir):
            problems.append("workdir created")
        return name, problems

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        failures = {n: p for n, p in pool.map(check, cases) if p}
    assert not failures, failures


def test_non_image_files_are_skipped_with_a_count(tmp_path, caplog):
    from tfft import data as data_lib
    from tfft.config import DataConfig

    root = write_image_folder(str(tmp_path / "f"), {"a": 4, "b": 4})
    (tmp_path / "f" / "a" / "README.txt").write_text("notes")
    (tmp_path / "f" / "b" / ".DS_Store").write_text("junk")
    with caplog.at_level("WARNING", logger="tfft"):
        splits = data_lib.load_splits(DataConfig(dataset=f"folder:{root}"), seed=0)
    assert sum(splits.sizes.values()) == 8
    assert "Skipped 2 non-image file(s)" in caplog.text
