"""Multi-worker input sharding and resume.

In-process: each worker's pipeline (``make_batches`` with the ``InputContext`` TensorFlow would
hand it) reads and decodes only its share, and the workers' batches of step k, put together, are
the default strategy's global batch k, in order, for every split size (short last batches,
tails smaller than the replicas, several replicas per worker).

Through ``tfft.launch`` (2 local workers, ``large``): each worker's summary reports its share,
the metrics equal a single worker's, and a cluster SIGKILLed twice at random moments and rerun
with the same command ends with the metrics.json of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, tiny_config, write_image_folder

from tfft import data, distribute, launch
from tfft.errors import UserError

GLOBAL_BATCH = 16


def _normalize(images: tf.Tensor) -> tf.Tensor:
    return images / 255.0


def _context(worker: int, workers: int = 2, local_replicas: int = 1) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(workers, worker, workers * local_replicas)


def _raw(n: int) -> tf.data.Dataset:
    """``n`` distinct 8x8 images whose labels are their index."""
    images = np.arange(n * 64, dtype=np.uint8).reshape(n, 8, 8, 1) % 251
    return tf.data.Dataset.from_tensor_slices((images, np.arange(n, dtype=np.int32)))


def _cfg(batch_size: int = GLOBAL_BATCH):
    return tiny_config(batch_size=batch_size, image_size=8, shuffle_buffer=1000).data


def _batches(ds: tf.data.Dataset, cfg, ctx=None, seed: int = 3) -> list[tuple]:
    built = data.make_batches(ds, cfg, _normalize, training=True, seed=seed, input_context=ctx)
    return [(x.numpy(), y.numpy()) for x, y in built]


def _worker_steps(raw: tf.data.Dataset, cfg, workers: int, local: int) -> list[list[tuple]]:
    """Per worker, its per-replica batches as the distributed iterator consumes them."""
    examples = int(raw.cardinality())
    result = []
    for w in range(workers):
        ctx = _context(w, workers, local)
        passes = distribute.WorkerBatches(
            lambda c: data.make_batches(
                raw, cfg, _normalize, training=True, seed=3, input_context=c
            ),
            examples,
            cfg.batch_size,
            workers * local,
        )
        result.append([(x.numpy(), y.numpy()) for x, y in passes.for_worker(ctx)])
    return result


@pytest.mark.parametrize(
    "examples, workers, local",
    [
        (57, 2, 1),  # last batch 9: 5 + 4
        (49, 2, 1),  # last batch 1 < 2 replicas: joins the step before (17: 9 + 8)
        (64, 2, 1),  # no partial batch
        (49, 2, 2),  # 2 replicas per worker (4 in all), last batch 1 joins the step before
        (61, 2, 4),  # 8 replicas, last batch 13 over 8 replicas
        (38, 4, 1),  # 4 workers: last batch 6 = 2 + 2 + 1 + 1
    ],
)
def test_union_of_worker_batches_is_the_global_batch_in_order(examples, workers, local):
    raw, cfg = _raw(examples), _cfg()
    reference = _batches(raw, cfg)
    per_worker = _worker_steps(raw, cfg, workers, local)
    steps, last = distribute.global_steps(examples, GLOBAL_BATCH, workers * local)
    for batches in per_worker:
        assert len(batches) == steps * local  # every replica a batch in every step
        assert all(len(y) > 0 for _, y in batches)
    if last > GLOBAL_BATCH:  # a tail smaller than the replicas joined the step before
        reference[-2:] = [
            tuple(np.concatenate(parts) for parts in zip(*reference[-2:], strict=True))
        ]
    assert len(reference) == steps
    for k, (x, y) in enumerate(reference):
        parts = [b for batches in per_worker for b in batches[k * local : (k + 1) * local]]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)


def test_skipped_steps_and_cardinality_follow_the_global_steps():
    raw, cfg = _raw(57), _cfg()
    passes = distribute.WorkerBatches(
        lambda c: data.make_batches(raw, cfg, _normalize, training=True, seed=3, input_context=c),
        57,
        GLOBAL_BATCH,
        2,
    )
    assert passes.cardinality() == 4 and passes.skip(3).cardinality() == 1
    full = [y.numpy() for _, y in passes.for_worker(_context(1))]
    skipped = [y.numpy() for _, y in passes.skip(2).for_worker(_context(1))]
    assert len(skipped) == 2
    for got, want in zip(skipped, full[2:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_each_worker_decodes_only_its_share(tmp_path, monkeypatch):
    """Image files: the paths that reach decoding on each worker are its share alone."""
    folder = write_image_folder(str(tmp_path / "images"), {"a": 11, "b": 10}, size=12)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)
    raw = tf.data.Dataset.from_tensor_slices((paths, np.zeros(len(paths), np.int32)))
    decoded: list[str] = []
    real_load = data.load_images

    def recording_load(ds: tf.data.Dataset) -> tf.data.Dataset:
        def record(path: tf.Tensor) -> tf.Tensor:
            decoded.append(path.numpy().decode())
            return path

        seen = ds.map(lambda p, y: (tf.py_function(record, [p], tf.string), y))
        return real_load(seen.map(lambda p, y: (tf.ensure_shape(p, []), y)))

    monkeypatch.setattr(data, "load_images", recording_load)
    cfg, shares = _cfg(batch_size=4), []
    for w in (0, 1):
        decoded.clear()
        _batches(raw, cfg, _context(w))
        shares.append(list(decoded))
        assert len(decoded) == distribute.shard_count(len(paths), _context(w), 4)
    assert [len(s) for s in shares] == [11, 10]  # 5 steps of 2 + 2, then 1 for worker 0
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == paths


def test_batch_not_a_multiple_of_the_replicas_and_a_split_smaller_than_them_are_refused():
    with pytest.raises(UserError, match=r"--batch_size: expected a multiple of the 4 replicas"):
        distribute.per_replica_batch(_context(0, 2, 2), 18)
    with pytest.raises(UserError, match=r"a split of 3 example\(s\) cannot feed the 4"):
        distribute.global_steps(3, 16, 4)
    assert distribute.global_steps(17, 16, 2) == (1, 17)
    assert distribute.global_steps(18, 16, 2) == (2, 2)
    assert distribute.global_steps(0, 16, 2) == (0, 0)


# ------------------------------------------------------------------ 2-worker cluster (large)

# SGD and no dropout: the replicas' summed gradients then differ from one worker's only by float
# rounding. 57 training examples at batch 16 end each epoch with a batch of 9 (5 + 4); the
# evaluation splits of 25 with one of 9. Step checkpoints every 2 steps, so a kill can land
# mid-epoch, and the head trains through the backbone (no feature cache): every pass is sharded.
FLAGS = [
    "--dataset=sample:mnist",
    "--backbone=mobilenet",
    "--alpha=0.25",
    "--weights=imagenet",
    "--image_size=32",
    "--batch_size=16",
    "--head_units=16",
    "--head_epochs=2",
    "--finetune_epochs=2",
    "--unfreeze_blocks=2",
    "--max_train_examples=57",
    "--max_eval_examples=25",
    "--cache_features=off",
    "--checkpoint_every_steps=2",
    "--optimizer=sgd",
    "--head_learning_rate=0.1",
    "--finetune_learning_rate=0.05",
    "--dropout=0",
    "--verbosity=1",
    "--export=false",  # the chief's export after a cluster run: test_distribute checks it
]
ATOL = 1e-5  # measured max difference to one worker: see test_two_workers_match_one_worker
TIMEOUT_S = 300
EPOCH_LINE = r"\[worker 0\]   (head|finetune) epoch \d+:"


def _env(tmp) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT, "TMPDIR": str(tmp)}


def _launch(workdir, tmp, kill_after: str = "", delay_s: float = 0.0) -> tuple[int, str]:
    """``python -m tfft.launch`` (its own process group); with ``kill_after``, the whole group
    is SIGKILLed ``delay_s`` after the first output line matching it."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tfft.launch",
            "--num_workers=2",
            f"--timeout_s={TIMEOUT_S}",
            "--",
            *FLAGS,
            f"--workdir={workdir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(tmp),
        cwd=ROOT,
        start_new_session=True,
    )
    lines, killer = [], None
    for line in proc.stdout:
        lines.append(line)
        if kill_after and killer is None and re.search(kill_after, line):
            killer = threading.Timer(delay_s, os.killpg, (proc.pid, signal.SIGKILL))
            killer.start()
    proc.wait(timeout=TIMEOUT_S)
    if killer:
        killer.join()
    return proc.returncode, "".join(lines)


def _metrics(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    """An uninterrupted 2-worker run: (its workdir, its log, its TMPDIR)."""
    root = tmp_path_factory.mktemp("cluster")
    (root / "tmp").mkdir()
    status, log = _launch(root / "run", root / "tmp")
    assert status == 0, log[-3000:]
    return root / "run", log, root / "tmp"


@pytest.mark.large
def test_two_workers_read_their_share_and_match_one_worker(cluster_run, tmp_path):
    workdir, log, tmp = cluster_run
    assert "[worker 0] Input: worker 0 of 2 reads 29 of 57 training examples per epoch" in log
    assert "[worker 1] Input: worker 1 of 2 reads 28 of 57 training examples per epoch" in log
    assert not [p for p in os.listdir(tmp) if p.startswith("tfft-worker-")]
    proc = subprocess.run(
        [sys.executable, "-m", "tfft.train", *FLAGS, f"--workdir={tmp_path / 'one'}"],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=ROOT,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = _metrics(workdir), _metrics(tmp_path / "one")
    for phase in ("head", "finetune"):
        assert len(got["phases"][phase]) == len(want["phases"][phase]) == 2
        for g, w in zip(got["phases"][phase], want["phases"][phase], strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert g[key] == pytest.approx(w[key], abs=ATOL), (phase, key)
            assert g["global_step"] == w["global_step"]
    assert got["test"]["examples"] == want["test"]["examples"] == 25
    assert got["test"]["loss"] == pytest.approx(want["test"]["loss"], abs=ATOL)
    assert got["test"]["accuracy"] == pytest.approx(want["test"]["accuracy"], abs=ATOL)
    first = want["phases"]["head"][0]["loss"]
    assert abs(want["phases"]["finetune"][-1]["loss"] - first) > 1000 * ATOL  # it trained


@pytest.mark.large
def test_cluster_killed_twice_resumes_to_the_uninterrupted_metrics(cluster_run, tmp_path):
    """SIGKILL of the launcher's whole process group at two random moments (a random delay
    after an epoch line), each time rerunning the same command; then the same command again."""
    reference, _, _ = cluster_run
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    workdir, tmp = tmp_path / "run", tmp_path / "tmp"
    tmp.mkdir()
    logs = []
    for trigger, delay in (
        (r"\[worker 0\]   head epoch 1:", rng.uniform(0, 1.0)),
        (EPOCH_LINE, rng.uniform(0, 0.8)),
    ):
        status, log = _launch(workdir, tmp, kill_after=trigger, delay_s=delay)
        logs.append(log)
        assert status == -signal.SIGKILL, (seed, log[-3000:])
        assert not os.path.exists(os.path.join(workdir, "metrics.json"))
    status, log = _launch(workdir, tmp)
    assert status == 0, (seed, log[-3000:])
    resumed = "".join(logs[1:]) + log
    for i in (0, 1):  # both workers resumed from the chief's record
        assert re.search(
            rf"\[worker {i}\] (Resuming phase|Phase head: already finished)", resumed
        ), (seed, resumed[-3000:])
    got, want = _metrics(workdir), _metrics(reference)
    assert [r["epoch"] for r in got["phases"]["head"] + got["phases"]["finetune"]] == [1, 2, 1, 2]
    assert got == want, seed
    assert not [p for p in os.listdir(tmp) if p.startswith("tfft-worker-")]


@pytest.mark.large
def test_workers_that_see_different_workdirs_refuse_to_resume(cluster_run, tmp_path):
    """The chief's --workdir holds an interrupted run, worker 1's is empty (as on a disk of its
    own machine): both stop with one line instead of training from different points."""
    reference, _, _ = cluster_run
    chief_dir = tmp_path / "chief"
    shutil.copytree(reference, chief_dir)
    os.remove(chief_dir / "metrics.json")
    record = {
        "phase": "finetune",
        "epoch": 1,
        "step": 0,
        "done": False,
        "global_step": 16,
        "checkpoint": "missing",
        "history": {},
    }
    (chief_dir / "progress.json").write_text(json.dumps(record))
    commands = [
        launch.train_command([*FLAGS, f"--workdir={d}"]) for d in (chief_dir, tmp_path / "worker")
    ]
    out = io.StringIO()
    status, _ = launch.run_workers(commands, TIMEOUT_S, out=out, env=_env(tmp_path))
    assert status == 2, out.getvalue()[-3000:]
    assert "the workers found different runs" in out.getvalue()
