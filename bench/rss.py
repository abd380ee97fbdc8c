"""One feature pass in its own process, reporting its peak RSS as JSON on the last stdout line.

``python -m bench.rss --examples=60000 --backbone=vgg16 --image_size=224 --steps=0`` streams
synthetic uint8 28x28 digits (generated per example, so the source holds nothing in memory)
through tfft's input pipeline and backbone into a disk feature-cache entry, exactly as the head
phase does, and samples RSS as examples stream. Run by ``bench.run`` once per setting, so the
peaks of different settings never mix.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time

from absl import flags

from tfft import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("examples", 6000, "Size of the synthetic split.")
flags.DEFINE_integer("steps", 0, "Stop after this many batches (0 = the whole split).")
flags.DEFINE_string("backbone", "mobilenet", "Backbone (tfft --backbone).")
flags.DEFINE_float("alpha", 0.25, "MobileNet width.")
flags.DEFINE_string("weights", "imagenet", "Backbone weights (none avoids a download).")
flags.DEFINE_string("pooling", "flatten", "Pooling (flatten is the seed recipe's, the largest).")
flags.DEFINE_integer("image_size", 32, "Input size.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_enum("mode", "disk", ["disk", "memory"], "Where the features go.")
flags.DEFINE_enum("cache_dtype", "float32", ["float32", "float16"], "Feature storage dtype.")


def rss_mb() -> float:
    """Current resident set size in MB (from /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def synthetic_digits(n: int):
    """``n`` uint8 [28, 28, 1] images and labels, generated on the fly from the index."""
    import tensorflow as tf

    def example(i):
        seed = tf.stack([i, tf.constant(7, tf.int64)])
        image = tf.random.stateless_uniform([28, 28, 1], seed, 0, 256, dtype=tf.int32)
        return tf.cast(image, tf.uint8), tf.cast(i % 10, tf.int32)

    return tf.data.Dataset.range(n).map(example, num_parallel_calls=tf.data.AUTOTUNE)


def main() -> None:
    import numpy as np
    import tensorflow as tf

    from tfft import data as data_lib
    from tfft import feature_cache
    from tfft.backbones import build_backbone
    from tfft.classifier import build_classifier
    from tfft.config import Config, validate

    config = validate(Config().replace(**{name: getattr(FLAGS, name) for name in (
        "backbone", "alpha", "weights", "pooling", "image_size", "batch_size", "cache_dtype")}))
    backbone = build_backbone(config.model, FLAGS.image_size)
    clf = build_classifier(backbone, 10, config.model, FLAGS.image_size)
    forward = tf.function(lambda x: clf.features(x, training=False))
    batches = data_lib.make_batches(synthetic_digits(FLAGS.examples), config.data,
                                    backbone.normalize, training=False, seed=0)
    if FLAGS.steps:
        batches = batches.take(FLAGS.steps)
    dim = int(np.prod(clf.features.output.shape[1:]))
    setup = rss_mb()
    samples: list[float] = []
    cache_dir = tempfile.mkdtemp(prefix="tfft-bench-rss-")
    start = time.perf_counter()
    try:
        split = feature_cache.extract(
            forward, batches, count=FLAGS.examples, dim=dim, dtype=FLAGS.cache_dtype,
            entry=os.path.join(cache_dir, "train") if FLAGS.mode == "disk" else "",
            on_batch=lambda _i: samples.append(rss_mb()))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "examples": FLAGS.examples, "processed": split.count, "dim": dim, "seconds": seconds,
        "images_per_second": split.count / seconds, "rss_setup_mb": setup,
        "rss_first_batch_mb": samples[0] if samples else setup,
        "rss_stream_max_mb": max(samples, default=setup),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
    }))


if __name__ == "__main__":
    cli.run(main)
