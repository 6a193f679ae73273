"""gensim's Word2Vec on the pairs: the paper's engine.

Each pair is one two-word sentence [true, guess]; skip-gram (sg=1) with window >= 1 makes
each word predict the other, so both directions are trained. How much gensim trains
(`sample`, `epochs`, `alpha`) is the result's main lever on a vocabulary of a few words:
docs/design/embedding-engines.md has the measurements behind the defaults and `shuffle`.

Reproducible: workers=1 and a fixed seed make gensim deterministic (its docs say so), and
since gensim 4 the initial vectors do not depend on PYTHONHASHSEED. The corpus is fed as a
temporary LineSentence file (corpus_file=), read in C++ in one pass in file order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from gensim.models import Word2Vec

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.pairs import Pairs

# Pairs written per chunk to the temporary corpus: bounds the Python strings alive at once.
_CORPUS_CHUNK = 1 << 20


def _write_corpus(path: Path, pairs: Pairs, order: np.ndarray) -> None:
    names = pairs.classes
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, order.size, _CORPUS_CHUNK):
            chosen = order[start : start + _CORPUS_CHUNK]
            true, guess = pairs.true[chosen].tolist(), pairs.guess[chosen].tolist()
            fh.write("".join(f"{names[a]} {names[b]}\n" for a, b in zip(true, guess, strict=True)))


def train_gensim(pairs: Pairs, counts: np.ndarray, config: EmbedConfig) -> np.ndarray:
    """One Word2Vec model per seed; float32 [S, C, dim] in class order. `counts`: how often
    each class occurs in the corpus (every class at least once)."""
    freq = {name: int(n) for name, n in zip(pairs.classes, counts, strict=True)}
    n_pairs = pairs.true.shape[0]
    out = np.empty((len(config.seeds), pairs.n_classes, config.dim), np.float32)
    with tempfile.TemporaryDirectory(prefix="embed-corpus-") as tmp:
        corpus = Path(tmp) / "pairs.txt"
        if not config.shuffle:
            _write_corpus(corpus, pairs, np.arange(n_pairs))
        for i, seed in enumerate(config.seeds):
            if config.shuffle:  # a fresh order per seed: the pairs file is sorted by class
                _write_corpus(corpus, pairs, np.random.default_rng(seed).permutation(n_pairs))
            model = Word2Vec(
                vector_size=config.dim,
                window=config.window,
                sg=1,
                hs=0,
                negative=config.negative,
                sample=config.sample,
                alpha=config.alpha,
                min_alpha=config.min_alpha,
                epochs=config.epochs,
                min_count=1,
                workers=1,  # more workers race on the shared weights: not reproducible
                seed=seed,
            )
            # The vocabulary from the counts: skips gensim's own Python scan of the file.
            model.build_vocab_from_freq(freq, corpus_count=n_pairs)
            model.train(
                corpus_file=str(corpus), total_words=int(counts.sum()), epochs=config.epochs
            )
            out[i] = np.stack([model.wv[name] for name in pairs.classes])
    return out
