"""The CNN: a small airbench-style network in Flax NNX, its shape set from params.yaml.

Reads and writes nothing; `stages.train` builds it from `train.model` and `stages.predict`
rebuilds it from the config saved beside the checkpoint.

Layout: stem conv -> `len(widths)` blocks of (conv, 2x2 max-pool, BN, GELU, conv, BN, GELU)
-> global max-pool -> linear. Each block halves the resolution, so three blocks take a
32x32 picture to 4x4.

Convolutions (`conv_impl`; all three give the same numbers up to float rounding, so the
choice is only about speed on the device at hand):
- `onednn` (default): on CPU, oneDNN's convolutions called from the jitted step
  (stages/onednn.py), forward, input gradient and weight gradient alike. With XLA:CPU's
  own this network's train step ran at 0.7x PyTorch's speed, with oneDNN's at 1.0-1.2x
  (README, "Speed"). On other backends it means XLA's convolution.
- `matmul`: XLA's forward and input-gradient convolutions, the weight gradient as one
  matrix multiply per kernel row (XLA:CPU's own weight gradient is slower still).
- `xla`: plain autodiff of `lax.conv_general_dilated`.
With `onednn` and `matmul`, images smaller than the kernel's window (2x2 under 3x3) are
convolved as one dense matmul (`conv_dense`), which beats both libraries there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization
from jax import lax

from stages import onednn
from stages.common import PipelineError, atomic_dir

_DN = ("NHWC", "HWIO", "NHWC")


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    stem_width: int = 24
    widths: tuple[int, ...] = (32, 128, 128)
    conv_impl: str = "onednn"  # "onednn", "matmul" or "xla", see the module docstring
    # Space-to-depth factor before the stem: 2 turns 32x32x3 into 16x16x12. On CPU the
    # full-resolution layers are memory-bound and cost far more than their FLOPs suggest.
    stem_patch: int = 1
    bn_momentum: float = 0.6  # airbench's: batch statistics move fast in short runs
    # The final linear layer's logits are scaled down (airbench uses 1/9): large logits
    # early in training slow down the first epochs with a high learning rate.
    logit_scale: float = 1 / 9

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{**d, "widths": tuple(d["widths"])})


def _conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_DN)


@jax.custom_vjp
def conv_matmul_grad(x: jax.Array, w: jax.Array) -> jax.Array:
    """A stride-1 'SAME' conv (odd square kernel) whose weight gradient is a matmul."""
    return _conv_same(x, w)


def _conv_fwd(x, w):
    return _conv_same(x, w), (x, w)


def _conv_bwd(res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    ph, pw = kh // 2, kw // 2
    # Input gradient: a forward conv of g with the flipped, transposed kernel. XLA runs
    # this at forward-conv speed.
    dx = _conv_same(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    # Weight gradient: unfold x along the width only (kw shifted copies, not kh*kw), then
    # one matmul per kernel row. That keeps the copies small and the matmuls large.
    n, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    rows = jnp.concatenate([xp[:, :, j : j + wd, :] for j in range(kw)], axis=-1)
    gg = g.reshape(-1, cout)
    dw = jnp.stack(
        [
            lax.dot_general(
                rows[:, i : i + h].reshape(-1, kw * cin), gg, (((0,), (0,)), ((), ()))
            )
            for i in range(kh)
        ]
    ).reshape(kh, kw, cin, cout)
    return dx, dw.astype(w.dtype)


conv_matmul_grad.defvjp(_conv_fwd, _conv_bwd)


def conv_dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """'SAME' conv of a tiny image as one matmul with its dense [h*w*cin, h*w*cout] matrix.

    On an image with fewer pixels than the kernel has taps (2x2 under 3x3) most of each
    window is padding: an unfolded (im2col) matmul multiplies kh*kw taps per pixel where at
    most h*w touch the image. The dense matrix holds only those, h*w/(kh*kw) of the work
    (4/9 at 2x2), and XLA:CPU's own convolution is pathologically slow at this size (a
    2x2x256 -> 256 layer ran 15x slower than as a matmul). Its gradients are matmuls too,
    plus a small scatter-add of the matrix's gradient back onto the taps.
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
    return (x.reshape(n, h * wd * cin) @ dense).reshape(n, h, wd, cout)


class Conv(nnx.Module):
    """3x3 'SAME' convolution without bias (batch norm follows every one)."""

    def __init__(self, cin: int, cout: int, impl: str, *, rngs: nnx.Rngs, kernel: int = 3):
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (kernel, kernel, cin, cout), jnp.float32))
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel.get_value()
        if self.impl == "xla":
            return _conv_same(x, w)
        if x.shape[1] * x.shape[2] < w.shape[0] * w.shape[1]:
            return conv_dense(x, w)
        if self.impl == "onednn":
            return onednn.conv(x, w) if onednn.available() else _conv_same(x, w)
        return conv_matmul_grad(x, w)


def _bn(c: int, momentum: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # No learned scale (airbench): with weight decay it only fights the next conv.
    return nnx.BatchNorm(c, momentum=momentum, epsilon=1e-5, use_scale=False, rngs=rngs)


def _maxpool2(x: jax.Array) -> jax.Array:
    # A reshape + max rather than lax.reduce_window: the gradient of reduce_window is a
    # select-and-scatter that XLA:CPU runs several times slower than this fused mask.
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Block(nnx.Module):
    def __init__(self, cin: int, cout: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.conv1 = Conv(cin, cout, cfg.conv_impl, rngs=rngs)
        self.bn1 = _bn(cout, cfg.bn_momentum, rngs)
        self.conv2 = Conv(cout, cout, cfg.conv_impl, rngs=rngs)
        self.bn2 = _bn(cout, cfg.bn_momentum, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _maxpool2(self.conv1(x))
        x = nnx.gelu(self.bn1(x))
        return nnx.gelu(self.bn2(self.conv2(x)))


class CNN(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.stem = Conv(3 * cfg.stem_patch**2, cfg.stem_width, cfg.conv_impl, rngs=rngs)
        self.stem_bn = _bn(cfg.stem_width, cfg.bn_momentum, rngs)
        ins = (cfg.stem_width, *cfg.widths[:-1])
        self.blocks = nnx.List([Block(i, o, cfg, rngs=rngs) for i, o in zip(ins, cfg.widths)])
        self.head = nnx.Linear(cfg.widths[-1], cfg.num_classes, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float images [N, H, W, 3], already normalised. Returns logits [N, C]."""
        if self.cfg.stem_patch > 1:
            x = space_to_depth(x, self.cfg.stem_patch)
        x = nnx.gelu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = jnp.max(x, axis=(1, 2))
        return self.head(x) * self.cfg.logit_scale


def space_to_depth(x: jax.Array, k: int) -> jax.Array:
    """[N, H, W, C] -> [N, H/k, W/k, C*k*k]: each k x k patch becomes one pixel."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // k, w // k, k * k * c)


def count_flops(cfg: ModelConfig, image_hw: tuple[int, int]) -> int:
    """Multiply-add FLOPs (x2) of one forward pass of one picture; training is ~3x this."""
    h, w = image_hw[0] // cfg.stem_patch, image_hw[1] // cfg.stem_patch
    flops = 2 * h * w * 9 * 3 * cfg.stem_patch**2 * cfg.stem_width
    cin = cfg.stem_width
    for cout in cfg.widths:
        flops += 2 * h * w * 9 * cin * cout
        h, w = h // 2, w // 2
        flops += 2 * h * w * 9 * cout * cout
        cin = cout
    return flops + 2 * cin * cfg.num_classes


def make_inference_fn(graphdef, norm, tta_flip: bool = False, tta_translate: int = 0):
    """Jitted `infer(params, rest, images_u8) -> logits` in evaluation mode.

    Test-time augmentation, valid because training flips and shifts the pictures:
    `tta_flip` averages the logits of a picture and its mirror image; `tta_translate` = t
    adds the picture shifted by t pixels up-left and down-right (reflect-padded, as in
    training), weighted 1/2 (original) + 1/4 + 1/4, airbench's scheme. Every view is
    flipped too when `tta_flip` is on: 6 passes of the network instead of 1.
    """
    mean, std = (jnp.asarray(a, jnp.float32) for a in norm)

    def infer(params, rest, images):
        model = nnx.merge(graphdef, params, rest)
        model.eval()
        x = (images.astype(jnp.float32) - mean) / std

        def views(v):
            logits = model(v)
            return 0.5 * (logits + model(v[:, :, ::-1, :])) if tta_flip else logits

        logits = views(x)
        if tta_translate:
            t, (h, w) = tta_translate, x.shape[1:3]
            xp = jnp.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
            shifted = views(xp[:, :h, :w]) + views(xp[:, 2 * t :, 2 * t :])
            logits = 0.5 * logits + 0.25 * shifted
        return logits

    return jax.jit(infer)


# --------------------------------------------------------------------------- checkpoints


def save_model(out_dir: Path, cfg: ModelConfig, norm, params, rest) -> None:
    """models/cnn/: config.json + model.msgpack (plain arrays; no pickle)."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(
            json.dumps(
                {"model": cfg.to_dict(), "pixel_mean": np.asarray(norm[0]).tolist(),
                 "pixel_std": np.asarray(norm[1]).tolist()},
                indent=2,
            )
            + "\n"
        )
        blob = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest)}
        (tmp / "model.msgpack").write_bytes(
            serialization.msgpack_serialize(jax.tree.map(np.asarray, blob))
        )


def saved_conv_impl(model_dir: str | Path) -> str:
    """The `conv_impl` a saved model runs with, read before JAX starts (the default if the
    config cannot be read: `load_model` then says what is wrong with it)."""
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())["model"]["conv_impl"]
    except (OSError, ValueError, KeyError, TypeError):
        return ModelConfig.conv_impl


def load_model(model_dir: str | Path):
    """Return (graphdef, params, rest, cfg, (mean, std)) from models/cnn/."""
    model_dir = Path(model_dir)
    cfg_file, blob_file = model_dir / "config.json", model_dir / "model.msgpack"
    if not cfg_file.exists() or not blob_file.exists():
        raise PipelineError(f"{model_dir}: no trained model; run `dvc repro train` first")
    meta = json.loads(cfg_file.read_text())
    cfg = ModelConfig.from_dict(meta["model"])
    model = CNN(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    blob = serialization.msgpack_restore(blob_file.read_bytes())
    nnx.replace_by_pure_dict(params, blob["params"])
    nnx.replace_by_pure_dict(rest, blob["rest"])
    norm = (np.asarray(meta["pixel_mean"], np.float32), np.asarray(meta["pixel_std"], np.float32))
    return graphdef, params, rest, cfg, norm
