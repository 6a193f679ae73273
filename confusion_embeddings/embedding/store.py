"""The class-vector files every later step reads: `vectors.npy` + `manifest.json`.

Reads/writes, in the folder the embed stage names:
    vectors.npy     float32 [M, S, C, dim]: one vector set per classifier and word2vec
                    seed, classes in the pairs file's class order
    manifest.json   {"classes", "classifiers", "seeds", "dim", "engine",
                    "updates_per_class": pairs one epoch trains on per class and classifier}
numpy and json only, so that reading them (evaluate) does not import gensim.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import write_json

VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"


def write_vectors(out_dir: Path, vectors: np.ndarray, manifest: dict[str, Any]) -> None:
    np.save(out_dir / VECTORS_FILE, vectors)
    write_json(out_dir / MANIFEST_FILE, manifest)


def load_vectors(embed_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read vectors.npy [M, S, C, dim] and manifest.json written by the embed stage."""
    embed_dir = Path(embed_dir)
    manifest_path, vectors_path = embed_dir / MANIFEST_FILE, embed_dir / VECTORS_FILE
    for path in (manifest_path, vectors_path):
        if not path.exists():
            raise PipelineError(f"{path}: not found; run the embed stage first (dvc repro embed)")
    manifest = json.loads(manifest_path.read_text())
    vectors = np.load(vectors_path, allow_pickle=False)
    expected = (
        len(manifest.get("classifiers", ())),
        len(manifest["seeds"]),
        len(manifest["classes"]),
        manifest["dim"],
    )
    if vectors.shape != expected:
        raise PipelineError(
            f"{vectors_path}: shape {vectors.shape} does not match {manifest_path} {expected}; "
            "rerun embed (dvc repro -f embed)"
        )
    return vectors, manifest
