"""The CNN: a small airbench-style network in Flax NNX.

Reads and writes nothing; cnn/config.py's RunConfig says its shape (`RunConfig.model`).

Layout: space-to-depth [-> frozen patch whitening] -> stem conv -> `len(widths)` blocks of
(conv, 2x2 max-pool, BN, GELU, conv, BN, GELU) -> global max-pool -> linear. Each block
halves the resolution, so three blocks take a 32x32 picture (16x16 after a stem_patch of 2)
to 2x2.

Precision (`ModelConfig.precision`, resolved by cnn/conv.py): "f32" throughout, or "bf16":
the convolutions and the head multiply in bfloat16 with float32 accumulation, activations
travel between layers in bfloat16, while the weights, batch-norm statistics and arithmetic,
GELU and the logits stay float32 (docs/design/bf16.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from confusion_embeddings.cnn.conv import conv, matmul


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape and the convolution it runs (built by cnn/config.py's RunConfig
    from the train params, where every default lives)."""

    num_classes: int
    stem_width: int
    widths: tuple[int, ...]
    stem_patch: int  # space-to-depth factor before the stem: 2 turns 32x32x3 into 16x16x12
    bn_momentum: float
    logit_scale: float  # the final linear layer's logits are scaled by this
    whiten: bool  # a frozen whitening of the stem's input patches, measured on the data
    dirac: bool  # each conv starts as the identity on its first cin output channels
    conv_impl: str  # resolved (cnn/conv.py): "onednn", "matmul" or "xla", never "auto"
    precision: str  # resolved too: "f32" or "bf16"

    @property
    def dtype(self) -> jnp.dtype:
        """The activations' type between layers (and the multiplies' inputs)."""
        return jnp.dtype(jnp.bfloat16 if self.precision == "bf16" else jnp.float32)


class Whitening(nnx.Variable):
    """A frozen [P, P] matrix on the stem's P-dimensional input patches: never trained, set
    once from the training pictures (`whitening_matrix`) and saved with the model."""


class Conv(nnx.Module):
    """3x3 'SAME' convolution without bias (batch norm follows every one)."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        kernel = nnx.initializers.lecun_normal()(rngs.params(), (3, 3, cin, cout), jnp.float32)
        if cfg.dirac:
            kernel = dirac(kernel)
        self.kernel = nnx.Param(kernel)
        self.impl = cfg.conv_impl

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(x, self.kernel.get_value(), self.impl)


def _bn(c: int, momentum: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # No learned scale (airbench): with weight decay it only fights the next conv. Its
    # float32 statistics and bias promote a bfloat16 input: it computes and returns float32.
    return nnx.BatchNorm(c, momentum=momentum, epsilon=1e-5, use_scale=False, rngs=rngs)


def _bn_gelu(bn: nnx.BatchNorm, x: jax.Array) -> jax.Array:
    """GELU(BN(x)) computed in float32, handed on in x's type (bfloat16 under bf16)."""
    return nnx.gelu(bn(x)).astype(x.dtype)


def _windows(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


def _maxpool2(x: jax.Array) -> jax.Array:
    # A reshape + max rather than lax.reduce_window: the gradient of reduce_window is a
    # select-and-scatter that XLA:CPU runs several times slower than this fused mask.
    if x.dtype == jnp.bfloat16:
        return _maxpool2_bf16(x)
    return _windows(x).max(axis=(2, 4))


@jax.custom_vjp
def _maxpool2_bf16(x: jax.Array) -> jax.Array:
    return _windows(x).max(axis=(2, 4))


def _maxpool2_bf16_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _maxpool2_bf16(x)
    return y, (x, y)


def _maxpool2_bf16_bwd(res, g: jax.Array) -> tuple[jax.Array]:
    """Autodiff's gradient (each maximum of a window gets g / their count), bit for bit,
    counted from four slices instead of a reduction, which is faster in bf16
    (docs/design/bf16.md). Not used in f32, where it would move the fusions and so the
    last bits of the result."""
    x, y = res
    x6, top = _windows(x), y[:, :, None, :, None, :]
    count = sum(
        (x6[:, :, i : i + 1, :, j : j + 1] == top).astype(jnp.float32)
        for i in (0, 1)
        for j in (0, 1)
    )
    share = (g[:, :, None, :, None, :].astype(jnp.float32) / count).astype(x.dtype)
    return (jnp.where(x6 == top, share, jnp.zeros((), x.dtype)).reshape(x.shape),)


_maxpool2_bf16.defvjp(_maxpool2_bf16_fwd, _maxpool2_bf16_bwd)


class Block(nnx.Module):
    def __init__(self, cin: int, cout: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.conv1 = Conv(cin, cout, cfg, rngs=rngs)
        self.bn1 = _bn(cout, cfg.bn_momentum, rngs)
        self.conv2 = Conv(cout, cout, cfg, rngs=rngs)
        self.bn2 = _bn(cout, cfg.bn_momentum, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _bn_gelu(self.bn1, _maxpool2(self.conv1(x)))
        return _bn_gelu(self.bn2, self.conv2(x))


class CNN(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        patch = 3 * cfg.stem_patch**2
        if cfg.whiten:  # the identity until train sets it from the data
            self.whitening = Whitening(jnp.eye(patch, dtype=jnp.float32))
        self.stem = Conv(patch, cfg.stem_width, cfg, rngs=rngs)
        self.stem_bn = _bn(cfg.stem_width, cfg.bn_momentum, rngs)
        ins = (cfg.stem_width, *cfg.widths[:-1])
        pairs = zip(ins, cfg.widths, strict=True)
        self.blocks = nnx.List([Block(i, o, cfg, rngs=rngs) for i, o in pairs])
        self.head = nnx.Linear(cfg.widths[-1], cfg.num_classes, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float images [N, H, W, 3], already normalised. Returns float32 logits [N, C]."""
        if self.cfg.whiten:  # in float32: the matrix amplifies the patches' weakest directions
            x = space_to_depth(x, self.cfg.stem_patch) @ self.whitening.get_value()
            x = x.astype(self.cfg.dtype)
        else:
            x = x.astype(self.cfg.dtype)
            if self.cfg.stem_patch > 1:
                x = space_to_depth(x, self.cfg.stem_patch)
        x = _bn_gelu(self.stem_bn, self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = jnp.max(x, axis=(1, 2))
        # Under bf16 a bfloat16 multiply with float32 accumulation: float32 logits.
        return matmul(x, self.head.kernel.get_value()) * self.cfg.logit_scale


def space_to_depth(x: jax.Array, k: int) -> jax.Array:
    """[N, H, W, C] -> [N, H/k, W/k, C*k*k]: each k x k patch becomes one pixel."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // k, w // k, k * k * c)


def dirac(kernel: jax.Array) -> jax.Array:
    """airbench's identity init: the first cin of the cout >= cin filters pass their own
    input channel through (centre tap 1, every other tap 0); the rest keep their random
    init. Deep stacks then start close to the identity, which trains faster."""
    _, _, cin, cout = kernel.shape
    if cout < cin:
        return kernel
    eye = jnp.zeros((3, 3, cin, cin), kernel.dtype).at[1, 1].set(jnp.eye(cin, dtype=kernel.dtype))
    return kernel.at[:, :, :, :cin].set(eye)


def whitening_matrix(images: np.ndarray, patch: int, eps: float) -> np.ndarray:
    """[P, P] PCA whitening of the P = 3 * patch**2 dimensional patches that space-to-depth
    makes of (normalised) pictures: eigenvectors scaled by 1 / sqrt(eigenvalue + eps), from
    the patches' second moment (airbench's whitened first layer, here on the stem's
    non-overlapping patches). Computed in float64 on the host."""
    x = np.asarray(space_to_depth(np.asarray(images, np.float64), patch))
    x = x.reshape(-1, x.shape[-1])
    values, vectors = np.linalg.eigh(x.T @ x / len(x))
    return (vectors / np.sqrt(values + eps)).astype(np.float32)


def count_flops(cfg: ModelConfig, image_hw: tuple[int, int]) -> int:
    """Multiply-add FLOPs (x2) of one forward pass of one picture; training is ~3x this."""
    h, w = image_hw[0] // cfg.stem_patch, image_hw[1] // cfg.stem_patch
    patch = 3 * cfg.stem_patch**2
    flops = 2 * h * w * patch * patch if cfg.whiten else 0
    flops += 2 * h * w * 9 * patch * cfg.stem_width
    cin = cfg.stem_width
    for cout in cfg.widths:
        flops += 2 * h * w * 9 * cin * cout
        h, w = h // 2, w // 2
        flops += 2 * h * w * 9 * cout * cout
        cin = cout
    return flops + 2 * cin * cfg.num_classes
