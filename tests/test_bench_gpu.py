"""``python -m bench.gpu --smoke``: every measure runs and the table is complete (on CPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.large
def test_smoke_prints_every_measure_in_one_table():
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    header, *lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert header.startswith("bench.gpu on CPU (smoke)") and "batch 8, 32 px" in header
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert not [row for row in rows if "failed" in row], rows
    features = [row for row in rows if row.startswith("| feature pass")]
    steps = [row for row in rows if row.startswith("| finetune step")]
    assert len(features) == 4 and len(steps) == 3 * 2 * 2
    settings = {row.split(" | ")[1] for row in steps}
    assert "mixed_float16, XLA on, device" in settings and "float32, XLA off, host" in settings
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2].replace(",", "")) > 0 and re.fullmatch(r"\d+\.\d\dx", cells[3])
        assert cells[4] == "n/a"  # no GPU here
    assert steps[0].split(" | ")[3] == "1.00x"  # the baseline of the finetune ratios
