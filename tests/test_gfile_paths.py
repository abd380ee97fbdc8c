"""Every path of a run on a non-local ``tf.io.gfile`` filesystem (TensorFlow's ``ram://``).

A whole run (training, the disk feature cache, an interruption and its resume, the report,
TensorBoard logs, export, serving, evaluation) with workdir, cache_dir and export_dir on
``ram://``, and a run's inputs there: a flagfile read by the CLI parser and a weights file.
``ram://`` answers ``exists`` and ``listdir`` by name prefix and does not move a directory's files
with it; ``tfft.fs`` copes, and the first tests pin that down.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import tiny_config

import tfft
from tfft import (
    backbones,
    cache,
    cache_store,
    callbacks,
    cli,
    evaluate,
    export,
    feature_cache,
    fs,
    predict,
    rundir,
)
from tfft.config import ModelConfig
from tfft.flags import config_from_flags, define_config_flags
from tfft.preprocess import preprocess_images

RECIPE = dict(head_epochs=2, finetune_epochs=2, checkpoint_every_steps=2, cache_features="disk")
REPORT_FILES = (
    rundir.METRICS_CSV,
    rundir.CURVES_PNG,
    rundir.CONFUSION_PNG,
    rundir.SAMPLES_PNG,
    rundir.REPORT_MD,
)


@pytest.fixture(scope="module")
def ram_root():
    """A fresh ``ram://`` directory (the filesystem lives as long as the process)."""
    root = f"ram://tfft-{uuid.uuid4().hex[:8]}"
    fs.makedirs(root)
    yield root
    fs.rmtree(root)


def tree(root: str) -> list[str]:
    """Every file under ``root``, relative to it (through ``tfft.fs``, as tfft lists)."""
    found = []
    for name in fs.listdir(root):
        path = os.path.join(root, name)
        found += [os.path.join(name, n) for n in tree(path)] if fs.isdir(path) else [name]
    return found


def read_json(path: str) -> dict:
    return json.loads(fs.read_text(path))


# ---------------------------------------------------------------- tfft.fs on ram://


def test_names_that_prefix_others_are_told_apart(ram_root):
    root = f"{ram_root}/prefixes"
    for directory in ("head", "head_final"):
        fs.makedirs(f"{root}/{directory}")
        fs.write_atomic(f"{root}/{directory}/ckpt-1.index", b"x")
    fs.write_atomic(f"{root}/metrics.json.bak", "{}")
    assert fs.listdir(f"{root}/head") == ["ckpt-1.index"]
    assert not fs.exists(f"{root}/metrics.json") and fs.isfile(f"{root}/metrics.json.bak")
    assert not fs.exists(f"{root}/hea")
    fs.rmtree(f"{root}/head")
    assert not fs.exists(f"{root}/head") and fs.listdir(f"{root}/head_final") == ["ckpt-1.index"]


def test_a_directory_renamed_takes_its_files_and_refuses_an_existing_target(ram_root):
    root = f"{ram_root}/renames"
    fs.write_atomic(f"{root}/.tmp-a/sub/f.bin", b"abc")
    fs.makedirs(f"{root}/taken")
    fs.write_atomic(f"{root}/taken/g", b"")
    fs.rename(f"{root}/.tmp-a", f"{root}/a")
    assert tree(root) == ["a/sub/f.bin", "taken/g"]
    assert fs.read_bytes(f"{root}/a/sub/f.bin") == b"abc"
    with pytest.raises(FileExistsError):
        fs.rename(f"{root}/a", f"{root}/taken")
    with pytest.raises(FileNotFoundError):
        fs.open(f"{root}/missing.json")


# ---------------------------------------------------------------- a whole run on ram://


class Interrupted(Exception):
    pass


class InterruptAfter(callbacks.RunCallback):
    """Stops the run (as a crash would) after ``epoch`` of ``phase``, its checkpoint written."""

    def __init__(self, phase: str, epoch: int):
        self.phase, self.epoch = phase, epoch

    def on_epoch_end(self, row, model) -> None:
        if row["phase"] == self.phase and row["epoch"] == self.epoch:
            raise Interrupted


@pytest.fixture(scope="module")
def ram_run(ram_root, tmp_path_factory):
    """A run on ram:// interrupted in the head phase and resumed there, and the same run
    uninterrupted on the local disk."""
    config = tiny_config(**RECIPE, cache_dir=f"{ram_root}/cache")
    workdir = f"{ram_root}/run"
    extractions = []
    real_extract = feature_cache.extract
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            feature_cache,
            "extract",
            lambda *a, **k: extractions.append(k["entry"]) or real_extract(*a, **k),
        )
        with pytest.raises(Interrupted):
            tfft.train_and_evaluate(config, workdir, callbacks=(InterruptAfter("head", 1),))
        interrupted = SimpleNamespace(
            files=tree(workdir),
            extractions=list(extractions),
            progress=read_json(f"{workdir}/{rundir.PROGRESS}"),
        )
        result = tfft.train_and_evaluate(config, workdir)
    local = str(tmp_path_factory.mktemp("local"))
    tfft.train_and_evaluate(
        config.replace(cache_dir=os.path.join(local, "cache")), os.path.join(local, "run")
    )
    return SimpleNamespace(
        config=config,
        workdir=workdir,
        result=result,
        root=ram_root,
        interrupted=interrupted,
        resume_extractions=extractions[2:],
        local_metrics=read_json(os.path.join(local, "run", rundir.METRICS)),
    )


@pytest.mark.large
def test_a_run_interrupted_on_ram_resumes_there_and_ends_like_an_uninterrupted_one(ram_run):
    stopped = ram_run.interrupted
    assert stopped.progress["phase"] == "head", stopped.progress
    assert (stopped.progress["epoch"], stopped.progress["step"]) != (0, 0), "resumed mid-phase"
    assert f"{stopped.progress['checkpoint']}.index" in stopped.files
    assert rundir.METRICS not in stopped.files
    assert [e.startswith(f"{ram_run.root}/cache/") for e in stopped.extractions] == [True] * 2
    # The resumed head phase read its features from the ram:// cache; the only new entries are
    # the finetune phase's activations (train and validation), also on ram://.
    resumed = ram_run.resume_extractions
    assert len(resumed) == 2 and not set(resumed) & set(stopped.extractions), resumed
    assert all(e.startswith(f"{ram_run.root}/cache/") for e in resumed)
    assert read_json(f"{ram_run.workdir}/{rundir.METRICS}") == ram_run.local_metrics


@pytest.mark.large
def test_the_run_directory_on_ram_holds_model_report_and_logs_and_no_leftovers(ram_run):
    files = tree(ram_run.workdir)
    assert {rundir.CONFIG, rundir.METRICS, rundir.MODEL, *REPORT_FILES} <= set(files)
    for png in (rundir.CURVES_PNG, rundir.CONFUSION_PNG, rundir.SAMPLES_PNG):
        assert fs.read_bytes(f"{ram_run.workdir}/{png}").startswith(b"\x89PNG")
    assert "test" in fs.read_text(f"{ram_run.workdir}/{rundir.REPORT_MD}").lower()
    events = [f for f in files if f.startswith(f"{rundir.TENSORBOARD}/")]
    assert {f.split("/")[1] for f in events} == {"head", "finetune", "test"}, events
    assert not any(f.startswith(rundir.CHECKPOINTS) for f in files), "a finished run prunes"
    assert not any(".tmp-" in f for f in files), files
    config, model = rundir.load_run(ram_run.workdir)
    assert config == ram_run.result.config and len(model.weights) == len(
        ram_run.result.classifier.model.weights
    )


@pytest.mark.large
def test_an_export_to_ram_serves_like_the_model_and_predicts_and_evaluates(ram_run):
    export_dir = f"{ram_run.root}/export"
    first = export.export_run(ram_run.workdir, export_dir)
    second = export.export_run(ram_run.workdir, export_dir)
    assert (first, second) == (f"{export_dir}/1", f"{export_dir}/2")
    assert fs.listdir(export_dir) == ["1", "2"], "no temporary directory left beside them"
    pixels = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    served = tf.saved_model.load(second).signatures["serve_pixels"](pixels=tf.constant(pixels))
    clf = ram_run.result.classifier
    live = clf.model(
        preprocess_images(tf.constant(pixels), 32, clf.backbone.normalize), training=False
    ).numpy()
    assert np.max(np.abs(served["probabilities"].numpy() - live)) <= 1e-5
    image = f"{ram_run.root}/images/digit.png"
    fs.write_atomic(image, tf.io.encode_png(tf.constant(pixels[0])).numpy())
    (prediction,), errors = predict.predict_files(predict.Predictor(export_dir, 3), [image])
    assert (
        errors == []
        and prediction.class_names[0] == ram_run.result.class_names[int(np.argmax(live[0]))]
    )
    result = evaluate.evaluate(model=export_dir, output_dir=f"{ram_run.root}/evaluation")
    saved = read_json(f"{ram_run.root}/evaluation/{evaluate.EVALUATION_FILE}")
    assert saved["accuracy"] == result["accuracy"]
    assert saved["accuracy"] == pytest.approx(ram_run.result.test_accuracy, abs=1e-6)


@pytest.mark.large
def test_the_feature_cache_on_ram_lists_and_clears(ram_run):
    root = cache_store.cache_root(ram_run.config.run.cache_dir)
    assert root == f"{ram_run.root}/cache"
    listed = cache.list_entries(root, 0, time.time())
    # Features and finetune activations, each of train and validation.
    assert listed[-1].startswith("4 entries") and root in listed[-1], listed
    # A row's cells before SHAPE: date, time, "(age", "ago)", size and unit, count, dtype.
    shapes = sorted(line.split()[8].count("x") for line in listed[1:-1])
    assert shapes == [0, 0, 2, 2], listed  # pooled features; H x W x C activations
    splits = sorted(e.fields["split"] for e in cache_store.scan(root))
    assert splits == ["train", "train", "validation", "validation"]
    assert cache.clear_entries(root, 0, time.time()).startswith("Removed 4 entries")
    assert cache_store.scan(root) == [] and fs.listdir(root) == []


# ---------------------------------------------------------------- a run's inputs on ram://


def test_a_flagfile_on_ram_is_read_by_the_cli_parser(ram_root):
    fv = flags.FlagValues()
    define_config_flags(fv)
    flags.DEFINE_string("workdir", "", "", flag_values=fv)
    nested = f"{ram_root}/flags/nested.cfg"
    fs.write_atomic(nested, "--image_size=48\n")
    top = f"{ram_root}/flags/run.cfg"
    fs.write_atomic(
        top,
        f"# a run on ram://\n\n--flagfile=quickstart.cfg\n// also a comment\n"
        f"--flagfile={nested}\n--workdir={ram_root}/run\n",
    )
    cli.parse_flags(["prog", f"--flagfile={top}", "--head_epochs=1"], fv)
    config = config_from_flags(fv)
    assert config.model.backbone == "mobilenet_v2", "the shipped config, found by bare name"
    assert (config.data.image_size, config.head.head_epochs) == (48, 1)
    assert fv.workdir == f"{ram_root}/run"


def test_a_missing_flagfile_on_ram_is_one_line_exit_2(ram_root, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.parse_flags(["prog", f"--flagfile={ram_root}/nowhere.cfg"], flags.FlagValues())
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfft: error: --flagfile:"), lines


def test_a_weights_file_on_ram_loads_like_the_local_file(ram_root):
    local = str(importlib.resources.files("tfft") / "weights" / "mobilenet_2_5_224_tf_no_top.h5")
    remote = f"{ram_root}/weights/mobilenet.h5"
    with open(local, "rb") as f:
        fs.write_atomic(remote, f.read())
    cfg = ModelConfig(backbone="mobilenet", alpha=0.25, weights=remote)
    from_ram = backbones.build_backbone(cfg, 32)
    from_disk = backbones.build_backbone(
        ModelConfig(backbone="mobilenet", alpha=0.25, weights=local), 32
    )
    assert from_ram.identity["weights_sha256"] == from_disk.identity["weights_sha256"]
    # Equal to the file's weights, not to a random initialisation (two of those differ).
    for a, b in zip(from_ram.layer.weights, from_disk.layer.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_hub_handle_on_ram_gives_the_local_module_s_features(ram_root, hub_feature_vector):
    remote = f"{ram_root}/hub/feature_vector"
    fs.upload_tree(hub_feature_vector, remote)
    images = tf.constant(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), tf.float32)
    features = [
        backbones.build_backbone(ModelConfig(backbone="hub", hub_handle=handle), 32).layer(images)
        for handle in (hub_feature_vector, remote)
    ]
    np.testing.assert_allclose(features[0].numpy(), features[1].numpy(), atol=1e-6)
