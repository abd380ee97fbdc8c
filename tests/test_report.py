"""The run report and TensorBoard logs written at the end of a run."""

from __future__ import annotations

import csv
import glob
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config
from PIL import Image

from tfft import data as data_lib
from tfft import plots, report, tensorboard, train_lib
from tfft.callbacks import RunResult
from tfft.config import Config
from tfft.metrics import Predictions

REPORT_FILES = ("metrics.csv", "training_curves.png", "confusion_matrix.png",
                "sample_predictions.png", "calibration.png", "report.md")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run: 2 head epochs, 1 finetune epoch, 32 px."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_config(head_epochs=2, finetune_epochs=1)
    return train_lib.train_and_evaluate(config, workdir)


def _png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def _event_values(directory: str) -> dict[str, list[tuple[int, object]]]:
    """Tag -> [(step, value)] of every event file under ``directory``."""
    values: dict[str, list[tuple[int, object]]] = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor)))
    return values


def test_run_directory_holds_every_report_file(run):
    for name in REPORT_FILES:
        assert os.path.getsize(os.path.join(run.workdir, name)) > 0, name


def test_pngs_are_images_of_sensible_size(run):
    for name in ("training_curves.png", "confusion_matrix.png", "sample_predictions.png"):
        width, height = _png_size(os.path.join(run.workdir, name))
        assert 300 <= width <= 3000 and 200 <= height <= 3000, (name, width, height)


def test_metrics_csv_has_one_row_per_epoch_run_in_each_phase(run):
    with open(os.path.join(run.workdir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == report.CSV_COLUMNS
    assert [r["phase"] for r in rows] == ["head", "head", "finetune"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 1]
    phases = run.metrics["phases"]
    assert len(rows) == len(phases["head"]) + len(phases["finetune"])
    for row, expected in zip(rows, phases["head"] + phases["finetune"], strict=True):
        assert float(row["val_accuracy"]) == pytest.approx(expected["val_accuracy"])
        assert float(row["learning_rate"]) == pytest.approx(expected["learning_rate"])
        assert float(row["seconds"]) > 0


def test_report_markdown_summarises_the_run(run):
    text = pathlib.Path(run.workdir, "report.md").read_text()
    for name in ("training_curves.png", "confusion_matrix.png", "sample_predictions.png"):
        assert f"]({name})" in text
    accuracy = run.metrics["test"]["accuracy"]
    assert f"**{accuracy:.4f}**" in text
    assert "| head | 2 |" in text and "| finetune | 1 |" in text
    assert f"{run.metrics['parameters']['finetune_trainable']:,}" in text
    for name in run.class_names:
        assert f"\n| {name} | " in text
    assert "--image_size=32" in text


def test_tensorboard_holds_both_phases_on_one_step_axis(run):
    root = os.path.join(run.workdir, tensorboard.SUBDIR)
    head = _event_values(os.path.join(root, "head"))
    finetune = _event_values(os.path.join(root, "finetune"))
    for values in (head, finetune):
        assert set(tensorboard.SCALARS) <= set(values)
    head_steps = [step for step, _ in head["loss"]]
    finetune_steps = [step for step, _ in finetune["loss"]]
    assert len(head_steps) == 2 and len(finetune_steps) == 1
    assert head_steps[0] < head_steps[1] < finetune_steps[0]
    assert finetune_steps[0] == run.history["finetune"][-1]["global_step"]
    assert float(finetune["learning_rate"][0][1]) == pytest.approx(
        run.config.finetune.finetune_learning_rate)
    test = _event_values(os.path.join(root, "test"))
    assert float(test["accuracy"][0][1]) == pytest.approx(run.metrics["test"]["accuracy"])
    width, height, png = test["sample_predictions"][0][1]
    assert png.startswith(b"\x89PNG") and int(width) > 100 and int(height) > 100


def test_tensorboard_flag_turns_the_logs_off():
    kinds = [type(c) for c in train_lib.default_callbacks(Config(), "w")]
    assert tensorboard.TensorBoardCallback in kinds and report.ReportCallback in kinds
    off = train_lib.default_callbacks(Config().replace(tensorboard=False), "w")
    assert [type(c) for c in off] == [report.ReportCallback]


def _predictions(labels, predicted, classes=2) -> Predictions:
    """Predictions whose most probable class is ``predicted``, at probability 0.5."""
    probabilities = np.full((len(labels), classes), 0.5 / classes, np.float32)
    probabilities[np.arange(len(labels)), predicted] = 0.5
    return Predictions(np.asarray(labels, np.int64), probabilities)


def _images(count, channels=1) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (28, 28, channels), dtype=np.uint8) for _ in range(count)]


def test_write_report_for_a_run_directory_keeps_timings(tmp_path, run):
    """The entry point for ``tfft.evaluate``: history from metrics.csv, predictions given."""
    workdir = str(tmp_path)
    for name in ("config.json", "metrics.json", "metrics.csv"):
        with open(os.path.join(run.workdir, name)) as src, open(tmp_path / name, "w") as dst:
            dst.write(src.read())
    labels, predicted = [0, 1, 2, 2], [0, 1, 1, 2]
    names = tuple(f"c{i}" for i in range(len(run.class_names)))
    paths = report.write_run_dir_report(workdir, _predictions(labels, predicted, len(names)),
                                        names, _images(len(labels), 3))
    assert sorted(os.path.basename(p) for p in paths.values()) == sorted(REPORT_FILES)
    text = pathlib.Path(paths["report.md"]).read_text()
    assert "Accuracy **0.7500** on 4 test examples" in text
    assert "| c2 | 1.000 | 0.500 | 0.667 | 2 |" in text
    assert "| c1 | 0.500 | 1.000 | 0.667 | 1 |" in text
    history = report.read_history(workdir)
    assert [len(history["head"]), len(history["finetune"])] == [2, 1]
    assert history["head"][0]["seconds"] == pytest.approx(run.history["head"][0]["seconds"])


def test_curves_mark_the_phase_boundary_only_between_two_phases():
    row = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
    both = [{**row, "phase": "head"}] * 2 + [{**row, "phase": "finetune"}]
    boundary = plots.training_curves_figure(both)
    lines = [line.get_xdata()[0] for line in boundary.axes[0].lines if line.get_linestyle() == ":"]
    assert lines == [2.5]
    single = plots.training_curves_figure([{**row, "phase": "head"}])
    assert not [line for line in single.axes[0].lines if line.get_linestyle() == ":"]


def test_predictions_grid_highlights_mistakes():
    fig = plots.sample_predictions_figure(_predictions([0, 1, 1], [0, 0, 1]), _images(3),
                                          ("zero", "one"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    colours = [ax.title.get_color() for ax in fig.axes if ax.get_title()]
    assert titles[1] == "pred zero (50%)\ntrue one"
    assert colours == ["tab:green", "tab:red", "tab:green"]
    assert "1 of 3 wrong" in fig._suptitle.get_text()


def _finished_run(workdir: str, predictions: Predictions | None) -> RunResult:
    """A RunResult as a run hands it to the callbacks, with no model at all (``classifier`` is
    None), so any prediction by the report or TensorBoard would fail."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (6, 28, 28, 1), dtype=np.uint8)
    test = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1, 2, 2, 1, 0], np.int32)))
    splits = data_lib.Splits(test, test, test, ("c0", "c1", "c2"), {"test": 6})
    row = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4,
           "learning_rate": 1e-3, "seconds": 0.5}
    history = {"head": [{**row, "epoch": 1, "phase": "head", "global_step": 4}],
               "finetune": [{**row, "epoch": 1, "phase": "finetune", "global_step": 8}]}
    metrics = {"test": {"loss": 0.9, "accuracy": 0.5, "examples": 6},
               "parameters": {"total": 100, "head_trainable": 10, "finetune_trainable": 50}}
    return RunResult(tiny_config(), workdir, None, splits, metrics, history, predictions)


def test_report_and_tensorboard_use_the_runs_test_predictions_and_no_model(tmp_path):
    predictions = _predictions([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2], classes=3)
    result = _finished_run(str(tmp_path), predictions)
    board = tensorboard.TensorBoardCallback(str(tmp_path))
    for callback in (board, report.ReportCallback()):
        callback.on_epoch_end(result.history["head"][0], None)
        callback.on_run_end(result)
    for name in REPORT_FILES:
        assert os.path.getsize(tmp_path / name) > 0, name
    text = (tmp_path / "report.md").read_text()
    assert "Accuracy **0.6667** on 6 test examples, loss 0.9000." in text
    assert "| c2 | 0.500 | 0.500 | 0.500 | 2 |" in text
    test = _event_values(os.path.join(tmp_path, tensorboard.SUBDIR, "test"))
    width, height, png = test["sample_predictions"][0][1]
    assert png.startswith(b"\x89PNG") and int(width) > 100 and int(height) > 100
    assert report.first_test_images(result, 2)[1].tolist() == next(
        iter(result.splits.test.skip(1)))[0].numpy().tolist()


def test_a_run_without_test_predictions_says_so():
    with pytest.raises(ValueError, match="test_predictions is None"):
        report.ReportCallback().on_run_end(_finished_run("unused", None))


def test_the_predictions_grid_shrinks_large_photos_and_keeps_small_images_as_they_are():
    """A 48-megapixel test photo drawn as it is took 14 s and 3.4 GB in the grid."""
    import tensorflow as tf

    large = np.full((2, 1200, 3000, 3), 200, np.uint8)
    small = np.random.default_rng(0).integers(0, 255, (2, 28, 28, 1), dtype=np.uint8)
    labels = np.array([0, 1], np.int32)
    shrunk = report.first_images(tf.data.Dataset.from_tensor_slices((large, labels)))
    assert [image.shape for image in shrunk] == [(205, 512, 3)] * 2
    assert shrunk[0].dtype == np.uint8 and int(shrunk[0].max()) == 200
    kept = report.first_images(tf.data.Dataset.from_tensor_slices((small, labels)))
    np.testing.assert_array_equal(np.stack(kept), small)
