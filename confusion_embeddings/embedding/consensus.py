"""One embedding to use: every run's class vectors rotated onto a common reference, averaged.

Each run (one classifier, one word2vec seed) leaves its class vectors in an arbitrary
rotation: the objective only sees inner products, so its cosine table is the run's result,
not its coordinates. Averaging raw vectors across runs would mix those rotations. Instead
(generalised Procrustes analysis): normalise every run's vectors to unit length (cosine is
the measure), rotate each run onto the current reference with an orthogonal Procrustes fit
(scipy.linalg.orthogonal_procrustes), take the mean of the rotated runs as the new
reference, and repeat until the reference stops moving. The consensus vector of a class is
the mean of its aligned unit vectors; its dispersion is the mean over runs of
1 - cos(aligned run vector, consensus vector): 0 when every run puts the class in the same
place, larger the less the runs agree on it.

Reads and writes nothing (embedding/formats.py writes the result).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes

MAX_ITERATIONS = 100
TOLERANCE = 1e-10  # largest change of the reference between iterations, per coordinate


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), np.finfo(np.float64).tiny)


def cosine_matrices(vectors: np.ndarray) -> np.ndarray:
    """[..., C, dim] -> [..., C, C] cosine similarities (float64), one matrix per vector set."""
    u = unit(np.asarray(vectors, np.float64))
    return u @ np.swapaxes(u, -1, -2)


@dataclass(frozen=True)
class Consensus:
    vectors: np.ndarray  # [C, dim] the mean of the aligned runs (not normalised)
    aligned: np.ndarray  # [R, C, dim] every run's unit vectors, rotated onto the consensus
    dispersion: np.ndarray  # [C] mean over runs of 1 - cos(run vector, consensus vector)
    iterations: int

    def table(self) -> np.ndarray:
        """The consensus vectors' own cosine table [C, C]."""
        return cosine_matrices(self.vectors)


def align_runs(runs: np.ndarray) -> Consensus:
    """Generalised Procrustes alignment of [R, C, dim] runs (module docstring)."""
    runs = unit(np.asarray(runs, np.float64))
    reference = runs[0]
    iterations, moved = 0, np.inf
    while moved >= TOLERANCE and iterations < MAX_ITERATIONS:
        rotations = [orthogonal_procrustes(run, reference)[0] for run in runs]
        aligned = np.stack([run @ r for run, r in zip(runs, rotations, strict=True)])
        # Unit rows keep the reference's scale fixed, so the fit cannot shrink it away.
        new = unit(aligned.mean(axis=0))
        moved = float(np.abs(new - reference).max())
        reference, iterations = new, iterations + 1
    consensus = aligned.mean(axis=0)
    cos = (aligned * unit(consensus)[None]).sum(axis=-1)  # [R, C]
    return Consensus(consensus, aligned, (1.0 - cos).mean(axis=0), iterations)


def spread_around(consensus: Consensus, runs: np.ndarray) -> Consensus:
    """The consensus with other runs [R, C, dim] (the bootstrap replicates) rotated onto it
    as its aligned runs, and each class's dispersion measured from them: how far a class
    moves when the pictures are drawn again. Runs with an undefined vector are left out."""
    reference = unit(np.asarray(consensus.vectors, np.float64))
    runs = unit(np.asarray(runs, np.float64))
    runs = runs[~np.isnan(runs).any(axis=(1, 2))]
    if not len(runs):
        return consensus
    aligned = np.stack([run @ orthogonal_procrustes(run, reference)[0] for run in runs])
    cos = (aligned * reference[None]).sum(axis=-1)
    return Consensus(consensus.vectors, aligned, (1.0 - cos).mean(axis=0), consensus.iterations)
