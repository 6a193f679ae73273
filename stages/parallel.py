"""Data parallelism over every local device (and every host, when launched that way).

Reads and writes nothing. One mesh axis, "data": batches are split along it, parameters
are replicated. The same code runs on 1 CPU, 8 GPUs or a TPU slice.

Multi-host: when `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are
set (see README), `init_distributed()` calls `jax.distributed.initialize()` before any
device is touched; each host then feeds its own slice of every global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

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


def map_batches(fn: Callable[[jax.Array], jax.Array], rows: np.ndarray, batch_size: int,
                mesh: Mesh, progress: bool = False, desc: str = "") -> np.ndarray:
    """Apply a jitted `fn` to `rows` batch by batch, sharded over the mesh.

    The last batch is padded with zeros to `batch_size` (and the padding dropped from the
    result) so that `fn` sees one static shape and compiles once.
    """
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress,
                      unit="batch", leave=False):
        xb = np.asarray(rows[start : start + batch_size])
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
        (xs,) = shard_batch(mesh, xb)
        out.append(np.asarray(fn(xs))[:n])
    return np.concatenate(out)


def enable_compilation_cache(path: str = ".cache/jax") -> None:
    """Keep compiled XLA programs on disk so that a rerun of a stage skips compilation."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def check_batch_size(batch_size: int, where: str) -> None:
    n = jax.device_count()
    if batch_size % n:
        from stages.common import PipelineError

        raise PipelineError(
            f"params.yaml: '{where}' = {batch_size} must be divisible by the {n} devices "
            f"JAX sees ({jax.default_backend()}); pick a multiple of {n}"
        )
