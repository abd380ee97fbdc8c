"""--calibrate=temperature, the calibration report, and test-time augmentation (--tta,
--export_tta, tfft.evaluate --tta) through a real run."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tfft import calibration, evaluate, export, metrics, rundir, train_lib
from tfft.errors import UserError
from tfft.export_formats import ExportOptions

# Long enough at a high rate to be over-confident (measured: temperature 3.7, validation ECE
# 0.39 -> 0.10); cached features keep its 30 head epochs to a few seconds.
RECIPE = dict(head_epochs=30, head_learning_rate=3e-2, head_units=(128,), finetune_epochs=0,
              max_train_examples=128, max_eval_examples=96, validation_fraction=0.3)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("calibrated"))
    result = train_lib.train_and_evaluate(tiny_config(calibrate="temperature", **RECIPE), workdir)
    return workdir, result


def uncalibrated(model: keras.Model) -> keras.Model:
    """The classifier under the temperature layer of a calibrated model.keras."""
    return keras.Model(model.inputs, model.get_layer("temperature_scaling").input)


def test_temperature_lowers_validation_ece_and_keeps_every_argmax(calibrated_run):
    workdir, result = calibrated_run
    fitted = result.metrics["calibration"]
    assert fitted["temperature"] > 1.5  # over-confident, so it softens
    assert fitted["validation_ece_after"] < fitted["validation_ece_before"]
    _, model = rundir.load_run(workdir)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    raw = uncalibrated(model).predict(x, verbose=0)
    served = model.predict(x, verbose=0)
    np.testing.assert_allclose(served, calibration.scale(raw, fitted["temperature"]), atol=1e-5)
    np.testing.assert_array_equal(served.argmax(-1), raw.argmax(-1))


def test_the_export_serves_the_calibrated_probabilities(calibrated_run, tmp_path):
    workdir, result = calibrated_run
    version = export.export_run(workdir, str(tmp_path / "export"))
    signature = tf.saved_model.load(version).signatures["serve_pixels"]
    pixels = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    served = signature(pixels=tf.constant(pixels))["probabilities"].numpy()
    local = export.ServingFunctions(result.classifier.model, result.class_names, result.config)
    np.testing.assert_allclose(served, local.pixels(tf.constant(pixels))["probabilities"],
                               atol=1e-5)
    assert "temperature_scaling" in [layer.name for layer in result.classifier.model.layers]


def test_report_gives_ece_and_a_reliability_diagram(calibrated_run):
    workdir, result = calibrated_run
    test = result.test_predictions
    ece = calibration.expected_calibration_error(test.probabilities, test.labels)
    assert result.metrics["test"]["ece"] == pytest.approx(ece)
    with open(os.path.join(workdir, rundir.REPORT_MD)) as f:
        text = f.read()
    assert f"**{ece:.4f}**" in text and "after temperature scaling" in text
    assert rundir.CALIBRATION_PNG in text
    with open(os.path.join(workdir, rundir.CALIBRATION_PNG), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_tta_export_serves_the_mean_of_the_image_and_its_mirror(calibrated_run, tmp_path):
    _, result = calibrated_run
    model, names, config = result.classifier.model, result.class_names, result.config
    plain = tf.saved_model.load(export.export_model(model, names, config, str(tmp_path / "a")))
    tta = tf.saved_model.load(export.export_model(model, names, config, str(tmp_path / "b"),
                                                  options=ExportOptions(tta="flip")))
    pixels = tf.constant(np.random.default_rng(2).integers(0, 256, (4, 28, 28, 1), np.uint8))

    def probs(saved, x):
        return saved.signatures["serve_pixels"](pixels=x)["probabilities"].numpy()

    expected = (probs(plain, pixels) + probs(plain, tf.image.flip_left_right(pixels))) / 2
    np.testing.assert_allclose(probs(tta, pixels), expected, atol=1e-5)
    assert not np.allclose(probs(tta, pixels), probs(plain, pixels), atol=1e-4)


def test_run_with_tta_evaluates_the_views_like_tfft_evaluate(tmp_path):
    workdir = str(tmp_path / "tta")
    result = train_lib.train_and_evaluate(tiny_config(tta="flip", head_epochs=2), workdir)
    saved = evaluate.evaluate(workdir, tta="flip", output_dir=str(tmp_path / "eval"))
    assert saved["tta"] == "flip"
    assert saved["accuracy"] == pytest.approx(result.test_accuracy, abs=1 / 32 + 1e-9)
    loaded = evaluate.load_for_evaluation(workdir, tta="flip")
    split = evaluate.load_test_split(loaded.config)
    served = metrics.predict_split(loaded.pixels, split, 16)
    np.testing.assert_allclose(served.probabilities, result.test_predictions.probabilities,
                               atol=1e-4)
    with open(os.path.join(workdir, rundir.METRICS)) as f:
        assert json.load(f)["test"]["accuracy"] == result.test_accuracy


def test_tta_on_an_export_or_a_litert_export_is_refused(calibrated_run):
    workdir, _ = calibrated_run
    with pytest.raises(UserError, match="--tta: applies to a run's model.keras"):
        evaluate.load_for_evaluation(model=os.path.join(workdir, "export"), tta="flip")
    with pytest.raises(UserError, match="--export_tta: applies to the SavedModel"):
        export.export_run(workdir, options=ExportOptions(("litert",), tta="flip"))
