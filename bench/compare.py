"""``python -m bench.compare``: tfft's fine-tuning recipe against the plain Keras-guide recipe.

For each config (default: ``configs/mnist_mobilenet_quick.cfg`` and
``configs/cifar10_mobilenet_quick.cfg``) both recipes see the same splits, input pipeline
(resize + MobileNet normalisation), image size, backbone and weights, batch size, head-phase
learning rate and total epochs:

(a) peer, the Keras transfer-learning guide: ``base.trainable = False``, ``model.fit`` for the
    config's head epochs at ``--head_learning_rate``; then ``base.trainable = True`` with the top
    third of the base's layers trainable, recompile at a tenth of the rate, ``model.fit`` for the
    config's finetune epochs.
(b) tfft: ``train_and_evaluate`` with the config as it is (wall time includes its run report).

Prints one row per recipe and dataset (test accuracy, wall seconds) and the differences;
``--markdown`` adds the README table. Not part of the test suite (minutes on a CPU).
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

from tfft import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["configs/mnist_mobilenet_quick.cfg",
                              "configs/cifar10_mobilenet_quick.cfg"],
                  "tfft flagfiles to compare on (paths relative to the cwd).")
flags.DEFINE_list("overrides", [], "Extra tfft flags for every config, e.g. "
                  "max_train_examples=512 (for a quick check of this script).")
flags.DEFINE_boolean("markdown", False, "Also print the table as Markdown (for the README).")


@dataclass
class Outcome:
    """One recipe on one dataset."""

    dataset: str
    recipe: str
    accuracy: float
    seconds: float


def load_config(path: str, overrides: list[str]):
    """The validated tfft config a flagfile (plus ``name=value`` overrides) describes."""
    from tfft.config import validate
    from tfft.flags import config_from_flags, define_config_flags

    values = flags.FlagValues()
    flags.DEFINE_integer("verbosity", 1, "absl's own", flag_values=values)
    flags.DEFINE_string("workdir", "", "", flag_values=values)
    define_config_flags(values)
    values(["compare", f"--flagfile={path}", *(f"--{o}" for o in overrides)])
    return validate(config_from_flags(values)).replace(verbosity=0, tensorboard=False)


def run_peer(config) -> float:
    """The Keras-guide recipe; returns its test accuracy."""
    import keras

    from tfft import data as data_lib
    from tfft import phases

    with phases.setup_run(config) as run:  # seeds, devices and the splits, as tfft's own run
        splits, base = run.splits, run.classifier.backbone

    def batches(ds, training: bool):
        return data_lib.make_batches(ds, config.data, base.normalize, training=training,
                                     seed=config.train.seed)

    train = batches(splits.train, True)
    val = batches(splits.validation, False)
    base_model = base.layer
    base_model.trainable = False
    inputs = keras.Input((config.data.image_size,) * 2 + (3,))
    x = base_model(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(config.model.dropout)(x)
    outputs = keras.layers.Dense(splits.num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    lr = config.head.head_learning_rate
    model.compile(keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    head_epochs = config.head.head_epochs
    model.fit(train, epochs=head_epochs, validation_data=val, verbose=0)
    base_model.trainable = True
    for layer in base_model.layers[: len(base_model.layers) * 2 // 3]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(lr / 10), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train, epochs=head_epochs + config.finetune.finetune_epochs,
              initial_epoch=head_epochs, validation_data=val, verbose=0)
    return float(model.evaluate(batches(splits.test, False), verbose=0)[1])


def run_tfft(config) -> float:
    from tfft import train_lib

    workdir = tempfile.mkdtemp(prefix="tfft-compare-")
    try:
        return train_lib.train_and_evaluate(config, workdir).test_accuracy
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def timed(fn, config) -> tuple[float, float]:
    start = time.perf_counter()
    accuracy = fn(config)
    return accuracy, time.perf_counter() - start


def main() -> None:
    outcomes = []
    for path in FLAGS.configs:
        config = load_config(path, FLAGS.overrides)
        name = os.path.basename(path).removesuffix(".cfg")
        for recipe, fn in (("keras guide", run_peer), ("tfft", run_tfft)):
            accuracy, seconds = timed(fn, config)
            outcomes.append(Outcome(name, recipe, accuracy, seconds))
            print(f"{name:32s} {recipe:12s} test accuracy {accuracy:.4f}  {seconds:7.1f} s",
                  flush=True)
    for peer, ours in zip(outcomes[::2], outcomes[1::2], strict=True):
        print(f"{peer.dataset}: tfft - keras guide = {100 * (ours.accuracy - peer.accuracy):+.2f} "
              f"points, wall time x{ours.seconds / peer.seconds:.2f}")
    if FLAGS.markdown:
        print(f"\nMeasured {datetime.date.today()} on {platform.machine()} "
              f"({os.cpu_count()} CPU cores)\n")
        print("| config | Keras guide: accuracy / time | tfft: accuracy / time | difference |")
        print("|---|---|---|---|")
        for peer, ours in zip(outcomes[::2], outcomes[1::2], strict=True):
            print(f"| {peer.dataset} | {peer.accuracy:.4f} / {peer.seconds:.0f} s | "
                  f"{ours.accuracy:.4f} / {ours.seconds:.0f} s | "
                  f"{100 * (ours.accuracy - peer.accuracy):+.2f} points |")


if __name__ == "__main__":
    cli.run(main)
