"""The command line every ``python -m tfft.*`` shares: --help, a quiet start, one-line errors."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from tfft import cli

# TF_CPP_MIN_LOG_LEVEL removed: the commands must keep TensorFlow's start-up lines off stderr
# by themselves, as they do for a user who never heard of the variable.
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
SECTIONS = ["data flags:", "model flags:", "head flags:", "finetune flags:", "train flags:",
            "run flags:"]

# (command, flags its --help must name, whether it lists the config flags by section)
HELP_CASES = [
    ("train", ["--dataset", "--backbone", "--workdir", "--head_epochs", "--strategy"], True),
    ("predict", ["--model", "--top_k", "--format"], False),
    ("evaluate", ["--workdir", "--model", "--test_dataset"], False),
    ("export", ["--workdir", "--export_dir"], False),
    ("lr_find", ["--lr_find_phase", "--dataset", "--head_learning_rate"], True),
    ("launch", ["--num_workers"], False),
]


def run_command(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"tfft.{command}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def in_parallel(function, cases):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(function, cases))


def test_help_of_every_command_lists_its_tfft_flags_grouped_and_not_absls():
    procs = in_parallel(lambda case: run_command(case[0], "--help"), HELP_CASES)
    for (command, names, sections), proc in zip(HELP_CASES, procs, strict=True):
        out = proc.stdout
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        assert proc.stderr == "", (command, proc.stderr[-2000:])
        for name in names:
            assert f"  {name}:" in out or f"  --[no]{name[2:]}:" in out, (command, name, out)
        assert "logtostderr" not in out and "absl.logging" not in out, command
        assert f"tfft.{command} flags:" in out, (command, out)
        if sections:
            positions = [out.index(title) for title in SECTIONS + [f"tfft.{command} flags:"]]
            assert positions == sorted(positions), (command, out)
            assert ("Accepts one of: convnext_small, convnext_tiny, efficientnet_v2_b0, "
                    "efficientnet_v2_b1, efficientnet_v2_b2, efficientnet_v2_b3, "
                    "efficientnet_v2_s, hub, keras_hub, mobilenet, mobilenet_v2, "
                    "mobilenet_v3_large, mobilenet_v3_small, resnet50, resnet50_v2, vgg16."
                    ) in " ".join(out.split()), command
        else:
            assert not any(title in out for title in SECTIONS), (command, out)


def test_helpfull_keeps_absls_full_listing():
    proc = run_command("train", "--helpfull")
    assert "--[no]logtostderr" in proc.stdout and "--backbone" in proc.stdout


@pytest.mark.parametrize("argv,asks", [
    (["prog", "--help"], True), (["prog", "-h"], True), (["prog", "--helpshort"], True),
    (["prog", "--helpfull"], False), (["prog", "--dataset=--help"], False),
    (["prog", "--num_workers=2", "--", "--help"], False),
])
def test_help_is_answered_before_any_parser_runs(argv, asks, capsys):
    parsed = []

    def parser(args):
        parsed.append(args)
        return args[:1]

    if asks:
        with pytest.raises(SystemExit) as done:
            cli.parse_unless_help(argv, parser)
        assert done.value.code == 0 and not parsed
        assert "--helpfull also lists" in capsys.readouterr().out
    else:
        assert cli.parse_unless_help(argv, parser) == ["prog"] and parsed == [argv]


def test_commands_that_import_tensorflow_at_their_top_fail_in_exactly_one_line(tmp_path):
    missing = str(tmp_path / "missing")
    cases = [("predict", [f"--model={missing}", "x.png"], "--model"),
             ("evaluate", [f"--workdir={missing}"], "--workdir"),
             ("export", [f"--workdir={missing}"], "--workdir")]
    procs = in_parallel(lambda case: run_command(case[0], *case[1]), cases)
    for (command, _, flag), proc in zip(cases, procs, strict=True):
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith(f"tfft: error: {flag}"), (command, lines)


def test_a_plain_import_leaves_tensorflow_and_its_logging_alone():
    code = ("import os, sys, tfft; "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.split() == ["None", "False"], proc.stderr
