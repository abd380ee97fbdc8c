"""``python -m tfft.cache list|clear``: through the real command, on entries of real extractions."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time

import pytest
from cache_entries import write_entry
from conftest import ROOT

from tfft import cache_store
from tfft.cache import format_age, parse_age
from tfft.diskspace import format_bytes
from tfft.errors import UserError

DAY_S = 86400


def cache_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfft.cache", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_list_shows_each_entry_and_clear_removes_those_older_than_the_age(tmp_path):
    root = tmp_path / "cache"
    old, _ = write_entry(root, 1, count=6)
    recent, _ = write_entry(root, 2, count=5, split="validation")
    ten_days_ago = time.time() - 10 * DAY_S
    os.utime(os.path.join(old, cache_store.LAST_USED_FILE), (ten_days_ago, ten_days_ago))
    sizes = {entry: cache_store.dir_bytes(entry) for entry in (old, recent)}

    listed = cache_command("list", f"--cache_dir={root}")
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr[-2000:]
    header, *rows, total = listed.stdout.splitlines()
    assert header.split() == ["LAST", "USED", "SIZE", "COUNT", "DTYPE", "SHAPE", "SPLIT",
                              "DATASET", "BACKBONE", "IMAGE", "ENTRY"]
    assert [r.split()[-1] for r in rows] == [os.path.basename(old), os.path.basename(recent)]
    assert rows[0].split()[2:] == ["(10d", "ago)", *format_bytes(sizes[old]).split(), "6",
                                   "float32", "-", "train", "sample:mnist", "mobilenet", "32",
                                   os.path.basename(old)]
    assert rows[1].split()[6:12] == ["5", "float32", "-", "validation", "sample:mnist",
                                     "mobilenet"]
    assert total == f"2 entries, {format_bytes(sum(sizes.values()))}, in {root}"

    cleared = cache_command("clear", "--older_than=7d", f"--cache_dir={root}")
    assert cleared.returncode == 0, cleared.stderr[-2000:]
    assert cleared.stdout.strip() == (f"Removed 1 entry, {format_bytes(sizes[old])} freed, "
                                      f"from {root}.")
    assert os.listdir(root) == [os.path.basename(recent)]

    everything = cache_command(f"--cache_dir={root}", "clear")
    assert everything.stdout.strip() == (f"Removed 1 entry, {format_bytes(sizes[recent])} "
                                         f"freed, from {root}.")
    assert os.listdir(root) == []


@pytest.mark.parametrize("arg", ["7d", "12h", "30m", "2w", "45s", "0", "0d", "1.5h"])
def test_ages_parse_and_print_in_the_same_units(arg):
    seconds = parse_age(arg)
    assert seconds == float(arg.rstrip("smhdw")) * {"s": 1, "m": 60, "h": 3600, "d": DAY_S,
                                                    "w": 7 * DAY_S}.get(arg[-1], 1)
    if arg[-1] in "smhd" and "." not in arg and seconds:
        assert format_age(seconds) == arg
    assert format_age(13 * DAY_S + 5) == "13d" and format_age(0.5) == "0s"


@pytest.mark.parametrize("arg", ["7", "7x", "-1d", "", "d", "1e3s"])
def test_bad_ages_are_user_errors_naming_the_flag(arg):
    with pytest.raises(UserError, match="^--older_than: .*received"):
        parse_age(arg)


def test_bad_input_is_one_line_and_exit_status_2_and_help_lists_the_flags(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a cache")
    cases = [(["purge"], "verb: expected list or clear"), ([], "received none"),
             (["list", "clear"], "received list clear"),
             (["clear", "--older_than=7x"], "--older_than: expected an age"),
             (["list", f"--cache_dir={a_file}"], "--cache_dir: expected a directory"),
             (["list", "--olderthan=7d"], "olderthan")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda case: cache_command(*case[0]), cases))
        helped = cache_command("--help")
    for (args, expected), proc in zip(cases, procs, strict=True):
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfft: error: "), (args, proc.stderr)
        assert expected in lines[0], (args, lines[0])
        assert proc.stdout == "", args
    assert helped.returncode == 0, helped.stderr
    assert "  --cache_dir:" in helped.stdout and "  --older_than:" in helped.stdout
    assert "python -m tfft.cache list|clear" in helped.stdout
