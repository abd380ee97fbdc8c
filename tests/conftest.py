"""Shared fixtures: tiny configs, generated image folders, a local TF-Hub feature vector."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfft.config import Config, validate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


# The recipe fields whose defaults bench.compare chooses; tests set them where they test them.
PINNED_RECIPE = dict(augment=(), ema_decay=0.0, lr_schedule="constant", label_smoothing=0.0,
                     finetune_batchnorm=False, discriminative_lr_factor=1.0)


def tiny_config(**overrides) -> Config:
    """A seconds-long run: 32 px, MobileNet v1 (alpha 0.25, bundled ImageNet weights), few examples.

    Real weights, because random-init MobileNet features collapse to ~0 in inference mode. The
    recipe is pinned (no augmentation, EMA, schedule or BatchNorm training) so that tests stay
    what they say when the product's defaults change.
    """
    values = dict(
        dataset="sample:mnist", backbone="mobilenet", alpha=0.25, weights="imagenet",
        image_size=32, batch_size=16, head_units=(16,), dropout=0.0,
        head_epochs=1, finetune_epochs=1, unfreeze_blocks=2,
        max_train_examples=64, max_eval_examples=32, verbosity=0, **PINNED_RECIPE,
    )
    values.update(overrides)
    return validate(Config().replace(**values))


def write_image_folder(root: str, classes: dict[str, int], size: int = 40, seed: int = 0,
                       fmt: str = "JPEG") -> str:
    """Class subfolders of small generated images; each class has its own colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            base = np.zeros((size, size, 3), np.uint8)
            base[..., c % 3] = 200
            noise = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}[fmt]
            Image.fromarray(base + noise).save(os.path.join(root, name, f"{i}.{ext}"), fmt)
    return root


@pytest.fixture
def image_folder(tmp_path) -> str:
    return write_image_folder(str(tmp_path / "images"), {"cat": 6, "dog": 5, "emu": 5})


@pytest.fixture(scope="session")
def hub_feature_vector(tmp_path_factory) -> str:
    """A local TF-Hub-format MobileNetV2 feature vector (random init, 32 px)."""
    import keras

    from tfft.hub_format import save_feature_vector, wrap_keras_application

    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35,
                                          input_shape=(32, 32, 3))
    path = str(tmp_path_factory.mktemp("hub") / "mobilenet_v2_fv")
    save_feature_vector(wrap_keras_application(base, lambda x: x * 2.0 - 1.0), path)
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """What a machine without network sees: no DNS, and empty Keras and TF-Hub caches (so
    Keras's ``get_file`` and ``hub.load`` fail at once). Returns the empty Keras cache."""

    def no_dns(*_args, **_kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub"))
    return tmp_path / "keras"


TWO_CPUS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tfft import distribute
distribute.configure_cpu_devices(2)
import importlib
import tensorflow as tf
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
module = importlib.import_module(sys.argv[2])
print(json.dumps(eval(sys.argv[3], {"module": module, "strategy": strategy})))
"""


def on_two_cpus(module: str, expression: str):
    """``expression`` (over ``module`` and a two-replica ``strategy``) evaluated in a fresh
    process whose CPU is split into two logical devices (that must happen before TensorFlow
    starts, so not in this test process); its JSON result."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run([sys.executable, "-c", TWO_CPUS, tests_dir, module, expression],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
