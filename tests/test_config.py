"""Configs: every shipped flagfile parses and validates; bad values name their flag."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest
from absl import flags
from conftest import ROOT

from tfft import config as config_lib
from tfft import rundir
from tfft.config import AUTO_LR, Config, flag_fields, validate
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


def test_defaults_are_valid_and_finetune_lr_defaults_to_a_fraction_of_the_head_rate():
    config = validate(Config())
    assert config.finetune.finetune_learning_rate == pytest.approx(
        config.head.head_learning_rate * 0.3)
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


# ---------------------------------------------------------------- rules in the field metadata

RULE_KEYS = {"help", "choices", "bounds", "auto", "element"}


def test_choices_and_bounds_live_in_the_field_metadata():
    fields = flag_fields()
    assert all(set(f.metadata) <= RULE_KEYS for f in fields.values())
    assert fields["backbone"].metadata["choices"] == config_lib.BACKBONES
    assert fields["augment"].metadata["choices"] == config_lib.AUGMENTATIONS
    assert fields["head_units"].metadata["element"] is int
    numeric = {n for n, f in fields.items()
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)}
    assert {n for n in numeric if "bounds" not in fields[n].metadata} == {"seed"}
    assert {n for n, f in fields.items() if "choices" in f.metadata} == {
        "augment", "backbone", "pooling", "unfreeze_schedule", "optimizer", "lr_schedule",
        "cache_features", "mixed_precision", "cache_dtype", "strategy", "jit_compile",
        "preprocess_on", "sampling", "class_weight", "calibrate", "tta"}


def test_flag_help_shows_what_validate_accepts():
    fv = flags.FlagValues()
    define_config_flags(fv)
    for name, f in flag_fields().items():
        if "choices" in f.metadata:
            assert "one of: " + ", ".join(f.metadata["choices"]) in fv[name].help, name
        if "bounds" in f.metadata:
            assert f.metadata["bounds"].describe() in fv[name].help, name
    assert fv["augment"].help.endswith("Accepts a comma list, each one of: flip, rotate, zoom, "
                                       "crop, translate, contrast, brightness, randaugment, "
                                       "random_erasing, mixup, cutmix.")
    assert fv["head_learning_rate"].help.endswith("Accepts auto or a positive number.")


def outside(f):
    """A value just outside a field's rule, and the expected text of its error."""
    if "choices" in f.metadata:
        return "nope", "one of " + ", ".join(f.metadata["choices"])
    bounds = f.metadata["bounds"]
    value = -0.5 if not bounds.low_open else 0
    if bounds.high != math.inf and bounds.high_open:
        value = bounds.high
    return value, bounds.describe()


@pytest.mark.parametrize("name", [n for n, f in flag_fields().items()
                                  if {"choices", "bounds"} & set(f.metadata)])
def test_each_rule_rejects_a_value_outside_with_the_flag_expected_received_wording(name):
    f = flag_fields()[name]
    value, expected = outside(f)
    if isinstance(f.default, tuple):
        value = (f.default or ("flip",)) + (value,)
    with pytest.raises(UserError) as err:
        validate(Config().replace(**{name: value}))
    bad = value[-1] if isinstance(value, tuple) else value
    assert str(err.value) == f"--{name}: expected {expected}; received {bad!r}."


@pytest.mark.parametrize("field,value,message", [
    ("dropout", 1.5, "--dropout: expected a number in [0, 1); received 1.5."),
    ("discriminative_lr_factor", 0.0,
     "--discriminative_lr_factor: expected a number in (0, 1]; received 0.0."),
    ("assert_min_accuracy", 1.01, "--assert_min_accuracy: expected a number in [0, 1]; "
                                  "received 1.01."),
    ("image_size", 0, "--image_size: expected a positive number; received 0."),
    ("num_gpus", -1, "--num_gpus: expected a number >= 0; received -1."),
    ("head_units", (8, 0), "--head_units: expected a positive number; received 0."),
    ("backbone", "vgg61", "--backbone: expected one of convnext_small, convnext_tiny, "
                          "efficientnet_v2_b0, efficientnet_v2_b1, efficientnet_v2_b2, "
                          "efficientnet_v2_b3, efficientnet_v2_s, hub, keras_hub, mobilenet, "
                          "mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, resnet50, "
                          "resnet50_v2, vgg16; received 'vgg61'."),
    ("dataset", "imagenet", "--dataset: expected tfds:NAME, folder:PATH, csv:FILE, npz:PATH or "
                            "sample:mnist; received 'imagenet'."),
    ("test_dataset", "x:y", "--test_dataset: expected tfds:NAME, folder:PATH, csv:FILE, "
                            "npz:PATH or sample:mnist; received 'x:y'."),
    ("weights", "", "--weights: expected imagenet, none or a file path; received \"''\"."),
    ("strategy", "tpu", "--tpu: expected a TPU address or 'local'; received \"''\"."),
    ("test_fraction", 0.95, "--validation_fraction: expected validation_fraction + "
                            "test_fraction < 1; received 1.05."),
])
def test_error_messages_keep_their_wording(field, value, message):
    with pytest.raises(UserError) as err:
        validate(Config().replace(**{field: value}))
    assert str(err.value) == message


@pytest.mark.parametrize("field,value", [("dropout", "x"), ("validation_fraction", None),
                                         ("label_smoothing", "high"), ("dataset", 3)])
def test_values_of_the_wrong_type_are_user_errors_not_type_errors(field, value):
    with pytest.raises(UserError, match=f"--{field}: expected"):
        validate(Config().replace(**{field: value}))


def test_validate_is_idempotent_and_resolves_the_finetune_rate():
    for overrides in ({}, {"head_learning_rate": "auto"}, {"finetune_learning_rate": 3e-5},
                      {"head_learning_rate": 0.02, "augment": ("flip", "zoom")}):
        once = validate(Config().replace(**overrides))
        assert validate(once) == once
    assert validate(Config().replace(head_learning_rate=0.02)).finetune.finetune_learning_rate \
        == pytest.approx(0.006)
    assert validate(Config().replace(head_learning_rate="auto")).finetune \
        .finetune_learning_rate == AUTO_LR
    assert validate(Config().replace(finetune_learning_rate="auto")).head.head_learning_rate \
        == 1e-3


# The run-only fields as they were under "train" before the "run" section existed (HEAD~1 of
# the commit that made RunConfig): config.json files of older runs hold them there.
OLD_TRAIN_FIELDS = ("strategy", "tpu", "num_gpus", "cpu_devices", "verbosity", "tensorboard",
                    "checkpoint_every_steps", "steps_per_execution", "assert_min_accuracy",
                    "cache_dir")


def test_config_json_of_the_old_layout_loads_into_the_same_config(tmp_path):
    config = validate(Config().replace(strategy="mirrored", cpu_devices=2, verbosity=0,
                                       tensorboard=False, assert_min_accuracy=0.5,
                                       cache_dir="/tmp/c", optimizer="sgd", head_units=(8,)))
    old = config.to_dict()
    run = old.pop("run")
    assert set(OLD_TRAIN_FIELDS) <= set(run)
    old["train"].update({name: run[name] for name in OLD_TRAIN_FIELDS})  # later fields absent
    (tmp_path / rundir.CONFIG).write_text(json.dumps(old, indent=2, sort_keys=True))
    assert Config.from_json(json.dumps(old)) == config
    assert rundir.read_config(str(tmp_path)) == config
    assert Config.from_json(config.to_json()) == config
