"""The class-vector files every later step reads: the embed stage's and the resample stage's.

Reads/writes, in the folder the embed stage names:
    vectors.npy     float32 [M, R, C, dim]: the R runs behind each of M classifiers' tables
                    (engine jax: R = 1, the lowest-loss restart; gensim: one per seed),
                    classes in the pairs file's class order
    restarts.npz    engine jax only: every restart's w_in, w_out [M, S, C, dim] and final
                    loss [M, S], where the resampling's refits start (embedding/resampling.py)
    manifest.json   {"classes", "classifiers", "seeds", "runs": R, "dim", "engine",
                    "updates_per_class": pairs one epoch trains on per class and classifier,
                    "params": the embed params the vectors were made with}
and in the folder the resample stage names:
    replicates.npy  float32 [M, B, C, dim]: each classifier's class vectors refitted on B
                    bootstrap redraws of the pictures (embedding/resampling.py); NaN for a
                    class with no picture in a redraw
    manifest.json   {"classes", "classifiers", "bootstrap": B, "seed",
                    "params": the resample params}
numpy and json only, so that reading them (evaluate) does not import gensim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import save_npz, write_json
from confusion_embeddings.pairs import Pairs


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


VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
RESTARTS_FILE = "restarts.npz"
REPLICATES_FILE = "replicates.npy"


@dataclass(frozen=True)
class Replicates:
    """What the resample stage makes: the class vectors refitted on bootstrap redraws,
    [M, B, C, dim], and the manifest that says of which classes, classifiers and draws."""

    vectors: np.ndarray
    manifest: dict[str, Any]

    @property
    def seed(self) -> int:
        """The redraws' seed; the evaluate stage draws the classifiers with it as well."""
        return int(self.manifest["seed"])


Sources = dict[str, str]  # what each input is called in an error: {"pairs": "data/pairs", ...}
DEFAULT_SOURCES = {
    "pairs": "the pairs",
    "embed": "the class vectors",
    "resample": "the refitted vectors",
}


def check_same_classes(
    pairs: Pairs, manifest: dict, what: str, sources: Sources | None = None
) -> None:
    """Refuse an embed or resample output made from other classes or classifiers; `sources`
    names the pairs and the `what` output in the message (DEFAULT_SOURCES)."""
    sources = sources or DEFAULT_SOURCES
    if (tuple(manifest["classes"]), tuple(manifest["classifiers"])) != (
        pairs.classes,
        pairs.classifiers,
    ):
        raise PipelineError(
            f"{sources[what]}: its classes or classifiers differ from those of "
            f"{sources['pairs']}; rerun {what} (dvc repro {what})"
        )


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


def _read_folder(folder: str | Path, array_file: str, stage: str):
    """(array, manifest, array path, manifest path) of a stage's folder; a missing file is
    refused naming the stage that writes it."""
    folder = Path(folder)
    manifest_path, array_path = folder / MANIFEST_FILE, folder / array_file
    for path in (manifest_path, array_path):
        if not path.exists():
            raise PipelineError(
                f"{path}: not found; run the {stage} stage first (dvc repro {stage})"
            )
    manifest = json.loads(manifest_path.read_text())
    return np.load(array_path, allow_pickle=False), manifest, array_path, manifest_path


def load_vectors(embed_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read vectors.npy [M, R, C, dim] and manifest.json written by the embed stage."""
    vectors, manifest, vectors_path, manifest_path = _read_folder(embed_dir, VECTORS_FILE, "embed")
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


def write_replicates(out_dir: Path, replicates: Replicates) -> None:
    """The resample stage's files into an (empty) folder."""
    np.save(out_dir / REPLICATES_FILE, replicates.vectors)
    write_json(out_dir / MANIFEST_FILE, replicates.manifest)


def load_replicates(resample_dir: str | Path) -> Replicates:
    """The resample stage's folder, its shape checked against its manifest."""
    vectors, manifest, vectors_path, manifest_path = _read_folder(
        resample_dir, REPLICATES_FILE, "resample"
    )
    m, b, c = len(manifest["classifiers"]), manifest["bootstrap"], len(manifest["classes"])
    if vectors.shape[:3] != (m, b, c):
        raise PipelineError(
            f"{vectors_path}: shape {vectors.shape} does not match {manifest_path} "
            f"({m} classifiers, {b} redraws, {c} classes); rerun it (dvc repro -f resample)"
        )
    return Replicates(vectors, manifest)
