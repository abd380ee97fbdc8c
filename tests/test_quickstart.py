"""README command 1 and every shipped ``*_quick.cfg``: each trains offline, reaches the accuracy its
header promises and reproduces the accuracy its header says was measured, within 1 point.

The headers hold the numbers (``test accuracy >= PROMISED (measured DATE: MEASURED ...``), so a
changed recipe that no longer reproduces them fails here.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.large

CONFIGS = ("quickstart.cfg", *sorted(
    os.path.basename(path) for path in glob.glob(os.path.join(ROOT, "configs", "*_quick.cfg"))))
HEADER = re.compile(r"test accuracy >= ([0-9.]+) \(measured [0-9-]+: ([0-9.]+)")
REPRODUCES = 0.01


def header_numbers(name: str) -> tuple[float, float]:
    """The promised minimum and the measured accuracy stated in the config's header."""
    with open(os.path.join(ROOT, "configs", name)) as f:
        header = " ".join(line.lstrip("#").strip() for line in f if line.startswith("#"))
    found = HEADER.search(header)
    assert found, f"{name}: header lacks 'test accuracy >= X (measured DATE: Y'"
    return float(found.group(1)), float(found.group(2))


def test_the_quickstart_promises_the_issue_target():
    assert header_numbers("quickstart.cfg")[0] >= 0.985


@pytest.mark.parametrize("name", CONFIGS)
def test_quick_config_reaches_and_reproduces_its_header(tmp_path, name):
    promised, measured = header_numbers(name)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "tfft.train", f"--flagfile=configs/{name}",
         f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = float(re.search(r"^Test accuracy: ([0-9.]+)", proc.stdout, re.M).group(1))
    assert accuracy >= promised
    assert abs(accuracy - measured) <= REPRODUCES, (accuracy, measured)
    assert os.path.isdir(tmp_path / "export" / "1")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_the_mobilenet_quick_configs_are_bench_compares_best_recipe(dataset, monkeypatch):
    """The headers quote ``bench.compare``'s "tfft best" row, so the recipes must be the same.

    ``bench`` is not installed with tfft: it is imported from the checkout.
    """
    monkeypatch.syspath_prepend(ROOT)
    from bench import compare

    with open(os.path.join(ROOT, "configs", f"{dataset}_mobilenet_quick.cfg")) as f:
        pairs = [line.strip()[2:] for line in f if line.startswith("--")]
    shipped = compare.parse([pair for pair in pairs if not pair.startswith("workdir=")])
    recipe = compare.best_recipe(dataset, "mobilenet@96")
    best = compare.make_config(dataset, "mobilenet@96", recipe, {}).flat()
    assert {name: best[name] for name in shipped} == shipped
    assert set(recipe) <= set(shipped)
