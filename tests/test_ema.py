"""``--ema_decay``: what validation, the phase's final weights, ``model.keras`` and the test pass
use is the optimizer's moving average, not the raw weights it trained; a resumed run continues
the average exactly."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from conftest import tiny_config

from tfft import ema, fit, loop, phases, rundir, schedules, train_lib
from tfft.callbacks import RunCallback

RECIPE = dict(head_epochs=2, finetune_epochs=2, ema_decay=0.9, checkpoint_every_steps=2,
              finetune_learning_rate=0.01)


class Interrupted(Exception):
    pass


class InterruptAfter(RunCallback):
    """Stops the run (as a crash would) after ``epoch`` of ``phase``."""

    def __init__(self, phase: str, epoch: int):
        self.phase, self.epoch = phase, epoch

    def on_epoch_end(self, row, model) -> None:
        if row["phase"] == self.phase and row["epoch"] == self.epoch:
            raise Interrupted


def read_metrics(workdir: str) -> dict:
    with open(os.path.join(workdir, rundir.METRICS)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """A head-only EMA run, with each phase's raw and averaged weights as it ended."""
    seen = []
    real_finish = fit.PhaseRunner.finish

    def finish(self, record):
        raw = [v.numpy() for v in self.plan.variables]
        found = ema.pairs(self.optimizers)
        seen.append({"raw": raw, "avg": {id(v): a.numpy() for v, a in found}})
        real_finish(self, record)

    workdir = str(tmp_path_factory.mktemp("ema"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fit.PhaseRunner, "finish", finish)
        result = train_lib.train_and_evaluate(
            tiny_config(head_epochs=3, finetune_epochs=0, ema_decay=0.9,
                        head_learning_rate=0.01), workdir)
    return result, seen, workdir


def test_final_weights_are_the_average_not_the_raw_weights(ema_run):
    result, seen, _ = ema_run
    (phase,) = seen
    head = result.classifier.head.trainable_variables
    assert len(phase["avg"]) == len(head) > 0
    for var in head:
        np.testing.assert_array_equal(var.numpy(), phase["avg"][id(var)])
    assert any(not np.allclose(v.numpy(), raw) for v, raw in
               zip(result.classifier.head.variables, phase["raw"], strict=True)), \
        "the average equals the raw weights: the test cannot tell them apart"


def test_model_keras_and_validation_use_the_averaged_weights(ema_run):
    result, _, workdir = ema_run
    saved = keras.models.load_model(os.path.join(workdir, rundir.MODEL), safe_mode=True)
    for a, b in zip(saved.weights, result.classifier.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with phases.setup_run(tiny_config(head_epochs=0, finetune_epochs=0)) as run:
        run.classifier.model.set_weights(saved.get_weights())
        loss = loop.make_loss()
        steps = loop.eval_steps(run.strategy, run.classifier.model, loss)
        val = loop.run_steps(steps, run.strategy, run.batches(run.splits.validation))
    last = read_metrics(workdir)["phases"]["head"][-1]
    # The last epoch validated the average that became the final weights: same loss.
    assert val.mean_loss == pytest.approx(last["val_loss"], rel=1e-4)


@pytest.mark.large
def test_an_interrupted_ema_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    config = tiny_config(**RECIPE)
    train_lib.train_and_evaluate(config, str(tmp_path / "whole"))
    workdir = str(tmp_path / "stopped")
    with pytest.raises(Interrupted):
        train_lib.train_and_evaluate(config, workdir, callbacks=(InterruptAfter("finetune", 1),))
    assert not os.path.exists(os.path.join(workdir, rundir.METRICS))
    train_lib.train_and_evaluate(config, workdir)
    assert read_metrics(workdir) == read_metrics(str(tmp_path / "whole"))


def test_under_float16_the_inner_optimizer_averages_and_the_checkpoint_holds_it():
    train = tiny_config(ema_decay=0.5, optimizer="sgd", momentum=0.0).train
    caller = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        optimizer = schedules.make_optimizer(train, 1.0)
    finally:
        keras.mixed_precision.set_global_policy(caller)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    var = keras.Variable(np.zeros(2, np.float32))
    optimizer.build([var])
    assert ema.pairs([optimizer]) == [], "no average before the first step"
    for _ in range(2):
        optimizer.apply([keras.ops.ones(2) * optimizer.dynamic_scale], [var])
    ((paired, average),) = ema.pairs([optimizer])
    assert paired is var and any(average is v for v in optimizer.variables)
    np.testing.assert_allclose(var.numpy(), [-2.0, -2.0])  # sgd, rate 1, two steps
    np.testing.assert_allclose(average.numpy(), [-1.5, -1.5])  # 0.5 * -1 + 0.5 * -2
    with ema.swapped([optimizer]):
        np.testing.assert_allclose(var.numpy(), [-1.5, -1.5])
    np.testing.assert_allclose(var.numpy(), [-2.0, -2.0])
