"""Devices, distribution strategy and precision policy (TensorFlow, JAX or PyTorch backend)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import keras

from mriscan.config import PRECISIONS, STRATEGIES
from mriscan.errors import ConfigError

__all__ = ["Hardware", "resolve_precision", "setup_hardware"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    """What training runs on: backend, devices, strategy, replicas, batch sizes, precision."""

    backend: str
    devices: tuple[str, ...]
    strategy_name: str
    replicas: int
    per_replica_batch: int
    precision: str
    strategy: Any = None  # tf.distribute.Strategy on TensorFlow, else None

    @property
    def global_batch(self) -> int:
        """Batch size over all replicas (per-replica batch × replicas)."""
        return self.per_replica_batch * self.replicas

    def scope(self) -> contextlib.AbstractContextManager:
        """Context in which to build and compile the model."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def describe(self, pipeline: str = "") -> str:
        """The one-line summary logged at the start of training."""
        pipe = f", pipeline {pipeline}" if pipeline else ""
        return (
            f"backend {self.backend}, devices [{', '.join(self.devices)}], strategy "
            f"{self.strategy_name}, replicas {self.replicas}, batch {self.per_replica_batch}"
            f"/replica = {self.global_batch} global, precision {self.precision}{pipe}"
        )


def _cuda_capability_ok(details: dict[str, Any]) -> bool:
    """True when a GPU reports compute capability >= 7.0 (fast float16)."""
    cc = details.get("compute_capability")
    return bool(cc) and tuple(cc) >= (7, 0)


def resolve_precision(requested: str, *, gpus: list[dict[str, Any]] | None = None) -> str:
    """Pick the dtype policy: ``auto`` is mixed_float16 on CUDA GPUs with CC >= 7.0, else float32.

    On CPUs float32 is kept: mixed_float16 is several times slower there (tensorflow#45441) and
    mixed_bfloat16 measured slower than float32 for this model (bench/RESULTS.md).
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}. Received: {requested!r}.")
    if requested != "auto":
        return requested
    if gpus and all(_cuda_capability_ok(g) for g in gpus):
        return "mixed_float16"
    return "float32"


def _tf_setup(requested: str) -> tuple[tuple[str, ...], Any, str, list[dict[str, Any]]]:
    """TensorFlow: memory growth on GPUs, then a Mirrored, MultiWorkerMirrored or default strategy.

    ``auto`` mirrors over two or more devices; on one device it keeps TensorFlow's default
    strategy, because ``MirroredStrategy`` over a single device only adds overhead (a short
    training epoch took 1.8× as long on 2 CPU cores, bench/RESULTS.md).
    ``mirrored`` forces ``MirroredStrategy`` even over one device.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised: growth was set before
            tf.config.experimental.set_memory_growth(gpu, True)
    details = [tf.config.experimental.get_device_details(g) for g in gpus]
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    if len(workers) > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _fix_symbolic_build_reduce(strategy)
        name = f"MultiWorkerMirroredStrategy({len(workers)} workers)"
    else:
        logical = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        if len(logical) == 1 and requested == "auto":
            strategy = tf.distribute.get_strategy()
            return (logical[0].name,), strategy, "default strategy (one device)", details
        strategy = tf.distribute.MirroredStrategy([d.name for d in logical])
        name = "MirroredStrategy"
    devices = tuple(strategy.extended.worker_devices)
    return devices, strategy, name, details


def _fix_symbolic_build_reduce(strategy: Any) -> None:
    """Work around keras#20585: ``fit``/``evaluate`` under MultiWorkerMirroredStrategy fail.

    1. Keras builds the model from one input batch by calling ``strategy.reduce("MEAN", batch,
       axis=None)`` eagerly on the distributed batch, which the collective strategy cannot
       convert. That reduce only serves to learn shapes, so the local replica's batch is used.
    2. Keras reduces scalar metric results with ``axis=0``, which a 0-d value does not have;
       for scalars the mean over replicas is taken without an axis.
    """
    import tensorflow as tf

    original = strategy.reduce

    def reduce(reduce_op: Any, value: Any, axis: Any) -> Any:
        leaves = tf.nest.flatten(value)
        if (
            axis is None
            and leaves
            and tf.executing_eagerly()
            and all(isinstance(v, tf.distribute.DistributedValues) for v in leaves)
        ):
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)
        if axis == 0 and leaves and all(_rank(v) == 0 for v in leaves):
            axis = None
        return original(reduce_op, value, axis)

    def _rank(v: Any) -> int | None:
        local = (
            strategy.experimental_local_results(v)[0]
            if isinstance(v, tf.distribute.DistributedValues)
            else v
        )
        shape = getattr(local, "shape", None)
        return None if shape is None or shape.rank is None else shape.rank

    strategy.reduce = reduce


def setup_hardware(
    *, precision: str = "auto", per_replica_batch: int = 32, strategy: str = "auto"
) -> Hardware:
    """Choose devices, strategy and dtype policy for the active Keras backend, and set the policy.

    TensorFlow: ``MirroredStrategy`` over all GPUs (or CPU devices) when there are two or more
    (or ``strategy="mirrored"``), the default strategy on a single device,
    ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` lists several workers.
    JAX: ``keras.distribution.DataParallel`` over all devices. PyTorch: one device.
    """
    if per_replica_batch < 1:
        raise ConfigError(f"batch size must be >= 1. Received: {per_replica_batch}.")
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}. Received: {strategy!r}.")
    backend = keras.backend.backend()
    dist = None
    if backend == "tensorflow":
        devices, dist, name, gpus = _tf_setup(strategy)
        replicas = int(dist.num_replicas_in_sync)
    elif backend == "jax":
        import jax

        jdevs = jax.devices()
        devices = tuple(str(d) for d in jdevs)
        gpus = [{"compute_capability": _jax_cc(d)} for d in jdevs if d.platform == "gpu"]
        replicas = len(jdevs)
        if replicas > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jdevs))
            name = "keras.distribution.DataParallel"
        else:
            name = "single device"
    else:
        import torch

        cuda = torch.cuda.is_available()
        devices = ("cuda:0",) if cuda else ("cpu",)
        gpus = [{"compute_capability": torch.cuda.get_device_capability(0)}] if cuda else []
        replicas = 1
        name = "single device (PyTorch backend: no multi-device strategy)"
    policy = resolve_precision(precision, gpus=gpus)
    keras.mixed_precision.set_dtype_policy(policy)
    hw = Hardware(backend, devices, name, replicas, per_replica_batch, policy, dist)
    return hw


def _jax_cc(device: Any) -> tuple[int, int] | None:
    """Compute capability of a JAX CUDA device, if it says."""
    cc = getattr(device, "compute_capability", None)
    if isinstance(cc, str) and "." in cc:
        major, minor = cc.split(".", 1)
        return int(major), int(minor)
    return None
