"""What an export costs on disk: each weight once, and the disk space it needs.

A SavedModel version used to hold every weight twice (the Keras variables that
``ExportArchive.track(model)`` lists and the ``tf.Variable``s the signatures capture), and TF
Serving loaded both copies. The export is also refused, in one line, when it would not fit, and a
disk that fills up while it is written ends in one line leaving nothing half-written behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

import tfft
from tfft import backbones, classifier, diskspace, export, publishing, train_lib
from tfft.errors import UserError
from tfft.preprocess import preprocess_images

NAMES = [f"class{i}" for i in range(5)]
# Bookkeeping entries of a checkpoint that are not weights.
BOOKKEEPING = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")


def build_model(config, strategy: tf.distribute.Strategy | None = None) -> classifier.Classifier:
    """A classifier over the configured backbone, untrained (weights do not matter here)."""
    keras.utils.set_random_seed(3)
    size = config.data.image_size
    with (strategy or tf.distribute.get_strategy()).scope():
        backbone = backbones.build_backbone(config.model, size)
        return classifier.build_classifier(backbone, len(NAMES), config.model, size)


def saved_values(version_dir: str) -> int:
    """Element count of the weights a SavedModel stores."""
    entries = tf.train.list_variables(os.path.join(version_dir, "variables", "variables"))
    return sum(int(np.prod(shape)) for name, shape in entries
               if not name.startswith(BOOKKEEPING))


def tree_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def live_probabilities(clf: classifier.Classifier, pixels: np.ndarray, size: int) -> np.ndarray:
    inputs = preprocess_images(tf.constant(pixels), size, clf.backbone.normalize)
    return clf.model(inputs, training=False).numpy()


def assert_serves_like(clf: classifier.Classifier, version_dir: str, size: int) -> None:
    """Both signatures are there and ``serve_pixels`` gives the live model's probabilities."""
    loaded = tf.saved_model.load(version_dir)
    assert {"serving_default", "serve_pixels"} <= set(loaded.signatures)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    out = loaded.signatures["serve_pixels"](pixels=tf.constant(pixels))
    reference = live_probabilities(clf, pixels, size)
    assert np.max(np.abs(out["probabilities"].numpy() - reference)) <= 1e-5


BACKBONES = {
    "mobilenet": dict(backbone="mobilenet", alpha=0.25, weights="imagenet"),
    "mobilenet_v2": dict(backbone="mobilenet_v2", alpha=0.35, weights="none"),
    "vgg16": dict(backbone="vgg16", weights="none"),
    "hub": dict(backbone="hub", weights="none"),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_export_holds_each_weight_once(name, tmp_path, request):
    overrides = dict(BACKBONES[name], image_size=32)
    if name == "hub":
        overrides["hub_handle"] = request.getfixturevalue("hub_feature_vector")
    config = tiny_config(**overrides)
    clf = build_model(config)
    version_dir = export.export_model(clf.model, NAMES, config, str(tmp_path / "export"))
    params = clf.model.count_params()
    assert saved_values(version_dir) == params, f"{saved_values(version_dir) / params:.2f}x"
    variables_bytes = tree_bytes(os.path.join(version_dir, "variables"))
    assert variables_bytes <= 1.02 * 4 * params + 512 * len(clf.model.weights)
    assert tree_bytes(version_dir) <= export.estimated_bytes(clf.model)
    reloaded = tf.saved_model.load(version_dir)
    assert len(reloaded.variables) == len(clf.model.weights)
    assert len(reloaded.trainable_variables) == len(clf.model.trainable_weights)
    assert_serves_like(clf, version_dir, 32)


def test_a_model_built_under_a_distribution_strategy_is_exported_once(tmp_path):
    """Its weights are distributed variables; the serving graphs capture one replica of each."""
    config = tiny_config()
    clf = build_model(config, tf.distribute.MirroredStrategy(["/cpu:0"]))
    version_dir = export.export_model(clf.model, NAMES, config, str(tmp_path / "export"))
    assert saved_values(version_dir) == clf.model.count_params()
    assert_serves_like(clf, version_dir, 32)


# ---------------------------------------------------------------- disk space, in process


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    return config, build_model(config)


def test_an_export_that_does_not_fit_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    config, clf = tiny
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 3 << 20)
    monkeypatch.setattr(keras.export, "ExportArchive", None)  # building one would be work
    export_dir = str(tmp_path / "export")
    with pytest.raises(UserError) as err:
        export.export_model(clf.model, NAMES, config, export_dir)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{export_dir}: not enough free space")
    assert not os.path.exists(export_dir)


def no_space_writing_labels(real_open):
    def fake_open(path, *args, **kwargs):
        if str(path).endswith(export.LABELS_FILE):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *args, **kwargs)
    return fake_open


def no_space_in_the_saved_model_writer(real_save):
    def fake_save(obj, export_dir, *args, **kwargs):
        real_save(obj, export_dir, *args, **kwargs)  # half-written: the files are there
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{export_dir}/saved_model.pb.tmp123; No space left on device")
    return fake_save


@pytest.mark.parametrize("fault", ["labels.txt", "saved_model"])
def test_a_full_disk_while_writing_leaves_nothing_behind(fault, tiny, tmp_path, monkeypatch):
    config, clf = tiny
    export_dir = str(tmp_path / "export")
    if fault == "labels.txt":
        monkeypatch.setattr(export, "open", no_space_writing_labels(open), raising=False)
    else:
        monkeypatch.setattr(tf.saved_model, "save", no_space_in_the_saved_model_writer(
            tf.saved_model.save))
    with pytest.raises(UserError) as err:
        export.export_model(clf.model, NAMES, config, export_dir)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{export_dir}: the disk is full")
    assert os.listdir(export_dir) == []
    monkeypatch.undo()  # space freed
    version_dir = export.export_model(clf.model, NAMES, config, export_dir)
    assert os.listdir(export_dir) == ["1"] and version_dir == os.path.join(export_dir, "1")
    assert_serves_like(clf, version_dir, 32)


# ---------------------------------------------------------------- disk space, command line


@pytest.fixture
def small_fs(tmp_path) -> Iterator[str]:
    """A real 24 MB tmpfs (this needs root, as here and in CI): room for one tiny export."""
    mount = tmp_path / "small_fs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (not root); the full-disk paths are "
                    "covered by the in-process tests")
    try:
        yield str(mount)
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[str, train_lib.RunResult]:
    workdir = str(tmp_path_factory.mktemp("untrained_run"))
    return workdir, tfft.train_and_evaluate(tiny_config(head_epochs=0, finetune_epochs=0), workdir)


SPACE_TAKEN_AFTER_THE_CHECK = (
    "import shutil\n"
    "real = shutil.disk_usage\n"
    "shutil.disk_usage = lambda path: real(path)._replace(free=1 << 40)\n")


def export_command(workdir: str, export_dir: str, tmp_path, race: bool = False):
    """``python -m tfft.export`` as a user runs it; ``race``: the free-space check sees plenty
    (another process fills the disk after it), through a ``sitecustomize`` on the path."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as users run it
    if race:
        site = tmp_path / "race_site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SPACE_TAKEN_AFTER_THE_CHECK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "tfft.export", f"--workdir={workdir}",
                           f"--export_dir={export_dir}"], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)


def fill(mount: str, leave: int) -> str:
    """A file that takes all but ``leave`` bytes of the filesystem at ``mount``."""
    filler = os.path.join(mount, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (diskspace.free_bytes(mount) - leave))
    return filler


def test_command_line_small_and_full_disk_in_one_line_then_the_export_works(
        run_dir, small_fs, tmp_path):
    workdir, result = run_dir
    export_dir = os.path.join(small_fs, "export")
    filler = fill(small_fs, 1 << 20)  # 1 MB left; the export needs about 2 MB
    refused = export_command(workdir, export_dir, tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"tfft: error: {export_dir}: not enough free space for"), lines
    assert not os.path.exists(export_dir)
    full = export_command(workdir, export_dir, tmp_path, race=True)
    assert full.returncode == 2, full.stderr[-2000:]
    lines = full.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"tfft: error: {export_dir}: the disk is full"), lines
    assert os.listdir(export_dir) == []  # no version, no temporary directory
    os.remove(filler)
    done = export_command(workdir, export_dir, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == os.path.join(export_dir, "1")
    assert os.listdir(export_dir) == ["1"]
    assert not any(n.startswith(publishing.TMP_PREFIX) for n in os.listdir(export_dir))
    assert_serves_like(result.classifier, os.path.join(export_dir, "1"), 32)
