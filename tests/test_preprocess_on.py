"""``--preprocess_on=device`` computes what ``host`` does: the same backbone inputs from the same
batches, the same two-phase run (feature cache off and on), the same export; augmentation still
touches training batches only."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA, tiny_config, write_image_folder

from tfft import augment, backbones, export, loop, lr_find, phases, train_lib
from tfft import data as data_lib
from tfft.device_inputs import make_prepare

TOLERANCE = 1e-5  # inputs in [-1, 1] (MobileNet's normalisation): float rounding only


def mixed_folder(root: str) -> str:
    """An image folder of JPEGs at 40 px and PNGs at 24 px (larger and smaller than 32)."""
    write_image_folder(root, {"cat": 8, "dog": 8, "emu": 8}, size=40, fmt="JPEG")
    return write_image_folder(root, {"cat": 8, "dog": 8, "emu": 8}, size=24, seed=1, fmt="PNG")


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory) -> str:
    return "folder:" + mixed_folder(str(tmp_path_factory.mktemp("mixed") / "images"))


def both_batches(config, split: str, training: bool):
    """(host batches, device batches, prepare) of one split of ``config``'s data."""
    splits = data_lib.load_splits(config.data, config.train.seed)
    normalize = backbones.normalizer(config.model)
    ds = getattr(splits, split)
    host, device = (
        list(
            data_lib.make_batches(
                ds, config.data, normalize, training=training, seed=7, on_device=on
            )
        )
        for on in (False, True)
    )
    return host, device, make_prepare(config.data.image_size, normalize)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("source", ["sample:mnist", "mixed"])
def test_device_inputs_equal_host_inputs(source, training, mixed_dataset):
    dataset = mixed_dataset if source == "mixed" else source
    config = tiny_config(dataset=dataset, max_train_examples=40, batch_size=16)
    host, device, prepare = both_batches(config, "train", training)
    assert len(host) == len(device) == 3
    for (hx, hy), (dx, dy) in zip(host, device, strict=True):
        np.testing.assert_array_equal(hy, dy)
        if source == "mixed":  # resized per example on the host, not normalised
            assert dx.dtype == tf.float32 and dx.shape[1:] == (32, 32, 3)
            assert float(tf.reduce_max(dx)) > 2.0, "still pixel values, not normalised"
        else:  # uint8 at the stored size and channels
            assert dx.dtype == tf.uint8 and dx.shape[1:] == (28, 28, 1)
        np.testing.assert_allclose(prepare(dx, False).numpy(), hx.numpy(), rtol=0, atol=TOLERANCE)


def test_device_pipeline_tags_augmented_training_batches_for_the_step():
    config = tiny_config(augment=("flip",))
    with phases.setup_run(config.replace(preprocess_on="device")) as run:
        tagged = [x for x, _ in run.train_batches(5)]
        plain = [x for x, _ in run.train_batches(5, augment=False)]
    assert [t[augment.INDEX].numpy().tolist() for t in tagged] == [
        [i] * len(p) for i, p in enumerate(plain)
    ]
    for t, p in zip(tagged, plain, strict=True):
        assert t[augment.IMAGES].dtype == tf.uint8, "raw: augmented in the step"
        np.testing.assert_array_equal(t[augment.IMAGES].numpy(), p.numpy())
        assert set(t[augment.SEED].numpy().tolist()) == {5}


def test_prepare_augments_in_training_only():
    normalize = backbones.normalizer(tiny_config().model)
    cfg = tiny_config(augment=("flip", "crop")).data
    augmenter = augment.make_augmenter(cfg, 3, normalize, 10)
    prepare = make_prepare(32, normalize, augmenter.on_device)
    images = tf.constant(np.random.default_rng(0).integers(0, 255, (8, 28, 28, 1), np.uint8))
    plain = data_lib.preprocess_images(images, 32, normalize)
    tagged = augment.tag(images, 2, 9)
    np.testing.assert_array_equal(prepare(images, False).numpy(), plain.numpy())
    np.testing.assert_array_equal(prepare(tagged, False).numpy(), plain.numpy())
    on_device = prepare(tagged, True).numpy()
    assert np.abs(on_device - plain.numpy()).max() > 0.1
    host, _ = augmenter(plain, tf.zeros([8], tf.int32), tf.constant(2, tf.int64), 9)
    np.testing.assert_allclose(on_device, host.numpy(), rtol=0, atol=1e-5)


def test_auto_is_host_on_cpu_and_device_sends_raw_batches():
    with phases.setup_run(tiny_config()) as run:
        assert not run.on_device and run.prepare is None
        x, _ = next(iter(run.batches(run.splits.train, training=True, seed=1)))
        assert x.dtype == tf.float32 and x.shape[1:] == (32, 32, 3)
    with phases.setup_run(tiny_config(preprocess_on="device", augment=("flip",))) as run:
        assert run.on_device and run.prepare is not None
        plan = phases.finetune_plan(run)
        assert plan.prepare is run.prepare
        x, _ = next(iter(plan.batches(1)))
        x = x[augment.IMAGES]
        assert x.dtype == tf.uint8 and x.shape[1:] == (28, 28, 1), "not augmented on the host"


# ---------------------------------------------------------------- whole runs

_RUNS: dict[tuple, train_lib.RunResult] = {}


def finished_run(
    tmp_path_factory, place: str, dataset: str = "sample:mnist", **overrides
) -> train_lib.RunResult:
    """A finished tiny two-phase run (one per arguments and session)."""
    key = (place, dataset, tuple(sorted(overrides.items())))
    if key not in _RUNS:
        config = tiny_config(dataset=dataset, preprocess_on=place, tensorboard=False, **overrides)
        _RUNS[key] = train_lib.train_and_evaluate(config, str(tmp_path_factory.mktemp("run")))
    return _RUNS[key]


def assert_same_run(host: train_lib.RunResult, device: train_lib.RunResult) -> None:
    """Every epoch row and the test metrics within TOLERANCE, and the final weights."""
    rows = {
        name: [(p, r) for p, rs in result.metrics["phases"].items() for r in rs]
        for name, result in (("host", host), ("device", device))
    }
    assert len(rows["host"]) == len(rows["device"]) == 2
    for (phase, h), (_, d) in zip(rows["host"], rows["device"], strict=True):
        for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert d[name] == pytest.approx(h[name], abs=TOLERANCE), (phase, name)
    for name in ("loss", "accuracy"):
        assert device.metrics["test"][name] == pytest.approx(
            host.metrics["test"][name], abs=TOLERANCE
        )
    for h, d in zip(host.classifier.model.weights, device.classifier.model.weights, strict=True):
        np.testing.assert_allclose(np.asarray(d), np.asarray(h), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    "source,cache", [("sample:mnist", "off"), ("sample:mnist", "memory"), ("mixed", "memory")]
)
def test_two_phase_run_on_device_equals_host(tmp_path_factory, mixed_dataset, source, cache):
    dataset = mixed_dataset if source == "mixed" else source
    host, device = (
        finished_run(tmp_path_factory, place, dataset, cache_features=cache)
        for place in ("host", "device")
    )
    assert_same_run(host, device)


def test_exports_of_either_serve_the_same_probabilities(tmp_path_factory, tmp_path):
    with np.load(os.path.join(SHARED_DATA, "mnist", "mnist_t10k.npz")) as npz:
        digits = npz["x"][:6]
    pixels = tf.constant(digits[..., None])
    encoded = tf.constant([tf.io.encode_png(d[..., None]).numpy() for d in digits])
    served = {}
    for place in ("host", "device"):
        result = finished_run(tmp_path_factory, place, cache_features="memory")
        version = export.export_model(
            result.classifier.model, result.class_names, result.config, str(tmp_path / place)
        )
        loaded = tf.saved_model.load(version)
        served[place] = [
            loaded.signatures["serve_pixels"](pixels=pixels)["probabilities"],
            loaded.signatures["serving_default"](images=encoded)["probabilities"],
        ]
    for h, d in zip(served["host"], served["device"], strict=True):
        assert h.shape == (6, 10)
        np.testing.assert_allclose(d.numpy(), h.numpy(), rtol=0, atol=TOLERANCE)


def evaluate_final_model(result: train_lib.RunResult, split: str) -> loop.EpochStats:
    """The finished model's loss and accuracy on host-preprocessed, unaugmented batches."""
    config = result.config
    splits = data_lib.load_splits(config.data, config.train.seed)
    batches = data_lib.make_batches(
        getattr(splits, split),
        config.data,
        backbones.normalizer(config.model),
        training=False,
        seed=0,
    )
    loss = loop.make_loss(config.train.label_smoothing)
    steps = loop.eval_steps(tf.distribute.get_strategy(), result.classifier.model, loss)
    return loop.run_steps(steps, tf.distribute.get_strategy(), batches)


def test_device_mode_augments_training_batches_only(tmp_path_factory):
    augmented = finished_run(tmp_path_factory, "device", augment=("flip", "crop"))
    plain = finished_run(tmp_path_factory, "device", cache_features="off")
    first = [r["phases"]["finetune"][0]["loss"] for r in (augmented.metrics, plain.metrics)]
    assert abs(first[0] - first[1]) > 1e-4, "training batches were not augmented"
    last = augmented.metrics["phases"]["finetune"][-1]
    val = evaluate_final_model(augmented, "validation")
    assert last["val_loss"] == pytest.approx(val.mean_loss, abs=TOLERANCE)
    test = evaluate_final_model(augmented, "test")
    assert augmented.metrics["test"]["loss"] == pytest.approx(test.mean_loss, abs=TOLERANCE)


def test_augmented_run_on_device_equals_host(tmp_path_factory):
    """The augmentation layers draw from the same seeded stream, batch after batch, whether
    tf.data or the train step calls them (on one replica), so the runs agree too."""
    host, device = (
        finished_run(tmp_path_factory, place, augment=("flip", "crop"))
        for place in ("host", "device")
    )
    assert_same_run(host, device)


def test_lr_range_test_on_device_equals_host(tmp_path):
    """``tfft.lr_find`` runs the plan's steps, with the plan's device transform."""
    losses = [
        lr_find.find(tiny_config(preprocess_on=place), "finetune", str(tmp_path / place), 6).losses
        for place in ("host", "device")
    ]
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[1], losses[0], rtol=0, atol=TOLERANCE)


def test_auto_on_an_accelerator_keeps_label_mixing_on_the_host(monkeypatch):
    from tfft import accelerator

    monkeypatch.setattr(accelerator, "kind", lambda _strategy: "gpu")
    strategy = tf.distribute.get_strategy()
    assert accelerator.preprocess_on_device(tiny_config(augment=("flip",)), strategy)
    assert not accelerator.preprocess_on_device(tiny_config(augment=("flip", "mixup")), strategy)
    explicit = tiny_config(augment=("cutmix",), preprocess_on="device")
    assert accelerator.preprocess_on_device(explicit, strategy)
