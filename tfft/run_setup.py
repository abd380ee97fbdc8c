"""A run, set up once: devices, strategy, seeds, precision, the data splits and the classifier.

``setup_run`` prepares a run the one way training, ``tfft.lr_find`` and the benchmarks all use
(logical CPU devices, the strategy, seeds and op determinism, the mixed-precision policy, the
data splits, the classifier built under the strategy); ``RunSetup`` then makes the batches of its
splits (host or device preprocessing, augmentation, per-worker shards).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import tensorflow as tf

from tfft import accelerator, device_inputs, distribute, progress
from tfft import augment as augment_lib
from tfft import data as data_lib
from tfft.backbones import build_backbone
from tfft.classifier import Classifier, build_classifier
from tfft.config import Config
from tfft.device_inputs import Prepare


@dataclass(frozen=True)
class RunSetup:
    """Everything a run trains with, prepared once by ``setup_run``."""

    config: Config
    strategy: tf.distribute.Strategy
    splits: data_lib.Splits
    classifier: Classifier
    say: progress.Say

    def batches(self, ds: tf.data.Dataset, training: bool = False, seed: int | None = None,
                sharded: bool = True, augment: bool = False,
                ) -> tf.data.Dataset | distribute.WorkerBatches:
        """Batches of a raw split (shuffled when ``training``, augmented when ``augment`` too),
        preprocessed unless ``on_device``: then ``prepare`` does it, and augments, in the steps.

        Under MultiWorkerMirroredStrategy (unless not ``sharded``: every worker needs the whole
        split) they are ``WorkerBatches``: each worker reads and decodes only its share.
        """
        cfg = self.config
        drop = distribute.needs_static_shapes(self.strategy)
        make = functools.partial(
            data_lib.make_batches, ds, cfg.data, self.classifier.backbone.normalize,
            training=training, seed=cfg.train.seed if seed is None else seed,
            augmenter=self.augmenter if training and augment else None, drop_remainder=drop,
            on_device=self.on_device, num_classes=self.splits.num_classes)
        if not sharded or not distribute.shards_input(self.strategy):
            return make()
        return distribute.WorkerBatches(lambda ctx: make(input_context=ctx), int(ds.cardinality()),
                                        cfg.data.batch_size, self.strategy.num_replicas_in_sync)

    def train_batches(self, seed: int, augment: bool = True,
                      ) -> tf.data.Dataset | distribute.WorkerBatches:
        """One epoch of shuffled training batches, augmented unless not ``augment``."""
        return self.batches(self.splits.train, training=True, seed=seed, augment=augment)

    @functools.cached_property
    def augmenter(self) -> augment_lib.Augmenter | None:
        """The finetune phase's ``--augment`` layers (the head's too with ``--augment_head``)."""
        return augment_lib.make_augmenter(self.config.data, self.config.train.seed,
                                          self.classifier.backbone.normalize,
                                          self.splits.num_classes, self.on_device)

    @functools.cached_property
    def on_device(self) -> bool:
        """``--preprocess_on`` resolved: resizing and normalisation in the compiled steps."""
        return accelerator.preprocess_on_device(self.config, self.strategy)

    @functools.cached_property
    def prepare(self) -> Prepare | None:
        """The steps' transform of ``batches`` (None: preprocessed), augmenting tagged ones."""
        if not self.on_device:
            return None
        augmenter = self.augmenter.on_device if self.augmenter else None
        return device_inputs.make_prepare(self.config.data.image_size,
                                          self.classifier.backbone.normalize, augmenter)



def run_strategy(config: Config) -> tf.distribute.Strategy:
    """The run's strategy, after splitting the CPU into ``--cpu_devices`` logical devices."""
    distribute.configure_cpu_devices(config.run.cpu_devices)
    return distribute.make_strategy(config.run)


@contextlib.contextmanager
def setup_run(config: Config, strategy: tf.distribute.Strategy | None = None,
              ) -> Iterator[RunSetup]:
    """Prepares a run; the caller's mixed-precision policy (process-global) is restored on exit.

    Same seed on CPU -> same splits, initial weights, shuffles and metrics.
    """
    strategy = strategy or run_strategy(config)
    caller_policy = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(config.train.seed)
        tf.config.experimental.enable_op_determinism()
        keras.mixed_precision.set_global_policy(accelerator.precision_policy(config, strategy))
        splits = data_lib.load_splits(config.data, config.train.seed)
        with strategy.scope():
            backbone = build_backbone(config.model, config.data.image_size)
            clf = build_classifier(backbone, splits.num_classes, config.model,
                                   config.data.image_size)
        yield RunSetup(config, strategy, splits, clf, progress.printer(config.run.verbosity))
    finally:
        keras.mixed_precision.set_global_policy(caller_policy)
