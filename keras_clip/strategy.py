"""``--strategy default|mirrored|multi_worker|tpu`` → a tf.distribute strategy."""

import json
import os

import tensorflow as tf

from keras_clip.compat import in_multi_worker_mode

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices):
    """Expose the CPU as ``num_devices`` logical devices (to test multi-replica code on a CPU).

    Must run before TensorFlow initialises its devices (i.e. before the first op).
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == num_devices:
        return
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def make_strategy(name="default", cpu_replicas=None):
    """Create a distribution strategy by name.

    Args:
        name: "default" (one device), "mirrored" (all local devices; with ``cpu_replicas`` N
            logical CPUs), "multi_worker" (MultiWorkerMirroredStrategy from ``TF_CONFIG``, ring
            all-reduce, which works on CPUs), or "tpu" (needs a TPU; a clear error otherwise).

    Example:
        >>> strategy = make_strategy("mirrored", cpu_replicas=2)
        >>> strategy.num_replicas_in_sync
        2
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}")
    if cpu_replicas and cpu_replicas > 1:
        split_cpu(cpu_replicas)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable "
                             '(e.g. {"cluster": {"worker": ["127.0.0.1:12345", ...]}, '
                             '"task": {"type": "worker", "index": 0}})')
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.NotFoundError, RuntimeError) as e:
        raise RuntimeError(f"--strategy tpu: no TPU found ({e})") from e
    return tf.distribute.TPUStrategy(resolver)


def is_chief():
    """True on the worker that writes logs, checkpoints and the final model."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    return task.get("type", "worker") in ("chief",) or (
        task.get("type", "worker") == "worker" and task.get("index", 0) == 0
        and "chief" not in config.get("cluster", {}))


def replica_logs(strategy, logs):
    """``train_step`` logs fit for Keras' reduction under ``strategy``.

    Keras reduces MultiWorkerMirroredStrategy logs with a mean over axis 0, which needs rank >= 1:
    scalars become shape [1] there; elsewhere ``logs`` is returned as is.
    """
    if in_multi_worker_mode(strategy):
        return {k: tf.reshape(tf.cast(v, "float32"), [1]) for k, v in logs.items()}
    return logs


def all_reduce_sum(x):
    """Sums ``x`` over the replicas of the current tf.distribute strategy (identity with one
    replica, or in cross-replica context)."""
    if tf.distribute.get_strategy().num_replicas_in_sync <= 1:
        return x
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: nothing to reduce
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)
