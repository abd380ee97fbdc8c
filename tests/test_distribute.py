"""tf.distribute: every strategy runs the same training as the default one, on CPU.

Mirrored over 2 logical CPU devices and a 2-worker MultiWorkerMirroredStrategy cluster (two local
processes, ``tfft.launch``) train both phases of a tiny run and must reproduce the single-device
run with the same seed and global batch. The training set has 57 examples at global batch 16, so
each phase ends with a partial batch of 9 that the 2 replicas split unevenly (5 + 4).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import PINNED_RECIPE, ROOT, tiny_config

from tfft import distribute, launch, train_lib
from tfft.classifier import unfreeze_top_blocks
from tfft.errors import UserError
from tfft.rundir import EXPORT as DEFAULT_SUBDIR

# SGD (linear in the gradients) so float rounding differences from summing the replicas'
# gradients in another order stay at float32 rounding level instead of being amplified.
SETTINGS = dict(optimizer="sgd", head_learning_rate=0.05, finetune_learning_rate=0.02,
                max_train_examples=57, dropout=0.0, unfreeze_blocks=2)
FLAGS = ["--dataset=sample:mnist", "--backbone=mobilenet", "--alpha=0.25", "--weights=imagenet",
         "--image_size=32", "--batch_size=16", "--head_units=16", "--head_epochs=1",
         "--finetune_epochs=1", "--max_eval_examples=32",
         *(f"--{k}={v}" for k, v in SETTINGS.items()),
         # the recipe tiny_config pins, so the CLI runs what the in-process reference runs
         *(f"--{k}={v}" for k, v in PINNED_RECIPE.items() if not isinstance(v, tuple))]
ATOL = 1e-5  # observed max difference ~6e-8; a misweighted partial batch gives ~5e-2
SUBPROCESS_TIMEOUT_S = 400

MIRRORED_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from tfft import distribute
distribute.configure_cpu_devices(2)
import numpy as np
from conftest import tiny_config
from tfft import train_lib
from tfft.classifier import unfreeze_top_blocks
config = tiny_config(strategy="mirrored", verbosity=1, **{settings!r})
result = train_lib.train_and_evaluate(config, {workdir!r})
unfreeze_top_blocks(result.classifier, config.finetune.unfreeze_blocks)
np.savez({weights!r}, *[w.numpy() for w in result.classifier.model.trainable_weights])
"""


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


def _finetuned_weights(result: train_lib.RunResult) -> list[np.ndarray]:
    """The head and the unfrozen top blocks: everything either phase trains."""
    unfreeze_top_blocks(result.classifier, result.config.finetune.unfreeze_blocks)
    weights = [w.numpy() for w in result.classifier.model.trainable_weights]
    result.classifier.backbone.layer.trainable = False
    return weights


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory) -> train_lib.RunResult:
    """The reference: the default strategy, same seed and global batch."""
    workdir = str(tmp_path_factory.mktemp("default"))
    return train_lib.train_and_evaluate(tiny_config(**SETTINGS), workdir)


def test_mirrored_over_two_cpu_devices_matches_the_default_strategy(single_device_run, tmp_path):
    """Both phases under MirroredStrategy on 2 logical CPUs; weights equal within atol 1e-5.

    The CPU split must happen before TensorFlow initialises, hence a subprocess.
    """
    weights_file = str(tmp_path / "mirrored.npz")
    script = MIRRORED_SCRIPT.format(tests=os.path.join(ROOT, "tests"), settings=SETTINGS,
                                    workdir=str(tmp_path / "run"), weights=weights_file)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=_env(), timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Strategy mirrored: 2 replica(s); global batch 16, per replica 8" in proc.stdout

    with np.load(weights_file) as npz:
        mirrored = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    reference = _finetuned_weights(single_device_run)
    assert [w.shape for w in mirrored] == [w.shape for w in reference]
    for got, want in zip(mirrored, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [len(metrics["phases"][p]) for p in ("head", "finetune")] == [1, 1]
    _assert_same_metrics(metrics, single_device_run.metrics)


def test_reference_run_trains_what_is_compared(single_device_run):
    """The compared weights moved far more than the tolerance, so the comparison can fail."""
    initial = train_lib.train_and_evaluate(
        tiny_config(**{**SETTINGS, "head_epochs": 0, "finetune_epochs": 0}),
        single_device_run.workdir + "-untrained")
    trained, untrained = _finetuned_weights(single_device_run), _finetuned_weights(initial)
    moved = [float(np.abs(a - b).max()) for a, b in zip(trained, untrained, strict=True)]
    backbone_moved = moved[:-4]  # the last four are the head's two Dense layers
    assert min(moved[-4:]) > 100 * ATOL and max(backbone_moved) > 100 * ATOL, moved


def test_two_local_workers_match_a_single_worker_and_only_the_chief_writes(
        single_device_run, tmp_path):
    """MultiWorkerMirroredStrategy, 2 processes via tfft.launch: same metrics (loss atol 1e-4).

    Each worker gets its own --workdir here so the non-chief's can be checked: it must not be
    created, and the temporary directory the worker trained in must be gone.
    """
    chief_dir, worker_dir, tmp = tmp_path / "chief", tmp_path / "worker", tmp_path / "tmp"
    tmp.mkdir()
    commands = [launch.train_command([*FLAGS, f"--workdir={d}"]) for d in (chief_dir, worker_dir)]
    out = io.StringIO()
    status, failed = launch.run_workers(commands, SUBPROCESS_TIMEOUT_S, out=out,
                                        env={"TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "2"})
    log = out.getvalue()
    assert (status, failed) == (0, None), log[-3000:]
    for i in (0, 1):
        assert (f"[worker {i}] Strategy multi_worker: 2 replica(s); global batch 16, "
                "per replica 8") in log
    written = set(os.listdir(chief_dir))
    assert {"config.json", "metrics.json", "model.keras", DEFAULT_SUBDIR} <= written
    assert not worker_dir.exists()
    assert not [p for p in os.listdir(tmp) if p.startswith("tfft-worker-")]
    metrics = json.loads((chief_dir / "metrics.json").read_text())
    _assert_same_metrics(metrics, single_device_run.metrics)


def _assert_same_metrics(got: dict, want: dict) -> None:
    for phase in ("head", "finetune"):
        assert len(got["phases"][phase]) == len(want["phases"][phase]) == 1
        for g, w in zip(got["phases"][phase], want["phases"][phase], strict=True):
            assert g["loss"] == pytest.approx(w["loss"], abs=1e-4)
            assert g["val_loss"] == pytest.approx(w["val_loss"], abs=1e-4)
    assert got["test"]["examples"] == want["test"]["examples"]
    assert got["test"]["loss"] == pytest.approx(want["test"]["loss"], abs=1e-4)
    assert got["test"]["accuracy"] == pytest.approx(want["test"]["accuracy"], abs=1.01 / 32)


# ------------------------------------------------------------------ one-line errors, fast


def _train_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfft.train", *args], capture_output=True,
                          text=True, env=_env(), timeout=timeout, cwd=ROOT)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tfft: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0]


def test_unknown_strategy_and_tpu_without_address_are_one_line_errors(tmp_path):
    _one_line_error(_train_cli("--strategy=magic", f"--workdir={tmp_path}"), "--strategy",
                    "mirrored", "'magic'")
    _one_line_error(_train_cli("--strategy=tpu", f"--workdir={tmp_path}"), "--tpu", "local")


def test_tpu_that_does_not_answer_fails_fast_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    start = time.monotonic()
    proc = _train_cli("--strategy=tpu", f"--tpu=grpc://127.0.0.1:{port}",
                      f"--workdir={tmp_path / 'run'}")
    _one_line_error(proc, "--tpu", f"grpc://127.0.0.1:{port}")
    assert time.monotonic() - start < 100
    assert not (tmp_path / "run").exists()


def test_more_gpus_than_visible_is_a_user_error():
    import tensorflow as tf

    visible = len(tf.config.list_logical_devices("GPU"))
    with pytest.raises(UserError, match=rf"--num_gpus: expected at most the {visible} visible"):
        distribute.make_strategy(tiny_config(strategy="mirrored", num_gpus=visible + 1).run)


def test_multi_worker_without_tf_config_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in _env().items() if k != "TF_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "tfft.train", "--strategy=multi_worker",
                           f"--workdir={tmp_path}"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    _one_line_error(proc, "TF_CONFIG", "tfft.launch")


# ------------------------------------------------------------------ launcher


def test_tf_configs_name_distinct_free_local_ports():
    configs = [json.loads(c) for c in launch.tf_configs(launch.free_ports(3))]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"] == configs[0]["cluster"] for c in configs)


def test_launcher_refuses_another_strategy():
    proc = subprocess.run([sys.executable, "-m", "tfft.launch", "--", "--strategy=mirrored"],
                          capture_output=True, text=True, env=_env(), timeout=60, cwd=ROOT)
    _one_line_error(proc, "--strategy", "multi_worker", "mirrored")


def test_launcher_exits_with_a_failing_workers_status_and_prefixes_output():
    proc = subprocess.run([sys.executable, "-m", "tfft.launch", "--num_workers=2", "--",
                           "--batch_size=0"], capture_output=True, text=True, env=_env(),
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert any(line.startswith("[worker ") and "--batch_size" in line
               for line in proc.stdout.splitlines())
    assert proc.stderr.strip().splitlines()[-1].startswith("tfft: error: worker ")


def test_one_failed_worker_stops_the_others_and_a_timeout_stops_all():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    failing = [sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"]
    out = io.StringIO()
    start = time.monotonic()
    assert launch.run_workers([sleeper, failing], 60, out=out) == (3, 1)
    assert launch.run_workers([sleeper, sleeper], 1, out=out) == (launch.EXIT_TIMEOUT, None)
    assert time.monotonic() - start < 45
    assert "[worker 1] bad input" in out.getvalue()


def test_is_chief_follows_tf_config(monkeypatch):
    def strategy(task_type, task_id):
        resolver = SimpleNamespace(task_type=task_type, task_id=task_id)
        return SimpleNamespace(cluster_resolver=resolver)

    workers = {"cluster": {"worker": ["a:1", "b:2"]}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(workers))
    assert distribute.is_chief(strategy("worker", 0))
    assert not distribute.is_chief(strategy("worker", 1))
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {**workers["cluster"],
                                                            "chief": ["c:3"]}}))
    assert distribute.is_chief(strategy("chief", 0))
    assert not distribute.is_chief(strategy("worker", 0))
    assert distribute.is_chief(SimpleNamespace())
