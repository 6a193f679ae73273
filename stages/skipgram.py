"""A directed skip-gram in JAX, trained on the (true class -> guess) pair counts.

The paper feeds word2vec directed pairs: the input word is the picture's true class, the
output word is one of the classifier's top-k guesses. gensim can only take each pair as a
two-word sentence, which trains both directions (guess -> true as well). This module trains
the directed model itself:

    p(guess = j | true = i) = softmax_j(W_in[i] . W_out[j])          W_in, W_out: [C, dim]
    loss = mean over the P pairs of -log p(guess | true) + l2 * (|W_in|^2 + |W_out|^2) / C

and returns W_in (the input embedding) as the class vectors.

Exact on the count matrix. Pairs of equal (true, guess) have equal loss terms, so with
count[i, j] = number of pairs (i -> j) and F = count / P,

    mean over pairs of -log p(j | i) = - sum_ij F[i, j] * log_softmax(W_in W_out^T)[i, j]

The training data is the C x C matrix F, not the P pairs: one step costs C * C * dim
whatever the number of pictures, every step is full-batch (no sampling noise, no pair
order), and the result is a deterministic function of (F, seed, hyperparameters). The
diagonal (a correct guess, i -> i) is kept, as gensim keeps it.

With at most ~1,000 classes a full softmax over all C output words is cheap (1,000 x 1,000
x dim per step), so it is the default objective. `objective="negative"` instead minimises
the *expected* skip-gram-with-negative-sampling loss (Levy & Goldberg 2014): for each pair
i -> j a positive term -log sigmoid(s_ij), plus `negative` noise words drawn from q (the
guess frequencies ** 0.75, as word2vec's unigram ** 0.75), whose expectation in closed form
is negative * n_i * sum_j q_j * -log sigmoid(-s_ij). Same cost, no sampling.

Why the l2 term (l2 > 0 is required):
  - The loss only sees the product W_in W_out^T: any invertible A gives W_in A and
    W_out A^-T the same loss but *different* cosines between the rows of W_in. Without a
    regulariser the cosine table is whatever the initialisation and the optimiser's path
    left behind. With l2 every optimum is a balanced factorisation (W_in^T W_in =
    W_out^T W_out), fixed up to a rotation, which leaves the cosines unchanged.
  - A pair never seen (count 0) asks for p -> 0, i.e. a logit -> -inf: the unregularised
    loss has no minimum and the norms grow without bound (slowly, like logistic regression
    on separable data), so "how long it trained" would decide the result, which is exactly
    the budget dependence gensim has. l2 bounds the norms and gives finite optima.
  The penalty is divided by C (a mean over classes), because each class's share of the data
  term is ~1/C: the same l2 then shrinks a class's vectors alike for 10 or 1,000 classes.
  The default 0.01 costs ~0.02 nats of fit on 10 classes (loss ~2 nats). On synthetic
  CIFAR-like pairs it left fewer distinct local optima over seeds than 1e-3 (below) and a
  slightly higher Spearman vs confusion (e.g. 0.946 against 0.936).

What convergence does and does not buy. Trained to convergence, a seed's result no longer
depends on the budget: on synthetic CIFAR-like pairs (10 classes, dim 5) going from 4,000 to
8,000 steps moved no cosine by more than 1e-3 (2,000 -> 4,000: up to 0.03 on 60,000
pictures), where gensim's result moves with epochs/sample/alpha. But the objective is not
convex in (W_in, W_out) when dim < C, and different seeds can end in different local optima:
on 4 synthetic 10-class sets, 2 had one optimum for all 8 seeds and 2 had two (cosines up to
0.5 apart); on 100 classes at dim 5 every seed found its own. So the spread over seeds is
still worth reporting, and the seed mean is still the figure to use, as with gensim.

Optimiser: Adam (optax) on the full batch, learning rate `lr` with a cosine decay to 0 over
`steps`, so the last steps settle into the optimum instead of jittering around it at a
fixed step size. The final gradient norm is returned; a small one is necessary, not
sufficient: a flat valley ended once with a norm of 5e-6 and cosines still 0.03 from where
twice the steps took them. The whole loop is one jitted call (lax.fori_loop with the number
of steps as a traced value): it compiles once per (C, dim, objective), whatever the seed,
the number of steps, lr or l2. Initial vectors: N(0, INIT_STD^2) from jax.random.key(seed).

Runs on whatever device JAX picked; float32 throughout. On CPU a given seed gives bitwise
identical vectors from run to run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

OBJECTIVES = ("softmax", "negative")
INIT_STD = 0.1
NOISE_POWER = 0.75  # word2vec's unigram ** 0.75 noise distribution


def count_matrix(true: np.ndarray, guess: np.ndarray, n_classes: int) -> np.ndarray:
    """Directed pair counts: [C, C] int64, row = true class, column = guess (not symmetrised)."""
    flat = true.astype(np.int64) * n_classes + guess.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


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


def _objective(params: dict, freq: jax.Array, noise: jax.Array, l2: jax.Array, negative: jax.Array, kind: str):
    w_in, w_out = params["w_in"], params["w_out"]
    logits = w_in @ w_out.T  # [C, C]
    if kind == "softmax":
        data = -jnp.sum(freq * jax.nn.log_softmax(logits, axis=1))
    else:  # expected negative-sampling loss (module docstring)
        rows = freq.sum(axis=1, keepdims=True)
        data = jnp.sum(freq * jax.nn.softplus(-logits)) + negative * jnp.sum(rows * noise[None, :] * jax.nn.softplus(logits))
    # Per class (mean over the C rows), so that l2 weighs the same against the data whatever C is.
    return data + l2 * (jnp.sum(w_in**2) + jnp.sum(w_out**2)) / w_in.shape[0]


@functools.partial(jax.jit, static_argnames=("dim", "kind"))
def _train(key, freq, noise, steps, lr, l2, negative, *, dim: int, kind: str):
    """Init from `key`, then `steps` full-batch Adam steps; one compilation per (C, dim, kind)."""
    c = freq.shape[0]
    k_in, k_out = jax.random.split(key)
    params = {
        "w_in": INIT_STD * jax.random.normal(k_in, (c, dim), jnp.float32),
        "w_out": INIT_STD * jax.random.normal(k_out, (c, dim), jnp.float32),
    }
    total = jnp.maximum(steps, 1).astype(jnp.float32)
    schedule = lambda count: lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count / total, 1.0)))  # noqa: E731
    opt = optax.adam(schedule)
    loss_grad = jax.value_and_grad(_objective)

    def body(_, state):
        p, s = state
        _, g = loss_grad(p, freq, noise, l2, negative, kind)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
    loss, grad = loss_grad(params, freq, noise, l2, negative, kind)
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad)))
    return params["w_in"], params["w_out"], loss, grad_norm


def train_skipgram(
    counts: np.ndarray,
    seed: int,
    *,
    dim: int,
    steps: int,
    lr: float,
    l2: float,
    objective: str = "softmax",
    negative: int = 5,
) -> SkipGram:
    """Train one directed skip-gram on a [C, C] count matrix (row = input/true word)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        raise ValueError("the count matrix is empty")
    freq = counts / total
    noise = counts.sum(axis=0) ** NOISE_POWER
    noise /= max(noise.sum(), np.finfo(np.float64).tiny)
    w_in, w_out, loss, grad_norm = _train(
        jax.random.key(seed),
        jnp.asarray(freq, jnp.float32),
        jnp.asarray(noise, jnp.float32),
        jnp.int32(steps),
        jnp.float32(lr),
        jnp.float32(l2),
        jnp.float32(negative),
        dim=dim,
        kind=objective,
    )
    return SkipGram(
        w_in=np.asarray(w_in, np.float32),
        w_out=np.asarray(w_out, np.float32),
        loss=float(loss),
        grad_norm=float(grad_norm),
    )
