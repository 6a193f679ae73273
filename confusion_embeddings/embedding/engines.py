"""The `embed` params and `train_vectors`: pairs in, one vector set per word2vec seed out.

Reads and writes nothing itself. `engine` picks the trainer:
- jax (default): the directed skip-gram on the exact pair counts (skipgram.py);
- gensim: gensim's Word2Vec on two-word sentences, both directions (gensim_w2v.py), the
  paper's engine.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, above, at_least, int_list, one_of
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.gensim_w2v import train_gensim
from confusion_embeddings.embedding.skipgram import OBJECTIVES, train_skipgram
from confusion_embeddings.pairs import Pairs, count_matrix

SCHEMA = {
    # jax by default: it holds from a few hundred pictures up, where gensim's down-sampling
    # starves or collapses (docs/design/embedding-engines.md); gensim is the paper's engine.
    "engine": Param(str, "jax", one_of("gensim", "jax")),
    "dim": Param(int, 5, at_least(1)),  # 5 dimensions for 10 classes, as in the paper
    "seeds": Param(list, list(range(10)), int_list(0, distinct=True)),
    # engine gensim only: Word2Vec's own knobs (gensim_w2v.py)
    "window": Param(int, 1, at_least(1)),
    # hs=0, so negative sampling is the only training objective: 0 would train nothing.
    "negative": Param(int, 5, at_least(1)),
    "epochs": Param(int, 5, at_least(1)),
    "sample": Param(float, 1e-3, at_least(0)),
    "alpha": Param(float, 0.025, above(0)),
    "min_alpha": Param(float, 0.0001, at_least(0)),
    "shuffle": Param(bool, True),
    # engine jax only (skipgram.py)
    "jax_steps": Param(int, 4000, at_least(1)),
    "jax_lr": Param(float, 0.05, above(0)),
    # 0 would leave the cosine table undefined (skipgram.py): strictly positive.
    "jax_l2": Param(float, 0.01, above(0)),
    "jax_objective": Param(str, "softmax", one_of(*OBJECTIVES)),
    "jax_negative": Param(int, 5, at_least(1)),
}

# engine jax: a final gradient norm above this means "not converged yet" (a warning).
JAX_CONVERGED_GRAD_NORM = 1e-6


def _shown(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def word_counts(pairs: Pairs) -> np.ndarray:
    """How often each class occurs in the corpus; refuses a class that never does."""
    c = pairs.n_classes
    counts = np.bincount(pairs.true, minlength=c) + np.bincount(pairs.guess, minlength=c)
    absent = [pairs.classes[i] for i in np.flatnonzero(counts == 0)]
    if absent:
        raise PipelineError(
            f"pairs: class(es) {_shown(absent)} appear in no pair (no picture of them and never "
            "guessed), so they get no vector; add pictures of them or drop them from the "
            "predictions' classes"
        )
    return counts


def _train_jax(pairs: Pairs, params: dict[str, Any]) -> np.ndarray:
    """One directed skip-gram per seed on the pair counts; W_in in class order."""
    big = [s for s in params["seeds"] if s >= 2**32]
    if big:
        # Without jax_enable_x64, jax.random.key keeps 32 bits: 2**32 would silently be seed 0.
        raise PipelineError(
            f"params.yaml: 'embed.seeds' = {big[:3]}: engine jax takes seeds below 2**32"
        )
    word_counts(pairs)
    counts = count_matrix(pairs.true, pairs.guess, pairs.n_classes)
    no_pictures = [pairs.classes[i] for i in np.flatnonzero(counts.sum(axis=1) == 0)]
    if no_pictures:
        raise PipelineError(
            f"pairs: class(es) {_shown(no_pictures)} are never a true class (no picture of them), "
            "so the directed skip-gram (embed.engine: jax) trains no input vector for them; add "
            "pictures of them or use embed.engine: gensim, which trains both directions"
        )
    out = np.empty((len(params["seeds"]), pairs.n_classes, params["dim"]), np.float32)
    unconverged = []
    for i, seed in enumerate(params["seeds"]):
        fit = train_skipgram(
            counts,
            seed,
            dim=params["dim"],
            steps=params["jax_steps"],
            lr=params["jax_lr"],
            l2=params["jax_l2"],
            objective=params["jax_objective"],
            negative=params["jax_negative"],
        )
        if not np.isfinite(fit.w_in).all() or not np.isfinite(fit.loss):
            raise PipelineError(
                f"embed (engine jax), seed {seed}: training diverged (non-finite vectors); "
                f"lower embed.jax_lr (now {params['jax_lr']})"
            )
        if fit.grad_norm > JAX_CONVERGED_GRAD_NORM:
            unconverged.append(fit.grad_norm)
        out[i] = fit.w_in
    if unconverged:
        print(
            f"warning: embed (engine jax): {len(unconverged)} of {len(params['seeds'])} seeds not "
            f"converged after {params['jax_steps']} steps (gradient norm up to "
            f"{max(unconverged):.1e} > {JAX_CONVERGED_GRAD_NORM:.0e}); raise embed.jax_steps",
            file=sys.stderr,
        )
    return out


def train_vectors(pairs: Pairs, params: dict[str, Any]) -> np.ndarray:
    """Train one skip-gram model per seed on (one classifier's) pairs; return float32
    [S, C, dim] in class order."""
    if params["engine"] == "jax":
        return _train_jax(pairs, params)
    return train_gensim(pairs, word_counts(pairs), params)


def updates_per_class(pairs: Pairs, params: dict[str, Any]) -> float:
    """How many pairs one epoch trains on, per class and classifier: every pair for the jax
    engine; for gensim the pairs its down-sampling (`sample`) keeps, in expectation (word2vec
    keeps an occurrence of a word of corpus share r with probability (sqrt(r/s) + 1) s/r)."""
    m, c = len(pairs.classifiers), pairs.n_classes
    if params["engine"] == "jax" or params["sample"] == 0:
        return len(pairs.true) / (m * c)
    counts = np.bincount(pairs.true, minlength=c) + np.bincount(pairs.guess, minlength=c)
    share = counts / max(counts.sum(), 1)
    s = params["sample"]
    keep = np.minimum(1.0, (np.sqrt(share / s) + 1) * s / np.maximum(share, 1e-300))
    return float((keep[pairs.true] * keep[pairs.guess]).sum() / (m * c))


# Class pairs per class that picture_reliability ranks (the most confused ones), as evaluate
# ranks C x top_n of them.
RELIABILITY_PAIRS_PER_CLASS = 9


def picture_reliability(pairs: Pairs, params: dict[str, Any]) -> float | None:
    """How much one classifier's table owes to which pictures it saw: the engine trained
    (first seed) on each half of the pictures, Spearman between the two tables over the most
    confused class pairs. Low when there are too few pictures for the differences the table
    ranks, whatever the engine's own seed-to-seed noise (None if a half lacks a class)."""
    k, n = pairs.top_k, pairs.n_pictures
    half = np.random.default_rng(0).permutation(n) % 2  # a fixed split, the same every run
    one_seed = {**params, "seeds": params["seeds"][:1]}
    tables = []
    for h in (0, 1):
        part = pairs.rows(np.repeat(half == h, k))
        try:
            tables.append(cosine_matrices(train_vectors(part, one_seed)[0]))
        except PipelineError:  # a class missing from a half: far too few pictures to tell
            return None
    c = pairs.n_classes
    confused = count_matrix(pairs.true, pairs.guess, c).astype(np.float64)
    np.fill_diagonal(confused, 0.0)
    rows, cols = np.triu_indices(c, k=1)
    strength = (confused + confused.T)[rows, cols]
    keep = np.flatnonzero(strength > 0)
    keep = keep[np.argsort(-strength[keep], kind="stable")][: RELIABILITY_PAIRS_PER_CLASS * c]
    if keep.size < 3:
        return None
    a, b = tables[0][rows[keep], cols[keep]], tables[1][rows[keep], cols[keep]]
    return float(spearmanr(a, b).statistic) if np.ptp(a) and np.ptp(b) else None


def train_all(pairs: Pairs, params: dict[str, Any]) -> np.ndarray:
    """One vector set per classifier and seed: float32 [M, S, C, dim]."""
    return np.stack([train_vectors(pairs.of(i), params) for i in range(len(pairs.classifiers))])
