"""The class-vector files every later step reads: `vectors.npy` + `manifest.json`.

Reads/writes, in the folder the embed stage names:
    vectors.npy     float32 [M, R, C, dim]: the R runs behind each of M classifiers' tables
                    (engine jax: R = 1, the lowest-loss restart; gensim: one per seed),
                    classes in the pairs file's class order
    restarts.npz    engine jax only: every restart's w_in, w_out [M, S, C, dim] and final
                    loss [M, S], where the resampling's refits start (embedding/resampling.py)
    manifest.json   {"classes", "classifiers", "seeds", "runs": R, "dim", "engine",
                    "updates_per_class": pairs one epoch trains on per class and classifier,
                    "params": the embed params the vectors were made with}
numpy and json only, so that reading them (evaluate) does not import gensim.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import save_npz, write_json
from confusion_embeddings.embedding.engines import Embedding, Restarts

VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
RESTARTS_FILE = "restarts.npz"


def write_embedding(out_dir: Path, embedding: Embedding) -> None:
    """The embedding's files into an (empty) folder."""
    np.save(out_dir / VECTORS_FILE, embedding.vectors)
    restarts = embedding.restarts
    if restarts is not None:
        save_npz(
            out_dir / RESTARTS_FILE,
            {"w_in": restarts.w_in, "w_out": restarts.w_out, "loss": restarts.loss},
        )
    write_json(out_dir / MANIFEST_FILE, embedding.manifest)


def load_embedding(embed_dir: str | Path) -> Embedding:
    """The embed stage's folder: vectors, restarts (engine jax) and manifest."""
    vectors, manifest = load_vectors(embed_dir)
    path = Path(embed_dir) / RESTARTS_FILE
    restarts = None
    if path.exists():
        with np.load(path, allow_pickle=False) as npz:
            restarts = Restarts(npz["w_in"], npz["w_out"], npz["loss"])
    return Embedding(vectors, restarts, manifest)


def load_vectors(embed_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read vectors.npy [M, R, C, dim] and manifest.json written by the embed stage."""
    embed_dir = Path(embed_dir)
    manifest_path, vectors_path = embed_dir / MANIFEST_FILE, embed_dir / VECTORS_FILE
    for path in (manifest_path, vectors_path):
        if not path.exists():
            raise PipelineError(f"{path}: not found; run the embed stage first (dvc repro embed)")
    manifest = json.loads(manifest_path.read_text())
    vectors = np.load(vectors_path, allow_pickle=False)
    expected = (
        len(manifest.get("classifiers", ())),
        manifest.get("runs", len(manifest["seeds"])),
        len(manifest["classes"]),
        manifest["dim"],
    )
    if vectors.shape != expected:
        raise PipelineError(
            f"{vectors_path}: shape {vectors.shape} does not match {manifest_path} {expected}; "
            "rerun embed (dvc repro -f embed)"
        )
    return vectors, manifest
