"""A 2-D map of the classes that keeps the table's neighbours: metric MDS on 1 - cosine.

Reads and writes nothing. A projection of the 5-D vectors on their two principal axes can put
the table's most similar pair far apart (it keeps variance, not neighbours); metric MDS places
the classes so that map distances match the table's distances 1 - cosine as well as two
dimensions allow (SMACOF, de Leeuw 1977, from the classical-MDS solution). How much it
distorts is measured and printed on the plot:

  stress         Kruskal's stress-1, sqrt(sum (d_ij - delta_ij)^2 / sum delta_ij^2): 0 is exact,
                 above ~0.2 the map is a rough sketch
  nearest kept   the share of classes whose nearest class on the map is their nearest in the
                 table
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import orthogonal_procrustes

SMACOF_ITERATIONS = 300
SMACOF_TOLERANCE = 1e-9  # stop when the stress changes less than this between iterations


@dataclass(frozen=True)
class ClassMap:
    coords: np.ndarray  # [C, 2]
    stress: float
    nearest_kept: float


def distances(table: np.ndarray) -> np.ndarray:
    """The table's dissimilarities 1 - cosine, symmetric, zero diagonal."""
    d = np.clip(1.0 - (table + table.T) / 2, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def _classical(d: np.ndarray) -> np.ndarray:
    c = len(d)
    j = np.eye(c) - 1.0 / c
    b = -0.5 * j @ (d**2) @ j
    values, vectors = np.linalg.eigh(b)
    top = np.argsort(values)[::-1][:2]
    return vectors[:, top] * np.sqrt(np.maximum(values[top], 0.0))


def _stress(x: np.ndarray, d: np.ndarray) -> float:
    fitted = np.linalg.norm(x[:, None] - x[None], axis=-1)
    iu = np.triu_indices(len(d), k=1)
    return float(np.sqrt(((fitted - d)[iu] ** 2).sum() / max((d[iu] ** 2).sum(), 1e-300)))


def smacof(d: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Metric MDS of a dissimilarity matrix [C, C] into 2-D (Guttman transform iterations)."""
    c = len(d)
    x = _classical(d) if start is None else start.copy()
    previous = np.inf
    for _ in range(SMACOF_ITERATIONS):
        fitted = np.linalg.norm(x[:, None] - x[None], axis=-1)
        ratio = np.where(fitted > 0, d / np.maximum(fitted, 1e-300), 0.0)
        b = -ratio
        np.fill_diagonal(b, 0.0)
        np.fill_diagonal(b, -b.sum(axis=1))
        x = b @ x / c
        stress = _stress(x, d)
        if previous - stress < SMACOF_TOLERANCE:
            break
        previous = stress
    return x


def _nearest(m: np.ndarray, largest: bool) -> np.ndarray:
    m = np.where(np.eye(len(m), dtype=bool), -np.inf if largest else np.inf, m)
    return m.argmax(axis=1) if largest else m.argmin(axis=1)


def class_map(table: np.ndarray) -> ClassMap:
    """The MDS map of a similarity table, with its axes' signs fixed so reruns agree."""
    d = distances(table)
    x = smacof(d)
    x = x - x.mean(axis=0)
    x = x * np.where(x[np.abs(x).argmax(axis=0), [0, 1]] < 0, -1.0, 1.0)
    fitted = np.linalg.norm(x[:, None] - x[None], axis=-1)
    kept = float((_nearest(fitted, largest=False) == _nearest(table, largest=True)).mean())
    return ClassMap(x, _stress(x, d), kept)


def replicate_maps(reference: ClassMap, tables: list[np.ndarray]) -> np.ndarray:
    """Each replicate table's map [R, C, 2], started from the reference's layout and rotated
    onto it (orthogonal Procrustes), so that the faint points show how far classes move."""
    out = []
    for table in tables:
        x = smacof(distances(table), start=reference.coords)
        x = x - x.mean(axis=0)
        rotation, _ = orthogonal_procrustes(x, reference.coords)
        out.append(x @ rotation)
    return np.array(out).reshape(len(out), *reference.coords.shape)
