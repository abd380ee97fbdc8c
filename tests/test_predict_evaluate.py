"""``tfft.predict`` and ``tfft.evaluate`` on the shared tiny run, and the confusion-matrix plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from test_export import real_digits, train_once

from tfft import evaluate, metrics, predict
from tfft.errors import UserError
from tfft.plots import plot_confusion_matrix


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_once(tmp_path_factory)


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def tfft_lines(stderr: str) -> list[str]:
    """tfft's own stderr lines (TensorFlow's native startup noise filtered out)."""
    return [line for line in stderr.splitlines() if line.startswith("tfft:")]


def confident_digits(trained_run, count: int) -> list[tuple[np.ndarray, str]]:
    """Real digits the live model gets right with a clear margin (JPEG loss cannot flip them)."""
    digits, labels = real_digits(2000, 200)
    probs = trained_run.reference(list(digits[..., None]))
    names = trained_run.result.class_names
    chosen = [(d, names[y]) for d, y, p in zip(digits, labels, probs, strict=True)
              if p.argmax() == y and p.max() > 0.6]
    assert len(chosen) >= count, "the tiny run is too weak to pick clear examples"
    return chosen[:count]


# ---------------------------------------------------------------- predict


def test_predict_cli_names_real_digits_and_reports_a_corrupt_file(trained_run, tmp_path):
    (a, label_a), (b, label_b) = confident_digits(trained_run, 2)
    first, second = str(tmp_path / "first.jpg"), str(tmp_path / "second.jpg")
    Image.fromarray(a).save(first, quality=95)
    Image.fromarray(b).resize((56, 56)).convert("RGB").save(second, quality=95)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    export_dir = os.path.dirname(trained_run.version_dir)
    run = run_cli("tfft.predict", f"--model={export_dir}", "--format=json", first,
                  str(corrupt), second)
    assert run.returncode == 2, run.stderr[-2000:]
    errors = tfft_lines(run.stderr)
    assert len(errors) == 1 and "corrupt.jpg" in errors[0], run.stderr[-2000:]
    results = json.loads(run.stdout)
    assert [r["image"] for r in results] == [first, second]
    assert [r["predictions"][0]["class_name"] for r in results] == [label_a, label_b]
    for r in results:
        probs = [p["probability"] for p in r["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


def test_predictor_table_and_missing_file(trained_run, tmp_path):
    (digit, label), = confident_digits(trained_run, 1)
    path = str(tmp_path / "digit.png")
    Image.fromarray(digit).save(path)
    predictor = predict.Predictor(trained_run.version_dir, top_k=2)
    predictions, errors = predict.predict_files(predictor, [path, str(tmp_path / "nope.png")])
    assert len(errors) == 1 and "nope.png" in errors[0] and "\n" not in errors[0]
    table = predict.format_table(predictions).splitlines()
    assert table[0] == path and len(table) == 3 and table[1].split()[0] == label


# ---------------------------------------------------------------- evaluate


def test_classification_metrics_follow_the_definitions():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2, 1])
    m = metrics.classification_metrics(labels, predicted, ("a", "b", "c"))
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 1, 1]]
    assert m["accuracy"] == pytest.approx(4 / 7) and m["examples"] == 7
    b = m["per_class"]["b"]  # 2 right of 4 predicted b; both true b found
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == pytest.approx(1.0)
    assert b["f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5) and b["support"] == 2
    c = m["per_class"]["c"]
    assert c["precision"] == pytest.approx(1.0) and c["recall"] == pytest.approx(1 / 3)
    f1s = [m["per_class"][n]["f1"] for n in "abc"]
    assert m["macro_f1"] == pytest.approx(np.mean(f1s))


def test_evaluate_run_matches_training_test_accuracy_and_writes_files(trained_run, tmp_path):
    out = str(tmp_path / "eval")
    result = evaluate.evaluate(workdir=trained_run.workdir, output_dir=out)
    assert result["accuracy"] == pytest.approx(trained_run.result.test_accuracy, abs=1e-9)
    assert result["examples"] == trained_run.result.metrics["test"]["examples"]
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == result["examples"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["accuracy"])
    with open(os.path.join(out, evaluate.EVALUATION_FILE)) as f:
        saved = json.load(f)
    assert saved["accuracy"] == result["accuracy"]
    assert set(saved["per_class"]) == set(trained_run.result.class_names)
    with Image.open(os.path.join(out, evaluate.CONFUSION_FILE)) as png:
        assert png.format == "PNG" and min(png.size) > 200
    assert "Test accuracy" in evaluate.format_report(result)


def test_evaluate_in_the_run_directory_keeps_the_reports_confusion_matrix(trained_run,
                                                                         tmp_path):
    run = shutil.copytree(trained_run.workdir, tmp_path / "run")
    before = (run / "confusion_matrix.png").read_bytes()
    evaluate.evaluate(workdir=str(run))
    assert (run / "confusion_matrix.png").read_bytes() == before
    assert (run / evaluate.CONFUSION_FILE).stat().st_size > 0


def test_evaluate_cli_on_the_export_agrees_with_the_run(trained_run, tmp_path):
    out = str(tmp_path / "eval_export")
    run = run_cli("tfft.evaluate", f"--model={trained_run.version_dir}", f"--output_dir={out}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Test accuracy" in run.stdout
    with open(os.path.join(out, evaluate.EVALUATION_FILE)) as f:
        saved = json.load(f)
    assert saved["accuracy"] == pytest.approx(trained_run.result.test_accuracy, abs=1e-9)
    assert os.path.isfile(os.path.join(out, evaluate.CONFUSION_FILE))


def test_evaluate_without_a_finished_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--workdir: expected a finished run directory"):
        evaluate.evaluate(workdir=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="--model: expected a SavedModel directory"):
        evaluate.evaluate(model=str(tmp_path))


# ---------------------------------------------------------------- plots


def test_plot_confusion_matrix_writes_a_png(tmp_path):
    path = str(tmp_path / "sub" / "cm.png")
    matrix = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    assert plot_confusion_matrix(matrix, ["cat", "dog", "emu"], path) == path
    with Image.open(path) as png:
        assert png.format == "PNG"
        pixels = np.asarray(png.convert("L"))
    assert pixels.std() > 10  # something was drawn
    assert os.listdir(os.path.dirname(path)) == ["cm.png"]
    with pytest.raises(ValueError):
        plot_confusion_matrix(matrix, ["cat", "dog"], path)

