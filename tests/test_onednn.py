"""confusion_embeddings/cnn/onednn.py: oneDNN's convolutions against XLA's (cnn/conv.py's
conv_xla), per device in a mesh, the errors a missing compiler or library gives, and the
kernel's self-check (`python -m confusion_embeddings.cnn.conv`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from confusion_embeddings.cnn import onednn
from confusion_embeddings.cnn.conv import conv_xla
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.host import native_bf16

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not onednn.available(), reason="oneDNN convolutions run on x86-64 Linux CPUs only"
)


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (batch, height, width, in channels, out channels, kernel size)
SHAPES = [
    (4, 8, 8, 16, 32, 3),  # the network's case
    (3, 5, 7, 3, 5, 3),  # odd, non-square image; channels that fit no vector width
    (2, 4, 4, 128, 256, 3),  # wide and small, as the network's last blocks
    (2, 6, 6, 4, 8, 5),  # a 5x5 kernel
    (1, 3, 3, 1, 1, 1),  # 1x1 kernel, one channel
]


@pytest.mark.parametrize("n, h, w, cin, cout, k", SHAPES)
def test_forward_and_both_gradients_match_xla(n, h, w, cin, cout, k):
    x, kern = _random((n, h, w, cin), 0), _random((k, k, cin, cout), 1)
    g = _random((n, h, w, cout), 2)
    y, vjp = jax.vjp(jax.jit(onednn.conv), x, kern)
    y_ref, vjp_ref = jax.vjp(conv_xla, x, kern)
    for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g)), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def _bf16(a):
    return a.astype(jnp.bfloat16)


# oneDNN has bf16 convolutions only where the CPU has bf16 instructions; elsewhere the
# pipeline never asks for them (it falls back to f32: test_conv's fallback test).
@pytest.mark.skipif(not native_bf16(), reason="this CPU has no avx512_bf16 or amx_bf16")
@pytest.mark.parametrize(
    "n, h, w, cin, cout, k",
    [*SHAPES, (2, 9, 9, 1, 7, 3)],  # + one input channel, odd sizes
)
def test_bf16_forward_and_both_gradients_match_xla_f32(n, h, w, cin, cout, k):
    """The *Bf16 calls: bfloat16 activations and output gradient, a float32 kernel; the
    result and input gradient come back bfloat16, the kernel gradient float32, all within
    bfloat16 rounding of XLA's float32 convolution of the same (bf16-representable) inputs."""
    x, kern = _bf16(_random((n, h, w, cin), 0)), _random((k, k, cin, cout), 1)
    g = _bf16(_random((n, h, w, cout), 2))
    y, vjp = jax.vjp(jax.jit(onednn.conv), x, kern)
    dx, dw = vjp(g)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    f32 = jnp.float32
    y_ref, vjp_ref = jax.vjp(conv_xla, x.astype(f32), kern)
    dx_ref, dw_ref = vjp_ref(g.astype(f32))
    for got, want in zip((y, dx, dw), (y_ref, dx_ref, dw_ref), strict=True):
        assert got.shape == want.shape
        got, scale = np.asarray(got, np.float32), float(jnp.abs(want).max())
        # The kernel and the results rounded to 8 significant bits (measured: 2-3e-3).
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=1e-2 * scale)
        assert np.linalg.norm(got - want) <= 5e-3 * np.linalg.norm(want)
    # x and g are exact in bf16 and the sums float32: the kernel gradient is float32-exact.
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-5 * float(jnp.abs(dw_ref).max()))


def test_rejects_what_it_cannot_convolve():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="odd-sized"):
        onednn.conv(x, jnp.zeros((2, 2, 3, 4)))
    with pytest.raises(ValueError, match="odd-sized"):
        onednn.conv(x, jnp.zeros((3, 3, 5, 4)))  # channels disagree
    with pytest.raises(ValueError, match="float32"):  # bf16 activations, but a bf16 kernel
        onednn.conv(x.astype(jnp.bfloat16), jnp.zeros((3, 3, 3, 4), jnp.bfloat16))
    with pytest.raises(ValueError, match="float32"):
        onednn.conv(x.astype(jnp.float16), jnp.zeros((3, 3, 3, 4)))


# In a fresh interpreter with two CPU devices: the gradient of a conv-based loss on a
# batch sharded over both, against the same on one device and against XLA's convolution;
# then whether the compiled program gathers the batch anywhere (it must not: each device
# convolves its own half).
_TWO_DEVICES = """
import json
import jax, jax.numpy as jnp, numpy as np
from confusion_embeddings import devices as parallel
from confusion_embeddings import host
from confusion_embeddings.cnn import onednn
from confusion_embeddings.cnn.conv import conv_xla as xla
assert jax.device_count() == 2
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((8, 6, 6, 4)), jnp.float32)
w = jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)
def grads(conv):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1)))
out = {}
for n in (1, 2):
    with parallel.data_parallel(n) as mesh:
        xs = jax.device_put(x, parallel.batch_sharded(mesh))
        ws = jax.device_put(w, parallel.replicated(mesh))
        f = grads(onednn.conv)
        out[n] = f(xs, ws)
        if n == 2:
            hlo = f.lower(xs, ws).compile().as_text()
            seen = {"gathered": "all-gather" in hlo, "dx_spec": str(out[n][0].sharding.spec)}
ref = grads(xla)(x, w)
for n in (1, 2):
    for a, b in zip(out[n], ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
# bfloat16 activations (where the CPU has bf16 convolutions): each device's float32
# kernel gradient is summed in float32.
xb = x.astype(jnp.bfloat16)
def loss_bf16(x, w):
    return jnp.sum(jnp.sin(onednn.conv(x, w).astype(jnp.float32)))
got = {}
for n in (1, 2) if host.native_bf16() else ():
    with parallel.data_parallel(n) as mesh:
        xs = jax.device_put(xb, parallel.batch_sharded(mesh))
        ws = jax.device_put(w, parallel.replicated(mesh))
        got[n] = jax.jit(jax.grad(loss_bf16, (0, 1)))(xs, ws)
if got:
    assert got[2][0].dtype == jnp.bfloat16 and got[2][1].dtype == jnp.float32
    for a, b in zip(got[1], got[2]):
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=1e-2, atol=1e-2)
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_two_devices_convolve_their_own_halves():
    env = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
    }
    done = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]  # includes: both meshes match XLA
    seen = json.loads(done.stdout)
    assert not seen["gathered"], "the sharded convolution gathered the batch onto each device"
    assert "data" in seen["dx_spec"]  # the input gradient stays split along the batch


@pytest.mark.parametrize("cxx", ["false", "no-such-compiler"])  # fails; is missing
def test_build_failure_names_the_compiler_and_leaves_nothing(tmp_path, monkeypatch, cxx):
    monkeypatch.setenv("ONEDNN_CONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", cxx)
    with pytest.raises(
        onednn.KernelUnavailable, match=rf"(?s)C\+\+17 compiler.*{cxx} .*conv_impl: auto"
    ) as exc:
        onednn.library_path()
    assert isinstance(exc.value, PipelineError)  # a user-fixable error: one line, exit code 2
    assert cxx in exc.value.reason  # what `conv_impl: auto` warns with when it falls back
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_missing_onednn_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_CONV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onednn, "_prefix_dirs", lambda: (tmp_path / "include", tmp_path / "lib"))
    with pytest.raises(
        onednn.KernelUnavailable, match=r"oneDNN is not installed.*make setup"
    ) as exc:
        onednn.library_path()
    assert isinstance(exc.value, PipelineError)
    assert exc.value.reason == "the oneDNN wheels are not installed"


def test_library_is_built_once_per_source(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEDNN_CONV_CACHE", str(tmp_path / "cache"))
    first = onednn.library_path()
    mtime = first.stat().st_mtime_ns
    assert onednn.library_path() == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in first.parent.iterdir()] == ["libonednn_conv.so"]  # no temp left


def test_self_check_builds_and_checks_the_kernel(tmp_path):
    """`python -m confusion_embeddings.cnn.conv` (was `python -m stages.onednn`): builds the
    kernel and compares it with XLA's convolution, forward and both gradients."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "ONEDNN_CONV_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "confusion_embeddings.cnn.conv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "oneDNN convolution kernel ready" in done.stdout, done.stdout
    assert str(tmp_path / "cache") in done.stdout  # the library it built, under the cache
    error = float(done.stdout.split("max relative error vs XLA ")[1].rstrip(")\n"))
    assert error <= 1e-4


def test_self_check_without_the_kernel_says_what_runs_instead(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "ONEDNN_CONV_CACHE": str(tmp_path / "cache"),
        "CXX": "no-such-compiler",
    }
    done = subprocess.run(
        [sys.executable, "-m", "confusion_embeddings.cnn.conv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # not an error: XLA's convolutions run
    assert "oneDNN convolutions unavailable" in done.stdout and "conv_impl matmul" in done.stdout
    assert "no-such-compiler" in done.stdout
