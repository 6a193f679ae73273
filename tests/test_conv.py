"""confusion_embeddings/cnn/conv.py: the custom convolutions against XLA's, and the choice
of convolution and precision (conv.resolve)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from confusion_embeddings.cnn import conv as conv_module
from confusion_embeddings.cnn import onednn
from confusion_embeddings.cnn.conv import conv_dense, conv_matmul_grad, conv_xla
from confusion_embeddings.cnn.network import CNN

from cnn_helpers import KERNEL, NO_BF16, WITH_BF16, fake_cpu_isa, tiny_run


@pytest.mark.parametrize(
    "conv, hw, kernel",
    [
        (conv_matmul_grad, (8, 8), 3),
        (conv_matmul_grad, (5, 7), 3),
        (conv_dense, (2, 2), 3),
        (conv_dense, (1, 1), 3),
        (conv_dense, (2, 3), 3),
        (conv_dense, (3, 4), 5),
    ],
)
def test_custom_convolutions_match_xla_autodiff(conv, hw, kernel):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, *hw, 5))
    w = jax.random.normal(kw, (kernel, kernel, 5, 7))
    np.testing.assert_allclose(conv(x, w), conv_xla(x, w), rtol=1e-4, atol=1e-4)
    g = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_xla(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw, kernel", [((2, 2), 3), ((1, 1), 3), ((2, 3), 3), ((3, 4), 5)])
def test_bf16_dense_convolution_matches_f32(hw, kernel):
    """The 2x2 layer under bf16 (conv_dense through matmul_bf16): a bf16 result and input
    gradient, a float32 kernel gradient, within bf16 rounding of XLA's f32 convolution."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (6, *hw, 5)).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (kernel, kernel, 5, 7))
    g = jax.random.normal(kg, (6, *hw, 7)).astype(jnp.bfloat16)
    y, vjp = jax.vjp(conv_dense, x, w)
    dx, dw = vjp(g)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    y_ref, vjp_ref = jax.vjp(conv_xla, x.astype(jnp.float32), w)
    for got, want in zip((y, dx, dw), (y_ref, *vjp_ref(g.astype(jnp.float32))), strict=True):
        got = np.asarray(got, np.float32)
        assert np.linalg.norm(got - want) <= 1e-2 * np.linalg.norm(want)


def test_onednn_and_matmul_networks_match_xla_network(monkeypatch):
    """The whole CNN, conv_impl onednn and matmul (2x2 layers dense) vs plain XLA autodiff."""
    dense_shapes = []

    def spy(x, w):
        dense_shapes.append(x.shape[1:3])
        return conv_dense(x, w)

    monkeypatch.setattr(conv_module, "conv_dense", spy)
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    out = {}
    for impl in ("onednn", "matmul", "xla"):
        cfg = tiny_run(5, impl, widths=[8, 16, 16], stem_patch=2).model  # blocks at 8, 4, 2 px
        graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

        def loss(variables, graphdef=graphdef):
            # Batch statistics are differentiated too, as in the train step: NNX refuses to
            # update variables created outside the trace.
            logits = nnx.merge(graphdef, *variables)(x)
            return jnp.sum(jnp.sin(logits)), logits

        (grads, _), logits = jax.grad(loss, has_aux=True)((params, rest))
        out[impl] = (grads, logits)
    # Each block's first conv runs before its pool: 8x8 -> 4x4 | 4x4 -> 2x2 | 2x2 -> 1x1.
    assert dense_shapes == [(2, 2), (2, 2), (1, 1)] * 2
    for impl in ("onednn", "matmul"):
        for a, b in zip(jax.tree.leaves(out[impl]), jax.tree.leaves(out["xla"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not KERNEL, reason="needs the oneDNN kernel")
def test_bf16_runs_where_the_cpu_and_the_kernel_allow(monkeypatch):
    fake_cpu_isa(monkeypatch, WITH_BF16)
    assert conv_module.resolve("auto", "bf16") == conv_module.ConvChoice("onednn", "bf16")
    assert conv_module.resolve("auto", "f32") == conv_module.ConvChoice("onednn", "f32")
    with pytest.raises(ValueError, match="precision must be one of"):
        conv_module.resolve("auto", "fp16")


@pytest.mark.skipif(not KERNEL, reason="needs the oneDNN kernel")
def test_bf16_falls_back_to_f32_without_native_bf16_or_without_onednn(monkeypatch):
    fake_cpu_isa(monkeypatch, NO_BF16)
    choice = conv_module.resolve("auto", "bf16")
    assert (choice.impl, choice.precision) == ("onednn", "f32")
    assert "\n" not in choice.warning and "precision bf16 unavailable" in choice.warning
    assert "avx512_bf16" in choice.warning and NO_BF16 in choice.warning  # what it looked for
    fake_cpu_isa(monkeypatch, WITH_BF16)
    choice = conv_module.resolve("matmul", "bf16")  # XLA's convolutions on CPU: f32
    assert (choice.impl, choice.precision) == ("matmul", "f32")
    assert "conv_impl matmul" in choice.warning and "\n" not in choice.warning


@pytest.mark.skipif(not onednn.platform_supported(), reason="oneDNN's wheels: x86-64 Linux")
def test_both_fallbacks_make_one_warning_line(monkeypatch):
    def unavailable():
        raise onednn.KernelUnavailable("no", reason="no C++ compiler ('g++' not found)")

    monkeypatch.setattr(onednn, "load", unavailable)
    monkeypatch.setattr(conv_module, "_cpu_only", lambda: True)
    choice = conv_module.resolve("auto", "bf16")
    assert (choice.impl, choice.precision) == ("matmul", "f32")
    assert choice.warning.count("warning") == 1 and "\n" not in choice.warning
    assert "g++" in choice.warning and "precision bf16 unavailable" in choice.warning


def test_bf16_on_gpu_means_xla_bf16(monkeypatch):
    monkeypatch.setattr(conv_module, "_cpu_only", lambda: False)
    fake_cpu_isa(monkeypatch, NO_BF16)  # the host CPU does not matter there
    assert conv_module.resolve("auto", "bf16") == conv_module.ConvChoice("xla", "bf16")
