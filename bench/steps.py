"""``python -m bench.steps``: the profile behind P5, a finetune training step alone.

P5 times whole epochs, input pipeline and validation included. This script takes both out: the
same pre-made batches (``bench.run``'s data and model flags: by default MobileNet v1 alpha 0.25
at 224 px, top ``--unfreeze_blocks`` unfrozen) go through tfft's compiled step (one step per
call, with and without reading the loss after each), tfft's step running a whole epoch in one
call, Keras's compiled ``train_function`` and ``model.fit``. The variants alternate epoch by
epoch; each keeps its fastest epoch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from bench import run as bench_run
from tfft import cli

FLAGS = bench_run.FLAGS  # bench.run's flags: --train_examples, --unfreeze_blocks, --repeats, ...


def finetune_step():
    """tfft's compiled finetune step over the plan's groups, pre-made batches of the training
    split and the reference Keras model (built from the same config)."""
    import tensorflow as tf

    from tfft import loop, phases, schedules

    # Host preprocessing: the same premade image batches feed the Keras reference's model.fit.
    config = bench_run.bench_config().replace(finetune_epochs=1, preprocess_on="host",
                                              cache_features="off")  # steps on images
    with phases.setup_run(config) as run:
        reference = bench_run.KerasFit(config, run.splits)
        plan = phases.finetune_plan(run)
        rate = config.finetune.finetune_learning_rate
        optimizers = [schedules.make_optimizer(config.train, rate) for _ in plan.groups]
        for optimizer, group in zip(optimizers, plan.groups, strict=True):
            optimizer.build(group.variables)
        step = loop.train_steps(run.strategy, plan.model, plan.groups, optimizers,
                                loop.make_loss(config.train.label_smoothing))
        batches = list(run.batches(run.splits.train))
    premade = tf.data.Dataset.from_tensor_slices(
        (tf.stack([x for x, _ in batches]), tf.stack([y for _, y in batches])))
    return config, step, premade, reference.model, run.splits.num_classes


def variants(step, premade, model, num_classes: int) -> dict[str, Callable[[], None]]:
    """Each way of running one epoch of the same batches, by name."""
    import tensorflow as tf

    from tfft import loop

    one_hot = premade.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    count = int(premade.cardinality())

    def tfft_steps(read_loss: bool) -> Callable[[], None]:
        def epoch() -> None:
            iterator, stats = iter(premade), loop.EpochStats()
            for _ in range(count):
                sums = step(iterator, tf.constant(1))
                if read_loss:
                    stats.add(sums)
            float(sums[0])
        return epoch

    def keras_fit() -> None:
        model.fit(one_hot, epochs=1, verbose=0)

    keras_fit()  # builds and traces train_function
    train_function = model.train_function

    def keras_train_function() -> None:
        iterator = iter(one_hot)
        for _ in range(count):
            logs = train_function(iterator)
        float(logs["loss"])

    return {
        "tfft, 1 step per call, loss read every step": tfft_steps(True),
        "tfft, 1 step per call, loss read at the end": tfft_steps(False),
        f"tfft, {count} steps in one call":
            lambda: float(step(iter(premade), tf.constant(count))[0]),
        "Keras train_function, 1 step per call": keras_train_function,
        "Keras model.fit (verbose=0)": keras_fit,
    }


def main() -> None:
    config, step, premade, model, num_classes = finetune_step()
    runs = variants(step, premade, model, num_classes)
    count = int(premade.cardinality())
    for run in runs.values():
        run()  # traces
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(FLAGS.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1e3 * (time.perf_counter() - start) / count)
    print(f"finetune step, ms per step over {count} pre-made batches of {config.data.batch_size} "
          f"({FLAGS.unfreeze_blocks} blocks unfrozen; fastest and median of {FLAGS.repeats}):")
    for name, ms in times.items():
        print(f"  {name:<45} {min(ms):6.1f}  {statistics.median(ms):6.1f}")


if __name__ == "__main__":
    cli.run(main)
