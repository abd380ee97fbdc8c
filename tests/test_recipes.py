"""Fine-tuning recipes: BatchNorm mode, LR schedules, discriminative rates, gradual unfreezing,
the accuracy gate and the LR range test, on tiny runs (32 px, tens of examples)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, tiny_config

from tfft import callbacks, lr_find, rundir, schedules, train_lib
from tfft.backbones import build_backbone
from tfft.classifier import count_params, unfreeze_top_blocks
from tfft.config import AUTO_LR, Config, validate
from tfft.errors import UserError


def initial_backbone_weights(config: Config) -> dict[str, np.ndarray]:
    layer = build_backbone(config.model, config.data.image_size).layer
    return {w.path: w.numpy() for w in layer.weights}


def changed_paths(result: train_lib.RunResult, before: dict[str, np.ndarray]) -> set[str]:
    return {w.path for w in result.classifier.backbone.layer.weights
            if not np.array_equal(w.numpy(), before[w.path])}


@pytest.mark.parametrize("finetune_batchnorm", [False, True])
def test_batchnorm_statistics_change_only_when_asked(tmp_path, finetune_batchnorm):
    config = tiny_config(head_epochs=0, finetune_epochs=1, unfreeze_blocks=2,
                         finetune_batchnorm=finetune_batchnorm, max_train_examples=32,
                         max_eval_examples=16, tensorboard=False)
    before = initial_backbone_weights(config)
    changed = changed_paths(train_lib.train_and_evaluate(config, str(tmp_path)), before)
    moving = {p for p in changed if "moving_" in p}
    assert any("conv_pw_13/kernel" in p for p in changed)
    if finetune_batchnorm:
        assert any("conv_pw_13_bn/moving_mean" in p for p in moving)
        assert any("conv_pw_13_bn/moving_variance" in p for p in moving)
        assert not any("_bn/" in p and "_12_" not in p and "_13_" not in p for p in changed), \
            "BatchNorm of frozen blocks untouched"
    else:
        assert moving == set()


def test_schedules_follow_their_curves():
    cosine = schedules.PhaseSchedule("cosine", 0.1, total_steps=100, warmup_steps=10)
    assert float(cosine(0)) == pytest.approx(0.01)  # warm-up: 1/10 of the rate
    assert float(cosine(9)) == pytest.approx(0.1)
    assert float(cosine(55)) == pytest.approx(0.05, rel=1e-3)  # half-way through the decay
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)
    cycle = schedules.PhaseSchedule("one_cycle", 0.1, total_steps=100)
    rates = [float(cycle(s)) for s in range(101)]
    assert rates[0] == pytest.approx(0.1 / schedules.ONE_CYCLE_START_DIVISOR)
    assert max(rates) == pytest.approx(0.1) and int(np.argmax(rates)) == 30
    assert rates[-1] == pytest.approx(0.1 / schedules.ONE_CYCLE_END_DIVISOR)
    shifted = schedules.PhaseSchedule("cosine", 0.1, 100, offset=40, factor=0.5)
    plain = schedules.PhaseSchedule("cosine", 0.1, 100)
    assert float(shifted(5)) == pytest.approx(0.5 * float(plain(45)))
    constant = schedules.PhaseSchedule("constant", 0.1, 100)
    assert [float(constant(s)) for s in (0, 50, 99)] == pytest.approx([0.1] * 3)


def test_unfreeze_plan():
    plan = [schedules.unfrozen_blocks_at(e, 3, "gradual", 2) for e in range(8)]
    assert plan == [1, 1, 2, 2, 3, 3, 3, 3]
    assert [schedules.first_epoch_of_block(d, "gradual", 2) for d in range(3)] == [0, 2, 4]
    assert schedules.unfrozen_blocks_at(0, 3, "all_at_once", 2) == 3
    assert [schedules.discriminative_factor(d, 0.5) for d in range(3)] == [1.0, 0.5, 0.25]


class SimulatedCrash(Exception):
    """Stands for a kill after an epoch's checkpoint."""


class Recorder(callbacks.RunCallback):
    """Trainable parameters at each epoch's end; optionally stops the run after an epoch."""

    def __init__(self, stop_after: tuple[str, int] | None = None):
        self.trainable: dict[str, list[int]] = {}
        self.stop_after = stop_after

    def on_epoch_end(self, row, model) -> None:
        self.trainable.setdefault(row["phase"], []).append(count_params(model.trainable_weights))
        if self.stop_after == (row["phase"], row["epoch"]):
            raise SimulatedCrash(row["epoch"])


RECIPE = dict(head_epochs=1, finetune_epochs=3, unfreeze_blocks=3, unfreeze_schedule="gradual",
              discriminative_lr_factor=0.5, lr_schedule="cosine", warmup_epochs=1.0,
              finetune_learning_rate=1e-3, max_train_examples=32, max_eval_examples=16,
              tensorboard=False)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    recorder = Recorder()
    workdir = str(tmp_path_factory.mktemp("recipe"))
    result = train_lib.train_and_evaluate(tiny_config(**RECIPE), workdir, callbacks=(recorder,))
    return result, recorder


def test_gradual_unfreezing_trains_one_more_block_each_epoch(recipe_run):
    result, recorder = recipe_run
    clf = result.classifier
    expected = []
    for n in (1, 2, 3):
        unfreeze_top_blocks(clf, n)
        expected.append(count_params(clf.model.trainable_weights))
    assert recorder.trainable["finetune"] == expected
    assert expected[0] < expected[1] < expected[2]


def test_rows_record_the_scheduled_learning_rate(recipe_run):
    result, _ = recipe_run
    rows = result.metrics["phases"]["finetune"]
    steps = 2  # 32 examples, batch 16
    cosine = schedules.PhaseSchedule("cosine", 1e-3, 3 * steps, steps)
    assert [r["learning_rate"] for r in rows] == pytest.approx(
        [float(cosine(e * steps + steps - 1)) for e in range(3)])
    assert rows[0]["learning_rate"] > rows[1]["learning_rate"] > rows[2]["learning_rate"]


def test_interrupted_recipe_resumes_to_the_same_metrics(recipe_run, tmp_path):
    result, _ = recipe_run
    config = tiny_config(**RECIPE)
    with pytest.raises(SimulatedCrash):
        train_lib.train_and_evaluate(config, str(tmp_path),
                                     callbacks=(Recorder(("finetune", 2)),))
    resumed = train_lib.train_and_evaluate(config, str(tmp_path))
    assert resumed.metrics["phases"] == result.metrics["phases"]
    assert resumed.metrics["test"] == result.metrics["test"]


def test_each_block_moves_by_its_discriminative_factor(tmp_path):
    """Adam's first step moves each weight by ~ its learning rate (the sign of the gradient
    times the rate), so each block's median update is the rate times its factor."""
    lr, factor = 1e-3, 0.5
    config = tiny_config(head_epochs=0, finetune_epochs=1, unfreeze_blocks=3, batch_size=64,
                         finetune_learning_rate=lr, discriminative_lr_factor=factor,
                         max_eval_examples=16, tensorboard=False)
    before = initial_backbone_weights(config)
    result = train_lib.train_and_evaluate(config, str(tmp_path))
    after = {w.path: w.numpy() for w in result.classifier.backbone.layer.weights}
    for depth, block in enumerate((13, 12, 11)):
        path = f"conv_pw_{block}/kernel"
        key = next(k for k in after if k.endswith(path))
        step = np.abs(after[key] - before[key])
        assert np.median(step[step > 0]) == pytest.approx(lr * factor ** depth, rel=0.05), path


def test_auto_learning_rate_and_config_values():
    config = validate(Config().replace(head_learning_rate="auto"))
    assert config.head.head_learning_rate == AUTO_LR
    assert config.finetune.finetune_learning_rate == AUTO_LR  # 0 = a tenth of auto = auto
    for field, value, flag in [("discriminative_lr_factor", 1.5, "--discriminative_lr_factor"),
                               ("lr_schedule", "step", "--lr_schedule"),
                               ("unfreeze_schedule", "slow", "--unfreeze_schedule"),
                               ("unfreeze_every_epochs", 0, "--unfreeze_every_epochs"),
                               ("assert_min_accuracy", 2.0, "--assert_min_accuracy"),
                               ("head_learning_rate", -2.0, "--head_learning_rate")]:
        with pytest.raises(UserError, match=flag):
            validate(Config().replace(**{field: value}))


def test_lr_find_is_finite_inside_the_sweep_and_reproducible(tmp_path):
    config = tiny_config(head_epochs=0, finetune_epochs=0)
    first = lr_find.find(config, "head", str(tmp_path), steps=30)
    second = lr_find.find(config, "head", str(tmp_path / "again"), steps=30)
    assert math.isfinite(first.suggestion)
    assert lr_find.START_LR <= first.suggestion <= lr_find.END_LR
    assert first.to_dict() == second.to_dict()
    assert os.path.getsize(tmp_path / "lr_find.png") > 0


def test_auto_head_rate_is_the_range_tests_and_kept_for_resume(tmp_path):
    config = tiny_config(head_epochs=1, finetune_epochs=0, head_learning_rate="auto",
                         max_eval_examples=16, tensorboard=False)
    result = train_lib.train_and_evaluate(config, str(tmp_path))
    saved = rundir.read_json(str(tmp_path / rundir.LR_FIND))
    assert result.metrics["phases"]["head"][0]["learning_rate"] == pytest.approx(saved["head"])
    assert os.path.exists(tmp_path / "lr_find_head.png")
    report = (tmp_path / "report.md").read_text()
    assert f"| head | 1 | auto → {saved['head']:.3g} |" in report


def test_cli_accuracy_gate_exits_4_without_export(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "tfft.train", "--flagfile=configs/quickstart.cfg",
         f"--workdir={tmp_path}", "--image_size=32", "--head_epochs=0", "--finetune_epochs=0",
         "--max_train_examples=32", "--max_eval_examples=16", "--verbosity=0",
         "--tensorboard=false", "--assert_min_accuracy=0.999"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tfft: error:")]
    assert len(errors) == 1 and "--assert_min_accuracy" in errors[0]
    assert not os.path.exists(tmp_path / "export")
