"""The head phase's feature cache: same weights as the backbone in the loop, keyed disk entries."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfft import feature_cache, train_lib
from tfft.errors import UserError

# Memory and disk entries feed the head identical batches: weights must match to float noise.
SAME_BATCHES_ATOL = 1e-6
# Backbone in the loop sees the same examples in differently composed batches (oneDNN
# convolution sums in another order): weights match to ~1e-5, checked at 1e-4.
BACKBONE_IN_LOOP_ATOL = 1e-4
# float16 keeps 11 significant bits: features within 2^-10 relative; head weights after one
# epoch (4 steps) within 1e-3.
FLOAT16_FEATURE_RTOL, FLOAT16_FEATURE_ATOL = 2 ** -10, 1e-4
FLOAT16_WEIGHTS_ATOL = 1e-3


@pytest.fixture
def count_extractions(monkeypatch):
    """Counts backbone passes over a split (the only place cached runs run the backbone)."""
    calls: list[str] = []
    real = feature_cache.extract

    def counting(*args, **kwargs):
        calls.append(kwargs.get("entry", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract", counting)
    return calls


def head_run(tmp_path, name: str, **overrides) -> train_lib.RunResult:
    values = dict(head_epochs=1, finetune_epochs=0, cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return train_lib.train_and_evaluate(tiny_config(**values), str(tmp_path / name))


def head_weights(result: train_lib.RunResult) -> list[np.ndarray]:
    return [w.numpy() for w in result.classifier.head.weights]


def entries(tmp_path) -> set[str]:
    root = tmp_path / "cache"
    return {n for n in os.listdir(root) if not n.startswith(".")} if root.exists() else set()


def test_memory_disk_and_uncached_head_training_agree(tmp_path, count_extractions):
    steps = dict(head_epochs=2)  # 64 examples / batch 16 = 4 steps an epoch: 8 steps
    memory = head_weights(head_run(tmp_path, "memory", cache_features="memory", **steps))
    disk = head_weights(head_run(tmp_path, "disk", cache_features="disk", **steps))
    direct = head_weights(head_run(tmp_path, "off", cache_features="off", **steps))
    assert len(count_extractions) == 4, "train + validation, for memory and for disk"
    assert len(entries(tmp_path)) == 2
    for m, d, o in zip(memory, disk, direct, strict=True):
        np.testing.assert_allclose(d, m, rtol=0, atol=SAME_BATCHES_ATOL)
        np.testing.assert_allclose(o, m, rtol=0, atol=BACKBONE_IN_LOOP_ATOL)


def test_reused_key_loads_from_disk_without_running_the_backbone(tmp_path, count_extractions):
    first = head_weights(head_run(tmp_path, "first", cache_features="disk"))
    assert len(count_extractions) == 2
    again = head_weights(head_run(tmp_path, "again", cache_features="disk"))
    assert len(count_extractions) == 2, "second run must read the entries, not extract"
    for a, b in zip(first, again, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=SAME_BATCHES_ATOL)


@pytest.mark.parametrize("change", [dict(image_size=40),
                                    dict(backbone="mobilenet_v2", weights="none", alpha=0.35)])
def test_changed_features_get_a_new_key_and_are_recomputed(tmp_path, count_extractions, change):
    head_run(tmp_path, "base", cache_features="disk")
    before = entries(tmp_path)
    head_run(tmp_path, "changed", cache_features="disk", **change)
    assert len(count_extractions) == 4, "the changed run extracted train and validation again"
    assert len(entries(tmp_path) - before) == 2, "two new entries next to the old ones"


def test_float16_cache_stays_close_to_float32(tmp_path):
    full = head_run(tmp_path, "f32", cache_features="disk")
    half = head_run(tmp_path, "f16", cache_features="disk", cache_dtype="float16")
    train = {}
    for name in sorted(entries(tmp_path)):
        with open(tmp_path / "cache" / name / feature_cache.META_FILE) as f:
            meta = json.load(f)
        if name.startswith("train-"):
            rows = np.fromfile(tmp_path / "cache" / name / feature_cache.FEATURES_FILE,
                               meta["dtype"])
            train[meta["dtype"]] = rows.reshape(meta["count"], meta["dim"])
    assert set(train) == {"float32", "float16"}
    assert train["float16"].nbytes * 2 == train["float32"].nbytes
    np.testing.assert_allclose(train["float16"].astype(np.float32), train["float32"],
                               rtol=FLOAT16_FEATURE_RTOL, atol=FLOAT16_FEATURE_ATOL)
    for a, b in zip(head_weights(half), head_weights(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=FLOAT16_WEIGHTS_ATOL)


@pytest.mark.parametrize("mode", ["auto", "disk"])
def test_augmentation_turns_the_cache_off_and_says_why(tmp_path, capsys, count_extractions, mode):
    head_run(tmp_path, "aug", cache_features=mode, augment=("flip",), verbosity=1)
    assert "Feature cache off: augmentation" in capsys.readouterr().out
    assert count_extractions == [] and entries(tmp_path) == set()


def test_unwritable_cache_dir_is_a_user_error_naming_the_flag(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="--cache_dir"):
        head_run(tmp_path, "bad", cache_features="disk", cache_dir=str(blocker / "cache"))


def test_truncated_or_foreign_entries_are_not_read(tmp_path):
    def forward(x):
        return x * 2.0

    images = np.arange(24, dtype=np.float32).reshape(6, 4)
    batches = tf.data.Dataset.from_tensor_slices((images, np.arange(6, dtype=np.int32))).batch(4)
    fields = {"split": "train", "n": 6}
    key = feature_cache.cache_key(fields)
    entry = str(tmp_path / "cache" / "train-x")
    written = feature_cache.extract(forward, batches, count=6, dim=4, dtype="float32",
                                    entry=entry, key_fields=fields)
    got = [x.numpy() for x, _ in written.batches(6)][0]
    np.testing.assert_array_equal(got, images * 2.0)
    assert feature_cache.read(entry, key) is not None
    assert feature_cache.read(entry, feature_cache.cache_key({**fields, "n": 7})) is None
    with open(os.path.join(entry, feature_cache.FEATURES_FILE), "r+b") as f:
        f.truncate(8)
    assert feature_cache.read(entry, key) is None


def test_auto_streams_features_to_disk_when_they_would_not_fit_in_memory(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(feature_cache, "MEMORY_LIMIT_BYTES", 1000)
    head_run(tmp_path, "auto", cache_features="auto", verbosity=1)
    assert "Feature cache on disk (--cache_dir)" in capsys.readouterr().out
    assert {n.split("-")[0] for n in entries(tmp_path)} == {"train", "validation"}
