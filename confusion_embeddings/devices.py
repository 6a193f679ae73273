"""Data parallelism over every local device (and every host of a multi-process job).

Reads and writes nothing. One mesh axis, "data": batches are split along it, parameters are
replicated; the same code runs on 1 CPU, 8 GPUs or a TPU slice. How the devices came to be
(CPU split, multi-process job): host.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from confusion_embeddings.core.cli import progress
from confusion_embeddings.core.errors import PipelineError


@contextmanager
def data_parallel(n_devices: int | None = None) -> Iterator[Mesh]:
    """`data_mesh()`, also set as the mesh that jitted functions traced inside see.

    Custom calls such as cnn/onednn.py's convolutions read it to run per device on the
    device's slice of the batch; XLA alone would gather the whole batch onto each device.
    """
    mesh = data_mesh(n_devices)
    with jax.set_mesh(mesh):
        yield mesh


def data_mesh(n_devices: int | None = None) -> Mesh:
    """A data-parallel mesh over every device, or over the first `n_devices` of them."""
    # Auto axes: XLA propagates the batch sharding through the step by itself, so the
    # model code stays free of sharding annotations.
    auto = (jax.sharding.AxisType.Auto,)
    if n_devices is not None:
        return Mesh(np.array(jax.devices()[:n_devices]), ("data",), axis_types=auto)
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=auto)


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


def map_batches(
    fn: Callable[[jax.Array], jax.Array],
    rows: np.ndarray,
    batch_size: int,
    mesh: Mesh,
    show_progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Apply a jitted `fn` to `rows` batch by batch, sharded over the mesh.

    The last batch is padded with zeros to `batch_size` (and the padding dropped from the
    result) so that `fn` sees one static shape and compiles once.
    """
    out = []
    starts = range(0, len(rows), batch_size)
    host_rows = local_slice(batch_size)
    for start in progress(starts, desc, unit="batch", enabled=show_progress):
        xb = np.asarray(rows[start : start + batch_size])
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
        (xs,) = shard_batch(mesh, xb[host_rows])
        out.append(_to_host(fn(xs))[:n])
    return np.concatenate(out)


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole of a batch-sharded result on every host (each holds only its rows)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_batch_size(batch_size: int, where: str) -> None:
    n = jax.device_count()
    if batch_size % n:
        raise PipelineError(
            f"params.yaml: '{where}' = {batch_size} must be divisible by the {n} devices "
            f"JAX sees ({jax.default_backend()}); pick a multiple of {n}"
        )
