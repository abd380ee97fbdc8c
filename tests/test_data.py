"""Data sources and preprocessing: eager == tf.data, shapes, folders, npz, TFDS (mocked)."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import ROOT, write_image_folder

from tfft import augment
from tfft import data as data_lib
from tfft.config import DataConfig
from tfft.errors import UserError
from tfft.tfds_source import tfds_split_names


def unit_normalize(x):
    return x / 255.0


def test_preprocess_same_eagerly_and_in_tf_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28, 1), dtype=np.uint8)
    eager = data_lib.preprocess_images(tf.constant(images), 48, unit_normalize).numpy()
    ds = tf.data.Dataset.from_tensor_slices(images).batch(3).map(
        lambda x: data_lib.preprocess_images(x, 48, unit_normalize))
    piped = np.concatenate([b.numpy() for b in ds])
    np.testing.assert_array_equal(eager, piped)


@pytest.mark.parametrize("shape", [(28, 28, 1), (50, 70, 3), (5, 28, 28, 1), (2, 9, 9, 3)])
def test_grayscale_to_rgb_and_resize_shapes(shape):
    out = data_lib.preprocess_images(tf.zeros(shape, tf.uint8), 32, unit_normalize)
    assert out.dtype == tf.float32
    assert out.shape[-3:] == (32, 32, 3)
    assert out.shape[:-3] == shape[:-3]


@pytest.mark.parametrize("backbone", ["vgg16", "resnet50", "mobilenet_v2", "mobilenet", "hub"])
@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (3, 300, 200, 3)])
def test_normalising_before_resizing_equals_resizing_first(backbone, shape):
    """Every backbone's normalisation is per-channel affine, so it commutes with resizing."""
    from tfft.backbones import normalizer
    from tfft.config import ModelConfig

    normalize = normalizer(ModelConfig(backbone=backbone))
    images = tf.constant(np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8))
    resized_first = normalize(tf.image.resize(tf.cast(data_lib.to_rgb(images), tf.float32),
                                              (96, 96))).numpy()
    ours = data_lib.preprocess_images(images, 96, normalize).numpy()
    scale = float(np.abs(resized_first).max())
    np.testing.assert_allclose(ours, resized_first, rtol=0, atol=1e-6 * scale)


def test_grayscale_to_rgb_copies_the_channel_and_dynamic_channels_work():
    gray = tf.constant(np.arange(16, dtype=np.uint8).reshape(4, 4, 1))
    rgb = data_lib.to_rgb(gray).numpy()
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    fn = tf.function(data_lib.to_rgb, input_signature=[tf.TensorSpec([4, 4, None], tf.uint8)])
    np.testing.assert_array_equal(fn(gray).numpy(), rgb)


def test_pipeline_is_lazy_batched_and_normalised():
    cfg = DataConfig(dataset="sample:mnist", image_size=40, batch_size=8)
    splits = data_lib.load_splits(cfg, seed=0)
    batch_x, batch_y = next(iter(data_lib.make_batches(
        splits.train, cfg, unit_normalize, training=True, seed=0)))
    assert batch_x.shape == (8, 40, 40, 3) and batch_x.dtype == tf.float32
    assert float(tf.reduce_min(batch_x)) >= 0.0 and float(tf.reduce_max(batch_x)) <= 1.0
    assert batch_y.dtype == tf.int32
    assert splits.train.element_spec[0].shape == (28, 28, 1), "stored size, not resized"


def test_sample_mnist_splits_and_class_names():
    splits = data_lib.load_splits(DataConfig(dataset="sample:mnist"), seed=0)
    assert splits.sizes == {"train": 4500, "validation": 500, "test": 1000}
    assert splits.class_names == tuple(str(i) for i in range(10))


def test_folder_source_reads_classes_and_splits(tmp_path):
    root = write_image_folder(str(tmp_path / "f"), {"b_dog": 10, "a_cat": 10}, fmt="PNG")
    (tmp_path / "f" / "a_cat" / "notes.txt").write_text("not an image")
    cfg = DataConfig(dataset=f"folder:{root}", validation_fraction=0.2, test_fraction=0.2)
    splits = data_lib.load_splits(cfg, seed=3)
    assert splits.class_names == ("a_cat", "b_dog")
    assert splits.sizes == {"train": 12, "validation": 4, "test": 4}
    path, _ = next(iter(splits.train))
    assert path.numpy().decode().startswith(root), "records are paths until load_images"
    image, label = next(iter(data_lib.load_images(splits.train)))
    assert image.shape == (40, 40, 3) and image.dtype == tf.uint8
    again = data_lib.load_splits(cfg, seed=3)
    assert [int(y) for _, y in splits.test] == [int(y) for _, y in again.test]


def dataset_ops_upstream_of(ds: tf.data.Dataset, op_prefix: str) -> set[str]:
    """The ops of the dataset nodes that feed the first ``op_prefix`` node of ``ds``'s graph."""
    graph = tf.compat.v1.GraphDef.FromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor).numpy())
    nodes = {n.name: n for n in graph.node}
    todo = [next(n for n in graph.node if n.op.startswith(op_prefix)).input[0]]
    seen: set[str] = set()
    while todo:
        node = nodes[todo.pop().split(":")[0].lstrip("^")]
        if node.op.endswith("Dataset") or "Dataset" in node.op:
            seen.add(node.op)
            todo.extend(node.input)
    return seen


def test_training_shuffle_buffers_paths_and_reads_files_after_it(tmp_path):
    """Decoded folder images in a 10,000-example shuffle buffer would take gigabytes."""
    root = write_image_folder(str(tmp_path / "f"), {"a": 6, "b": 6})
    cfg = DataConfig(dataset=f"folder:{root}", image_size=32, batch_size=4)
    splits = data_lib.load_splits(cfg, seed=0)
    ds = data_lib.make_batches(splits.train, cfg, unit_normalize, training=True, seed=0)
    upstream = dataset_ops_upstream_of(ds, "ShuffleDataset")
    assert upstream and not any("Map" in op for op in upstream), upstream
    images, _ = next(iter(ds))
    assert images.shape == (4, 32, 32, 3)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data_lib.load_splits(DataConfig(dataset=f"folder:{tmp_path}/missing"), 0)
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(UserError, match="at least 2 class subfolders"):
        data_lib.load_splits(DataConfig(dataset=f"folder:{tmp_path}/one"), 0)
    (tmp_path / "one" / "other").mkdir()
    with pytest.raises(UserError, match="received none"):
        data_lib.load_splits(DataConfig(dataset=f"folder:{tmp_path}/one"), 0)


def test_npz_source_carves_seeded_splits(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, class_names=np.array(list("abcde")))
    cfg = DataConfig(dataset=f"npz:{path}", validation_fraction=0.2, test_fraction=0.1)
    splits = data_lib.load_splits(cfg, seed=1)
    assert splits.sizes == {"train": 35, "validation": 10, "test": 5}
    assert splits.class_names == tuple("abcde")
    seen = np.concatenate([np.stack([i.numpy() for i, _ in s])
                           for s in (splits.train, splits.validation, splits.test)])
    assert len({im.tobytes() for im in seen}) == 50, "splits are disjoint and complete"


def test_npz_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data_lib.load_splits(DataConfig(dataset=f"npz:{tmp_path}/no.npz"), 0)
    np.savez(tmp_path / "f.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, int))
    with pytest.raises(UserError, match="uint8"):
        data_lib.load_splits(DataConfig(dataset=f"npz:{tmp_path}/f.npz"), 0)


def test_separate_test_dataset(tmp_path):
    x = np.zeros((20, 8, 8), np.uint8)
    np.savez(tmp_path / "tr.npz", x=x, y=np.arange(20) % 2)
    np.savez(tmp_path / "te.npz", x=x[:7], y=np.arange(7) % 2)
    cfg = DataConfig(dataset=f"npz:{tmp_path}/tr.npz", test_dataset=f"npz:{tmp_path}/te.npz",
                     validation_fraction=0.25, test_fraction=0.5)
    assert data_lib.load_splits(cfg, 0).sizes == {"train": 15, "validation": 5, "test": 7}


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_source_under_mock_data(name, shape):
    with tfds.testing.mock_data(num_examples=20):
        splits = data_lib.load_splits(
            DataConfig(dataset=f"tfds:{name}", validation_fraction=0.25), seed=0)
        assert splits.num_classes == 10
        assert splits.sizes["test"] == 20
        assert 0 < splits.sizes["validation"] < splits.sizes["train"] + splits.sizes["validation"]
        image, label = next(iter(data_lib.load_images(splits.train)))
        assert tuple(image.shape) == shape and label.dtype == tf.int32


def test_tfds_photos_stay_encoded_until_after_the_shuffle():
    """Decoded photos in a 10,000-example shuffle buffer would take gigabytes."""
    with tfds.testing.mock_data(num_examples=12):
        cfg = DataConfig(dataset="tfds:tf_flowers", image_size=32, batch_size=4,
                         validation_fraction=0.25, test_fraction=0.25)
        splits = data_lib.load_splits(cfg, seed=0)
        assert splits.num_classes == 5
        assert splits.train.element_spec[0] == {data_lib.ENCODED: tf.TensorSpec([], tf.string)}
        ds = data_lib.make_batches(splits.train, cfg, unit_normalize, training=True, seed=0)
        images, labels = next(iter(ds))
        assert images.shape == (4, 32, 32, 3) and labels.dtype == tf.int32
        image, _ = next(iter(data_lib.load_images(splits.test)))
        assert image.dtype == tf.uint8 and image.shape[-1] == 3 and image.shape[0] > 0


def test_tfds_split_carving_when_dataset_lacks_splits():
    assert tfds_split_names({"train", "test"}, (0.1, 0.2)) == (
        "train[:90%]", "train[90%:100%]", "test")
    assert tfds_split_names({"train"}, (0.1, 0.2)) == (
        "train[:70%]", "train[70%:80%]", "train[80%:]")
    assert tfds_split_names({"train", "validation", "test"}, (0.1, 0.2))[1] == \
        "validation"


def test_tfds_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    def no_dns(*_args, **_kwargs):
        raise socket.gaierror("offline")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    cfg = DataConfig(dataset="tfds:mnist", tfds_data_dir=str(tmp_path))
    with pytest.raises(UserError, match="--tfds_data_dir") as err:
        data_lib.load_splits(cfg, seed=0)
    assert "\n" not in str(err.value)


def test_tfds_not_prepared_with_network_downloads_through_tfds_load(tmp_path, monkeypatch):
    """With network, an unprepared dataset takes TFDS's own download-and-prepare path."""
    real_load, calls = tfds.load, []

    def load(name, **kwargs):
        calls.append(kwargs)
        with tfds.testing.mock_data(num_examples=10):
            return real_load(name, **{**kwargs, "download": False})

    class Connection:
        def close(self) -> None:
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *_args, **_kwargs: Connection())
    monkeypatch.setattr(tfds, "load", load)
    splits = data_lib.load_splits(DataConfig(dataset="tfds:mnist", tfds_data_dir=str(tmp_path)),
                                  seed=0)
    assert [(c["download"], c["data_dir"]) for c in calls] == [(True, str(tmp_path))]
    assert splits.num_classes == 10 and splits.sizes["test"] == 10


OFFLINE_SITECUSTOMIZE = '''
"""Imported at start-up of the test's CLI process: no DNS, as on a machine without network."""
import socket


def no_dns(*_args, **_kwargs):
    raise socket.gaierror(-2, "Name or service not known")


socket.getaddrinfo = no_dns
'''


def train_offline(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    """``python -m tfft.train --dataset=tfds:mnist`` without network, HOME a fresh directory."""
    home, offline = tmp_path / "home", tmp_path / "offline"
    home.mkdir()
    offline.mkdir()
    (offline / "sitecustomize.py").write_text(OFFLINE_SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(offline), ROOT, env.get("PYTHONPATH"))
                                        if p)
    command = [sys.executable, "-m", "tfft.train", "--dataset=tfds:mnist", "--weights=none",
               f"--workdir={tmp_path / 'run'}", *flags]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("given_data_dir", [False, True])
def test_tfds_offline_cli_prints_one_line_and_writes_nothing(tmp_path, given_data_dir):
    """Not prepared, no network: tfft's one line on stderr, the data directory untouched."""
    data_dir = tmp_path / "tfds"
    if given_data_dir:
        data_dir.mkdir()
    run = train_offline(tmp_path, *([f"--tfds_data_dir={data_dir}"] if given_data_dir else []))
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("tfft: error:"), lines
    assert "tfds build mnist" in lines[0] and "--tfds_data_dir=DIR" in lines[0]
    assert not (tmp_path / "home" / "tensorflow_datasets").exists()
    if given_data_dir:
        assert list(data_dir.iterdir()) == [], "the given --tfds_data_dir stays as it was"


def test_augmenter_changes_training_images_only():
    cfg = DataConfig(augment=("flip", "rotate", "zoom", "crop"))
    aug = augment.make_augmenter(cfg, 0, lambda x: x / 127.5 - 1.0, 10)
    images = tf.random.uniform((4, 32, 32, 3))
    assert aug(images, tf.zeros([4], tf.int32), 0, 1)[0].shape == images.shape
    assert augment.make_augmenter(DataConfig(), 0, lambda x: x, 10) is None


# ---------------------------------------------------------------- large images, class counts


def shape_recorder():
    """A normaliser that records the shape of every tensor it normalises."""
    seen = []

    def normalize(x):
        seen.append(tuple(x.shape))
        return x / 255.0

    return normalize, seen


@pytest.mark.parametrize("dynamic", [False, True])
def test_large_images_are_resized_before_normalising_small_ones_after(dynamic):
    """Normalising a 48-megapixel photo first made a float copy four times its decoded size."""
    large = tf.constant(np.random.default_rng(2).integers(0, 256, (300, 200, 3), np.uint8))
    small = tf.constant(np.random.default_rng(3).integers(0, 256, (20, 24, 3), np.uint8))
    for image, first in ((large, (48, 48, 3)), (small, (20, 24, 3))):
        normalize, seen = shape_recorder()
        fn = functools.partial(data_lib.preprocess_images, image_size=48, normalize=normalize)
        if dynamic:
            fn = tf.function(fn, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        out = fn(image).numpy()
        assert dynamic or seen == [first]
        reference = tf.image.resize(tf.cast(data_lib.to_rgb(image), tf.float32), (48, 48)) / 255
        np.testing.assert_allclose(out, reference.numpy(), atol=1e-6)
    if not dynamic:
        return
    graph = fn.get_concrete_function().graph.as_graph_def()
    assert any(node.op in ("If", "StatelessIf") for node in graph.node), "chosen per image"


def test_class_counts_follow_the_labels_of_each_capped_split(tmp_path):
    x = np.zeros((60, 8, 8), np.uint8)
    y = np.repeat([0, 1, 2], [40, 15, 5])
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["a", "b", "c"]))
    cfg = DataConfig(dataset=f"npz:{tmp_path}/d.npz", validation_fraction=0.2,
                     test_fraction=0.2, max_train_examples=20, max_eval_examples=5)
    splits = data_lib.load_splits(cfg, seed=4)
    for name in ("train", "validation", "test"):
        seen = np.bincount([int(label) for _, label in getattr(splits, name)], minlength=3)
        assert splits.counts[name] == tuple(seen), name
    assert [sum(splits.counts[n]) for n in ("train", "validation", "test")] == [20, 5, 5]


def test_class_counts_of_a_separate_test_dataset_and_of_tfds(tmp_path):
    x = np.zeros((20, 8, 8), np.uint8)
    np.savez(tmp_path / "tr.npz", x=x, y=np.arange(20) % 2)
    np.savez(tmp_path / "te.npz", x=x[:7], y=np.array([0, 0, 0, 0, 0, 1, 1]))
    cfg = DataConfig(dataset=f"npz:{tmp_path}/tr.npz", test_dataset=f"npz:{tmp_path}/te.npz")
    assert data_lib.load_splits(cfg, 0).counts["test"] == (5, 2)
    with tfds.testing.mock_data(num_examples=10):
        assert data_lib.load_splits(DataConfig(dataset="tfds:mnist"), seed=0).counts == {}


def test_class_count_lines_and_the_imbalance_warning():
    from tfft import class_counts

    names = ("ant", "bee", "cat")
    assert class_counts.summary_lines(names, {"train": (49, 10, 12), "test": (0, 0, 0)}) == [
        "Examples per class, train: ant 49, bee 10, cat 12"]
    assert class_counts.imbalance(names, {"train": (49, 10, 12)}) is None
    assert "ant has 50 examples, bee 10 (5.0x)" in class_counts.imbalance(
        names, {"train": (50, 10, 12)})
    assert "bee 0 (none at all)" in class_counts.imbalance(names, {"train": (5, 0, 1)})
    many = tuple(f"c{i:02d}" for i in range(30))
    line, = class_counts.summary_lines(many, {"train": tuple(range(1, 31))})
    assert line == ("Examples per class, train: 1 to 30 over 30 classes; fewest c00 1, c01 2, "
                    "c02 3; most c29 30, c28 29, c27 28")
    assert class_counts.markdown_table(names, {}) == []
