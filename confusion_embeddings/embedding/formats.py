"""Class vectors in the formats other tools load.

Writes (`write_class_vectors`, into the folder the evaluate stage names):
    vectors.txt            word2vec text format (gensim KeyedVectors.load_word2vec_format)
    vectors.kv             gensim KeyedVectors (KeyedVectors.load)
    vectors.csv            class, group, dispersion, then one column per dimension
    projector/vectors.tsv  TensorBoard Embedding Projector: one row of numbers per class
    projector/metadata.tsv ... and its labels: header `class<TAB>group`, one row per class
All in class order; equal vectors give equal bytes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def keyed_vectors(classes: tuple[str, ...], vectors: np.ndarray):
    """gensim KeyedVectors holding `vectors` [C, dim] in class order (gensim's own is by
    frequency). gensim is imported here, where a file is written, not with the module."""
    from gensim.models import KeyedVectors

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


def write_class_vectors(
    out_dir: Path,
    classes: tuple[str, ...],
    group_of: list[str],
    vectors: np.ndarray,
    dispersion: np.ndarray,
) -> None:
    """Every format of the module docstring into out_dir; `group_of` is each class's group
    name ("" outside every group)."""
    vectors = np.asarray(vectors, np.float32)
    write_word2vec(out_dir, "vectors", classes, vectors)
    dims = [f"v{d + 1}" for d in range(vectors.shape[1])]
    with open(out_dir / "vectors.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["class", "group", "dispersion", *dims])
        for name, group, disp, vec in zip(classes, group_of, dispersion, vectors, strict=True):
            writer.writerow([name, group, f"{disp:.6f}", *(f"{x:.6g}" for x in vec)])
    projector = out_dir / "projector"
    projector.mkdir()
    with open(projector / "vectors.tsv", "w", encoding="utf-8") as fh:
        fh.writelines("\t".join(f"{x:.6g}" for x in vec) + "\n" for vec in vectors)
    with open(projector / "metadata.tsv", "w", encoding="utf-8") as fh:
        fh.write("class\tgroup\n")
        fh.writelines(f"{name}\t{group}\n" for name, group in zip(classes, group_of, strict=True))
