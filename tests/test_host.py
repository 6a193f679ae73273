"""confusion_embeddings/host.py: CPU devices per batch, host memory reuse and setup, bf16
from the CPU flags, and the train stage's command splitting the CPU into devices."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys

import jax
import pytest

from confusion_embeddings import host
from confusion_embeddings.cnn.checkpoint import read_config

from cnn_helpers import (
    NO_BF16,
    WITH_BF16,
    device_count,
    fake_cpu_isa,
    train_cmd,
    train_env,
    train_project,
)
from helpers import ROOT


@pytest.mark.parametrize(
    "cores, batch_sizes, want",
    [
        (2, [512, 1000], 2),
        (4, [512, 1000], 4),
        (16, [512, 1000], 8),
        (2, [7], 1),
        (3, [512, 1000], 2),
        (1, [512], 1),
        (0, [512], 1),
        (6, [36, 24], 6),
        (5, [36, 24], 4),
    ],
)
def test_auto_cpu_devices_divides_every_batch(cores, batch_sizes, want):
    n = host.auto_cpu_devices(cores, batch_sizes)
    assert n == want and all(b % n == 0 for b in batch_sizes)


def _run_python(script: str, *args: str) -> list[str]:
    """Run `script` in a fresh interpreter (JAX not started yet); its stdout's words."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()


# Runs a jitted function whose 64 MB output is allocated afresh on every call, with or
# without reuse_host_memory, and prints the minor page faults of each of 16 calls.
_FAULTS_PER_CALL = """
import resource, sys
from confusion_embeddings import host
applied = host.reuse_host_memory() if sys.argv[1] == "reuse" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x + 1)
x = jnp.zeros(16 * 2**20, jnp.float32)
for _ in range(8):  # until the heap holds every buffer a call needs
    f(x).block_until_ready().delete()
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready().delete()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings: Linux only")
def test_reuse_host_memory_stops_page_faulting_every_call():
    def faults(mode: str) -> tuple[str, float]:
        out = _run_python(_FAULTS_PER_CALL, mode)
        return out[0], statistics.median(map(int, out[1:]))

    (applied_default, default), (applied, reused) = faults("default"), faults("reuse")
    assert applied_default == "False" and applied == "True"
    # 64 MB in 4 KiB pages is 16,384 faults per call. Reused pages fault once, so a typical
    # call faults none; the heap may still grow by a whole buffer now and then (an aligned
    # request that no freed chunk fits: 6 calls of 16 in one run), hence the median call.
    assert default > 10_000 and reused < default / 10


def test_reuse_host_memory_leaves_a_running_jax_alone():
    jax.devices()  # the backends are up, as in any test process
    assert host.reuse_host_memory() is False


_PREPARE_HOST = """
import os
os.environ.pop("XLA_FLAGS", None)  # a forced device count would win over the setting
from confusion_embeddings import host
setup = host.prepare_host(2, [8, 4], "onednn")
import jax
print(setup.memory_reused, setup.cpu_devices, len(jax.devices("cpu")))
"""


def test_prepare_host_before_jax_starts_and_after():
    out = _run_python(_PREPARE_HOST)
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc), "2", "2"]
    # In this process JAX is already running: both settings are left alone.
    assert host.prepare_host(2, [8], "onednn") == host.HostSetup(False, None)


@pytest.mark.parametrize(
    "isa, want", [(NO_BF16, False), (WITH_BF16, True), ("x86_64 avx2 amx_bf16", True)]
)
def test_native_bf16_reads_the_cpu_flags(monkeypatch, isa, want):
    fake_cpu_isa(monkeypatch, isa)
    assert host.native_bf16() is want


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, conv_impl, batches, want",
    [
        ("auto", "onednn", (16, 16), 1),  # oneDNN spreads each convolution over every core
        ("auto", "matmul", (16, 16), None),
        ("auto", "matmul", (15, 5), None),
        (1, "matmul", (16, 16), 1),
        (3, "onednn", (18, 18), 3),
    ],
)
def test_cli_splits_the_cpu_into_devices(tmp_path, setting, conv_impl, batches, want):
    """Without XLA_FLAGS the CLI makes `cpu_devices` JAX devices (auto: one device with
    oneDNN's convolutions, else one per core that divides the batch sizes), and trains
    with them."""
    train_project(
        tmp_path,
        train=36,
        test=8,
        cpu_devices=setting,
        epochs=1,
        batch_size=batches[0],
        eval_batch_size=batches[1],
        conv_impl=conv_impl,
    )
    env = {k: v for k, v in train_env(1, tmp_path).items() if k != "XLA_FLAGS"}
    subprocess.run(train_cmd("cli"), cwd=tmp_path, env=env, check=True, capture_output=True)
    if want is None:
        want = host.auto_cpu_devices(host.cpu_cores(), batches)
    assert device_count(tmp_path, "cli") == want
    # The count is saved with the model: predict sets up the host the same way.
    assert read_config(tmp_path / "model-cli").train.cpu_devices == setting
