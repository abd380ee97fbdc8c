"""``python -m bench.gpu``: tfft on an accelerator, as one table of images/s and ratios.

At one batch size, on the bundled digits resized to ``--image_size`` (random-init weights:
throughput does not depend on them):

- the feature pass of each ``--feature_backbones`` model (tfft's traced pass, with
  ``--jit_compile`` and ``--mixed_precision`` at ``auto``, against Keras's ``model.predict``
  on the same host-preprocessed batches);
- the finetune step of ``--finetune_backbone`` (top ``--unfreeze_blocks`` blocks) in every
  combination of ``--precisions`` x XLA off/on x host/device preprocessing, each fed by tfft's
  own input pipeline, as ratios to float32 without XLA on the host;
- the peak accelerator memory of each (``n/a`` without a GPU).

Each measure runs in its own prepared run (``tfft.phases.setup_run``: the precision policy is
process-wide) after a warm-up that traces and compiles it; a measure that fails prints its error
in its row and the others still run. Sized for about 8 minutes on one GPU; ``--smoke`` runs
every measure at 32 px on a few batches (the finetune steps on MobileNet v1 at width 0.25),
in under a minute on a CPU; its numbers mean nothing.
"""

from __future__ import annotations

import datetime
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from absl import flags

from tfft import cli

FLAGS = flags.FLAGS
flags.DEFINE_boolean("smoke", False, "Tiny sizes on any machine: checks the script, not speed.")
flags.DEFINE_integer("batch_size", 64, "Global batch of every measure.")
flags.DEFINE_integer("image_size", 224, "Input size of every measure.")
flags.DEFINE_integer("examples", 4096, "Digits each feature pass goes over.")
flags.DEFINE_integer("steps", 40, "Timed finetune steps per variant (after 5 warm-up steps).")
flags.DEFINE_list("feature_backbones", ["vgg16", "mobilenet_v2"], "Feature-pass models.")
flags.DEFINE_string("finetune_backbone", "mobilenet_v2",
                    "Model of the finetune steps (--smoke: mobilenet at width 0.25).")
flags.DEFINE_integer("unfreeze_blocks", 2, "Blocks the finetune steps train (with the head).")
flags.DEFINE_list("precisions", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "--mixed_precision values of the finetune steps.")

WARMUP_STEPS = 5


@dataclass(frozen=True)
class Sizes:
    """How big each measure is (the flags', or ``--smoke``'s)."""

    batch_size: int
    image_size: int
    examples: int
    steps: int
    finetune_backbone: str

    @classmethod
    def from_flags(cls) -> Sizes:
        if FLAGS.smoke:  # MobileNet v1 at width 0.25: XLA compiles its steps fastest on CPU
            return cls(batch_size=8, image_size=32, examples=32, steps=2,
                       finetune_backbone="mobilenet")
        return cls(FLAGS.batch_size, FLAGS.image_size, FLAGS.examples, FLAGS.steps,
                   FLAGS.finetune_backbone)


@dataclass
class Row:
    """One line of the table: what ran, how, its images/s, ratio to its baseline, memory."""

    measure: str
    setting: str
    images_per_second: float | None
    ratio: float | None
    peak_memory: str
    error: str = ""


def main() -> None:
    import tensorflow as tf

    sizes = Sizes.from_flags()
    started = time.perf_counter()
    rows: list[Row] = []
    for backbone in FLAGS.feature_backbones:
        rows += feature_rows(backbone, sizes)
    rows += finetune_rows(sizes)
    print(f"bench.gpu on {device_name()}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}"
          f"; TF {tf.__version__}; batch {sizes.batch_size}, {sizes.image_size} px, "
          f"weights none; took {time.perf_counter() - started:.0f} s")
    print_markdown(rows)


def device_name() -> str:
    """The first GPU's name, or what stands in for one."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{details.get('device_name', gpus[0].name)} ({len(gpus)} GPU(s))"
    return "CPU (smoke)" if FLAGS.smoke else "CPU (no GPU: not an accelerator measurement)"


def run_config(backbone: str, sizes: Sizes, examples: int, **fields):
    """A run of ``backbone`` at the measure's sizes; ``fields`` override the rest."""
    from tfft.config import Config, validate

    alpha = {"mobilenet": 0.25, "mobilenet_v2": 0.35}.get(backbone, 1.0) if FLAGS.smoke else 1.0
    values = dict(dataset="sample:mnist", backbone=backbone, alpha=alpha, weights="none",
                  image_size=sizes.image_size, batch_size=sizes.batch_size,
                  max_train_examples=examples, max_eval_examples=sizes.batch_size,
                  head_epochs=0, finetune_epochs=1, unfreeze_blocks=FLAGS.unfreeze_blocks,
                  verbosity=0, tensorboard=False)
    values.update(fields)
    return validate(Config().replace(**values))


# ---------------------------------------------------------------- feature pass


def feature_rows(backbone: str, sizes: Sizes) -> list[Row]:
    """tfft's feature pass and ``model.predict`` over the same batches, images/s each."""
    label = f"feature pass {backbone}@{sizes.image_size}"
    try:
        tfft_rate, keras_rate, setting, memory = feature_rates(backbone, sizes)
    except Exception as err:  # noqa: BLE001 - one failed measure must not hide the others
        return [failed(label, "tfft vs model.predict", err)]
    return [Row(label, f"tfft ({setting})", tfft_rate, tfft_rate / keras_rate, memory),
            Row(label, "Keras model.predict (its defaults)", keras_rate, 1.0, memory)]


def feature_rates(backbone: str, sizes: Sizes) -> tuple[float, float, str, str]:
    """(tfft images/s, predict images/s, the precision and XLA auto gave, peak memory)."""
    import numpy as np

    from tfft import accelerator, feature_cache, phases

    config = run_config(backbone, sizes, sizes.examples, preprocess_on="host")
    reset_peak_memory()
    with phases.setup_run(config) as run:
        features, batches = run.classifier.features, run.batches(run.splits.train)
        jit = accelerator.jit_compile(config, run.strategy)
        forward = feature_cache.inference_fn(features, jit)
        count, dim = run.splits.sizes["train"], int(np.prod(features.output.shape[1:]))

        def tfft_pass() -> None:
            feature_cache.extract(forward, batches, count=count, dim=dim, dtype="float32")

        images = batches.map(lambda x, _: x)
        tfft_seconds = best_time(tfft_pass)
        keras_seconds = best_time(lambda: features.predict(images, verbose=0))
        setting = (f"{accelerator.precision_policy(config, run.strategy)}, "
                   f"XLA {'on' if jit else 'off'}")
    return count / tfft_seconds, count / keras_seconds, setting, peak_memory()


def best_time(run: Callable[[], object], repeats: int = 2) -> float:
    """Least wall time of ``repeats`` runs after one warm-up run (tracing, XLA compilation)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------- finetune step


def finetune_rows(sizes: Sizes) -> list[Row]:
    """Every precision x XLA x preprocessing variant of the finetune step, as ratios to
    float32 without XLA on the host (the first row)."""
    label = f"finetune step {sizes.finetune_backbone}@{sizes.image_size}"
    rows, baseline = [], None
    for precision in FLAGS.precisions:
        for jit in ("false", "true"):
            for where in ("host", "device"):
                setting = f"{precision}, XLA {'on' if jit == 'true' else 'off'}, {where}"
                try:
                    rate, memory = finetune_rate(sizes, precision, jit, where)
                except Exception as err:  # noqa: BLE001 - report it, measure the rest
                    rows.append(failed(label, setting, err))
                    continue
                baseline = baseline or rate
                rows.append(Row(label, setting, rate, rate / baseline, memory))
    return rows


def finetune_rate(sizes: Sizes, precision: str, jit: str, where: str,
                  ) -> tuple[float, str]:
    """Images/s of the finetune train step fed by tfft's pipeline, and the peak memory."""
    from tfft import accelerator, loop, phases, schedules

    examples = sizes.batch_size * (sizes.steps + WARMUP_STEPS)
    # cache_features off: the step through the whole backbone on images, as with augmentation
    config = run_config(sizes.finetune_backbone, sizes, examples, mixed_precision=precision,
                        jit_compile=jit, preprocess_on=where, cache_features="off")
    reset_peak_memory()
    with phases.setup_run(config) as run:
        plan = phases.finetune_plan(run)
        with run.strategy.scope():
            optimizers = [schedules.make_optimizer(config.train, 1e-4) for _ in plan.groups]
            for optimizer, group in zip(optimizers, plan.groups, strict=True):
                optimizer.build(group.variables)
        train = loop.train_steps(run.strategy, plan.model, plan.groups, optimizers,
                                 loop.make_loss(), prepare=plan.prepare,
                                 jit_compile=accelerator.jit_compile(config, run.strategy))
        batches = run.train_batches(0)
        loop.run_steps(train, run.strategy, batches.take(WARMUP_STEPS))
        timed = batches.skip(WARMUP_STEPS).take(sizes.steps)
        start = time.perf_counter()
        stats = loop.run_steps(train, run.strategy, timed)
        seconds = time.perf_counter() - start
    if not math.isfinite(stats.loss):
        raise FloatingPointError(f"non-finite loss {stats.loss}")
    return stats.count / seconds, peak_memory()


# ---------------------------------------------------------------- memory and output


def reset_peak_memory() -> None:
    """Frees the last measure's models (peaks then count one measure's memory) and resets."""
    import tensorflow as tf

    gc.collect()
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory() -> str:
    """Peak memory of GPU:0 since the last reset, or n/a without a GPU."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return "n/a"
    return f"{tf.config.experimental.get_memory_info('GPU:0')['peak'] / 2**30:.2f} GiB"


def failed(measure: str, setting: str, err: Exception) -> Row:
    """A measure that raised: its row names the error (first line) instead of numbers."""
    first = (str(err).strip().splitlines() or [""])[0][:160]
    return Row(measure, setting, None, None, "", f"{type(err).__name__}: {first}")


def print_markdown(rows: list[Row]) -> None:
    print("\n| measure | setting | images/s | ratio | peak GPU memory |\n"
          "| --- | --- | --- | --- | --- |")
    for r in rows:
        if r.error:
            print(f"| {r.measure} | {r.setting} | failed: {r.error} | | |")
        else:
            print(f"| {r.measure} | {r.setting} | {r.images_per_second:,.0f} | "
                  f"{r.ratio:.2f}x | {r.peak_memory} |")


if __name__ == "__main__":
    cli.run(main)
