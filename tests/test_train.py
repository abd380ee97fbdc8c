"""Two-phase training: short runs of each phase, the run directory, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tfft import train_lib
from tfft.classifier import count_params


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    return train_lib.train_and_evaluate(tiny_config(head_epochs=2, finetune_epochs=1), workdir)


def test_run_directory_holds_config_metrics_and_model(tiny_run):
    files = set(os.listdir(tiny_run.workdir))
    assert {"config.json", "metrics.json", "model.keras"} <= files
    with open(os.path.join(tiny_run.workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert [r["epoch"] for r in metrics["phases"]["head"]] == [1, 2]
    assert [r["epoch"] for r in metrics["phases"]["finetune"]] == [1]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["examples"] == 32
    assert metrics["parameters"]["finetune_trainable"] > metrics["parameters"]["head_trainable"]
    with open(os.path.join(tiny_run.workdir, "config.json")) as f:
        assert json.load(f)["model"]["backbone"] == "mobilenet"


def test_saved_model_reloads_safely_and_predicts_the_same(tiny_run):
    model = keras.models.load_model(os.path.join(tiny_run.workdir, "model.keras"),
                                    safe_mode=True)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               tiny_run.classifier.model.predict(x, verbose=0), atol=1e-6)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A run of zero epochs in both phases: the weights every phase starts from."""
    workdir = str(tmp_path_factory.mktemp("untrained"))
    return train_lib.train_and_evaluate(tiny_config(head_epochs=0, finetune_epochs=0), workdir)


def test_head_phase_changes_only_the_head(tmp_path, untrained):
    config = tiny_config(head_epochs=1, finetune_epochs=0)
    result = train_lib.train_and_evaluate(config, str(tmp_path))
    trained, initial = result.classifier, untrained.classifier
    for a, b in zip(trained.backbone.layer.weights, initial.backbone.layer.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in
               zip(trained.head.weights, initial.head.weights, strict=True))


def test_finetune_phase_changes_top_blocks_but_not_batchnorm_statistics(tmp_path, untrained):
    config = tiny_config(head_epochs=0, finetune_epochs=1, unfreeze_blocks=2,
                         finetune_learning_rate=0.01)
    trained = train_lib.train_and_evaluate(config, str(tmp_path)).classifier.backbone.layer
    initial = untrained.classifier.backbone.layer
    changed = {w.path for w, v in zip(trained.weights, initial.weights, strict=True)
               if not np.array_equal(w.numpy(), v.numpy())}
    assert any("conv_pw_13" in p for p in changed)
    assert not any("conv1/" in p or "conv_dw_1/" in p for p in changed), "low blocks frozen"
    assert not any("moving" in p for p in changed), "BatchNorm statistics frozen"


def test_cached_and_uncached_head_phase_agree(tmp_path):
    config = tiny_config(head_epochs=2, finetune_epochs=0, dropout=0.0)
    cached = train_lib.train_and_evaluate(config, str(tmp_path / "a"))
    direct = train_lib.train_and_evaluate(config.replace(cache_features="off"),
                                          str(tmp_path / "b"))
    for a, b in zip(cached.classifier.head.weights, direct.classifier.head.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


# Several steps per call run the same ops on the same batches; only the op schedule differs.
STEPS_PER_CALL_ATOL = 1e-6


@pytest.mark.parametrize("cache", ["memory", "off"])
def test_steps_per_execution_trains_the_same_model(tmp_path, cache):
    """64 examples / batch 16 = 4 steps an epoch: 3 steps per call gives calls of 3 + 1 steps,
    and a checkpoint every 2 steps cuts them to 2 + 2; both must match one step per call."""
    config = tiny_config(head_epochs=2, finetune_epochs=1, cache_features=cache)
    runs = [train_lib.train_and_evaluate(
                config.replace(steps_per_execution=spe, checkpoint_every_steps=every),
                str(tmp_path / f"{spe}_{every}"))
            for spe, every in [(1, 0), (3, 0), (3, 2)]]
    reference = runs[0]
    for run in runs[1:]:
        for a, b in zip(reference.classifier.model.weights, run.classifier.model.weights,
                        strict=True):
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=0, atol=STEPS_PER_CALL_ATOL)
        for phase, rows in reference.metrics["phases"].items():
            for want, got in zip(rows, run.metrics["phases"][phase], strict=True):
                assert got["global_step"] == want["global_step"]
                assert got["loss"] == pytest.approx(want["loss"], abs=STEPS_PER_CALL_ATOL)
                assert got["val_accuracy"] == want["val_accuracy"]


def test_zero_epoch_phases_and_parameter_counts(untrained):
    assert untrained.metrics["phases"] == {"head": [], "finetune": []}
    assert untrained.metrics["parameters"]["head_trainable"] == count_params(
        untrained.classifier.head.trainable_weights)


def test_augment_head_turns_the_feature_cache_off(tmp_path, capsys):
    config = tiny_config(head_epochs=1, finetune_epochs=0, augment=("flip",), augment_head=True,
                         verbosity=1)
    train_lib.train_and_evaluate(config, str(tmp_path))
    assert "Feature cache off: --augment_head" in capsys.readouterr().out


def test_mixed_bfloat16_trains_with_float32_outputs_and_restores_the_policy(tmp_path):
    config = tiny_config(head_epochs=1, finetune_epochs=1, mixed_precision="mixed_bfloat16")
    result = train_lib.train_and_evaluate(config, str(tmp_path))
    dense = result.classifier.head.get_layer("head_dense_0")
    assert dense.compute_dtype == "bfloat16" and dense.kernel.dtype == "float32"
    assert result.classifier.model.output.dtype == "float32"
    assert np.isfinite(result.metrics["test"]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"


def test_the_public_entry_point_validates_so_finetune_runs_at_its_fraction_of_the_head_rate(
        tmp_path):
    """``Config().replace(...)`` is not validated; the finetune rate 0 means "head x 0.3"."""
    import tfft

    config = tiny_config(head_epochs=0, finetune_epochs=1).replace(
        head_learning_rate=0.002, finetune_learning_rate=0.0)
    result = tfft.train_and_evaluate(config, str(tmp_path))
    assert result.metrics["phases"]["finetune"][0]["learning_rate"] == pytest.approx(0.0006)


def test_a_run_passes_the_test_split_through_the_model_once(tmp_path, monkeypatch):
    """Counts the test examples read: one pass (metrics, report, TensorBoard all use its
    predictions) plus the raw images of the report's grid, which no model sees."""
    import dataclasses

    import tensorflow as tf

    from tfft import data as data_lib
    from tfft import report

    reads: list[int] = []
    original = data_lib.load_splits

    def count(image, label):
        label = tf.py_function(lambda v: (reads.append(1), v)[1], [label], tf.int32)
        return image, tf.ensure_shape(label, [])

    def counted_splits(cfg, seed):
        splits = original(cfg, seed)
        return dataclasses.replace(splits, test=splits.test.map(count))

    monkeypatch.setattr(data_lib, "load_splits", counted_splits)
    config = tiny_config(head_epochs=1, finetune_epochs=0, max_eval_examples=48,
                         tensorboard=False)
    result = train_lib.train_and_evaluate(config, str(tmp_path))
    assert result.metrics["test"]["examples"] == 48
    assert len(reads) == 48 + report.SAMPLE_COUNT


def test_lr_find_sets_its_run_up_as_training_does(tmp_path, monkeypatch):
    """Both go through ``phases.setup_run`` (seeds, precision policy, CPU devices, splits)."""
    import contextlib

    from tfft import lr_find, phases

    policies: list[str] = []
    original = phases.setup_run

    @contextlib.contextmanager
    def spy(config, strategy=None):
        with original(config, strategy) as run:
            policies.append(keras.mixed_precision.global_policy().name)
            yield run

    monkeypatch.setattr(phases, "setup_run", spy)
    config = tiny_config(head_epochs=1, finetune_epochs=0, mixed_precision="mixed_bfloat16")
    train_lib.train_and_evaluate(config, str(tmp_path / "train"))
    lr_find.find(config, "head", str(tmp_path / "lr_find"), steps=5)
    assert policies == ["mixed_bfloat16", "mixed_bfloat16"]
    assert keras.mixed_precision.global_policy().name == "float32"


def test_cli_with_a_shipped_config_by_bare_name_trains_and_logs_one_line_per_epoch(tmp_path):
    """One CLI run checks three things: ``--flagfile=quickstart.cfg`` is found among the shipped
    configs from another cwd; the run ends printing the test accuracy; and stdout redirected
    (CI logs, nohup) gets no bar redraws, a few lines per epoch."""
    log = tmp_path / "train.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tfft.train", "--flagfile=quickstart.cfg",
             f"--workdir={tmp_path / 'run'}", "--image_size=32", "--head_epochs=3",
             "--finetune_epochs=2", "--max_train_examples=160", "--max_eval_examples=32",
             "--batch_size=16", "--steps_per_execution=1", "--verbosity=1"],
            cwd=str(tmp_path), env=env, stdout=out, stderr=subprocess.PIPE, text=True,
            timeout=600)
    assert done.returncode == 0, done.stderr
    assert os.path.exists(tmp_path / "run" / "metrics.json")
    text = log.read_text()
    last_lines = text.strip().splitlines()[-3:]
    assert any(line.startswith("Test accuracy:") for line in last_lines), last_lines
    assert "trainable: head phase" in text
    assert "\r" not in text and "\b" not in text
    epochs = 3 + 2
    assert len(text.splitlines()) <= 3 * epochs + 20, text
    assert len(text) < 6000, len(text)
