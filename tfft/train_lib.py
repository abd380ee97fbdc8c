"""Two-phase transfer learning: ``train_and_evaluate(config, workdir)``.

One training code path for every tf.distribute strategy: a custom step run with
``strategy.run`` (Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy, STACK_FACTS §4b).
Phase ``head`` trains the head on the frozen backbone, on cached backbone features when nothing
makes them change between epochs; phase ``finetune`` unfreezes the top blocks at a lower
learning rate with the backbone still in inference mode (BatchNorm statistics frozen unless
``--finetune_batchnorm``), optionally with per-step schedules, gradual unfreezing and
discriminative learning rates (``tfft.schedules``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft import checkpoints, distribute, feature_cache, rundir, schedules
from tfft import data as data_lib
from tfft.backbones import build_backbone
from tfft.callbacks import RunCallback, RunResult
from tfft.classifier import (
    Classifier,
    build_classifier,
    count_params,
    freeze_backbone,
    trainable_blocks,
    unfreeze_top_blocks,
)
from tfft.config import AUTO_LR, Config
from tfft.errors import TrainingDiverged, UserError

AUTO_STEPS_ON_FEATURES = 100


@dataclass
class EpochStats:
    """Sums over an epoch, reduced across replicas."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, sums: list[tf.Tensor]) -> None:
        self.loss += float(sums[0])
        self.correct += float(sums[1])
        self.count += float(sums[2])

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.count, 1.0)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1.0)


@dataclass
class VariableGroup:
    """Variables trained together by one optimizer: at ``factor`` x the phase's learning rate,
    from epoch ``first_epoch`` of the phase on (see ``Trainer.fit``).

    Discriminative learning rates are separate optimizers, not scaled gradients: Adam, AdamW and
    RMSprop divide by a running gradient scale, so scaling a gradient barely changes the step.
    A group's own optimizer with a scaled learning rate makes the step itself scale, exactly, for
    every optimizer, and keeps each group's state (and its ``iterations``) in the checkpoint.
    """

    variables: list
    factor: float = 1.0
    first_epoch: int = 0


def seed_everything(seed: int) -> None:
    """Same seed on CPU -> same splits, initial weights, shuffles and metrics."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train_and_evaluate(
    config: Config,
    workdir: str,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: tuple[RunCallback, ...] = (),
    overwrite: bool = False,
) -> RunResult:
    """Trains both phases, evaluates on the test split and writes the run directory.

    An interrupted run in ``workdir`` is resumed; a finished run or one with another config is
    refused (UserError) unless ``overwrite``.
    """
    strategy = strategy or distribute.make_strategy(config.run)
    chief = distribute.is_chief(strategy)
    progress = checkpoints.prepare_workdir(workdir, config, overwrite, may_delete=chief)
    if progress is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise UserError(f"--workdir: {workdir!r} holds an interrupted multi-worker run; "
                        "resuming one is not supported (every worker would need its position); "
                        "pass --overwrite to start it again.")
    out_dir = workdir if chief else tempfile.mkdtemp(prefix="tfft-worker-")
    caller_policy = keras.mixed_precision.global_policy()
    try:
        callbacks = (*default_callbacks(config, workdir), *callbacks) if chief else ()
        return _run(config, out_dir, strategy, callbacks, progress if chief else None)
    finally:
        keras.mixed_precision.set_global_policy(caller_policy)  # the policy is process-global
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def default_callbacks(config: Config, workdir: str) -> tuple[RunCallback, ...]:
    """TensorBoard logs (unless ``--tensorboard=false``) and the run report, on every run.

    Imported here, not at the top: both modules build on this one's ``RunCallback``.
    """
    from tfft import report, tensorboard

    logs = (tensorboard.TensorBoardCallback(workdir),) if config.run.tensorboard else ()
    return (*logs, report.ReportCallback())


def _run(config: Config, workdir: str, strategy: tf.distribute.Strategy,
         callbacks: tuple[RunCallback, ...], progress: checkpoints.Progress | None) -> RunResult:
    seed_everything(config.train.seed)
    keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    say = _printer(config.run.verbosity)
    splits = data_lib.load_splits(config.data, config.train.seed)
    with strategy.scope():
        backbone = build_backbone(config.model, config.data.image_size)
        clf = build_classifier(backbone, splits.num_classes, config.model, config.data.image_size)
    params = phase_param_counts(clf, config)
    rundir.write_text(os.path.join(workdir, rundir.CONFIG), config.to_json() + "\n")
    _print_summary(say, config, splits, params, strategy)

    metrics: dict[str, Any] = {"phases": {}, "parameters": params, "backbone": backbone.identity,
                               "class_names": list(splits.class_names)}
    trainer = Trainer(clf, config, splits, strategy, say, callbacks, workdir, progress)
    freeze_backbone(clf)
    metrics["phases"]["head"] = trainer.run_head_phase()
    metrics["phases"]["finetune"] = trainer.run_finetune_phase()
    freeze_backbone(clf)
    test = trainer.evaluate(clf.model, trainer.batches(splits.test), "Test evaluation")
    metrics["test"] = {"loss": test.mean_loss, "accuracy": test.accuracy,
                       "examples": int(test.count)}
    history = metrics["phases"]
    metrics["phases"] = {phase: [_without_timings(row) for row in rows]
                         for phase, rows in history.items()}
    rundir.save_model(clf.model, os.path.join(workdir, rundir.MODEL))
    rundir.write_json(os.path.join(workdir, rundir.METRICS), metrics)
    result = RunResult(config, workdir, clf, splits, metrics, history)
    for callback in callbacks:
        callback.on_run_end(result)
    say(f"Test accuracy: {test.accuracy:.4f} (loss {test.mean_loss:.4f}, "
        f"{int(test.count)} examples)")
    return result


def phase_param_counts(clf: Classifier, config: Config) -> dict[str, int]:
    """Trainable parameters in each phase (the backbone is left frozen afterwards)."""
    freeze_backbone(clf)
    head = count_params(clf.model.trainable_weights)
    unfreeze_top_blocks(clf, config.finetune.unfreeze_blocks, config.finetune.finetune_batchnorm)
    finetune = count_params(clf.model.trainable_weights)
    freeze_backbone(clf)
    return {"total": count_params(clf.model.weights), "head_trainable": head,
            "finetune_trainable": finetune}


class Trainer:
    """Runs epochs of one model under one strategy; both phases go through ``fit``."""

    def __init__(self, clf: Classifier, config: Config, splits: data_lib.Splits,
                 strategy: tf.distribute.Strategy, say: Callable[[str], None],
                 callbacks: tuple[RunCallback, ...], workdir: str,
                 progress: checkpoints.Progress | None = None):
        self.clf, self.config, self.splits, self.strategy, self.say = (
            clf, config, splits, strategy, say)
        self.callbacks, self.workdir, self.progress = callbacks, workdir, progress
        self.global_step = progress.global_step if progress else 0
        self.seed = config.train.seed
        self.augmenter = data_lib.make_augmenter(config.data.augment, self.seed)
        self._eval_steps: dict[int, Callable] = {}

    # ------------------------------------------------------------ phases

    def run_head_phase(self) -> list[dict[str, Any]]:
        epochs = self.config.head.head_epochs
        if epochs == 0:
            return []
        if self._completed("head"):
            return self.progress.history["head"]
        model, train, val = self.head_phase_data()
        lr = self.learning_rate("head", model, train)
        return self.fit("head", model, train, val, epochs, lr)

    def head_phase_data(self) -> tuple[keras.Model, Callable[[int], tf.data.Dataset],
                                       tf.data.Dataset]:
        """The model the head phase trains (the head alone on cached features, or the full
        model) with its training batches (a function of the shuffle seed) and validation."""
        if self._use_feature_cache():
            train, val = self._cached_features()
            return self.clf.head, train, val
        return self.clf.model, self._train_batches, self.batches(self.splits.validation)

    def run_finetune_phase(self) -> list[dict[str, Any]]:
        epochs = self.config.finetune.finetune_epochs
        if epochs == 0 or self.config.finetune.unfreeze_blocks == 0:
            return []
        if self._completed("finetune"):
            return self.progress.history["finetune"]
        groups = self.finetune_groups()
        val = self.batches(self.splits.validation)
        lr = self.learning_rate("finetune", self.clf.model, self._train_batches, groups)
        return self.fit("finetune", self.clf.model, self._train_batches, val, epochs, lr, groups,
                        self.unfreeze_for_epoch)

    def finetune_groups(self) -> list[VariableGroup]:
        """One group per unfrozen block (the head joins the top one), top first, each with its
        discriminative factor and the epoch the unfreeze schedule starts training it; blocks
        that share both are one group (by default: one group, one optimizer)."""
        cfg = self.config.finetune
        unfreeze_top_blocks(self.clf, cfg.unfreeze_blocks, cfg.finetune_batchnorm)
        blocks = trainable_blocks(self.clf, cfg.unfreeze_blocks)
        blocks[0] = [*self.clf.head.trainable_variables, *blocks[0]]
        groups: list[VariableGroup] = []
        for depth, variables in enumerate(blocks):
            factor = schedules.discriminative_factor(depth, cfg.discriminative_lr_factor)
            first = schedules.first_epoch_of_block(depth, cfg.unfreeze_schedule,
                                                   cfg.unfreeze_every_epochs)
            if groups and (groups[-1].factor, groups[-1].first_epoch) == (factor, first):
                groups[-1].variables.extend(variables)
            else:
                groups.append(VariableGroup(list(variables), factor, first))
        return groups

    def unfreeze_for_epoch(self, epoch: int) -> None:
        """Sets the trainable flags (and BatchNorm modes) the unfreeze schedule gives ``epoch``."""
        cfg = self.config.finetune
        unfreeze_top_blocks(self.clf, schedules.unfrozen_blocks_at(
            epoch, cfg.unfreeze_blocks, cfg.unfreeze_schedule, cfg.unfreeze_every_epochs),
            cfg.finetune_batchnorm)

    def learning_rate(self, phase: str, model: keras.Model,
                      train: Callable[[int], tf.data.Dataset],
                      groups: list[VariableGroup] | None = None) -> float:
        """The phase's configured rate; ``auto`` runs the LR range test on ``model`` once per
        run (the result is kept in the run directory, so a resumed run uses the same rate)."""
        rate = (self.config.head.head_learning_rate if phase == "head"
                else self.config.finetune.finetune_learning_rate)
        if rate != AUTO_LR:
            return rate
        from tfft import lr_find

        return lr_find.auto_learning_rate(self, phase, model, train, groups)

    def _completed(self, phase: str) -> bool:
        """On resume, a finished phase is not trained again; its final weights are loaded."""
        progress = self.progress
        if progress is None or not progress.completed(phase):
            return False
        if progress.phase == phase:
            checkpoints.restore_model_variables(self.workdir, progress.checkpoint,
                                                self.phase_variables(phase))
        self.say(f"Phase {phase}: already finished in {self.workdir} (resumed run)")
        return True

    def phase_variables(self, phase: str) -> list:
        """The model variables a phase can change, which its checkpoints hold: the head's in
        the head phase (the backbone is frozen there, and rebuilt identically on resume), every
        one in the finetune phase. Saving the head alone makes a head-phase checkpoint a few
        kilobytes instead of the whole backbone (about 0.1 s per epoch for MobileNet and more
        for VGG16's 58 MB)."""
        return self.clf.head.variables if phase == "head" else self.clf.model.variables

    def _use_feature_cache(self) -> bool:
        mode = self.config.train.cache_features
        if mode == "off":
            return False
        if self.augmenter is not None:
            self.say("Feature cache off: augmentation changes the backbone's input every epoch.")
            return False
        return True

    # ------------------------------------------------------------ data

    def batches(self, ds: tf.data.Dataset, training: bool = False,
                seed: int | None = None) -> tf.data.Dataset:
        return data_lib.make_batches(
            ds, self.config.data, self.clf.backbone.normalize, training=training,
            seed=self.seed if seed is None else seed,
            augmenter=self.augmenter if training else None,
            drop_remainder=distribute.needs_static_shapes(self.strategy))

    def _train_batches(self, seed: int) -> tf.data.Dataset:
        return self.batches(self.splits.train, training=True, seed=seed)

    def _cached_features(self) -> tuple[Callable[[int], tf.data.Dataset], tf.data.Dataset]:
        """Backbone features of train and validation, computed once, as batched datasets.

        Training batches come from a function of the epoch's shuffle seed, like the pipeline's.
        """
        cfg = self.config.data
        drop = distribute.needs_static_shapes(self.strategy)
        train = self.extract_features(self.splits.train, "train")
        val = self.extract_features(self.splits.validation, "validation")

        def train_batches(seed: int) -> tf.data.Dataset:
            return train.batches(cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer, seed=seed,
                                 drop_remainder=drop)

        return train_batches, val.batches(cfg.batch_size, drop_remainder=drop)

    def extract_features(self, ds: tf.data.Dataset, name: str) -> feature_cache.CachedSplit:
        """Runs the frozen backbone over one split once (or reads its disk cache entry)."""
        model, cfg = self.clf.features, self.config
        size, dim = self.splits.sizes.get(name, 0), int(np.prod(model.output.shape[1:]))
        entry, fields = "", None
        if feature_cache.on_disk(cfg.train.cache_features, size, dim, cfg.train.cache_dtype,
                                 self.say):
            fields = feature_cache.key_fields(cfg, name, self.clf.backbone.identity, model)
            key = feature_cache.cache_key(fields)
            entry = feature_cache.entry_path(cfg, name, key)
            cached = feature_cache.read(entry, key)
            if cached is not None:
                self.say(f"Features ({name}): {cached.count:,} read from {entry}")
                return cached
        forward, batches = feature_cache.inference_fn(model), self.batches(ds)
        bar = self._progbar(self.steps(batches), f"Features ({name})")
        return feature_cache.extract(
            forward, batches, count=size, dim=dim,
            dtype=cfg.train.cache_dtype, entry=entry, key_fields=fields,
            on_batch=bar.update if bar else None)

    # ------------------------------------------------------------ loop

    def fit(self, phase: str, model: keras.Model, train: Callable[[int], tf.data.Dataset],
            val: tf.data.Dataset, epochs: int, learning_rate: float,
            groups: list[VariableGroup] | None = None,
            unfreeze: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
        """Trains ``model`` for ``epochs``, checkpointing after every epoch (and every
        ``checkpoint_every_steps``); resumes an interrupted phase exactly where it stopped.

        ``train(seed)`` gives one epoch's shuffled batches; the seed depends only on the run's
        seed, the phase and the epoch, so a resumed epoch sees the same batches in the same order
        and can skip the steps already done. Early stopping restores the best epoch's weights.

        ``groups`` (default: every trainable variable of ``model``) each get an optimizer whose
        learning-rate schedule (``--lr_schedule``, per step) is scaled by the group's factor and
        that starts at the group's first epoch; ``unfreeze(epoch)`` sets the trainable flags
        whenever a group starts. The schedules read their optimizer's checkpointed ``iterations``
        and the active groups follow from the epoch, so a resumed phase continues both exactly.
        """
        groups = groups or [VariableGroup(list(model.trainable_variables))]
        steps_per_epoch = max(self.steps(train(epoch_seed(self.seed, phase, 0))), 1)
        rates = [self._rate(learning_rate, group, epochs, steps_per_epoch) for group in groups]
        with self.strategy.scope():
            optimizers = [make_optimizer(self.config, rate) for rate in rates]
            for optimizer, group in zip(optimizers, groups, strict=True):
                optimizer.build(group.variables)
        model_variables = self.phase_variables(phase)
        saver = checkpoints.PhaseCheckpointer(
            self.workdir, phase, model_variables,
            [v for optimizer in optimizers for v in optimizer.variables])
        best_saver = checkpoints.PhaseCheckpointer(self.workdir, f"{phase}_best",
                                                   model_variables, [])
        progress = self._phase_progress(phase, saver)
        history = progress.history.setdefault(phase, [])
        patience = self.config.train.early_stopping_patience
        every = self.config.run.checkpoint_every_steps
        self.say(f"Phase {phase}: {epochs} epoch(s), learning rate {learning_rate:g}, "
                 f"{count_params(model.trainable_weights):,} trainable parameters")
        for callback in self.callbacks:
            callback.on_phase_begin(phase, model, epochs)
        step, active = None, -1
        per_call = self.steps_per_execution(model)
        for epoch in range(progress.epoch, epochs):
            live = sum(group.first_epoch <= epoch for group in groups)
            if live != active:
                if unfreeze:
                    unfreeze(epoch)
                step, active = self._train_step(model, groups[:live], optimizers[:live]), live
            start = time.perf_counter()
            stats = EpochStats(**progress.partial) if progress.step else EpochStats()
            batches = train(epoch_seed(self.seed, phase, epoch))
            steps, done_steps = self.steps(batches), progress.step
            bar = self._progbar(steps, f"{phase} {epoch + 1}/{epochs}")
            iterator = iter(distribute.distribute(self.strategy, batches.skip(done_steps)))
            for n, i in call_sizes(done_steps, steps, per_call, every):
                stats.add(step(iterator, tf.constant(n)))
                self.global_step += n
                if not np.isfinite(stats.loss):
                    raise TrainingDiverged(
                        f"Loss became NaN/Inf in phase {phase}, epoch {epoch + 1}, by step {i}; "
                        f"try a lower --{phase}_learning_rate (the last good checkpoint is in "
                        f"{os.path.join(self.workdir, checkpoints.CHECKPOINTS)}).")
                if bar:
                    bar.update(i, [("loss", stats.mean_loss), ("accuracy", stats.accuracy)])
                if every and i % every == 0 and i < steps:
                    self._save(saver, progress, epoch, i, stats)
            val_stats = self.evaluate(model, val)
            row = {"epoch": epoch + 1, "phase": phase, "loss": stats.mean_loss,
                   "accuracy": stats.accuracy, "val_loss": val_stats.mean_loss,
                   "val_accuracy": val_stats.accuracy,
                   "learning_rate": _last_rate(rates[0], optimizers[0]),
                   "seconds": time.perf_counter() - start, "global_step": self.global_step}
            history.append(row)
            for callback in self.callbacks:
                callback.on_epoch_end(row, model)
            self.say(f"  {phase} epoch {epoch + 1}: loss {row['loss']:.4f} acc "
                     f"{row['accuracy']:.4f} val_loss {row['val_loss']:.4f} val_acc "
                     f"{row['val_accuracy']:.4f} ({row['seconds']:.1f}s)")
            if patience and val_stats.accuracy > progress.best:
                progress.best, progress.waited = val_stats.accuracy, 0
                progress.best_checkpoint = best_saver.save_checkpoint()
            elif patience:
                progress.waited += 1
            self._save(saver, progress, epoch + 1, 0, None)
            if patience and progress.waited >= patience:
                self.say(f"  early stop: no val_accuracy gain in {patience} epoch(s)")
                break
        if progress.best_checkpoint:
            checkpoints.restore_model_variables(self.workdir, progress.best_checkpoint,
                                                model_variables)
        progress.done = True
        self._save(saver, progress, progress.epoch, 0, None)
        return history

    def _phase_progress(self, phase: str,
                        saver: checkpoints.PhaseCheckpointer) -> checkpoints.Progress:
        """This phase's progress: restored from an interrupted run, or a fresh record."""
        progress = self.progress
        if progress is not None and progress.phase == phase:
            saver.restore(progress)
            self.global_step = progress.global_step
            self.say(f"Resuming phase {phase} at epoch {progress.epoch + 1}, "
                     f"step {progress.step + 1} from {progress.checkpoint}")
            return progress
        history = progress.history if progress else {}
        self.progress = checkpoints.Progress(
            phase=phase, epoch=0, step=0, done=False, global_step=self.global_step,
            checkpoint="", history=history)
        return self.progress

    def _save(self, saver: checkpoints.PhaseCheckpointer, progress: checkpoints.Progress,
              epoch: int, step: int, stats: EpochStats | None) -> None:
        progress.epoch, progress.step, progress.global_step = epoch, step, self.global_step
        progress.partial = dataclasses.asdict(stats) if stats else {}
        saver.save(progress)

    def evaluate(self, model: keras.Model, ds: tf.data.Dataset, title: str = "") -> EpochStats:
        """Loss and accuracy over ``ds``; a progress bar (rate, ETA) when ``title`` is given."""
        step = self._eval_steps.setdefault(id(model), self._eval_step(model))
        stats, steps, per_call = EpochStats(), self.steps(ds), self.steps_per_execution(model)
        bar = self._progbar(steps, title) if title else None
        iterator = iter(distribute.distribute(self.strategy, ds))
        for n, i in call_sizes(0, steps, per_call):
            stats.add(step(iterator, tf.constant(n)))
            if bar:
                bar.update(i, [("loss", stats.mean_loss), ("accuracy", stats.accuracy)])
        return stats

    def steps_per_execution(self, model: keras.Model) -> int:
        """Steps per compiled call: ``--steps_per_execution``, or for 0 (auto) 100 when
        ``model`` is the head on cached features (a step of a few microseconds of compute, so
        per-call Python and dispatch overhead would dominate) and 1 otherwise (a step through
        the backbone takes long enough that one call per step costs nothing measurable, and
        progress updates every step)."""
        chosen = self.config.run.steps_per_execution
        if chosen:
            return chosen
        return AUTO_STEPS_ON_FEATURES if model is self.clf.head else 1

    def _rate(self, learning_rate: float, group: VariableGroup, epochs: int,
              steps_per_epoch: int) -> float | schedules.PhaseSchedule:
        """A group's learning rate: a float when constant, else its per-step schedule."""
        t = self.config.train
        if t.lr_schedule == "constant" and t.warmup_epochs == 0:
            return learning_rate * group.factor
        return schedules.PhaseSchedule(
            t.lr_schedule, learning_rate, epochs * steps_per_epoch,
            round(t.warmup_epochs * steps_per_epoch), group.first_epoch * steps_per_epoch,
            group.factor)

    def _train_step(self, model: keras.Model, groups: list[VariableGroup],
                    optimizers: list[keras.optimizers.Optimizer]):
        """One step over the active groups: one gradient, each group's optimizer applies its
        part (so each group moves at its own learning rate, whatever the optimizer)."""
        loss_fn = self._loss_fn()
        variables = [v for group in groups for v in group.variables]
        bounds = np.cumsum([0] + [len(group.variables) for group in groups]).tolist()
        num_classes = self.splits.num_classes

        def replica_step(x, y):
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = loss_fn(tf.one_hot(y, num_classes), probs)
                loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=_global_batch_size(y))
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, variables)
            for optimizer, lo, hi in zip(optimizers, bounds, bounds[1:], strict=False):
                optimizer.apply_gradients(zip(grads[lo:hi], variables[lo:hi], strict=True))
            return _sums(per_example, probs, y)

        return self._reduced(replica_step)

    def _eval_step(self, model: keras.Model):
        loss_fn = self._loss_fn()
        num_classes = self.splits.num_classes

        def replica_step(x, y):
            probs = model(x, training=False)
            return _sums(loss_fn(tf.one_hot(y, num_classes), probs), probs, y)

        return self._reduced(replica_step)

    def _reduced(self, replica_step) -> Callable[[Any, tf.Tensor], list[tf.Tensor]]:
        """``replica_step`` under the strategy, as ``steps(iterator, n)``: ``n`` steps on the
        next ``n`` batches of ``iterator`` in one compiled call, their sums reduced across
        replicas and added up.

        One trace serves every call: ``n`` is a tensor, the iterator's element spec leaves the
        batch size free (so a last partial batch retraces nothing), and AutoGraph is off (the
        loop is an explicit ``tf.while_loop``; converting Keras code would add about a second).
        """
        strategy = self.strategy

        def one_step(batch) -> list[tf.Tensor]:
            sums = strategy.run(replica_step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

        @tf.function(autograph=False)
        def steps(iterator, n: tf.Tensor) -> list[tf.Tensor]:
            def body(i, sums):
                new = one_step(iterator.get_next())
                return i + 1, [a + b for a, b in zip(sums, new, strict=True)]

            zeros = [tf.zeros([], tf.float32) for _ in range(3)]
            return tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), zeros))[1]

        return steps

    def _loss_fn(self) -> keras.losses.Loss:
        return keras.losses.CategoricalCrossentropy(
            label_smoothing=self.config.train.label_smoothing, reduction=None)

    def steps(self, ds: tf.data.Dataset) -> int:
        """Batches in ``ds``: always known, ``data.load_splits`` and the feature cache assert
        every split's size."""
        n = int(ds.cardinality())
        if n < 0:
            raise ValueError("tfft needs datasets of known cardinality; assert it with "
                             "tf.data.experimental.assert_cardinality")
        return n

    def _progbar(self, steps: int | None, title: str) -> keras.utils.Progbar | None:
        if self.config.run.verbosity < 1:
            return None
        self.say(title)
        return keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"])


def call_sizes(start: int, steps: int, per_call: int,
               every: int = 0) -> Iterator[tuple[int, int]]:
    """(steps in the call, steps done after it) for each compiled call from step ``start`` to
    ``steps``: at most ``per_call`` a call, cut at every multiple of ``every`` (when set), so
    step checkpoints land where asked."""
    i = start
    while i < steps:
        n = min(per_call, steps - i, every - i % every if every else steps)
        i += n
        yield n, i


def epoch_seed(seed: int, phase: str, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of the run's seed, the phase and the epoch."""
    return seed * 1000 + checkpoints.PHASES.index(phase) * 500 + epoch


def _without_timings(row: dict[str, Any]) -> dict[str, Any]:
    """metrics.json holds only what the seed determines, so equal seeds give equal files."""
    return {k: v for k, v in row.items() if k != "seconds"}


def _global_batch_size(labels: tf.Tensor) -> tf.Tensor:
    """Examples in this step across all replicas (and workers).

    ``compute_average_loss`` would otherwise assume every replica holds as many examples as this
    one, which misweights a final partial batch split unevenly (e.g. 9 -> 5 + 4), so the
    gradient would differ from the same step under the default strategy.
    """
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)
    return tf.cast(total, tf.int32)


def _sums(per_example: tf.Tensor, probs: tf.Tensor, labels: tf.Tensor) -> list[tf.Tensor]:
    predicted = tf.argmax(probs, axis=-1, output_type=labels.dtype)
    return [
        tf.reduce_sum(tf.cast(per_example, tf.float32)),
        tf.reduce_sum(tf.cast(predicted == labels, tf.float32)),
        tf.cast(tf.size(labels), tf.float32),
    ]


def _last_rate(rate: float | schedules.PhaseSchedule,
               optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate of the optimizer's last step (the metrics row's ``learning_rate``)."""
    if isinstance(rate, schedules.PhaseSchedule):
        return float(rate(max(int(optimizer.iterations.numpy()) - 1, 0)))
    return float(rate)


def make_optimizer(config: Config,
                   learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                   ) -> keras.optimizers.Optimizer:
    name, momentum = config.train.optimizer, config.train.momentum
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, momentum=momentum)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def _printer(verbosity: int) -> Callable[[str], None]:
    return print if verbosity >= 1 else (lambda _msg: None)


def _print_summary(say, config: Config, splits: data_lib.Splits, params: dict[str, int],
                   strategy: tf.distribute.Strategy) -> None:
    replicas = strategy.num_replicas_in_sync
    sizes = ", ".join(f"{k} {v:,}" for k, v in splits.sizes.items())
    say(f"Dataset {config.data.dataset}: {sizes} examples; {splits.num_classes} classes "
        f"({', '.join(splits.class_names[:10])}{', …' if splits.num_classes > 10 else ''})")
    say(f"Backbone {config.model.backbone} (weights {config.model.weights}) at "
        f"{config.data.image_size}px; parameters {params['total']:,}; trainable: head phase "
        f"{params['head_trainable']:,}, finetune phase {params['finetune_trainable']:,}")
    say(f"Strategy {config.run.strategy}: {replicas} replica(s); global batch "
        f"{config.data.batch_size}, per replica {config.data.batch_size // replicas}")
