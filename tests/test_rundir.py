"""Run-directory writes: atomic, and readable as the umask allows (serving, monitoring)."""

from __future__ import annotations

import contextlib
import os
import stat

from conftest import tiny_config

from tfft import rundir


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_umasks_mode_not_0600(tmp_path):
    with umask(0o022):
        rundir.write_text(str(tmp_path / "report.md"), "# report\n")
        rundir.write_json(str(tmp_path / "run" / rundir.METRICS), {"test": {"accuracy": 1.0}})
    with umask(0o077):
        rundir.write_text(str(tmp_path / "private.txt"), "x")
    assert mode(tmp_path / "report.md") == 0o644
    assert mode(tmp_path / "run" / rundir.METRICS) == 0o644
    assert mode(tmp_path / "private.txt") == 0o600
    assert rundir.read_json(str(tmp_path / "run" / rundir.METRICS)) == {"test": {"accuracy": 1.0}}


def test_a_rewrite_replaces_the_whole_file_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / rundir.PROGRESS)
    rundir.write_json(path, {"epoch": 1})
    rundir.write_json(path, {"epoch": 2})
    assert rundir.read_json(path) == {"epoch": 2}
    assert os.listdir(tmp_path) == [rundir.PROGRESS]


def test_a_real_runs_files_are_readable_by_others_under_umask_022(tmp_path):
    from tfft import train_lib

    workdir = tmp_path / "run"
    with umask(0o022):
        train_lib.train_and_evaluate(tiny_config(finetune_epochs=0, tensorboard=False),
                                     str(workdir))
    names = [rundir.CONFIG, rundir.METRICS, rundir.METRICS_CSV, rundir.REPORT_MD,
             rundir.PROGRESS]
    written = [name for name in names if (workdir / name).exists()]
    assert {rundir.CONFIG, rundir.METRICS, rundir.METRICS_CSV} <= set(written)
    assert {name: oct(mode(workdir / name)) for name in written} == {
        name: oct(0o644) for name in written}
