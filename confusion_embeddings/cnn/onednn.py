"""oneDNN's convolutions (the library behind PyTorch's CPU convolutions) as XLA FFI calls.

Reads:  cnn/onednn_conv.cc, oneDNN's headers and library (the `onednn-cpu-gomp` and
        `onednn-devel-cpu-gomp` wheels) and jaxlib's XLA FFI headers.
Writes: the compiled kernel library, once per source, jaxlib and compiler command, under
        $ONEDNN_CONV_CACHE or ~/.cache/confusion-embeddings/onednn/.

`conv(x, w)` is a 'SAME', stride-1 convolution whose forward pass, input gradient and weight
gradient are one oneDNN primitive each, called from the jitted step; everything around it
stays in XLA. Why: XLA:CPU's own convolutions ran the train step well below PyTorch's
speed (docs/design/convolutions.md has the figures). With several devices in the mesh
(`devices.data_parallel`) each device convolves its own slice of the batch and the weight
gradient is summed. cnn/conv.py decides when this kernel is used.
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

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.host import cpu_cores

SOURCE = Path(__file__).with_name("onednn_conv.cc")
FAST_PATH_HINT = "install g++ and the project's oneDNN wheels (`make setup`) for the fast path"


class KernelUnavailable(PipelineError):
    """The kernel cannot be built or loaded here; `reason` says why in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


KINDS = ("Fwd", "BwdData", "BwdWeights")
# Each call in float32 and, with the suffix Bf16, on bfloat16 activations (onednn_conv.cc).
TARGETS = tuple(f"OnednnConv{kind}{dtype}" for kind in KINDS for dtype in ("", "Bf16"))


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
        os.environ.get("CXX", "g++"),
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fopenmp",
        f"-I{include}",
        f"-I{jax.ffi.include_dir()}",
        str(SOURCE),
        "-o",
        str(out),
        f"-L{lib}",
        "-ldnnl",
        f"-Wl,-rpath,{lib}",
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
        raise KernelUnavailable(
            f"oneDNN is not installed in this environment ({include}, {lib}): reinstall the "
            "project (`make setup`), or set `train.conv_impl: auto` in params.yaml to fall "
            "back to XLA's own convolutions",
            reason="the oneDNN wheels are not installed",
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
            reason = f"compiling {SOURCE.name} with {cmd[0]} failed"
        except OSError as exc:  # no such compiler
            error = str(exc)
            reason = f"no C++ compiler ({cmd[0]!r} not found)"
        if error is not None:
            raise KernelUnavailable(
                f"compiling {SOURCE} failed (it needs a C++17 compiler: `g++`, or the one "
                f"$CXX names):\n{' '.join(cmd)}\n{error}\nInstall one, or set "
                "`train.conv_impl: auto` in params.yaml to fall back to XLA's convolutions",
                reason=reason,
            )
        os.replace(tmp_lib, path)
    return path


@functools.cache
def load() -> Path:
    """Build (if needed), load and register the kernels with XLA; returns the library."""
    path = library_path()
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as exc:
        raise KernelUnavailable(
            f"{path}: cannot be loaded ({exc}); delete it to rebuild it",
            reason="the compiled kernel does not load",
        ) from None
    for name in TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return path


def platform_supported() -> bool:
    """Whether the oneDNN wheels exist for this platform (x86-64 Linux); needs no JAX backend."""
    return sys.platform == "linux" and os.uname().machine == "x86_64"


def available() -> bool:
    """Whether `conv` runs oneDNN here: on CPU, on a supported platform."""
    return platform_supported() and jax.default_backend() == "cpu"


def _threads() -> int:
    # One JAX device per core (host.py) leaves one thread to each call.
    return max(1, cpu_cores() // max(1, jax.local_device_count()))


def _call(kind: str, out_shape, out_dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    """The float32 call `kind`, or its bfloat16 variant when the activation `a` is bf16."""
    load()
    target = f"OnednnConv{kind}{'Bf16' if a.dtype == jnp.bfloat16 else ''}"
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(out_shape, out_dtype))(
        a, b, threads=np.int64(_threads())
    )


def _fwd(x, w):
    return _call("Fwd", (*x.shape[:3], w.shape[3]), x.dtype, x, w)


def _bwd_data(g, w):
    return _call("BwdData", (*g.shape[:3], w.shape[2]), g.dtype, g, w)


def _bwd_weights(x, g, kernel_shape):
    return _call("BwdWeights", kernel_shape, jnp.float32, x, g)


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
    """'SAME' stride-1 convolution, x [N, H, W, C], w [KH, KW, C, K] (odd KH, KW) float32.

    x float32: all float32. x bfloat16: the result and the input gradient are bfloat16,
    computed in bfloat16 with float32 accumulation; w and its gradient stay float32 (oneDNN
    converts w inside the call), so a float32 master copy needs no cast in the model.
    """
    return _vjp_fwd(x, w)[0]


def _vjp_fwd(x, w):
    if (
        x.ndim != 4
        or w.ndim != 4
        or x.shape[3] != w.shape[2]
        or not (w.shape[0] % 2 and w.shape[1] % 2)
    ):
        raise ValueError(f"conv: x {x.shape} and w {w.shape} are not NHWC and odd-sized HWIO")
    if x.dtype not in (jnp.float32, jnp.bfloat16) or w.dtype != jnp.float32:
        raise ValueError(
            f"conv: x float32 or bfloat16 and w float32 only, got {x.dtype} and {w.dtype}"
        )
    axes = _data_axes()
    if axes is None:
        y = _fwd(x, w)
    else:
        y = _per_device(_fwd, (P(axes), P()), P(axes))(x, w)
    return y, (x, w)


def _vjp_bwd(res, g):
    x, w = res
    axes = _data_axes()
    if axes is None:
        return _bwd_data(g, w), _bwd_weights(x, g, w.shape)
    dx = _per_device(_bwd_data, (P(axes), P()), P(axes))(g, w)
    dw = _per_device(
        lambda x, g: lax.psum(_bwd_weights(x, g, w.shape), axes), (P(axes), P(axes)), P()
    )(x, g)
    return dx, dw


conv.defvjp(_vjp_fwd, _vjp_bwd)
