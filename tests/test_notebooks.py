"""Every notebook runs top to bottom (tiny settings from the environment), outputs cleared."""

from __future__ import annotations

import glob
import json
import os
import sys

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
KERNEL = "tfft-test-python"
# Small enough that both notebooks together take well under five minutes on 2 CPU cores.
TINY = {"TFFT_NB_IMAGE_SIZE": "32", "TFFT_NB_EPOCHS": "1", "TFFT_NB_FINETUNE_EPOCHS": "1",
        "TFFT_NB_MAX_EXAMPLES": "48", "TFFT_NB_VERBOSITY": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _is_install_cell(cell) -> bool:
    """The ``!pip install`` cell is for Colab; here tfft is already installed."""
    return "skip-ci" in cell.metadata.get("tags", []) or cell.source.lstrip().startswith("!pip")


@pytest.fixture
def kernel_of_this_interpreter(tmp_path, monkeypatch) -> str:
    """A kernelspec that runs ipykernel in ``sys.executable`` (a fresh CI venv has none)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "tfft tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def test_there_are_notebooks():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "custom_dataset.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert sum(_is_install_cell(c) for c in notebook.cells) == 1
    assert "colab-badge.svg" in notebook.cells[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_to_the_end(path, tmp_path, monkeypatch, kernel_of_this_interpreter):
    workdir = tmp_path / "run"
    for name, value in {**TINY, "TFFT_NB_WORKDIR": str(workdir)}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    notebook.cells = [c for c in notebook.cells if not _is_install_cell(c)]
    client = NotebookClient(notebook, timeout=300, kernel_name=kernel_of_this_interpreter,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    for name in ("report.md", "training_curves.png", "sample_predictions.png"):
        assert (workdir / name).is_file(), name
    if any("export_run(" in c.source for c in notebook.cells if c.cell_type == "code"):
        assert (workdir / "export" / "1" / "saved_model.pb").is_file()
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2
