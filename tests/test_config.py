"""Configs: every shipped flagfile parses and validates; bad values name their flag."""

from __future__ import annotations

import glob
import os

import pytest
from absl import flags
from conftest import ROOT

from tfft.config import Config, validate
from tfft.errors import UserError
from tfft.flags import config_from_flags, define_config_flags

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))


def parse(argv: list[str]) -> Config:
    fv = flags.FlagValues()
    flags.DEFINE_integer("verbosity", -1, "absl's own, as absl.logging defines it", flag_values=fv)
    define_config_flags(fv)
    flags.DEFINE_string("workdir", "", "", flag_values=fv)
    fv(["prog", *argv])
    return validate(config_from_flags(fv))


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"quickstart.cfg", "mnist_vgg16.cfg", "cifar10_mobilenet_v2_hub.cfg"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_parses_and_validates(path):
    config = parse([f"--flagfile={path}"])
    with open(path) as f:
        header = [line for line in f if line.startswith("#")]
    assert any("python -m tfft.train" in line for line in header), "header names its command"
    assert config.finetune.finetune_learning_rate > 0


def test_defaults_are_valid_and_finetune_lr_defaults_to_tenth():
    config = validate(Config())
    assert config.finetune.finetune_learning_rate == pytest.approx(
        config.head.head_learning_rate / 10)
    assert config.data.image_size == 224


def test_flags_override_flagfile_in_order(tmp_path):
    cfg = tmp_path / "x.cfg"
    cfg.write_text("# comment\n--head_epochs=3\n--head_units=64,32\n")
    assert parse([f"--flagfile={cfg}", "--head_epochs=9"]).head.head_epochs == 9
    assert parse(["--head_epochs=9", f"--flagfile={cfg}"]).head.head_epochs == 3
    assert parse([f"--flagfile={cfg}"]).model.head_units == (64, 32)


def test_json_round_trip():
    config = validate(Config().replace(augment=("flip",), head_units=(8, 4)))
    assert Config.from_json(config.to_json()) == config


@pytest.mark.parametrize("field,value,flag", [
    ("backbone", "vgg61", "--backbone"),
    ("dataset", "imagenet", "--dataset"),
    ("strategy", "magic", "--strategy"),
    ("optimizer", "adamax", "--optimizer"),
    ("image_size", 0, "--image_size"),
    ("head_epochs", -1, "--head_epochs"),
    ("head_learning_rate", 0.0, "--head_learning_rate"),
    ("head_learning_rate", float("nan"), "--head_learning_rate"),
    ("batch_size", -4, "--batch_size"),
    ("dropout", 1.5, "--dropout"),
    ("augment", ("flip", "twirl"), "--augment"),
    ("validation_fraction", 0.7, "--validation_fraction"),
])
def test_bad_values_name_their_flag(field, value, flag):
    with pytest.raises(UserError, match=flag) as err:
        validate(Config().replace(**{field: value, "test_fraction": 0.4}))
    assert "received" in str(err.value)


def test_non_numeric_head_units_is_a_user_error():
    with pytest.raises(UserError, match="--head_units"):
        Config().replace(head_units=("big",))
