"""The network's convolutions on CPU through oneDNN (the library PyTorch's CPU convolutions use).

Reads:  stages/onednn_conv.cc, oneDNN's headers and library (the `onednn-cpu-gomp` and
        `onednn-devel-cpu-gomp` wheels, installed with the project) and jaxlib's XLA FFI
        headers.
Writes: the compiled kernel library, once per source, jaxlib and compiler command, under
        $ONEDNN_CONV_CACHE or ~/.cache/confusion-embeddings/onednn/ (`python -m
        stages.onednn` builds it ahead of time and checks it against XLA's convolution).

Why: XLA:CPU's convolutions ran this CNN's train step at 0.7x PyTorch's speed on the same
machine, and no XLA flag or reformulation closed it (see README, "Speed"): its weight
gradient alone took 1.6x as long as oneDNN's. `conv(x, w)` is a 'SAME', stride-1
convolution whose forward pass, input gradient and weight gradient are each one oneDNN
primitive, called from the jitted step as an XLA FFI custom call; everything around it
(batch norm, activations, pooling, the optimizer) stays in XLA and is fused there.

Devices: one CPU device by default (stages/parallel.py). With several in the mesh
(`cpu_devices` above 1, or several hosts) each device convolves its own slice of the batch
(`jax.shard_map` over the mesh set with `jax.set_mesh`, see `parallel.data_parallel`) and
the weight gradient is summed over devices; a custom call traced outside such a mesh sees
the whole batch. oneDNN gets cores / local CPU devices OpenMP threads per call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from stages.common import PipelineError
from stages.parallel import cpu_cores

SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGETS = ("OnednnConvFwd", "OnednnConvBwdData", "OnednnConvBwdWeights")


def _prefix_dirs() -> tuple[Path, Path]:
    """Where pip put the oneDNN wheels' headers and library (the environment's prefix)."""
    data = Path(sysconfig.get_paths()["data"])
    return data / "include", data / "lib"


def cache_dir() -> Path:
    root = os.environ.get("ONEDNN_CONV_CACHE")
    if root:
        return Path(root)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "confusion-embeddings" / "onednn"


def _compile_command(out: Path) -> list[str]:
    include, lib = _prefix_dirs()
    return [
        os.environ.get("CXX", "g++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp",
        f"-I{include}", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out),
        f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}",
    ]


def library_path() -> Path:
    """The compiled library for this source, jaxlib and environment (built if missing)."""
    include, lib = _prefix_dirs()
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    # The command names the compiler, its flags and every include and library folder.
    key.update(f"{jax.__version__} {' '.join(_compile_command(Path('out')))}".encode())
    path = cache_dir() / key.hexdigest()[:16] / "libonednn_conv.so"
    if path.exists():
        return path
    if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists() or not (lib / "libdnnl.so").exists():
        raise PipelineError(
            f"oneDNN is not installed in this environment ({include}, {lib}): reinstall the "
            "project (`make setup`), or set `conv_impl: matmul` in params.yaml (train) to "
            "use XLA's own convolutions"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename: two processes building at once (the tests
    # and a dvc stage, say) each produce a whole library and neither sees half of one.
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_lib = Path(tmp) / path.name
        print(f"building the oneDNN convolution kernel (once): {path}", file=sys.stderr)
        cmd = _compile_command(tmp_lib)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
            error = done.stderr[-3000:] if done.returncode else None
        except OSError as exc:  # no such compiler
            error = str(exc)
        if error is not None:
            raise PipelineError(
                f"compiling {SOURCE} failed (it needs a C++17 compiler: `g++`, or the one "
                f"$CXX names):\n{' '.join(cmd)}\n{error}\nInstall one, or set "
                "`conv_impl: matmul` in params.yaml (train) to use XLA's convolutions"
            )
        os.replace(tmp_lib, path)
    return path


@functools.cache
def load() -> Path:
    """Build (if needed), load and register the kernels with XLA; returns the library."""
    path = library_path()
    lib = ctypes.cdll.LoadLibrary(str(path))
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return path


def available() -> bool:
    """Whether `conv` runs oneDNN here: on CPU, x86-64 Linux (the wheels' platform)."""
    return jax.default_backend() == "cpu" and sys.platform == "linux" and (
        os.uname().machine == "x86_64")


def _threads() -> int:
    # One JAX device per core (stages/parallel.py) leaves one thread to each call.
    return max(1, cpu_cores() // max(1, jax.local_device_count()))


def _call(target: str, out_shape: tuple[int, ...], a: jax.Array, b: jax.Array) -> jax.Array:
    load()
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, jnp.float32))(
        a, b, threads=np.int64(_threads()))


def _fwd(x, w):
    return _call("OnednnConvFwd", (*x.shape[:3], w.shape[3]), x, w)


def _bwd_data(g, w):
    return _call("OnednnConvBwdData", (*g.shape[:3], w.shape[2]), g, w)


def _bwd_weights(x, g, kernel_shape):
    return _call("OnednnConvBwdWeights", kernel_shape, x, g)


def _data_axes() -> tuple[str, ...] | None:
    """The mesh axes the batch is split over, or None outside a multi-device mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return None
    return tuple(mesh.axis_names)


def _per_device(fn, in_specs, out_spec):
    # check_vma off: a custom call's result carries no record of which axes it varies
    # over, so shard_map could not check the out_specs; they are right by construction.
    return jax.shard_map(fn, in_specs=in_specs, out_specs=out_spec, check_vma=False)


@jax.custom_vjp
def conv(x: jax.Array, w: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution, x [N, H, W, C] float32, w [KH, KW, C, K] (odd KH, KW)."""
    return _conv_fwd(x, w)[0]


def _conv_fwd(x, w):
    if x.ndim != 4 or w.ndim != 4 or x.shape[3] != w.shape[2] or not (
            w.shape[0] % 2 and w.shape[1] % 2):
        raise ValueError(f"conv: x {x.shape} and w {w.shape} are not NHWC and odd-sized HWIO")
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise ValueError(f"conv: float32 only, got {x.dtype} and {w.dtype}")
    axes = _data_axes()
    if axes is None:
        y = _fwd(x, w)
    else:
        y = _per_device(_fwd, (P(axes), P()), P(axes))(x, w)
    return y, (x, w)


def _conv_bwd(res, g):
    x, w = res
    axes = _data_axes()
    if axes is None:
        return _bwd_data(g, w), _bwd_weights(x, g, w.shape)
    dx = _per_device(_bwd_data, (P(axes), P()), P(axes))(g, w)
    dw = _per_device(lambda x, g: lax.psum(_bwd_weights(x, g, w.shape), axes),
                     (P(axes), P(axes)), P())(x, g)
    return dx, dw


conv.defvjp(_conv_fwd, _conv_bwd)


def main() -> None:
    """Build the kernel now and check it against XLA's convolution on random data."""
    if not available():
        print(f"oneDNN convolutions are not used here ({jax.default_backend()}, "
              f"{sys.platform} {os.uname().machine}); nothing to build")
        return
    path = load()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((4, 8, 8, 32)), jnp.float32)

    from stages.model import _conv_same as xla  # conv_impl xla's; here, as model imports us

    def forward_and_gradients(f):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(g))

    got, want = forward_and_gradients(conv), forward_and_gradients(xla)
    err = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(got, want))
    if err > 1e-4:
        raise SystemExit(f"oneDNN convolution disagrees with XLA's (relative error {err:.2e})")
    print(f"oneDNN convolution kernel ready: {path} (max relative error vs XLA {err:.1e})")


if __name__ == "__main__":
    main()
