"""The head phase's feature cache: same weights as the backbone in the loop, keyed disk entries."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from cache_entries import TICK_S, entry_of, names, write_entry
from conftest import tiny_config

from tfft import cache_store, diskspace, feature_cache, train_lib
from tfft.errors import UserError

# Memory and disk entries feed the head identical batches: weights must match to float noise.
SAME_BATCHES_ATOL = 1e-6
# Backbone in the loop sees the same examples in differently composed batches (oneDNN
# convolution sums in another order): weights match to ~1e-5, checked at 1e-4.
BACKBONE_IN_LOOP_ATOL = 1e-4
# float16 keeps 11 significant bits: features within 2^-10 relative; head weights after the
# same 8 steps within 1e-3.
FLOAT16_FEATURE_RTOL, FLOAT16_FEATURE_ATOL = 2 ** -10, 1e-4
FLOAT16_WEIGHTS_ATOL = 1e-3
# 64 examples / batch 16 = 4 steps an epoch.
EPOCHS = 2


class Extractions:
    """Counts backbone passes over a split (the only place cached runs run the backbone)."""

    def __init__(self) -> None:
        self.calls = 0
        self.real = feature_cache.extract

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def extractions(monkeypatch) -> Extractions:
    counter = Extractions()
    monkeypatch.setattr(feature_cache, "extract", counter)
    return counter


def head_run(root: Path, name: str, **overrides) -> train_lib.RunResult:
    values = dict(head_epochs=EPOCHS, finetune_epochs=0, cache_dir=str(root / "cache"))
    values.update(overrides)
    return train_lib.train_and_evaluate(tiny_config(**values), str(root / name))


def head_weights(result: train_lib.RunResult) -> list[np.ndarray]:
    return [w.numpy() for w in result.classifier.head.weights]


def entries(root: Path) -> set[str]:
    cache = root / "cache"
    return {n for n in os.listdir(cache) if not n.startswith(".")} if cache.exists() else set()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One shared cache dir: memory, disk, disk again (same key), float16 disk, no cache."""
    root = tmp_path_factory.mktemp("feature_cache")
    counter = Extractions()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feature_cache, "extract", counter)
        out = {"root": root}
        for name, mode, dtype in [("memory", "memory", "float32"), ("disk", "disk", "float32"),
                                  ("disk_again", "disk", "float32"),
                                  ("float16", "disk", "float16"), ("off", "off", "float32")]:
            before = counter.calls
            out[name] = head_weights(head_run(root, name, cache_features=mode,
                                              cache_dtype=dtype))
            out[f"{name}_extractions"] = counter.calls - before
    return out


def test_memory_disk_and_uncached_head_training_agree(runs):
    assert runs["memory_extractions"] == runs["disk_extractions"] == 2, "train and validation"
    assert runs["off_extractions"] == 0
    for m, d, o in zip(runs["memory"], runs["disk"], runs["off"], strict=True):
        np.testing.assert_allclose(d, m, rtol=0, atol=SAME_BATCHES_ATOL)
        np.testing.assert_allclose(o, m, rtol=0, atol=BACKBONE_IN_LOOP_ATOL)


def test_reused_key_loads_from_disk_without_running_the_backbone(runs):
    assert runs["disk_again_extractions"] == 0, "second run must read the entries, not extract"
    for a, b in zip(runs["disk"], runs["disk_again"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=SAME_BATCHES_ATOL)


def test_float16_cache_stays_close_to_float32(runs):
    assert runs["float16_extractions"] == 2, "the storage dtype is part of the key"
    root = runs["root"] / "cache"
    train = {}
    for name in sorted(entries(runs["root"])):
        with open(root / name / feature_cache.META_FILE) as f:
            meta = json.load(f)
        base = meta["fields"]["image_size"] == 32 and meta["fields"]["backbone"] == "mobilenet"
        if name.startswith("train-") and base:  # not the entries of the changed-config tests
            rows = np.fromfile(root / name / feature_cache.FEATURES_FILE, meta["dtype"])
            train[meta["dtype"]] = rows.reshape(meta["count"], meta["dim"])
    assert set(train) == {"float32", "float16"}
    assert train["float16"].nbytes * 2 == train["float32"].nbytes
    np.testing.assert_allclose(train["float16"].astype(np.float32), train["float32"],
                               rtol=FLOAT16_FEATURE_RTOL, atol=FLOAT16_FEATURE_ATOL)
    for a, b in zip(runs["float16"], runs["disk"], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=FLOAT16_WEIGHTS_ATOL)


@pytest.mark.parametrize("change", [dict(image_size=40),
                                    dict(backbone="mobilenet_v2", weights="none", alpha=0.35)])
def test_changed_features_get_a_new_key_and_are_recomputed(runs, extractions, tmp_path, change):
    cache = runs["root"] / "cache"
    before = entries(runs["root"])
    head_run(tmp_path, "changed", cache_features="disk", head_epochs=1, cache_dir=str(cache),
             **change)
    assert extractions.calls == 2, "the changed run extracted train and validation again"
    assert len(entries(runs["root"]) - before) == 2, "two new entries next to the old ones"


def test_augmentation_keeps_the_head_on_the_cache_unless_augment_head(tmp_path, capsys,
                                                                       extractions):
    head_run(tmp_path, "aug", cache_features="disk", augment=("flip",), head_epochs=1)
    assert extractions.calls == 2 and len(entries(tmp_path)) == 2
    head_run(tmp_path / "head", "aug", cache_features="disk", augment=("flip",), head_epochs=1,
             augment_head=True, verbosity=1)
    assert "Feature cache off: --augment_head" in capsys.readouterr().out
    assert extractions.calls == 2 and entries(tmp_path / "head") == set()


def test_auto_streams_features_to_disk_when_they_would_not_fit_in_memory(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(feature_cache, "MEMORY_LIMIT_BYTES", 1000)
    head_run(tmp_path, "auto", cache_features="auto", head_epochs=1, verbosity=1)
    assert "Feature cache on disk (--cache_dir)" in capsys.readouterr().out
    assert {n.split("-")[0] for n in entries(tmp_path)} == {"train", "validation"}


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


# ---------------------------------------------------------------- disk space and the size limit


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` at ``path``; skips the test where it cannot be mounted."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:  # lazily: TensorFlow may close a file of the entry a moment later
        subprocess.run(["umount", "-l", str(path)], check=True)


class FillerFile:
    """Another writer filling a real small filesystem up, then deleting what it wrote."""

    def __init__(self, base: Path):
        self.path = base / "filler"

    def fill(self) -> None:
        with contextlib.suppress(OSError), open(self.path, "wb", buffering=0) as f:
            while f.write(b"\0" * 65536):
                pass

    def free(self) -> None:
        os.remove(self.path)


class InjectedFull:
    """ENOSPC from the entry's features file while ``full`` (where no tmpfs can be mounted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.is_full = False
        monkeypatch.setattr(feature_cache, "open", self.open, raising=False)

    def open(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        return self.Writer(f, self) if path.endswith(feature_cache.FEATURES_FILE) else f

    def fill(self) -> None:
        self.is_full = True

    def free(self) -> None:
        self.is_full = False

    class Writer:
        def __init__(self, file, disk: InjectedFull):
            self.file, self.disk = file, disk

        def write(self, data: bytes) -> int:
            if self.disk.is_full:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.file.name)
            return self.file.write(data)

        def __getattr__(self, name: str):
            return getattr(self.file, name)


def test_an_entry_that_would_not_fit_is_refused_before_the_backbone_runs(tmp_path, monkeypatch):
    cache, real = tmp_path / "cache", diskspace.free_bytes
    monkeypatch.setattr(diskspace, "free_bytes",
                        lambda path: 5_000_000 if path.startswith(str(cache)) else real(path))
    with pytest.raises(UserError) as err:
        head_run(tmp_path, "full", cache_features="disk", head_epochs=1)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(cache / "train-")), message
    assert "not enough free space" in message and "5.0 MB free" in message, message
    assert "needs about 16.8 MB" in message, "64 x 256 float32 features and labels, and margin"
    assert names(cache) == set(), "nothing written, not even a temporary entry"


def test_an_entry_larger_than_a_small_real_filesystem_is_refused(tmp_path):
    calls = []

    def forward(x):
        calls.append(len(x))
        return x

    with tmpfs(tmp_path / "small", "1m") as small:
        with pytest.raises(UserError, match="not enough free space") as err:
            write_entry(small / "cache", 1, forward=forward)
        assert str(err.value).startswith(entry_of(small / "cache", 1)[0])
        assert calls == [] and names(small / "cache") == set()


@pytest.mark.parametrize("disk_kind", ["tmpfs", "injected"])
def test_a_disk_full_mid_entry_is_one_line_leaves_no_partial_entry_and_is_recomputed(
        tmp_path, monkeypatch, disk_kind):
    count, dim = 32, 16384  # 2 MB in 4 batches; the disk fills after the first
    with contextlib.ExitStack() as stack:
        if disk_kind == "tmpfs":
            base = stack.enter_context(tmpfs(tmp_path / "small", "24m"))
            disk = FillerFile(base)
        else:
            base, disk = tmp_path, InjectedFull(monkeypatch)
        root = base / "cache"
        entry, key = entry_of(root, 1)
        with pytest.raises(UserError) as err:
            write_entry(root, 1, count=count, dim=dim,
                        on_batch=lambda i: disk.fill() if i == 1 else None)
        message = str(err.value)
        assert "\n" not in message and message.startswith(entry), message
        assert "the disk is full" in message and "train features" in message, message
        assert names(root) == set(), "the partial temporary entry is removed"
        assert feature_cache.read(entry, key) is None
        disk.free()
        assert write_entry(root, 1, count=count, dim=dim) == (entry, key)
        rows = np.fromfile(os.path.join(entry, feature_cache.FEATURES_FILE), np.float32)
        np.testing.assert_array_equal(rows, np.full(count * dim, 2.0, np.float32))
        assert feature_cache.read(entry, key) is not None


def test_size_limit_removes_the_least_recently_used_entry_not_the_recently_read_one(tmp_path):
    root = tmp_path / "cache"
    first, second = write_entry(root, 1), write_entry(root, 2)
    assert feature_cache.read(*first) is not None  # now used after the second
    time.sleep(TICK_S)
    size = cache_store.dir_bytes(first[0])
    said: list[str] = []
    third = write_entry(root, 3, cache_max_gb=2.5 * size / 1e9, say=said.append)
    assert names(root) == {os.path.basename(first[0]), os.path.basename(third[0])}
    assert feature_cache.read(*second) is None
    assert said == [f"Feature cache: removed 1 least recently used entries "
                    f"({diskspace.format_bytes(size)}) to stay within "
                    f"--cache_max_gb={2.5 * size / 1e9:g}."]


def test_size_limit_keeps_an_entry_in_use_and_the_entry_just_written(tmp_path):
    root = tmp_path / "cache"
    first = write_entry(root, 1)
    held = feature_cache.read(*first)  # a head phase training on it, here or in another process
    time.sleep(TICK_S)
    write_entry(root, 2)
    third = write_entry(root, 3, cache_max_gb=1e-9)  # one byte: no entry fits
    assert names(root) == {os.path.basename(first[0]), os.path.basename(third[0])}
    assert held is not None and held.count == 4
    del held
    gc.collect()
    fourth = write_entry(root, 4, cache_max_gb=1e-9)
    assert names(root) == {os.path.basename(fourth[0])}
