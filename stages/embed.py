"""Embed stage: word2vec skip-gram on the (true class, guess) pairs, one model per seed.

Reads: <pairs>/pairs.npz (stages/pairs.py) and the `embed` section of params.yaml:
    engine     "gensim" (default): gensim Word2Vec on two-word sentences, both directions;
               "jax": the directed skip-gram of stages/skipgram.py (true -> guess only)
  both engines:
    dim        vector size (5 in the paper, for 10 classes)
    seeds      one model per seed; evaluate reports the mean and spread over them
  engine gensim only (ignored by jax):
    window, negative, epochs, sample, alpha, min_alpha   gensim Word2Vec's own knobs
    shuffle    shuffle the pairs (with each seed) before training; see below
  engine jax only (ignored by gensim; see stages/skipgram.py):
    jax_steps      full-batch Adam steps on the C x C pair-count matrix (default 4000)
    jax_lr         peak learning rate, cosine-decayed to 0 over jax_steps (default 0.05)
    jax_l2         l2 penalty per class on both vector tables, > 0 (default 0.01): it makes
                   each optimum, and so the cosine table, well defined (skipgram's docstring)
    jax_objective  "softmax" (default; the full softmax over the C output words) or
                   "negative" (the expected negative-sampling loss, in closed form)
    jax_negative   noise words per pair for jax_objective "negative" (default 5)

Writes <out>/:
    seed_<s>.txt    word2vec text format (KeyedVectors.save_word2vec_format), classes in
                    the pairs file's class order
    seed_<s>.kv     the same vectors as gensim KeyedVectors (KeyedVectors.load)
    vectors.npy     float32 [S, C, dim], seeds in params order, classes in class order
    manifest.json   {"classes", "seeds", "dim", "engine"}

engine jax: the directed softmax objective is trained to convergence on the exact pair
counts, so a seed's result hardly depends on the training budget (on synthetic CIFAR-like
pairs, 4,000 -> 8,000 steps moved no cosine by more than 1e-3) and is a deterministic
function of the pair counts, not of their order. Seeds can still end in different local
optima (the objective is not convex for dim < C; stages/skipgram.py), so the spread over
seeds stays meaningful. W_in (the input vectors, the true class's side) are the class
vectors. A class that is never a true class gets no trained input vector, so jax refuses
it. The rest of this docstring is about gensim.

Each pair is one two-word sentence [true_name, guess_name]; with sg=1 and window >= 1 each
word predicts the other, which is all the paper's method needs.

How much gensim trains is the result's main lever, so keep gensim's defaults
(sample=1e-3, negative=5, alpha=0.025, epochs=5). On 10 classes every word is ~10% of the
corpus, far above `sample`, so down-sampling keeps each word with p ~ 0.11 and a whole
pair with p ~ 0.012: gensim trains on ~1% of the pairs, which gives a clear, stable
structure (on CIFAR-10: cat~dog, automobile~truck). sample=0 keeps every pair, ~80x more updates, and
on a corpus in dataset order (pictures sorted by class, as image folders list them) that
collapses every class toward one direction: the late updates all pull the same way.
Measured on synthetic CIFAR-like predictions (tests/synthetic.py, 6000 pictures per class,
10 seeds), mean off-diagonal cosine / Spearman vs confusion:
    pairs in file order:   sample=1e-3  0.60 / 0.79     sample=0  0.87 / -0.22 (collapsed)
    shuffled (default):    sample=1e-3  0.55 / 0.86     sample=0  0.24 / 0.96
So `shuffle: true` (a fresh order per seed) removes the dependence on the file's order and
the collapse with it; evaluate's collapse check still guards whatever params are chosen.
With 1000 classes each word is ~0.1% of the corpus and `sample` drops almost nothing.

Reproducibility: workers=1 and a fixed seed make gensim deterministic (its docs say so;
multi-threaded training is not). Since gensim 4 the initial vectors come from
numpy's default_rng(seed), not from Python's hash() of the word, so PYTHONHASHSEED does
not matter (checked: equal files under different PYTHONHASHSEED values). The corpus is fed
as a temporary LineSentence file (corpus_file=), which gensim reads in C++: for 3.8M pairs
it took 44 s and 320 MiB per seed against 53 s and 465 MiB for a Python iterable, and with workers=1 it is read in
one pass in file order, so it is just as deterministic. The vocabulary comes from the pair
counts (build_vocab_from_freq), which skips gensim's own Python scan of the file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import sys

import numpy as np
from gensim.models import KeyedVectors, Word2Vec

from stages.common import (
    Param,
    PipelineError,
    at_least,
    atomic_dir,
    load_params,
    one_of,
    run_main,
    write_json,
)
from stages.pairs import Pairs, load_pairs
from stages.skipgram import OBJECTIVES, count_matrix, train_skipgram


def _seed_list(value: list) -> str | None:
    if not value:
        return "a non-empty list of integer seeds"
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        return "a list of integers >= 0"
    if len(set(value)) != len(value):
        return "a list of distinct seeds"
    return None


SCHEMA = {
    "engine": Param(str, "gensim", one_of("gensim", "jax")),
    "dim": Param(int, 5, at_least(1)),
    "window": Param(int, 1, at_least(1)),
    # hs=0 below, so negative sampling is the only training objective: 0 would train nothing.
    "negative": Param(int, 5, at_least(1)),
    "epochs": Param(int, 5, at_least(1)),
    "sample": Param(float, 1e-3, at_least(0)),
    "alpha": Param(float, 0.025, lambda v: None if v > 0 else "a number > 0"),
    "min_alpha": Param(float, 0.0001, at_least(0)),
    "seeds": Param(list, tuple(range(10)), _seed_list),
    "shuffle": Param(bool, True),
    # engine jax only (stages/skipgram.py)
    "jax_steps": Param(int, 4000, at_least(1)),
    "jax_lr": Param(float, 0.05, lambda v: None if v > 0 else "a number > 0"),
    # 0 would leave the cosine table undefined (any invertible mix of the dimensions fits
    # equally well) and let unseen pairs push the norms to infinity: see stages/skipgram.py.
    "jax_l2": Param(float, 0.01, lambda v: None if v > 0 else "a number > 0"),
    "jax_objective": Param(str, "softmax", one_of(*OBJECTIVES)),
    "jax_negative": Param(int, 5, at_least(1)),
}

VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
# engine jax: a final gradient norm above this means "not converged yet" (a warning). On
# synthetic 10-class pairs a norm of 5e-6 went with cosines still moving by 0.03.
JAX_CONVERGED_GRAD_NORM = 1e-6
# Pairs written per chunk to the temporary corpus: bounds the Python strings alive at once.
_CORPUS_CHUNK = 1 << 20


def _word_counts(pairs: Pairs) -> np.ndarray:
    """How often each class occurs in the corpus; refuses a class that never does."""
    c = pairs.n_classes
    counts = np.bincount(pairs.true, minlength=c) + np.bincount(pairs.guess, minlength=c)
    absent = [pairs.classes[i] for i in np.flatnonzero(counts == 0)]
    if absent:
        shown = ", ".join(absent[:10]) + (f", ... ({len(absent)} in all)" if len(absent) > 10 else "")
        raise PipelineError(
            f"pairs: class(es) {shown} appear in no pair (no picture of them and never guessed), "
            "so they get no vector; add pictures of them or drop them from the predictions' classes"
        )
    return counts


def _write_corpus(path: Path, pairs: Pairs, order: np.ndarray) -> None:
    names = pairs.classes
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, order.size, _CORPUS_CHUNK):
            chosen = order[start : start + _CORPUS_CHUNK]
            true, guess = pairs.true[chosen].tolist(), pairs.guess[chosen].tolist()
            fh.write("".join(f"{names[a]} {names[b]}\n" for a, b in zip(true, guess)))


def _train_vectors_jax(pairs: Pairs, params: dict) -> np.ndarray:
    """engine jax: one directed skip-gram per seed on the pair counts; W_in in class order."""
    big = [s for s in params["seeds"] if s >= 2**32]
    if big:
        # Without jax_enable_x64, jax.random.key keeps 32 bits: 2**32 would silently be seed 0.
        raise PipelineError(f"params.yaml: 'embed.seeds' = {big[:3]}: engine jax takes seeds below 2**32")
    _word_counts(pairs)
    counts = count_matrix(pairs.true, pairs.guess, pairs.n_classes)
    no_pictures = [pairs.classes[i] for i in np.flatnonzero(counts.sum(axis=1) == 0)]
    if no_pictures:
        shown = ", ".join(no_pictures[:10]) + (f", ... ({len(no_pictures)} in all)" if len(no_pictures) > 10 else "")
        raise PipelineError(
            f"pairs: class(es) {shown} are never a true class (no picture of them), so the directed "
            "skip-gram (embed.engine: jax) trains no input vector for them; add pictures of them "
            "or use embed.engine: gensim, which trains both directions"
        )
    out = np.empty((len(params["seeds"]), pairs.n_classes, params["dim"]), np.float32)
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
            print(
                f"warning: embed (engine jax), seed {seed}: not converged after {params['jax_steps']} steps "
                f"(gradient norm {fit.grad_norm:.1e} > {JAX_CONVERGED_GRAD_NORM:.0e}); raise embed.jax_steps",
                file=sys.stderr,
            )
        out[i] = fit.w_in
    return out


def train_vectors(pairs: Pairs, params: dict) -> np.ndarray:
    """Train one skip-gram model per seed; return float32 [S, C, dim] in class order."""
    if params["engine"] == "jax":
        return _train_vectors_jax(pairs, params)
    counts = _word_counts(pairs)
    freq = {name: int(n) for name, n in zip(pairs.classes, counts)}
    n_pairs = pairs.true.shape[0]
    out = np.empty((len(params["seeds"]), pairs.n_classes, params["dim"]), np.float32)
    with tempfile.TemporaryDirectory(prefix="embed-corpus-") as tmp:
        corpus = Path(tmp) / "pairs.txt"
        if not params["shuffle"]:
            _write_corpus(corpus, pairs, np.arange(n_pairs))
        for i, seed in enumerate(params["seeds"]):
            if params["shuffle"]:
                _write_corpus(corpus, pairs, np.random.default_rng(seed).permutation(n_pairs))
            # sample/alpha/epochs decide how many updates a 10-word vocabulary gets; too many
            # collapse the vectors (module docstring), hence gensim's defaults in params.
            model = Word2Vec(
                vector_size=params["dim"],
                window=params["window"],
                sg=1,
                hs=0,
                negative=params["negative"],
                sample=params["sample"],
                alpha=params["alpha"],
                min_alpha=params["min_alpha"],
                epochs=params["epochs"],
                min_count=1,
                workers=1,  # more workers race on the shared weights: not reproducible
                seed=seed,
            )
            model.build_vocab_from_freq(freq, corpus_count=n_pairs)
            model.train(corpus_file=str(corpus), total_words=int(counts.sum()), epochs=params["epochs"])
            out[i] = np.stack([model.wv[name] for name in pairs.classes])
    return out


def keyed_vectors(classes: tuple[str, ...], vectors: np.ndarray) -> KeyedVectors:
    """KeyedVectors holding `vectors` [C, dim] in class order (gensim's own is by frequency)."""
    kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    kv.add_vectors(list(classes), vectors)
    # gensim's save() records a log of events (with the time and the output's temporary
    # path) inside the file; without it equal vectors give byte-identical .kv files.
    kv.lifecycle_events = None
    return kv


def write_embeddings(out_dir: Path, classes: tuple[str, ...], vectors: np.ndarray, params: dict) -> None:
    for seed, vecs in zip(params["seeds"], vectors):
        kv = keyed_vectors(classes, vecs)
        kv.save_word2vec_format(str(out_dir / f"seed_{seed}.txt"))
        kv.save(str(out_dir / f"seed_{seed}.kv"))
    np.save(out_dir / VECTORS_FILE, vectors)
    write_json(
        out_dir / MANIFEST_FILE,
        {"classes": list(classes), "seeds": list(params["seeds"]), "dim": params["dim"], "engine": params["engine"]},
    )


def load_embeddings(embed_dir: str | Path) -> tuple[np.ndarray, dict]:
    """Read vectors.npy [S, C, dim] and manifest.json written by this stage."""
    embed_dir = Path(embed_dir)
    manifest_path, vectors_path = embed_dir / MANIFEST_FILE, embed_dir / VECTORS_FILE
    for path in (manifest_path, vectors_path):
        if not path.exists():
            raise PipelineError(f"{path}: not found; run the embed stage first (dvc repro embed)")
    manifest = json.loads(manifest_path.read_text())
    vectors = np.load(vectors_path, allow_pickle=False)
    expected = (len(manifest["seeds"]), len(manifest["classes"]), manifest["dim"])
    if vectors.shape != expected:
        raise PipelineError(
            f"{vectors_path}: shape {vectors.shape} does not match {manifest_path} {expected}; rerun embed (dvc repro -f embed)"
        )
    return vectors, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="data/pairs", help="pairs directory (pairs stage output)")
    parser.add_argument("--out", default="data/embed", help="output directory")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_params("embed", SCHEMA, args.params)
    pairs = load_pairs(args.pairs)
    vectors = train_vectors(pairs, params)
    with atomic_dir(args.out) as tmp:
        write_embeddings(tmp, pairs.classes, vectors, params)
    print(f"embed: {len(params['seeds'])} seed(s) x {pairs.n_classes} classes x {params['dim']} dims -> {args.out}")


if __name__ == "__main__":
    run_main(main)
