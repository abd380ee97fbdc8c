"""The package's face: ``tfft.train_and_evaluate`` is train_lib's, arguments and all."""

from __future__ import annotations

import tfft
from tfft import train_lib


def test_train_and_evaluate_forwards_strategy_callbacks_and_overwrite(monkeypatch):
    calls = []

    def fake(config, workdir, strategy=None, callbacks=(), overwrite=False):
        calls.append((config, workdir, strategy, callbacks, overwrite))
        return "result"

    monkeypatch.setattr(train_lib, "train_and_evaluate", fake)
    config, callback, strategy = tfft.Config(), object(), object()
    assert tfft.train_and_evaluate(config, "runs/x", strategy, callbacks=[callback],
                                   overwrite=True) == "result"
    assert tfft.train_and_evaluate(config, "runs/y") == "result"
    assert calls == [(config, "runs/x", strategy, (callback,), True),
                     (config, "runs/y", None, (), False)]
