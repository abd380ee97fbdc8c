"""Calibration: ECE, reliability bins, temperature fitting and the baked-in layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfft import calibration


def overconfident(n: int = 4000, classes: int = 5, true_t: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(z / true_t) while the model reports softmax(z): too sure."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, classes))
    truth = calibration.scale(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), true_t)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    reported = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return reported.astype(np.float32), labels


def test_reliability_bins_by_predicted_confidence():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    bins = calibration.reliability(probs, labels, bins=10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 2]
    assert bins.accuracy[9] == pytest.approx(0.5)
    assert bins.confidence[9] == pytest.approx(0.95)
    # |0.5-0.95|*2 + |1-0.55| + |1-0.7|, over 4 examples
    assert bins.ece == pytest.approx((0.9 + 0.45 + 0.3) / 4)


def test_a_confidence_of_one_lands_in_the_last_bin():
    bins = calibration.reliability(np.array([[1.0, 0.0]]), np.array([0]), bins=4)
    assert bins.count.tolist() == [0, 0, 0, 1]
    assert bins.ece == 0.0


def test_fitted_temperature_recovers_the_true_one_and_lowers_ece():
    probs, labels = overconfident()
    temperature = calibration.fit_temperature(probs, labels)
    assert temperature == pytest.approx(2.5, rel=0.15)
    before = calibration.expected_calibration_error(probs, labels)
    scaled = calibration.scale(probs, temperature)
    after = calibration.expected_calibration_error(scaled, labels)
    assert after < before / 2
    np.testing.assert_array_equal(scaled.argmax(-1), probs.argmax(-1))


def test_temperature_minimises_the_nll():
    probs, labels = overconfident(n=1500, seed=3)
    best = calibration.fit_temperature(probs, labels)
    nll = calibration.negative_log_likelihood(probs, labels, best)
    for other in (best * 0.8, best * 1.25, 1.0):
        assert nll <= calibration.negative_log_likelihood(probs, labels, other) + 1e-9


def test_the_layer_matches_numpy_and_survives_model_keras(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    calibrated = calibration.with_temperature(model, 1.7)
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    expected = calibration.scale(model.predict(x, verbose=0), 1.7)
    np.testing.assert_allclose(calibrated.predict(x, verbose=0), expected, atol=1e-5)
    path = str(tmp_path / "m.keras")
    calibrated.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-5)
