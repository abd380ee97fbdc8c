"""The recipes users would pick instead of tfft, rebuilt in plain Keras for ``bench.compare``.

Both see exactly tfft's splits, input pipeline (resize + the backbone's normalisation), image
size, backbone and pretrained weights, through ``tfft.phases.setup_run``:

- ``keras_guide``: the Keras transfer-learning guide. ``base.trainable = False``, ``fit`` for
  the config's head epochs at its head learning rate (Adam); then the top third of the base's
  layers trainable, recompile at a tenth of the rate, ``fit`` for the finetune epochs.
- ``make_image_classifier``: the retired TF-Hub ``make_image_classifier`` tool's defaults. One
  phase on the frozen base: global average pooling, dropout 0.2, a Dense softmax with L2 1e-4 on
  its kernel, SGD at 0.005 with momentum 0.9, label smoothing 0.1, 5 epochs, batch 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

MIC_EPOCHS, MIC_LR, MIC_MOMENTUM = 5, 0.005, 0.9
MIC_DROPOUT, MIC_L2, MIC_SMOOTHING, MIC_BATCH = 0.2, 1e-4, 0.1, 32


@dataclass
class PeerData:
    """What a peer trains on: batched splits, the pretrained base and the class count."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    base: keras.Model
    num_classes: int
    image_size: int


def peer_data(config, batch_size: int | None = None) -> PeerData:
    """tfft's own splits and pipeline for ``config`` (one-hot labels for the Keras losses)."""
    from tfft import data as data_lib
    from tfft import phases

    if batch_size:
        config = config.replace(batch_size=batch_size)
    with phases.setup_run(config) as run:  # seeds, devices and the splits, as tfft's own run
        splits, backbone = run.splits, run.classifier.backbone
    classes = splits.num_classes

    def batches(ds: tf.data.Dataset, training: bool) -> tf.data.Dataset:
        out = data_lib.make_batches(ds, config.data, backbone.normalize, training=training,
                                    seed=config.train.seed)
        return out.map(lambda x, y: (x, tf.one_hot(y, classes)))

    return PeerData(batches(splits.train, True), batches(splits.validation, False),
                    batches(splits.test, False), backbone.layer, classes,
                    config.data.image_size)


def frozen_model(data: PeerData, dropout: float, l2: float = 0.0) -> keras.Model:
    """Pooling, dropout and a Dense softmax on the frozen base (in inference mode)."""
    data.base.trainable = False
    inputs = keras.Input((data.image_size, data.image_size, 3))
    x = data.base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    outputs = keras.layers.Dense(data.num_classes, activation="softmax",
                                 kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs)


def keras_guide(config) -> float:
    """The Keras-guide recipe; returns its test accuracy."""
    data = peer_data(config)
    model = frozen_model(data, config.model.dropout)
    lr, head_epochs = config.head.head_learning_rate, config.head.head_epochs
    model.compile(keras.optimizers.Adam(lr), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data.train, epochs=head_epochs, validation_data=data.validation, verbose=0)
    data.base.trainable = True
    for layer in data.base.layers[: len(data.base.layers) * 2 // 3]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(lr / 10), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data.train, epochs=head_epochs + config.finetune.finetune_epochs,
              initial_epoch=head_epochs, validation_data=data.validation, verbose=0)
    return float(model.evaluate(data.test, verbose=0)[1])


def make_image_classifier(config) -> float:
    """``make_image_classifier``'s defaults (no fine-tuning); returns its test accuracy."""
    data = peer_data(config, batch_size=MIC_BATCH)
    model = frozen_model(data, MIC_DROPOUT, MIC_L2)
    model.compile(keras.optimizers.SGD(MIC_LR, momentum=MIC_MOMENTUM),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=MIC_SMOOTHING),
                  metrics=["accuracy"])
    model.fit(data.train, epochs=MIC_EPOCHS, validation_data=data.validation, verbose=0)
    return float(model.evaluate(data.test, verbose=0)[1])
