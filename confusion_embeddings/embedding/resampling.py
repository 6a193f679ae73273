"""Resampling over pictures: the class vectors refitted on bootstrap draws of the pictures.

Which pictures were drawn is the uncertainty every table has, from one classifier or many. A
bootstrap replicate draws N pictures with replacement out of the N a classifier scored,
recounts the (true, k-th guess) pairs of the drawn pictures and refits the class vectors:

- engine jax: on the replicate's C x C count matrix, never re-reading the pictures; every
  replicate of a batch at once (vmap, one jitted loop). The refit starts from each distinct
  optimum the point estimate's restarts found and keeps the lowest loss, as the point
  estimate did (engines.fit_restarts): the same estimator on the redrawn pictures. A cold
  start would let a replicate fall into another local optimum, which is the optimiser's
  noise, not the data's.
- engine gensim: one Word2Vec per replicate on the replicate's pairs, with seed
  embed.seeds[b mod S], so the seed-to-seed noise is part of the interval.

When every classifier scored the same pictures (equal labels, as the CNN pipeline's do), one
draw of picture weights serves them all: the pictures are what was drawn, and they are shared.

`resample` is the resample stage's step (pairs and class vectors in, Replicates out). Reads
and writes nothing; evaluation/uncertainty.py turns the replicates into intervals.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.core.cli import progress
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import (
    Restarts,
    jax_settings,
    warn_unconverged,
    word_counts,
)
from confusion_embeddings.embedding.skipgram import SkipGram, refit_skipgram
from confusion_embeddings.embedding.store import Embedding, Replicates, Sources, check_same_classes
from confusion_embeddings.pairs import Pairs

# Memory one batch of replicates may take (picture weights, count matrices and the refit's
# state per replicate): bounds the footprint at 1,000 classes x 1.3 million pictures.
BATCH_BYTES = 256 << 20
# Two restarts whose tables differ by less than this (largest |cosine difference|) found
# the same optimum: one refit start serves both.
SAME_OPTIMUM = 1e-3


def shared_pictures(parts: list[Pairs]) -> bool:
    """Whether every classifier scored the same pictures, in the same order."""
    first = parts[0]
    return all(p.top_k == first.top_k and np.array_equal(p.true, first.true) for p in parts[1:])


def draw_weights(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """How often each of n pictures is drawn in each replicate: int32 [replicates, n],
    every row summing to n (a draw of n with replacement)."""
    weights = np.zeros((replicates, n), np.int32)
    for row in weights:
        row += np.bincount(rng.integers(0, n, n), minlength=n).astype(np.int32)
    return weights


def resampled_counts(pairs: Pairs, weights: np.ndarray) -> np.ndarray:
    """One classifier's directed pair counts [R, C, C] under each row of picture weights
    [R, N] (pairs are picture-major: picture i's are rows i*k .. i*k + k - 1)."""
    c, k = pairs.n_classes, pairs.top_k
    cells = pairs.true.astype(np.int64) * c + pairs.guess.astype(np.int64)
    counts = np.empty((len(weights), c, c), np.float64)
    for out, w in zip(counts, weights, strict=True):
        out[:] = np.bincount(cells, weights=np.repeat(w, k), minlength=c * c).reshape(c, c)
    return counts


def distinct_starts(restarts: Restarts) -> list[int]:
    """One classifier's restarts ([S, C, dim]) that found different optima, lowest loss first."""
    tables = cosine_matrices(restarts.w_in)
    kept: list[int] = []
    for s in np.argsort(restarts.loss, kind="stable"):
        if all(np.abs(tables[s] - tables[t]).max() > SAME_OPTIMUM for t in kept):
            kept.append(int(s))
    return kept


def _refit_jax(
    counts: np.ndarray,
    restarts: Restarts,
    starts: list[int],
    config: EmbedConfig,
    unseen: tuple[int, ...],
) -> np.ndarray:
    """Refit from every start, keep each replicate's lowest loss: [R, C, dim]. A replicate
    where a class has no picture gets NaN vectors for that class (it has no input side)."""
    settings = jax_settings(config)
    best_w, best_loss = None, None
    for s in starts:
        start = SkipGram(restarts.w_in[s], restarts.w_out[s], float(restarts.loss[s]), 0.0)
        w_in, loss, grad_norm = refit_skipgram(counts, start, unseen=unseen, **settings)
        warn_unconverged(grad_norm, settings["steps"], "bootstrap refits")
        if best_w is None:
            best_w, best_loss = w_in, loss
        else:
            better = loss < best_loss
            best_w = np.where(better[:, None, None], w_in, best_w)
            best_loss = np.where(better, loss, best_loss)
    absent = counts.sum(axis=2) == 0  # [R, C]
    return np.where(absent[..., None], np.nan, best_w).astype(np.float32)


def _refit_gensim(pairs: Pairs, weights: np.ndarray, first: int, config: EmbedConfig) -> np.ndarray:
    from confusion_embeddings.embedding.gensim_w2v import train_gensim

    k, seeds = pairs.top_k, config.seeds
    out = np.full((len(weights), pairs.n_classes, config.dim), np.nan, np.float32)
    for r, w in enumerate(weights):
        pictures = np.repeat(np.arange(len(w)), w)
        part = pairs.rows((pictures[:, None] * k + np.arange(k)).ravel())
        try:
            counts = word_counts(part)
        except PipelineError:  # a class in no drawn pair: no vector this replicate
            continue
        seed = seeds[(first + r) % len(seeds)]
        out[r] = train_gensim(part, counts, replace(config, seeds=[seed]))[0]
    return out


def replicate_vectors(
    pairs: Pairs,
    restarts: Restarts | None,
    embed: EmbedConfig,
    config: ResampleConfig,
) -> np.ndarray:
    """Class vectors refitted on `config.bootstrap` draws of the pictures, float32
    [M, B, C, dim] (M classifiers; module docstring). `embed` is the config the point
    estimate was made with; `restarts` its jax restarts (None for gensim)."""
    replicates, seed = config.bootstrap, config.seed
    parts = [pairs.of(i) for i in range(len(pairs.classifiers))]
    m, c, dim = len(parts), pairs.n_classes, embed.dim
    out = np.empty((m, replicates, c, dim), np.float32)
    shared = shared_pictures(parts)
    rngs = [np.random.default_rng([seed, 0 if shared else i]) for i in range(m)]
    n_max = max(p.n_pictures for p in parts)
    per_replicate = 4 * n_max + 8 * 8 * c * c  # weights + counts and the refit's state
    batch = int(max(1, min(replicates, BATCH_BYTES // per_replicate)))
    starts = [distinct_starts(_of(restarts, i)) for i in range(m)] if restarts else []
    batches = range(0, replicates, batch)
    for first in progress(batches, "bootstrap", unit="batch", total=len(batches)):
        size = min(batch, replicates - first)
        if shared:
            weights = [draw_weights(rngs[0], n_max, size)] * m
        else:
            weights = [
                draw_weights(r, p.n_pictures, size) for r, p in zip(rngs, parts, strict=True)
            ]
        for i, part in enumerate(parts):
            if restarts is None:
                out[i, first : first + size] = _refit_gensim(part, weights[i], first, embed)
            else:
                counts = resampled_counts(part, weights[i])
                unseen = tuple(part.unseen_ids.tolist())
                out[i, first : first + size] = _refit_jax(
                    counts, _of(restarts, i), starts[i], embed, unseen
                )
    return out


def _of(restarts: Restarts, i: int) -> Restarts:
    return Restarts(restarts.w_in[i], restarts.w_out[i], restarts.loss[i])


def resample(
    pairs: Pairs,
    embedding: Embedding,
    config: ResampleConfig,
    sources: Sources | None = None,
) -> Replicates:
    """The class vectors refitted on `config.bootstrap` redraws of the pictures, with the
    embed config the point estimate was made with (embedding/resampling.py)."""
    manifest = embedding.manifest
    check_same_classes(pairs, manifest, "embed", sources)
    embed = EmbedConfig.from_params(manifest["params"])
    vectors = replicate_vectors(pairs, embedding.restarts, embed, config)
    return Replicates(
        vectors,
        {
            "classes": list(pairs.classes),
            "classifiers": list(pairs.classifiers),
            "bootstrap": config.bootstrap,
            "seed": config.seed,
            "params": config.to_dict(),
        },
    )
