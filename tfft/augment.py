"""Training-only augmentation: Keras preprocessing layers on preprocessed (backbone-normalised)
batches, with draws that are a function of the epoch's seed and the batch's index.

Augmentation runs after normalisation, so the layers that need a value range (contrast,
brightness, RandAugment, random erasing) get the normaliser's image of ``[0, 255]``: the lowest
and highest value any channel can take (``value_range``), e.g. ``(-1, 1)`` for MobileNet or about
``(-124, 151)`` for caffe-style backbones. ``mixup`` and ``cutmix`` mix labels too: the batches
they produce carry soft labels ``[B, C]`` (``tfft.loop.targets`` passes them to the loss).

Exact resume: every layer draws from a ``SeedGenerator`` (a variable). Before each batch
``Augmenter.__call__`` sets every generator's state from (epoch seed, batch index), so a batch's
draws do not depend on how many batches ran before it in this process: a resumed epoch that
skips its first batches augments the rest exactly as the uninterrupted run did. The state is
shared by every call, so the pipeline maps batches through it sequentially (no parallel calls).

Device preprocessing (``tfft.device_inputs``) applies the per-image layers in the train step:
the pipeline sends each raw batch tagged with its index and epoch seed (``tag``), and the step
reseeds from them the same way, so host and device draw alike. It refuses mixup/cutmix, which
change the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import tensorflow as tf

from tfft.config import DataConfig
from tfft.errors import UserError
from tfft.preprocess import Normalizer

MIXERS = ("mixup", "cutmix")
_STREAMS = 64  # seed streams per epoch seed: one per SeedGenerator of the augmenter
IMAGES, INDEX, SEED = "images", "batch_index", "epoch_seed"  # a tagged batch's keys (``tag``)


@dataclass(frozen=True)
class Augmenter:
    """Per-image layers, then the label-mixing layers, over whole batches."""

    images: keras.Sequential | None
    mixers: tuple[keras.layers.Layer, ...]
    num_classes: int

    def __call__(
        self, x: tf.Tensor, y: tf.Tensor, index: tf.Tensor, seed: int
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Batch ``index`` of the epoch with shuffle seed ``seed``, augmented: its draws depend
        only on those two. Labels come back as float ``[B, C]`` when a mixer ran."""
        self.reseed(index, seed)
        if self.images is not None:
            x = self.images(x, training=True)
        for mixer in self.mixers:
            y = y if y.dtype.is_floating else tf.one_hot(y, self.num_classes)
            mixed = mixer({"images": x, "labels": y}, training=True)
            x, y = mixed["images"], mixed["labels"]
        return x, y

    def reseed(self, index: tf.Tensor, seed: int | tf.Tensor) -> None:
        """Sets each generator's state to (stream of ``seed``, ``index``)."""
        for stream, state in enumerate(self.seed_states):
            value = tf.stack(
                [tf.cast(seed, tf.int64) * _STREAMS + stream, tf.cast(index, tf.int64)]
            )
            state.assign(tf.cast(value, state.dtype))

    @property
    def seed_states(self) -> list[keras.Variable]:
        """Every layer's ``SeedGenerator`` state: the only non-trainable variables these
        preprocessing layers have."""
        layers = [self.images] if self.images is not None else []
        return [v for layer in (*layers, *self.mixers) for v in layer.non_trainable_variables]

    def on_device(self, x: tf.Tensor, tags: dict[str, tf.Tensor]) -> tf.Tensor:
        """The per-image layers on a preprocessed batch in the train step, drawing as the host
        would for the batch ``tags`` names (``tag``; a replica's slice keeps its values)."""
        self.reseed(tf.reduce_max(tags[INDEX]), tf.reduce_max(tags[SEED]))
        return x if self.images is None else self.images(x, training=True)


def tag(images: tf.Tensor, index: tf.Tensor, seed: int) -> dict[str, tf.Tensor]:
    """A raw batch with its index and epoch seed, per example (so replicas can split it)."""
    count = tf.shape(images)[:1]
    return {
        IMAGES: images,
        INDEX: tf.fill(count, tf.cast(index, tf.int64)),
        SEED: tf.fill(count, tf.constant(seed, tf.int64)),
    }


def augment_batches(
    ds: tf.data.Dataset, augmenter: Augmenter | None, seed: int, on_device: bool
) -> tf.data.Dataset:
    """An epoch's preprocessed batches augmented (in order: the layers share their state), or
    with ``on_device`` its raw batches tagged for the train step's augmentation."""
    if augmenter is None:
        return ds
    if on_device:
        return ds.enumerate().map(lambda i, batch: (tag(batch[0], i, seed), batch[1]))
    return ds.enumerate().map(lambda i, batch: augmenter(*batch, i, seed))


def value_range(normalize: Normalizer) -> tuple[float, float]:
    """The normaliser's image of ``[0, 255]``: its lowest and highest output over channels."""
    ends = normalize(tf.constant([[[[0.0] * 3, [255.0] * 3]]]))
    return float(tf.reduce_min(ends)), float(tf.reduce_max(ends))


def image_layers(
    cfg: DataConfig, seed: int, span: tuple[float, float]
) -> dict[str, Callable[[], keras.layers.Layer]]:
    """Each per-image augmentation's layer (built on demand), on inputs in ``span``."""
    return {
        "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed),
        "rotate": lambda: keras.layers.RandomRotation(0.05, seed=seed),
        "zoom": lambda: keras.layers.RandomZoom(0.1, seed=seed),
        "crop": lambda: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
        "translate": lambda: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
        "contrast": lambda: keras.layers.RandomContrast(0.2, value_range=span, seed=seed),
        "brightness": lambda: keras.layers.RandomBrightness(0.2, value_range=span, seed=seed),
        "randaugment": lambda: keras.layers.RandAugment(
            value_range=span,
            num_ops=cfg.randaugment_ops,
            factor=cfg.randaugment_magnitude,
            seed=seed,
        ),
        "random_erasing": lambda: keras.layers.RandomErasing(value_range=span, seed=seed),
    }


def make_augmenter(
    cfg: DataConfig, seed: int, normalize: Normalizer, num_classes: int, on_device: bool = False
) -> Augmenter | None:
    """The ``--augment`` layers (None when there are none); ``on_device``: for the train step
    (``tfft.device_inputs``), which cannot mix labels."""
    if not cfg.augment:
        return None
    if on_device:
        check_on_device(cfg)
    layers = image_layers(cfg, seed, value_range(normalize))
    per_image = [layers[n]() for n in cfg.augment if n not in MIXERS]
    mixers = {
        "mixup": lambda: keras.layers.MixUp(alpha=cfg.mixup_alpha, seed=seed),
        "cutmix": lambda: keras.layers.CutMix(factor=cfg.cutmix_alpha, seed=seed),
    }
    return Augmenter(
        keras.Sequential(per_image) if per_image else None,
        tuple(mixers[n]() for n in cfg.augment if n in MIXERS),
        num_classes,
    )


def check_on_device(cfg: DataConfig) -> None:
    """Device preprocessing augments inside the train step, where labels are not mixed."""
    mixing = [n for n in cfg.augment if n in MIXERS]
    if mixing:
        raise UserError(
            f"--augment: expected no {'/'.join(mixing)} with --preprocess_on=device "
            f"(labels are mixed on the host); received {','.join(cfg.augment)}."
        )
