"""A directed skip-gram in JAX, trained on the (true class -> guess) pair counts.

The paper feeds word2vec directed pairs (input: the true class; output: a top-k guess);
gensim can only take each pair as a two-word sentence, which trains both directions. This
trains the directed model itself:

    p(guess = j | true = i) = softmax_j(W_in[i] . W_out[j])          W_in, W_out: [C, dim]
    loss = - sum_ij F[i, j] log p(j | i) + l2 * (|W_in|^2 + |W_out|^2) / C

with F = count / P, the mean over the P pairs written on the C x C count matrix (exact:
equal pairs have equal loss terms). One step costs C * C * dim whatever the number of
pictures, every step is full-batch, and the result is a deterministic function of (F, seed,
hyperparameters). W_in (the true class's side) are the class vectors. `objective="negative"`
minimises the expected negative-sampling loss in closed form instead (Levy & Goldberg 2014).

A class the classifier never saw (train.unseen) is a true class but never a guess: `unseen`
takes it out of the softmax's outputs (its column can hold no probability), so its own
vector comes from its input side alone, fitted against the same output vectors W_out as
every known class's (docs/unseen.md). The negative objective needs no such mask: a column
of zero counts has zero noise weight too.

l2 > 0 is required: without it any invertible mix of the dimensions fits equally well (the
cosines are then whatever the optimiser's path left), and unseen pairs push the norms to
infinity. With it every optimum is a balanced factorisation, fixed up to a rotation, which
leaves the cosines unchanged. The objective is still not convex for dim < C, so seeds can
end in different local optima. Full-batch Adam with a cosine decay, one jitted loop
(lax.fori_loop). docs/design/embedding-engines.md has the measurements behind the defaults.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from confusion_embeddings.config.embed import OBJECTIVES

NOISE_POWER = 0.75  # word2vec's unigram ** 0.75 noise distribution


@dataclass(frozen=True)
class SkipGram:
    """One trained model: input and output vectors [C, dim], and how the training ended."""

    w_in: np.ndarray
    w_out: np.ndarray
    loss: float  # final objective, penalty included
    grad_norm: float  # its gradient's norm at the end: ~0 at convergence

    def probs(self) -> np.ndarray:
        """p(guess = j | true = i) under the softmax model, [C, C]."""
        logits = self.w_in.astype(np.float64) @ self.w_out.T.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def _objective(
    params: dict,
    freq: jax.Array,
    noise: jax.Array,
    l2: jax.Array,
    negative: jax.Array,
    kind: str,
    unseen: tuple[int, ...] = (),
):
    w_in, w_out = params["w_in"], params["w_out"]
    logits = w_in @ w_out.T  # [C, C]
    if kind == "softmax":
        if unseen:  # no output side: exp(-1e30) = 0 and 0 * -1e30 = 0, never NaN
            never = np.zeros(logits.shape[1], bool)
            never[list(unseen)] = True
            logits = jnp.where(never[None, :], -1e30, logits)
        data = -jnp.sum(freq * jax.nn.log_softmax(logits, axis=1))
    else:  # expected negative-sampling loss (module docstring)
        rows = freq.sum(axis=1, keepdims=True)
        data = jnp.sum(freq * jax.nn.softplus(-logits)) + negative * jnp.sum(
            rows * noise[None, :] * jax.nn.softplus(logits)
        )
    # Per class (mean over the C rows), so that l2 weighs the same against the data whatever C is.
    return data + l2 * (jnp.sum(w_in**2) + jnp.sum(w_out**2)) / w_in.shape[0]


def _init(key: jax.Array, c: int, dim: int, std: float) -> dict:
    k_in, k_out = jax.random.split(key)
    return {
        "w_in": std * jax.random.normal(k_in, (c, dim), jnp.float32),
        "w_out": std * jax.random.normal(k_out, (c, dim), jnp.float32),
    }


def _fit(params, freq, noise, steps, lr, l2, negative, kind: str, unseen: tuple[int, ...]):
    """`steps` full-batch Adam steps from `params` (cosine-decayed learning rate)."""
    total = jnp.maximum(steps, 1).astype(jnp.float32)

    def schedule(count):
        return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count / total, 1.0)))

    opt = optax.adam(schedule)
    loss_grad = jax.value_and_grad(functools.partial(_objective, unseen=unseen))

    def body(_, state):
        p, s = state
        _, g = loss_grad(p, freq, noise, l2, negative, kind)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
    loss, grad = loss_grad(params, freq, noise, l2, negative, kind)
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad)))
    return params["w_in"], params["w_out"], loss, grad_norm


def _train_fn(
    key,
    freq,
    noise,
    steps,
    lr,
    l2,
    negative,
    *,
    dim: int,
    kind: str,
    init_std: float,
    unseen: tuple[int, ...],
):
    """Init from `key`, then `steps` full-batch Adam steps."""
    params = _init(key, freq.shape[0], dim, init_std)
    return _fit(params, freq, noise, steps, lr, l2, negative, kind, unseen)


# One compilation per (C, dim, kind, init_std, unseen): the optimisation settings are traced.
_TRAIN_STATIC = ("dim", "kind", "init_std", "unseen")
_train = jax.jit(_train_fn, static_argnames=_TRAIN_STATIC)


@functools.partial(jax.jit, static_argnames=("kind", "unseen"))
def _refit_batch(
    w_in, w_out, freq, noise, steps, lr, l2, negative, *, kind: str, unseen: tuple[int, ...]
):
    """_fit over a leading batch axis of starting points and frequency matrices."""

    def one(w_in, w_out, freq, noise):
        params = {"w_in": w_in, "w_out": w_out}
        return _fit(params, freq, noise, steps, lr, l2, negative, kind, unseen)

    return jax.vmap(one)(w_in, w_out, freq, noise)


def _inputs(counts: np.ndarray, steps: int, lr: float, l2: float, negative: int) -> tuple:
    """The jitted loop's arguments after its starting point: the pair frequencies F =
    counts / P and word2vec's noise distribution over the guesses, for a [..., C, C] count
    matrix (row = input/true word), then the optimisation settings as device scalars."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum(axis=(-2, -1), keepdims=True)
    if (total <= 0).any():
        raise ValueError("the count matrix is empty")
    noise = counts.sum(axis=-2) ** NOISE_POWER
    noise /= np.maximum(noise.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    return (
        jnp.asarray(counts / total, jnp.float32),
        jnp.asarray(noise, jnp.float32),
        jnp.int32(steps),
        jnp.float32(lr),
        jnp.float32(l2),
        jnp.float32(negative),
    )


def train_skipgram(
    counts: np.ndarray,
    seed: int,
    *,
    dim: int,
    steps: int,
    lr: float,
    l2: float,
    objective: str,
    negative: int,
    init_std: float,
    unseen: tuple[int, ...] = (),
) -> SkipGram:
    """Train one directed skip-gram on a [C, C] count matrix (row = input/true word);
    the classes `unseen` (indices) are never an output (module docstring)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    w_in, w_out, loss, grad_norm = _train(
        jax.random.key(seed),
        *_inputs(counts, steps, lr, l2, negative),
        dim=dim,
        kind=objective,
        init_std=init_std,
        unseen=tuple(unseen),
    )
    return SkipGram(
        w_in=np.asarray(w_in, np.float32),
        w_out=np.asarray(w_out, np.float32),
        loss=float(loss),
        grad_norm=float(grad_norm),
    )


def refit_skipgram(
    counts: np.ndarray,
    start: SkipGram,
    *,
    steps: int,
    lr: float,
    l2: float,
    objective: str,
    negative: int,
    unseen: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refit one trained model on each of R count matrices [R, C, C] at once (vmapped),
    starting from its vectors: the optimum of each matrix in the basin the model found.
    Returns the input vectors [R, C, dim] and each fit's final loss and gradient norm [R]."""
    r = len(counts)
    w_in, _, loss, grad_norm = _refit_batch(
        jnp.broadcast_to(jnp.asarray(start.w_in), (r, *start.w_in.shape)),
        jnp.broadcast_to(jnp.asarray(start.w_out), (r, *start.w_out.shape)),
        *_inputs(counts, steps, lr, l2, negative),
        kind=objective,
        unseen=tuple(unseen),
    )
    return (
        np.asarray(w_in, np.float32),
        np.asarray(loss, np.float64),
        np.asarray(grad_norm, np.float64),
    )
