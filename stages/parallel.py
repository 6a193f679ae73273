"""Data parallelism over every local device (and every host, when launched that way).

Reads and writes nothing. One mesh axis, "data": batches are split along it, parameters
are replicated. The same code runs on 1 CPU, 8 GPUs or a TPU slice.

Multi-host: when `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are
set (see README), `init_distributed()` calls `jax.distributed.initialize()` before any
device is touched; each host then feeds its own slice of every global batch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

_initialized = False


def init_distributed() -> None:
    """Join a multi-host job if the environment describes one; a no-op otherwise."""
    global _initialized
    if _initialized or "JAX_COORDINATOR_ADDRESS" not in os.environ:
        return
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
    _initialized = True


def data_mesh() -> Mesh:
    # Auto axes: XLA propagates the batch sharding through the step by itself, so the
    # model code stays free of sharding annotations.
    return jax.make_mesh(
        (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def local_slice(global_batch: int) -> slice:
    """Which rows of a global batch this host feeds (all of them on one host)."""
    per_host = global_batch // jax.process_count()
    start = jax.process_index() * per_host
    return slice(start, start + per_host)


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Put host arrays (this host's rows) on the devices, split along the data axis."""
    sharding = batch_sharded(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)


def check_batch_size(batch_size: int, where: str) -> None:
    n = jax.device_count()
    if batch_size % n:
        from stages.common import PipelineError

        raise PipelineError(
            f"params.yaml: '{where}' = {batch_size} must be divisible by the {n} devices "
            f"JAX sees ({jax.default_backend()}); pick a multiple of {n}"
        )
