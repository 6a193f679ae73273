"""`embed`: pairs in, class vectors per classifier out, as the embed config says
(config/embed.py).

    embed(pairs, config)            -> Embedding: every classifier's vectors and the manifest
      fit_classifiers(pairs, config)  every classifier's runs (and the jax engine's restarts)
        fit_runs(pairs, config)       one classifier's runs, the ones its table averages
        fit_restarts(pairs, config)   engine jax: one fit per seed, every restart kept

Reads and writes nothing itself. `engine` picks the trainer:
- jax (default): the directed skip-gram on the exact pair counts (skipgram.py);
- gensim: gensim's Word2Vec on two-word sentences, both directions (gensim_w2v.py), the
  paper's engine.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import param_ref
from confusion_embeddings.embedding.skipgram import train_skipgram
from confusion_embeddings.embedding.store import Embedding, Restarts
from confusion_embeddings.pairs import Pairs, count_matrix

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


def _check_true_classes(pairs: Pairs, counts: np.ndarray) -> None:
    no_pictures = [pairs.classes[i] for i in np.flatnonzero(counts.sum(axis=1) == 0)]
    if no_pictures:
        raise PipelineError(
            f"pairs: class(es) {_shown(no_pictures)} are never a true class (no picture of them), "
            "so the directed skip-gram (embed.engine: jax) trains no input vector for them; add "
            "pictures of them or use embed.engine: gensim, which trains both directions"
        )


def check_trainable(pairs: Pairs, config: EmbedConfig) -> None:
    """What the engine would refuse, checked on the pairs alone: a class in no pair, and
    (engine jax) a class that is never a true class."""
    for i in range(len(pairs.classifiers)):
        part = pairs.of(i)
        word_counts(part)
        if config.engine == "jax":
            _check_true_classes(part, count_matrix(part.true, part.guess, part.n_classes))


def jax_settings(config: EmbedConfig) -> dict[str, Any]:
    """The skip-gram's optimisation settings (skipgram.train_skipgram)."""
    return {
        "steps": config.jax_steps,
        "lr": config.jax_lr,
        "l2": config.jax_l2,
        "objective": config.jax_objective,
        "negative": config.jax_negative,
    }


def fit_restarts(pairs: Pairs, config: EmbedConfig) -> Restarts:
    """Engine jax: one directed skip-gram per seed on (one classifier's) pair counts, every
    restart kept: [S, C, dim]."""
    big = [s for s in config.seeds if s >= 2**32]
    if big:
        # Without jax_enable_x64, jax.random.key keeps 32 bits: 2**32 would silently be seed 0.
        raise PipelineError(
            f"{param_ref('embed', 'seeds', big[:3])}: engine jax takes seeds below 2**32"
        )
    word_counts(pairs)
    counts = count_matrix(pairs.true, pairs.guess, pairs.n_classes)
    _check_true_classes(pairs, counts)
    fits = [
        train_skipgram(
            counts,
            seed,
            dim=config.dim,
            init_std=config.jax_init_std,
            unseen=tuple(pairs.unseen_ids.tolist()),
            **jax_settings(config),
        )
        for seed in config.seeds
    ]
    if not all(np.isfinite(f.w_in).all() and np.isfinite(f.loss) for f in fits):
        raise PipelineError(
            "embed (engine jax): training diverged (non-finite vectors); "
            f"lower embed.jax_lr (now {config.jax_lr})"
        )
    warn_unconverged([f.grad_norm for f in fits], config.jax_steps, "seeds")
    return Restarts(
        w_in=np.stack([f.w_in for f in fits]),
        w_out=np.stack([f.w_out for f in fits]),
        loss=np.array([f.loss for f in fits], np.float64),
    )


def warn_unconverged(grad_norms: list[float] | np.ndarray, steps: int, what: str) -> None:
    """One warning line when some fits ended with a gradient norm above the threshold."""
    late = [g for g in np.asarray(grad_norms, np.float64).ravel() if g > JAX_CONVERGED_GRAD_NORM]
    if late:
        print(
            f"warning: embed (engine jax): {len(late)} of {np.size(grad_norms)} {what} not "
            f"converged after {steps} steps (gradient norm up to {max(late):.1e} > "
            f"{JAX_CONVERGED_GRAD_NORM:.0e}); raise embed.jax_steps",
            file=sys.stderr,
        )


def fit_runs(pairs: Pairs, config: EmbedConfig) -> np.ndarray:
    """The runs one classifier's table averages, float32 [R, C, dim] in class order: the
    jax engine's lowest-loss restart (R = 1: it is deterministic given the counts, so more
    runs would add nothing), or one gensim model per seed (R = S: its seeds do differ)."""
    if config.engine == "jax":
        return fit_restarts(pairs, config).best()[None]
    from confusion_embeddings.embedding.gensim_w2v import train_gensim  # gensim only if used

    return train_gensim(pairs, word_counts(pairs), config)


def updates_per_class(pairs: Pairs, config: EmbedConfig) -> float:
    """How many pairs one epoch trains on, per class and classifier: every pair for the jax
    engine; for gensim the pairs its down-sampling (`sample`) keeps, in expectation (word2vec
    keeps an occurrence of a word of corpus share r with probability (sqrt(r/s) + 1) s/r)."""
    m, c = len(pairs.classifiers), pairs.n_classes
    if config.engine == "jax" or config.sample == 0:
        return len(pairs.true) / (m * c)
    counts = np.bincount(pairs.true, minlength=c) + np.bincount(pairs.guess, minlength=c)
    share = counts / max(counts.sum(), 1)
    s = config.sample
    keep = np.minimum(1.0, (np.sqrt(share / s) + 1) * s / np.maximum(share, 1e-300))
    return float((keep[pairs.true] * keep[pairs.guess]).sum() / (m * c))


def fit_classifiers(pairs: Pairs, config: EmbedConfig) -> tuple[np.ndarray, Restarts | None]:
    """Every classifier's runs, float32 [M, R, C, dim], and for the jax engine its restarts
    ([M, S, ...]), from which the resampling refits start."""
    parts = [pairs.of(i) for i in range(len(pairs.classifiers))]
    if config.engine != "jax":
        return np.stack([fit_runs(part, config) for part in parts]), None
    fits = [fit_restarts(part, config) for part in parts]
    restarts = Restarts(
        w_in=np.stack([f.w_in for f in fits]),
        w_out=np.stack([f.w_out for f in fits]),
        loss=np.stack([f.loss for f in fits]),
    )
    return restarts.best()[:, None], restarts


def embed(pairs: Pairs, config: EmbedConfig) -> Embedding:
    """Class vectors per classifier, and the manifest that says how they were made (the
    config saved whole, as `params`)."""
    vectors, restarts = fit_classifiers(pairs, config)
    manifest = {
        "classes": list(pairs.classes),
        "classifiers": list(pairs.classifiers),
        "seeds": config.seeds,
        "runs": vectors.shape[1],
        "dim": config.dim,
        "engine": config.engine,
        "updates_per_class": round(updates_per_class(pairs, config), 1),
        "params": config.to_dict(),
    }
    return Embedding(vectors, restarts, manifest)
