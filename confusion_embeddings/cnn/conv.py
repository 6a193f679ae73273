"""The network's convolutions: which implementation runs, and the XLA reference.

Reads and writes nothing (building the oneDNN kernel aside, see cnn/onednn.py).

`train.conv_impl` (saved with the model, so predict runs what train ran):
- `auto` (default): oneDNN's kernel where it builds and loads on CPU; elsewhere the fastest
  XLA path (`matmul` on CPU, XLA's own convolution on GPU/TPU), with one warning line.
- `onednn`: oneDNN's kernel on CPU, an error if it cannot be built; XLA's on GPU/TPU.
- `matmul`: XLA's forward and input-gradient convolutions, the weight gradient as one
  matrix multiply per kernel row (XLA:CPU's own weight gradient is slower).
- `xla`: plain autodiff of `lax.conv_general_dilated` (`conv_xla`, the reference).
All give the same numbers up to float rounding; the choice is about speed only
(docs/design/convolutions.md). With `onednn` and `matmul`, images smaller than the
kernel's window (2x2 under 3x3) are convolved as one dense matmul (`conv_dense`).

`train.precision` (saved with the model too), decided here with the convolution:
- `f32`: float32 throughout.
- `bf16` (the default, config/train.py's SCHEMA): bfloat16 convolutions and matmuls with
  float32 accumulation (cnn/network.py), through oneDNN's bf16 kernel on CPU, XLA's own
  on GPU/TPU. On a CPU without native bf16 instructions (avx512_bf16, amx_bf16), or where
  the oneDNN kernel does not run, float32 with one warning line (docs/design/bf16.md).
`resolve_saved` decides for a saved model: its own convolution where it runs here.

    python -m confusion_embeddings.cnn.conv   # build the oneDNN kernel now and check it
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from confusion_embeddings import host
from confusion_embeddings.cnn import onednn
from confusion_embeddings.config.train import IMPLS, PRECISIONS

_DN = ("NHWC", "HWIO", "NHWC")


def conv_xla(x: jax.Array, w: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution straight through XLA: the reference for the others."""
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


@jax.custom_vjp
def conv_matmul_grad(x: jax.Array, w: jax.Array) -> jax.Array:
    """A stride-1 'SAME' conv (odd square kernel) whose weight gradient is a matmul."""
    return conv_xla(x, w)


def _matmul_grad_fwd(x, w):
    return conv_xla(x, w), (x, w)


def _matmul_grad_bwd(res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    ph, pw = kh // 2, kw // 2
    # Input gradient: a forward conv of g with the flipped, transposed kernel.
    dx = conv_xla(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    # Weight gradient: unfold x along the width only (kw shifted copies, not kh*kw), then
    # one matmul per kernel row: small copies, large matmuls.
    n, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    rows = jnp.concatenate([xp[:, :, j : j + wd, :] for j in range(kw)], axis=-1)
    gg = g.reshape(-1, cout)
    dw = jnp.stack(
        [
            lax.dot_general(rows[:, i : i + h].reshape(-1, kw * cin), gg, (((0,), (0,)), ((), ())))
            for i in range(kh)
        ]
    ).reshape(kh, kw, cin, cout)
    return dx, dw.astype(w.dtype)


conv_matmul_grad.defvjp(_matmul_grad_fwd, _matmul_grad_bwd)


@jax.custom_vjp
def matmul_bf16(a: jax.Array, w: jax.Array) -> jax.Array:
    """a [M, K] bfloat16 @ w [K, N] float32 as a bfloat16 multiply with float32 accumulation:
    float32 result and weight gradient, bfloat16 input gradient (oneDNN's convolutions'
    contract, for the matmul layers)."""
    return _matmul_bf16_fwd(a, w)[0]


def _dot_f32(a, b, dims):
    return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


def _matmul_bf16_fwd(a, w):
    wb = w.astype(jnp.bfloat16)
    # Written out, because XLA:CPU runs a bf16 x bf16 -> bf16 dot, and autodiff's dots of
    # its transpose, in f32; only bf16 x bf16 -> f32 dots run natively.
    return _dot_f32(a, wb, ((1,), (0,))), (a, wb)


def _matmul_bf16_bwd(res, g):
    a, wb = res
    gb = g.astype(jnp.bfloat16)
    da = _dot_f32(gb, wb, ((1,), (1,))).astype(a.dtype)
    # Contracting over the batch, this one still runs in f32 on XLA:CPU (docs/design/bf16.md).
    dw = _dot_f32(a, gb, ((0,), (0,)))
    return da, dw


matmul_bf16.defvjp(_matmul_bf16_fwd, _matmul_bf16_bwd)


def matmul(a: jax.Array, w: jax.Array) -> jax.Array:
    """a @ w for a float32 weight w: matmul_bf16 when a is bfloat16, else float32."""
    return matmul_bf16(a, w) if a.dtype == jnp.bfloat16 else a @ w


def conv_dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """'SAME' conv of a tiny image as one matmul with its dense [h*w*cin, h*w*cout] matrix.

    Under a 3x3 kernel a 2x2 image has 4 pixels per 9-tap window, so an unfolded matmul
    wastes most of its work on padding; the dense matrix holds only the h*w taps that touch
    the image. Its gradients are matmuls too, plus a small scatter-add onto the taps.
    """
    kh, kw, cin, cout = w.shape
    n, h, wd, _ = x.shape
    # Tap of the kernel that links input pixel (yi, xi) to output pixel (yo, xo); pairs
    # farther apart than the kernel reaches point at an extra all-zero tap.
    yi, xi, yo, xo = np.meshgrid(range(h), range(wd), range(h), range(wd), indexing="ij")
    ti, tj = yi - yo + kh // 2, xi - xo + kw // 2
    inside = (ti >= 0) & (ti < kh) & (tj >= 0) & (tj < kw)
    tap = np.where(inside, ti * kw + tj, kh * kw)  # [yi, xi, yo, xo]
    taps = jnp.concatenate([w.reshape(kh * kw, cin, cout), jnp.zeros((1, cin, cout), w.dtype)])
    dense = taps[tap].transpose(0, 1, 4, 2, 3, 5).reshape(h * wd * cin, h * wd * cout)
    y = matmul(x.reshape(n, h * wd * cin), dense)
    return y.reshape(n, h, wd, cout).astype(x.dtype)


def conv(x: jax.Array, w: jax.Array, impl: str) -> jax.Array:
    """'SAME' stride-1 convolution by the implementation `impl` (resolved, never `auto`).

    w is the float32 kernel; a bfloat16 x makes a bfloat16 convolution with a bfloat16
    result (float32 accumulation) and a float32 weight gradient.
    """
    dense = x.shape[1] * x.shape[2] < w.shape[0] * w.shape[1]
    if impl == "onednn" and not dense and onednn.available():
        return onednn.conv(x, w)  # converts the kernel itself, inside the call
    if impl != "xla" and dense:
        return conv_dense(x, w)  # bf16 x float32 through matmul_bf16
    w = w.astype(x.dtype)
    if impl == "matmul":
        return conv_matmul_grad(x, w)
    return conv_xla(x, w)


# --------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class ConvChoice:
    """The implementation and precision that will run, and why they differ from the ones
    asked for (one line)."""

    impl: str
    precision: str
    warning: str | None = None


def _cpu_only() -> bool:
    """Whether JAX will run on the CPU, told without starting its backends where possible
    (starting them would fix the CPU device count too early, see host.py)."""
    platforms = os.environ.get("JAX_PLATFORMS", "") or str(jax.config.jax_platforms or "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    from importlib.metadata import distributions

    plugins = {
        d.metadata["Name"].lower()
        for d in distributions()
        if d.metadata["Name"]
        and d.metadata["Name"].lower().startswith(("jax-cuda", "jax_cuda", "jax-rocm", "libtpu"))
    }
    return not plugins or jax.default_backend() == "cpu"


def resolve(requested: str, precision: str) -> ConvChoice:
    """Decide, before JAX starts where it can, which convolution `requested` and which
    precision mean here.

    `auto` falls back to XLA's fastest path with a warning where the oneDNN kernel cannot
    be built or loaded; `onednn` raises onednn.KernelUnavailable there instead. `bf16`
    falls back to `f32` with a warning on a CPU without native bf16 or without the kernel.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    impl, impl_warning = _resolve_impl(requested)
    if precision == "f32" or not _cpu_only():  # GPU/TPU: XLA's own bf16 convolutions
        return ConvChoice(impl, precision, impl_warning)
    if impl != "onednn":
        reason = f"it needs oneDNN's convolutions, and conv_impl {impl} runs here"
    elif not host.native_bf16():
        reason = (
            f"this CPU has no native bfloat16 instructions ({' or '.join(host.BF16_ISA)}; "
            f"it has {host.cpu_isa()})"
        )
    else:
        return ConvChoice(impl, "bf16", impl_warning)
    warning = f"warning: precision bf16 unavailable ({reason}); using f32"
    if impl_warning:  # one line for both fallbacks
        warning = f"{impl_warning}; {warning.removeprefix('warning: ')}"
    return ConvChoice(impl, "f32", warning)


def resolve_saved(impl: str, precision: str) -> ConvChoice:
    """The convolution and precision to run a saved model with: those it was trained with,
    or where they cannot run here (a model moved to another machine), the fastest that
    can. All give the same numbers up to float rounding."""
    return resolve("auto" if impl == "onednn" else impl, precision)


def _resolve_impl(requested: str) -> tuple[str, str | None]:
    """(the convolution that runs, the warning line when it is not the one asked for)."""
    if requested not in IMPLS:
        raise ValueError(f"conv_impl must be one of {IMPLS}, not {requested!r}")
    if requested in ("matmul", "xla"):
        return requested, None
    if not _cpu_only():
        return "xla", None  # GPU/TPU: XLA's convolutions (cuDNN and the like)
    if not onednn.platform_supported():
        if requested == "onednn":
            raise onednn.KernelUnavailable(
                f"train.conv_impl onednn: oneDNN's wheels exist for x86-64 Linux only, not "
                f"{sys.platform} {os.uname().machine}; set train.conv_impl: auto",
                reason="not x86-64 Linux",
            )
        return "matmul", _fallback_warning(
            f"no oneDNN wheels for {sys.platform} {os.uname().machine}"
        )
    try:
        onednn.load()
    except onednn.KernelUnavailable as exc:
        if requested == "onednn":
            raise
        return "matmul", _fallback_warning(exc.reason)
    return "onednn", None


def _fallback_warning(reason: str) -> str:
    return (
        f"warning: oneDNN convolutions unavailable ({reason}); using XLA's (conv_impl "
        f"matmul), slower on CPU; {onednn.FAST_PATH_HINT}"
    )


def main() -> None:
    """Build the oneDNN kernel now and check it against XLA's convolution on random data;
    where it cannot be built, say so and what runs instead (exit code 0: not an error)."""
    choice = resolve("auto", "f32")
    if choice.impl != "onednn":
        print(choice.warning or f"oneDNN convolutions are not used here ({choice.impl})")
        return
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 8, 8, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((4, 8, 8, 32)), jnp.float32)

    def forward_and_gradients(f):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(g))

    got, want = forward_and_gradients(onednn.conv), forward_and_gradients(conv_xla)
    pairs = zip(got, want, strict=True)
    err = max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in pairs)
    if err > 1e-4:
        raise SystemExit(f"oneDNN convolution disagrees with XLA's (relative error {err:.2e})")
    print(f"oneDNN convolution kernel ready: {onednn.load()} (max relative error vs XLA {err:.1e})")


if __name__ == "__main__":
    main()
