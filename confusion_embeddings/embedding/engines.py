"""The `embed` params and `train_vectors`: pairs in, one vector set per word2vec seed out.

Reads and writes nothing itself. `engine` picks the trainer:
- jax (default): the directed skip-gram on the exact pair counts (skipgram.py);
- gensim: gensim's Word2Vec on two-word sentences, both directions (gensim_w2v.py), the
  paper's engine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, above, at_least, int_list, one_of, param_ref
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
    "jax_init_std": Param(float, 0.1, above(0)),
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


@dataclass(frozen=True)
class Restarts:
    """The jax engine's restarts of one or more classifiers (one per seed): every restart's
    input and output vectors and final loss. The table is the lowest-loss restart's; the
    others are kept so that a refit (resampling.py) can start in every basin they found."""

    w_in: np.ndarray  # float32 [..., S, C, dim]
    w_out: np.ndarray  # float32 [..., S, C, dim]
    loss: np.ndarray  # float64 [..., S]

    def best(self) -> np.ndarray:
        """The lowest-loss restart's input vectors [..., C, dim] (ties: the first seed)."""
        pick = np.argmin(self.loss, axis=-1)[..., None, None, None]
        return np.take_along_axis(self.w_in, pick, axis=-3)[..., 0, :, :]


@dataclass(frozen=True)
class Embedding:
    """What the embed stage makes: the runs behind each classifier's table [M, R, C, dim],
    the jax engine's restarts (None for gensim) and the manifest (store.py writes them)."""

    vectors: np.ndarray
    restarts: Restarts | None
    manifest: dict[str, Any]


def _check_true_classes(pairs: Pairs, counts: np.ndarray) -> None:
    no_pictures = [pairs.classes[i] for i in np.flatnonzero(counts.sum(axis=1) == 0)]
    if no_pictures:
        raise PipelineError(
            f"pairs: class(es) {_shown(no_pictures)} are never a true class (no picture of them), "
            "so the directed skip-gram (embed.engine: jax) trains no input vector for them; add "
            "pictures of them or use embed.engine: gensim, which trains both directions"
        )


def check_trainable(pairs: Pairs, params: dict[str, Any]) -> None:
    """What the engine would refuse, checked on the pairs alone: a class in no pair, and
    (engine jax) a class that is never a true class."""
    for i in range(len(pairs.classifiers)):
        part = pairs.of(i)
        word_counts(part)
        if params["engine"] == "jax":
            _check_true_classes(part, count_matrix(part.true, part.guess, part.n_classes))


def jax_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The skip-gram's optimisation settings from the embed params (skipgram.train_skipgram)."""
    return {
        "steps": params["jax_steps"],
        "lr": params["jax_lr"],
        "l2": params["jax_l2"],
        "objective": params["jax_objective"],
        "negative": params["jax_negative"],
    }


def train_restarts(pairs: Pairs, params: dict[str, Any]) -> Restarts:
    """One directed skip-gram per seed on (one classifier's) pair counts: [S, C, dim]."""
    big = [s for s in params["seeds"] if s >= 2**32]
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
            dim=params["dim"],
            init_std=params["jax_init_std"],
            unseen=tuple(pairs.unseen_ids.tolist()),
            **jax_settings(params),
        )
        for seed in params["seeds"]
    ]
    if not all(np.isfinite(f.w_in).all() and np.isfinite(f.loss) for f in fits):
        raise PipelineError(
            "embed (engine jax): training diverged (non-finite vectors); "
            f"lower embed.jax_lr (now {params['jax_lr']})"
        )
    warn_unconverged([f.grad_norm for f in fits], params["jax_steps"], "seeds")
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


def train_vectors(pairs: Pairs, params: dict[str, Any]) -> np.ndarray:
    """The runs one classifier's table averages, float32 [R, C, dim] in class order: the
    jax engine's lowest-loss restart (R = 1: it is deterministic given the counts, so more
    runs would add nothing), or one gensim model per seed (R = S: its seeds do differ)."""
    if params["engine"] == "jax":
        return train_restarts(pairs, params).best()[None]
    from confusion_embeddings.embedding.gensim_w2v import train_gensim  # gensim only if used

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


def train_all(pairs: Pairs, params: dict[str, Any]) -> tuple[np.ndarray, Restarts | None]:
    """Every classifier's runs, float32 [M, R, C, dim], and for the jax engine its restarts
    ([M, S, ...]), from which the resampling refits start."""
    parts = [pairs.of(i) for i in range(len(pairs.classifiers))]
    if params["engine"] != "jax":
        return np.stack([train_vectors(part, params) for part in parts]), None
    fits = [train_restarts(part, params) for part in parts]
    restarts = Restarts(
        w_in=np.stack([f.w_in for f in fits]),
        w_out=np.stack([f.w_out for f in fits]),
        loss=np.stack([f.loss for f in fits]),
    )
    return restarts.best()[:, None], restarts


def embed(pairs: Pairs, params: dict[str, Any]) -> Embedding:
    """Class vectors per classifier, and the manifest that says how they were made."""
    vectors, restarts = train_all(pairs, params)
    manifest = {
        "classes": list(pairs.classes),
        "classifiers": list(pairs.classifiers),
        "seeds": params["seeds"],
        "runs": vectors.shape[1],
        "dim": params["dim"],
        "engine": params["engine"],
        "updates_per_class": round(updates_per_class(pairs, params), 1),
        "params": params,
    }
    return Embedding(vectors, restarts, manifest)
