"""tf.distribute strategies by name, and who in a cluster writes the run directory.

Every strategy runs the same custom training step (``tfft.train_lib``): ``--batch_size`` is the
global batch, split across ``num_replicas_in_sync`` replicas. ``default`` is no distribution;
``one_device`` pins to the first GPU (or the CPU); ``mirrored`` uses all visible GPUs (or
``--num_gpus`` of them; without GPUs the CPU's logical devices, see ``--cpu_devices``);
``multi_worker`` reads the cluster from ``TF_CONFIG`` (``python -m tfft.launch`` makes one on
this machine); ``tpu`` connects to ``--tpu`` (``local`` on a TPU VM, or a ``grpc://`` address / TPU
name) through ``TPUClusterResolver`` and uses static batch shapes.
"""

from __future__ import annotations

import json
import os
import re
import socket

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


def distribute(strategy: tf.distribute.Strategy, ds: tf.data.Dataset):
    """Distributes a batched dataset of global batches; workers shard it by data.

    ``AutoShardPolicy.DATA`` is the right policy for every source tfft has: in-memory arrays
    (npz, the bundled sample, cached features) and image folders (a list of paths in memory) have
    no files for FILE sharding to split, and TFDS splits carved by percent may span fewer files
    than there are workers (FILE/AUTO would then fail or give uneven shards). Each worker builds
    the same pipeline, shuffled once with the same seed before this call, and keeps its own share
    of each global batch, so the global batch is the one the default strategy would train on.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return strategy.experimental_distribute_dataset(ds.with_options(options))
