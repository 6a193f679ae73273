"""The process's host, set up before JAX starts its backends, and the job it belongs to.

Reads params.yaml's `hosts:` section (through `start`) and writes nothing. What a stage
that runs the network does first is `start`: glibc told to reuse freed memory
(`reuse_host_memory`), the CPU split into JAX devices (`use_cpu_devices`), a multi-process
job joined where the environment describes one (`init_distributed`, with a watch on the
other processes), and compiled programs kept on disk. docs/design/cpu-host.md has the
measurements behind the first two. Mesh and sharding, once JAX runs: devices.py.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from confusion_embeddings.config.hosts import HOSTS
from confusion_embeddings.core.errors import PipelineError

_initialized = False  # init_distributed ran in this process


# The params key of every stage that runs the network (see use_cpu_devices).
def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise PipelineError(f"environment: {name}={value!r} is not an integer") from None


def distributed_request() -> dict | None:
    """What `jax.distributed.initialize` should be called with here, or None (one process).

    A job is multi-process when JAX_COORDINATOR_ADDRESS or JAX_NUM_PROCESSES is set, or a
    cluster manager that JAX detects by itself launched several processes (SLURM with
    SLURM_NTASKS > 1, Open MPI). JAX_NUM_PROCESSES / JAX_PROCESS_ID, when set, are passed
    on; everything else is left to JAX's own cluster detection.
    """
    num, pid = _int_env("JAX_NUM_PROCESSES"), _int_env("JAX_PROCESS_ID")
    cluster = (_int_env("SLURM_NTASKS") or 1) > 1 or "OMPI_MCA_orte_hnp_uri" in os.environ
    if "JAX_COORDINATOR_ADDRESS" not in os.environ and num is None and not cluster:
        return None
    if (num is None) != (pid is None):
        raise PipelineError(
            "environment: JAX_NUM_PROCESSES and JAX_PROCESS_ID go together; "
            "set both, or neither and let a cluster manager (SLURM, Open MPI) "
            "say them"
        )
    if num is not None and "JAX_COORDINATOR_ADDRESS" not in os.environ and not cluster:
        raise PipelineError(
            "environment: JAX_NUM_PROCESSES is set but JAX_COORDINATOR_ADDRESS "
            "is not; set it to process 0's host:port"
        )
    return {} if num is None else {"num_processes": num, "process_id": pid}


def init_distributed(peer_timeout: int = HOSTS["peer_timeout"].default) -> None:
    """Join a multi-process job if the environment describes one; a no-op otherwise.

    In a job, a process whose peer stops (killed, crashed, hung) exits with one line on
    stderr within about `peer_timeout` seconds (params `hosts.peer_timeout`), instead of
    waiting in a collective or aborting with JAX's stack trace: see `_PeerWatch`.
    """
    global _initialized
    if _initialized:
        return
    request = distributed_request()
    if request is None:
        return
    try:
        # JAX's own heartbeat check is the backstop; ours (_PeerWatch) comes first and
        # says what happened in one line. The shutdown barrier at exit waits for the
        # slowest process (process 0 writes the outputs): bounded by the same timeout.
        jax.distributed.initialize(
            **request,
            heartbeat_timeout_seconds=2 * peer_timeout,
            shutdown_timeout_seconds=2 * peer_timeout,
        )
    except ValueError as exc:  # JAX found no cluster to fill in what is missing
        raise PipelineError(
            f"environment: JAX_COORDINATOR_ADDRESS is set but the job's size is unknown "
            f"({exc}); set JAX_NUM_PROCESSES and JAX_PROCESS_ID, or launch under SLURM or "
            "Open MPI"
        ) from None
    _initialized = True
    if jax.process_count() > 1:
        watch = _PeerWatch(peer_timeout)
        watch.start()
        # atexit runs last-registered first: the watch stops (and tells the others this
        # process is done) before JAX's own handler shuts the distributed client down.
        atexit.register(watch.stop)
        sys.excepthook = _exit_on_uncaught


# What a collective says when the process at the other end has gone (XLA's CPU
# collectives run over Gloo's TCP pairs; the coordination service reports missed beats).
_PEER_LOST = re.compile(r"Gloo|[Cc]onnection (reset|refused|closed)|heartbeat|coordination")


def _die(message: str) -> None:
    """One line on stderr and exit 2 at once: a normal exit would wait at JAX's shutdown
    barrier for the process that is gone, then abort with a stack trace."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def _job() -> str:
    return f"process {jax.process_index()} of {jax.process_count()}"


def _exit_on_uncaught(kind, exc, tb) -> None:
    """sys.excepthook in a multi-process job: a collective that failed because a peer went
    away is said in one line; anything else keeps its traceback. Either way the process
    exits now, so that its peers see it gone instead of waiting at a barrier."""
    if isinstance(exc, jax.errors.JaxRuntimeError) and _PEER_LOST.search(str(exc)):
        _die(
            f"{_job()}: another process of this job stopped; rerun every process "
            "(training resumes from its last checkpoint)"
        )
    sys.__excepthook__(kind, exc, tb)
    _die(f"{_job()} failed (above); the job's other processes stop too")


class _PeerWatch(threading.Thread):
    """Every process bumps a counter in the coordination service's key-value store each
    second and watches the others': one that has not moved for `timeout` seconds, or a
    coordinator that no longer answers, ends this process with one line (`_die`). A process
    that ends normally writes DONE there first (`stop`), so that the others, still writing
    outputs or waiting at JAX's shutdown barrier, do not take it for dead."""

    KEY = "confusion_embeddings/beat/{}"
    DONE = "done"

    def __init__(self, timeout: int) -> None:
        super().__init__(name="peer-watch", daemon=True)
        self.timeout = timeout
        self.stopped = threading.Event()

    def stop(self) -> None:
        """Stop watching and say this process is done (called at exit, before JAX's own
        shutdown; errors ignored: the job is ending either way)."""
        self.stopped.set()
        with contextlib.suppress(Exception):
            _client().key_value_set(
                self.KEY.format(jax.process_index()), self.DONE, allow_overwrite=True
            )

    def run(self) -> None:
        client = _client()
        me, n = jax.process_index(), jax.process_count()
        seen = {p: ("", time.monotonic()) for p in range(n) if p != me}
        beat = 0
        while not self.stopped.wait(1.0 if beat else 0.0):
            beat += 1
            try:
                client.key_value_set(self.KEY.format(me), str(beat), allow_overwrite=True)
                for p, (last, since) in seen.items():
                    value = _try_get(client, self.KEY.format(p))
                    now = time.monotonic()
                    if value != last:
                        seen[p] = (value, now)
                    elif value != self.DONE and now - since > self.timeout:
                        self._die_unless_stopped(
                            f"{_job()}: process {p} gave no sign of life for "
                            f"{self.timeout} s (params hosts.peer_timeout); rerun every "
                            "process (training resumes from its last checkpoint)"
                        )
            except Exception as exc:  # the coordinator (process 0) is gone
                self._die_unless_stopped(
                    f"{_job()}: lost the job's coordinator ({str(exc).splitlines()[0]}); "
                    "rerun every process"
                )

    def _die_unless_stopped(self, message: str) -> None:
        if not self.stopped.is_set():  # else this process is ending normally
            _die(message)


def _client():
    """The distributed runtime's client, which `jax.distributed.initialize` made."""
    from jax._src import distributed  # no public API hands it out

    return distributed.global_state.client


def _try_get(client, key: str) -> str:
    """The value under `key`, or "" while the process that writes it has not yet."""
    try:
        return client.key_value_try_get(key)
    except jax.errors.JaxRuntimeError as exc:
        if "NOT_FOUND" in str(exc):
            return ""
        raise


def is_primary() -> bool:
    """Whether this process writes the stage's outputs: process 0 of a multi-host job."""
    return jax.process_index() == 0


def agreed(flag: bool, what: str) -> bool:
    """`flag` where every process of the job has the same one; a PipelineError naming `what`
    where they differ (one process alone would then wait forever in a collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(flag))).ravel()
    if (flags != flags[0]).any():
        raise PipelineError(
            f"{what} on processes {np.flatnonzero(flags).tolist()} of {len(flags)} only; "
            "it must be the same on every process of the job"
        )
    return flag


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_isa() -> str:
    """The CPU's vector instruction sets that decide which kernels XLA and oneDNN pick (and
    so the last bits of every result), e.g. "x86_64 avx2 avx512f avx512_bf16"."""
    machine = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(
                (
                    line.split(":", 1)[1].split()
                    for line in fh
                    if line.startswith(("flags", "Features"))
                ),
                [],
            )
    except OSError:
        return machine
    levels = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "sve", "asimd")
    return " ".join([machine, *(f for f in levels if f in flags)])


BF16_ISA = ("avx512_bf16", "amx_bf16")


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (oneDNN's bf16 kernels need one of
    BF16_ISA; without, it emulates them, slower than float32)."""
    return any(flag in cpu_isa().split() for flag in BF16_ISA)


def auto_cpu_devices(cores: int, batch_sizes: Sequence[int]) -> int:
    """The largest device count <= cores that divides every batch size (1 at worst)."""
    return max(d for d in range(1, max(1, cores) + 1) if all(b % d == 0 for b in batch_sizes))


def use_cpu_devices(
    setting: int | str, batch_sizes: Sequence[int], one_per_core: bool = True
) -> int | None:
    """Split the host CPU into several JAX devices; return the count set, or None.

    `setting` "auto" picks the largest count <= the number of cores that divides every
    batch size (so sharding never fails), or 1 when `one_per_core` is False; an int is
    used as given. It only takes effect before JAX starts its backends. Left alone: a
    device count already forced through XLA_FLAGS, and a process whose JAX is already
    running (a test calling a stage in-process keeps the devices it has).
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

    XLA:CPU allocates a program's temporary buffers afresh on every run; without this,
    glibc maps and unmaps them each time and every train step page-faults its whole
    working set again. One heap (M_ARENA_MAX=1), no mmap (M_MMAP_MAX=0), no trimming:
    the process keeps its peak memory until it exits, which suits a stage process. A
    no-op (False) outside glibc and in a process whose JAX is already running.
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
    # settings then apply as in a fresh process); tests/test_host.py checks the no-op.
    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else False


@dataclass(frozen=True)
class HostSetup:
    """What `prepare_host` changed: see `reuse_host_memory` and `use_cpu_devices`."""

    memory_reused: bool
    cpu_devices: int | None


def prepare_host(cpu_devices: int | str, batch_sizes: Sequence[int], conv_impl: str) -> HostSetup:
    """Set up this process's CPU for XLA; the first thing a stage that runs the network does.

    `cpu_devices: auto` means one device per core unless the convolutions are oneDNN's
    (`conv_impl`, see cnn/conv.py), which spread each convolution over every core
    themselves and ran faster on one device.
    """
    memory_reused = reuse_host_memory()
    return HostSetup(
        memory_reused, use_cpu_devices(cpu_devices, batch_sizes, one_per_core=conv_impl != "onednn")
    )


def enable_compilation_cache(path: str = ".cache/jax") -> None:
    """Keep compiled XLA programs on disk so that a rerun of a stage skips compilation."""
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def start(
    cpu_devices: int | str, batch_sizes: Sequence[int], conv_impl: str, hosts: dict[str, Any]
) -> HostSetup:
    """Everything a process that runs the network does before JAX starts: `prepare_host`,
    join the job (`hosts`: params.yaml's section, validated against HOSTS), keep compiled
    programs on disk. `conv_impl` is the convolution that will run (cnn/conv.py decides it)."""
    setup = prepare_host(cpu_devices, batch_sizes, conv_impl)
    init_distributed(hosts["peer_timeout"])
    enable_compilation_cache()
    return setup
