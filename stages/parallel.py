"""Data parallelism over every local device (and every host, when launched that way).

Reads and writes nothing. One mesh axis, "data": batches are split along it, parameters
are replicated. The same code runs on 1 CPU, 8 GPUs or a TPU slice.

CPU: XLA runs one program per device, so by default all cores cooperate inside every op,
and with XLA's own convolutions the many small ops of a CNN step (batch norm, activations,
the narrow convolutions) keep them waiting on each other. `use_cpu_devices` can split the
host into one JAX device per core instead: each core then runs its own share of the batch,
and the step is plain data parallelism. On this project's 2-core machine that made the
train step 15-29% faster with XLA's convolutions (three runs of `python -m benchmarks.run`).
With oneDNN's convolutions (the default, stages/onednn.py), which spread each convolution
over every core themselves, one device is faster: in quick runs of the benchmark
alternating the two settings, the train step's ratio to PyTorch (measured side by side)
was 1.07 and 1.08 with one device against 0.99 and 0.97 with two, inference 1.18 and 1.13
against 1.06 and 1.09, and the two-device train steps page-faulted 10,000-20,000 times per
step where one device did not. So `auto` depends on the convolutions (`prepare_host`).
GPUs and TPUs are untouched by it.

Host memory: XLA:CPU allocates each program's temporary buffers afresh on every run, from
its worker threads (342 MB per device for one train step at batch 512). glibc serves a
request that large from a worker thread's arena with a fresh mmap and unmaps it on free,
so every step page-faulted its whole working set again: 176,000 minor faults and ~0.35 s
of kernel time per step on the 2-core machine. `reuse_host_memory` lets freed buffers be
reused by the next step instead (train step +20-35% images/s, see the function).

Multi-host: when `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are
set (see README), `init_distributed()` calls `jax.distributed.initialize()` before any
device is touched; each host then feeds its own slice of every global batch.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from stages.common import Param, PipelineError

_initialized = False

# The params key of every stage that runs the network (see use_cpu_devices).
CPU_DEVICES = Param((str, int), "auto", lambda v: None if v == "auto" or (
    isinstance(v, int) and v >= 1) else "'auto' or an int >= 1")


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


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def auto_cpu_devices(cores: int, batch_sizes: Sequence[int]) -> int:
    """The largest device count <= cores that divides every batch size (1 at worst)."""
    return max(d for d in range(1, max(1, cores) + 1) if all(b % d == 0 for b in batch_sizes))


def use_cpu_devices(setting: int | str, batch_sizes: Sequence[int],
                    one_per_core: bool = True) -> int | None:
    """Split the host CPU into several JAX devices; return the count set, or None.

    `setting` "auto" picks the largest count <= the number of cores that divides every
    batch size (so sharding never fails), or 1 when `one_per_core` is False; an int is
    used as given. It only takes effect before JAX starts its backends, so stages call it
    first thing in `main()`. Left alone: a device count already forced through XLA_FLAGS,
    and a process whose JAX is already running (a test calling a stage in-process keeps
    the devices it has).
    """
    if re.search(r"xla_force_host_platform_device_count", os.environ.get("XLA_FLAGS", "")):
        return None
    if setting == "auto":
        n = auto_cpu_devices(cpu_cores(), batch_sizes) if one_per_core else 1
    else:
        n = int(setting)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX's backends are already up: this process keeps its devices
        return None
    return n


# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_host_memory() -> bool:
    """Make glibc keep freed memory for reuse; call before JAX starts. True if applied.

    Every thread allocates from the main heap (M_ARENA_MAX=1: a worker thread's own
    arena falls back to mmap for anything over its 64 MB heap, whatever M_MMAP_MAX says),
    never through mmap (M_MMAP_MAX=0), and freed memory is not given back to the kernel
    (M_TRIM_THRESHOLD): a step's buffers land on pages the previous step already touched.
    The price is that the process keeps its peak memory until it exits, which suits a
    stage process. Measured on the 2-core machine, one process per setting, alternating:
    train step 700-733 -> 842-944 images/s, minor faults per step 176,000 -> ~1,000;
    inference unchanged. A no-op (False) outside glibc, and in a process whose JAX is
    already running (its XLA threads have their arenas already).
    """
    if sys.platform != "linux" or _backends_running():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (not musl)
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def _backends_running() -> bool:
    from jax._src import xla_bridge  # no public API tells whether the backends are up

    # Private, so guard against its disappearance in a later JAX: assume "not yet" (the
    # settings then apply as in a fresh process); tests/test_train.py checks the no-op.
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else False


@dataclass(frozen=True)
class HostSetup:
    """What `prepare_host` changed: see `reuse_host_memory` and `use_cpu_devices`."""

    memory_reused: bool
    cpu_devices: int | None


def prepare_host(cpu_devices: int | str, batch_sizes: Sequence[int],
                 conv_impl: str = "onednn") -> HostSetup:
    """Set up this process's CPU for XLA; the first thing a stage that runs the network does.

    `cpu_devices: auto` means one device per core unless the network's convolutions are
    oneDNN's (`conv_impl`, see stages/model.py): those spread each convolution over every
    core themselves, and one device was faster (module docstring). Both settings only take
    effect before JAX starts its backends (and are left alone in a process whose JAX is
    already running, such as a test calling a stage in-process).
    """
    memory_reused = reuse_host_memory()
    return HostSetup(memory_reused, use_cpu_devices(cpu_devices, batch_sizes,
                                                    one_per_core=conv_impl != "onednn"))


@contextmanager
def data_parallel(n_devices: int | None = None) -> Iterator[Mesh]:
    """`data_mesh()`, also set as the mesh that jitted functions traced inside see.

    Custom calls such as stages/onednn.py's convolutions read it to run per device on the
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
        raise PipelineError(
            f"params.yaml: '{where}' = {batch_size} must be divisible by the {n} devices "
            f"JAX sees ({jax.default_backend()}); pick a multiple of {n}"
        )
