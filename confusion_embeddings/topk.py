"""The batched top-k the pairs are made from: one jitted function over a block of scores.

Reads and writes nothing. Apart from pairs.py so that what only reads a pairs file (the
resample and evaluate stages, compare) does not load JAX.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("k", "from_logits"))
def topk_block(scores: jax.Array, k: int, from_logits: bool) -> tuple[jax.Array, jax.Array]:
    """Top-k class indices and their probabilities for one [block_size, C] block."""
    values, indices = jax.lax.top_k(scores, k)  # ties: the lower class index first
    if from_logits:
        values = jnp.exp(values - jax.nn.logsumexp(scores, axis=-1, keepdims=True))
    return indices, values
