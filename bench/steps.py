"""``python -m bench.steps``: the profile behind P5, a finetune training step alone.

P5 times whole epochs, input pipeline and validation included. This script takes both out: the
same pre-made batches (MobileNet v1 alpha 0.25 at 224 px, top ``--unfreeze_blocks`` unfrozen)
go through tfft's compiled step (one step per call, with and without reading the loss after
each), tfft's step running a whole epoch in one call, Keras's compiled ``train_function`` and
``model.fit``. The variants alternate epoch by epoch; each keeps its fastest epoch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

from absl import flags

from tfft import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_examples", 512, "Examples per epoch (batches of 32).")
flags.DEFINE_integer("unfreeze_blocks", 2, "Top backbone blocks unfrozen.")
flags.DEFINE_integer("repeats", 8, "Epochs of each variant (alternating).")


def main() -> None:
    import keras
    import tensorflow as tf

    from tfft import data as data_lib
    from tfft import distribute, train_lib
    from tfft.backbones import build_backbone
    from tfft.classifier import build_classifier, unfreeze_top_blocks
    from tfft.config import Config, validate

    config = validate(Config().replace(
        dataset="sample:mnist", backbone="mobilenet", alpha=0.25, weights="imagenet",
        image_size=224, batch_size=32, max_train_examples=FLAGS.train_examples,
        max_eval_examples=32, head_epochs=0, finetune_epochs=1,
        unfreeze_blocks=FLAGS.unfreeze_blocks, verbosity=0))
    splits = data_lib.load_splits(config.data, config.train.seed)

    def classifier():
        backbone = build_backbone(config.model, config.data.image_size)
        return build_classifier(backbone, splits.num_classes, config.model,
                                config.data.image_size)

    clf = classifier()
    trainer = train_lib.Trainer(clf, config, splits, distribute.make_strategy(config.train),
                                lambda _msg: None, (), tempfile.mkdtemp(), None)
    groups = trainer.finetune_groups()
    optimizers = [train_lib.make_optimizer(config, 1e-4) for _ in groups]
    for optimizer, group in zip(optimizers, groups, strict=True):
        optimizer.build(group.variables)
    step = trainer._train_step(clf.model, groups, optimizers)  # noqa: SLF001 - the unit profiled

    batches = list(trainer.batches(splits.train))
    premade = tf.data.Dataset.from_tensor_slices(
        (tf.stack([x for x, _ in batches]), tf.stack([y for _, y in batches])))
    count = len(batches)

    reference = classifier()
    unfreeze_top_blocks(reference, FLAGS.unfreeze_blocks)
    reference.model.compile(keras.optimizers.Adam(1e-4), keras.losses.CategoricalCrossentropy(),
                            metrics=["accuracy"])
    one_hot = premade.map(lambda x, y: (x, tf.one_hot(y, splits.num_classes)))

    def tfft_steps(read_loss: bool) -> Callable[[], None]:
        def epoch() -> None:
            iterator, stats = iter(premade), train_lib.EpochStats()
            for _ in range(count):
                sums = step(iterator, tf.constant(1))
                if read_loss:
                    stats.add(sums)
            float(sums[0])
        return epoch

    def tfft_one_call() -> None:
        float(step(iter(premade), tf.constant(count))[0])

    def keras_fit() -> None:
        reference.model.fit(one_hot, epochs=1, verbose=0)

    keras_fit()  # builds and traces train_function
    train_function = reference.model.train_function

    def keras_train_function() -> None:
        iterator = iter(one_hot)
        for _ in range(count):
            logs = train_function(iterator)
        float(logs["loss"])

    variants = {
        "tfft, 1 step per call, loss read every step": tfft_steps(True),
        "tfft, 1 step per call, loss read at the end": tfft_steps(False),
        f"tfft, {count} steps in one call": tfft_one_call,
        "Keras train_function, 1 step per call": keras_train_function,
        "Keras model.fit (verbose=0)": keras_fit,
    }
    for run in variants.values():
        run()  # traces
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(FLAGS.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start) / count)
    print(f"finetune step, ms per step over {count} pre-made batches of 32 "
          f"({FLAGS.unfreeze_blocks} blocks unfrozen; fastest and median of {FLAGS.repeats}):")
    for name, ms in times.items():
        print(f"  {name:<45} {min(ms):6.1f}  {statistics.median(ms):6.1f}")


if __name__ == "__main__":
    cli.run(main)
