"""The finetune phase on cached activations of the frozen blocks below the unfrozen ones."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tfft import cached_inputs, feature_cache, phases, train_lib
from tfft.backbones import Backbone
from tfft.classifier import build_classifier, split_below_top_blocks


def test_top_on_bottom_is_the_whole_classifier():
    with phases.setup_run(tiny_config()) as run:
        clf = run.classifier
        split = split_below_top_blocks(clf, 2)
        assert split is not None
        images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
        rows = split.bottom(images).numpy().reshape(4, -1)
        np.testing.assert_allclose(split.top(rows).numpy(), clf.model(images).numpy(),
                                   rtol=0, atol=1e-6)
        top_layers = {layer.name for layer in split.top.layers[2].layers}
        assert set(clf.backbone.blocks[-1]) <= top_layers
        assert not set(clf.backbone.blocks[-3]) & top_layers
        assert split_below_top_blocks(clf, 0) is None
        assert split_below_top_blocks(clf, len(clf.backbone.blocks)) is None


def skip_backbone() -> Backbone:
    """Three conv blocks a -> b -> c with a's output added to c's: no single tensor enters c."""
    images = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(images)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c")(b)
    model = keras.Model(images, keras.layers.Add(name="skip")([c, a]))
    return Backbone("toy", model, lambda x: x, (("a",), ("b",), ("c",)), False)


def test_no_cut_where_a_tensor_skips_across_it():
    clf = build_classifier(skip_backbone(), 3, tiny_config().model, 8)
    assert split_below_top_blocks(clf, 1) is None  # a's output skips over b into c's block
    split = split_below_top_blocks(clf, 2)  # below b: a's output is the one tensor crossing
    assert split is not None and split.bottom.output.shape[1:] == (8, 8, 4)


@pytest.mark.parametrize(("overrides", "cached"), [
    ({}, True),
    ({"cache_features": "off"}, False),
    ({"augment": ("flip",)}, False),
    ({"unfreeze_blocks": 14}, False),
])
def test_finetune_plan_trains_on_activations_unless_they_change(overrides, cached):
    with phases.setup_run(tiny_config(**overrides)) as run:
        plan = phases.finetune_plan(run)
        assert (plan.model is not run.classifier.model) == cached
        x, _ = next(iter(plan.batches(1)))
        assert (x.shape.rank == 2) == cached  # flat activations, or image batches


def test_activations_over_the_memory_limit_train_on_images(monkeypatch):
    said = []
    monkeypatch.setattr(feature_cache, "MEMORY_LIMIT_BYTES", 1000)
    with phases.setup_run(tiny_config()) as run:
        run = run.__class__(run.config, run.strategy, run.splits, run.classifier, said.append)
        assert cached_inputs.frozen_bottom(run) is None
    assert any("Finetune on images" in line and "--cache_features=disk" in line
               for line in said)


def test_finetune_on_activations_equals_finetune_on_images(tmp_path):
    """Same shuffles, same steps: only where the frozen bottom runs differs (once, or every
    step), so every epoch's metrics and the final weights agree to float rounding."""
    results = {}
    for mode in ("auto", "off"):
        config = tiny_config(cache_features=mode, finetune_epochs=2, tensorboard=False)
        results[mode] = train_lib.train_and_evaluate(config, str(tmp_path / mode))
    rows = {mode: result.history["finetune"] for mode, result in results.items()}
    for cached, images in zip(rows["auto"], rows["off"], strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert cached[key] == pytest.approx(images[key], abs=1e-4), key
    assert results["auto"].test_accuracy == pytest.approx(results["off"].test_accuracy,
                                                          abs=1e-6)
    for a, b in zip(results["auto"].classifier.model.weights,
                    results["off"].classifier.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-4)
