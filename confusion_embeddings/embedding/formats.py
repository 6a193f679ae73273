"""Class vectors in the formats other tools load: word2vec text and gensim KeyedVectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gensim.models import KeyedVectors


def keyed_vectors(classes: tuple[str, ...], vectors: np.ndarray) -> KeyedVectors:
    """KeyedVectors holding `vectors` [C, dim] in class order (gensim's own is by frequency)."""
    kv = KeyedVectors(vector_size=vectors.shape[1], dtype=np.float32)
    kv.add_vectors(list(classes), vectors)
    # gensim's save() records a log of events (with the time and the output's temporary
    # path) inside the file; without it equal vectors give byte-identical .kv files.
    kv.lifecycle_events = None
    return kv


def write_word2vec(out_dir: Path, stem: str, classes: tuple[str, ...], vectors: np.ndarray) -> None:
    """<stem>.txt (word2vec text format) and <stem>.kv (KeyedVectors.load) in out_dir."""
    kv = keyed_vectors(classes, vectors)
    kv.save_word2vec_format(str(out_dir / f"{stem}.txt"))
    kv.save(str(out_dir / f"{stem}.kv"))
