"""tf.distribute strategies by name, and who in a cluster writes the run directory.

Every strategy runs the same custom training step (``tfft.train_lib``): ``--batch_size`` is the
global batch, split across ``num_replicas_in_sync`` replicas. ``default`` is no distribution;
``one_device`` pins to the first GPU (or the CPU); ``mirrored`` uses all visible GPUs (or
``--num_gpus`` of them; without GPUs the CPU's logical devices, see ``--cpu_devices``);
``multi_worker`` reads the cluster from ``TF_CONFIG`` (``python -m tfft.launch`` makes one on
this machine) and gives each worker only its share of every batch to read and decode
(``WorkerBatches``); ``tpu`` connects to ``--tpu`` (``local`` on a TPU VM, or a ``grpc://``
address / TPU name) through ``TPUClusterResolver`` and uses static batch shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from tfft.config import RunConfig
from tfft.errors import UserError


def configure_cpu_devices(n: int) -> None:
    """Splits the CPU into ``n`` logical devices; must run before TensorFlow initialises."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as err:
        raise UserError(f"--cpu_devices: must be set before TensorFlow starts ({err}).") from None


def make_strategy(cfg: RunConfig) -> tf.distribute.Strategy:
    """The strategy named by ``--strategy``; fails fast with one line when it cannot work here."""
    if cfg.strategy == "default":
        return tf.distribute.get_strategy()
    if cfg.strategy == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if cfg.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(_mirrored_devices(cfg.num_gpus))
    if cfg.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("--strategy=multi_worker: expected the TF_CONFIG environment variable "
                            "describing the cluster; received none (see python -m tfft.launch).")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(cfg.tpu)


def _mirrored_devices(num_gpus: int) -> list[str]:
    """The first ``num_gpus`` GPUs (0 = all); without GPUs, the CPU's logical devices."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if num_gpus > len(gpus):
        raise UserError(f"--num_gpus: expected at most the {len(gpus)} visible GPU(s); received "
                        f"{num_gpus} (--cpu_devices=N tries mirrored on the CPU).")
    if gpus:
        return gpus[:num_gpus] if num_gpus else gpus
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _tpu_strategy(address: str) -> tf.distribute.Strategy:
    match = re.match(r"grpc://([^:/]+):(\d+)", address)
    if match and not _reachable(match.group(1), int(match.group(2))):
        raise UserError(f"--tpu: no TPU answers at {address!r}.")
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="local" if address == "local" else address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as err:  # noqa: BLE001 - resolver raises many types when no TPU exists
        raise UserError(f"--tpu: could not reach a TPU at {address!r} "
                        f"({str(err).splitlines()[0][:200]}).") from None
    return tf.distribute.TPUStrategy(resolver)


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes config, metrics, checkpoints and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def needs_static_shapes(strategy: tf.distribute.Strategy) -> bool:
    """TPUs compile for fixed batch shapes, so partial final batches are dropped."""
    return isinstance(strategy, tf.distribute.TPUStrategy)


def shards_input(strategy: tf.distribute.Strategy) -> bool:
    """True where each worker builds only its share of every batch (``WorkerBatches``)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


@dataclass(frozen=True)
class WorkerBatches:
    """One pass of global batches under MultiWorkerMirroredStrategy, each worker reading and
    decoding only its own share.

    ``build(ctx)`` is this worker's pipeline for TensorFlow's ``InputContext``: the common
    seeded shuffle, ``worker_share``, then decoding and batches of the per-replica size. It
    stands in for the ``tf.data.Dataset`` the loops take (``cardinality``, ``skip``): every
    worker runs the same ``global_steps`` of the pass, one batch per local replica each.
    """

    build: Callable[[tf.distribute.InputContext], tf.data.Dataset]
    examples: int
    global_batch: int
    replicas: int
    start: int = 0

    @property
    def steps(self) -> int:
        return global_steps(self.examples, self.global_batch, self.replicas)[0]

    def skip(self, n: int) -> WorkerBatches:
        return dataclasses.replace(self, start=self.start + n)

    def cardinality(self) -> int:
        return max(self.steps - self.start, 0)

    def for_worker(self, ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        """This worker's per-replica batches after the skipped steps."""
        ds = self.build(ctx)
        sizes = last_step_rebatch(self.examples, ctx, self.global_batch)
        if sizes:
            ds = ds.rebatch(sizes)
        return ds.skip(self.start * _local_replicas(ctx))


def global_steps(examples: int, global_batch: int, replicas: int = 1) -> tuple[int, int]:
    """(steps, examples in the last step) of a pass over ``examples``.

    A last step with fewer examples than replicas would give some replica an empty batch,
    which convolutional models cannot take (TensorFlow's conv2d returns a zero-size batch's
    input shape unchanged), so those examples join the step before; a whole split smaller than
    the replicas is refused.
    """
    steps = -(-examples // global_batch)
    last = examples - (steps - 1) * global_batch if steps else 0
    if 0 < last < replicas:
        if steps == 1:
            raise UserError(f"--strategy: a split of {examples} example(s) cannot feed the "
                            f"{replicas} replicas; give it at least {replicas}.")
        return steps - 1, global_batch + last
    return steps, last


def per_replica_batch(ctx: tf.distribute.InputContext, global_batch: int) -> int:
    """``--batch_size`` split over every replica of the cluster, which must divide it."""
    replicas = ctx.num_replicas_in_sync
    if global_batch % replicas:
        raise UserError(f"--batch_size: expected a multiple of the {replicas} replicas of the "
                        f"multi-worker cluster; received {global_batch}.")
    return global_batch // replicas


def _local_replicas(ctx: tf.distribute.InputContext) -> int:
    return ctx.num_replicas_in_sync // ctx.num_input_pipelines


def _bounds(n: int, parts: int, i: int) -> int:
    """Where part ``i`` of ``n`` split into ``parts`` near-equal contiguous parts starts."""
    return i * (n // parts) + min(i, n % parts)


def worker_share(ds: tf.data.Dataset, ctx: tf.distribute.InputContext,
                 global_batch: int) -> tf.data.Dataset:
    """The elements of ``ds`` (of known size) this worker reads: of each global step's
    consecutive elements, its contiguous slice (an equal one; of a short last step, a
    near-equal one). Applied after the common shuffle and before decoding, the workers' slices
    of step k, worker after worker and replica after replica, are exactly the default
    strategy's global batch k, in its order (so gathered predictions keep the split's order)."""
    keep = _in_share(int(ds.cardinality()), ctx, global_batch)
    return ds.enumerate().filter(lambda i, _: keep(i)).map(lambda _, element: element)


def _in_share(examples: int, ctx: tf.distribute.InputContext,
              global_batch: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """Whether positions ``i`` (int64, any shape) of a pass fall in this worker's share."""
    steps, last = global_steps(examples, global_batch, ctx.num_replicas_in_sync)
    per_replica_batch(ctx, global_batch)
    workers, worker = ctx.num_input_pipelines, ctx.input_pipeline_id

    def start(n: tf.Tensor, part: int) -> tf.Tensor:
        return part * (n // workers) + tf.minimum(tf.constant(part, tf.int64), n % workers)

    def keep(i: tf.Tensor) -> tf.Tensor:
        step = tf.minimum(i // global_batch, steps - 1)
        n = tf.where(step < steps - 1, tf.constant(global_batch, tf.int64), last)
        at = i - step * global_batch
        return (start(n, worker) <= at) & (at < start(n, worker + 1))

    return keep


def last_step_rebatch(examples: int, ctx: tf.distribute.InputContext,
                      global_batch: int) -> list[int]:
    """This worker's per-replica batch sizes for the whole pass when batching its share at the
    per-replica size would not give each local replica one non-empty batch of the last step
    (a merged last step, or several replicas per worker); empty when it does."""
    steps, last = global_steps(examples, global_batch, ctx.num_replicas_in_sync)
    if not steps:
        return []
    local, size = _local_replicas(ctx), per_replica_batch(ctx, global_batch)
    workers, worker = ctx.num_input_pipelines, ctx.input_pipeline_id
    mine = _bounds(last, workers, worker + 1) - _bounds(last, workers, worker)
    if (local - 1) * size < mine <= local * size:
        return []
    tail = [_bounds(mine, local, j + 1) - _bounds(mine, local, j) for j in range(local)]
    return [size] * ((steps - 1) * local) + tail


def shard_count(examples: int, ctx: tf.distribute.InputContext, global_batch: int) -> int:
    """How many of ``examples`` positions ``worker_share`` gives this worker (counted by the
    very filter the pipeline applies, over positions instead of records)."""
    positions = tf.range(examples, dtype=tf.int64)
    return int(tf.reduce_sum(tf.cast(_in_share(examples, ctx, global_batch)(positions), tf.int64)))


def input_context(strategy: tf.distribute.Strategy) -> tf.distribute.InputContext:
    """The ``InputContext`` the strategy hands this worker's input function."""
    seen: list[tf.distribute.InputContext] = []

    def capture(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        seen.append(ctx)
        return tf.data.Dataset.range(1)

    strategy.distribute_datasets_from_function(capture)
    return seen[0]


def same_on_every_worker(strategy: tf.distribute.Strategy, values: list[int]) -> bool:
    """True when every worker passed the same ``values`` (an all-gather: also a barrier)."""
    mine = tf.constant([values], tf.int64)
    gathered = strategy.gather(
        strategy.experimental_distribute_values_from_function(lambda _: mine), axis=0).numpy()
    return bool((gathered == gathered[0]).all())


def distribute(strategy: tf.distribute.Strategy, batches: tf.data.Dataset | WorkerBatches):
    """Distributes one pass of global batches: ``WorkerBatches`` through
    ``distribute_datasets_from_function`` (each worker builds its share), a dataset by data.

    ``AutoShardPolicy.DATA`` suits what still comes as a whole dataset (cached features, small
    arrays in memory; single-machine strategies): in-memory arrays have no files for FILE
    sharding to split, and TFDS splits carved by percent may span fewer files than there are
    workers (FILE/AUTO would then fail or give uneven shards). Each worker builds the same
    pipeline, shuffled once with the same seed, and keeps its own share of each global batch,
    so the global batch is the one the default strategy would train on.
    """
    if isinstance(batches, WorkerBatches):
        return strategy.distribute_datasets_from_function(batches.for_worker)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(batches.with_options(options))
