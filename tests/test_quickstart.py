"""README command 1 and the card's TF-Hub backbone: each quick config trains offline and reaches
the accuracy its header promises.

Measured here (2-core CPU, 2026-12-01): quickstart (MobileNetV2 alpha 0.35) 0.982 in 127 s,
peak RSS 1.1 GB; mnist_hub_mobilenet_v2_quick (the real tfhub.dev TF1 Hub module) 0.979 in 64 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.large

CONFIGS = ("quickstart.cfg", "mnist_hub_mobilenet_v2_quick.cfg")


def promised_accuracy(name: str) -> float:
    with open(os.path.join(ROOT, "configs", name)) as f:
        header = "".join(line for line in f if line.startswith("#"))
    return float(re.search(r"test accuracy >= ([0-9.]+)", header).group(1))


@pytest.mark.parametrize("name", CONFIGS)
def test_quick_config_reaches_the_accuracy_in_its_header(tmp_path, name):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "tfft.train", f"--flagfile=configs/{name}",
         f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = float(re.search(r"^Test accuracy: ([0-9.]+)", proc.stdout, re.M).group(1))
    assert accuracy >= promised_accuracy(name)
    assert os.path.isdir(tmp_path / "export" / "1")
