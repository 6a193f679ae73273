"""Is table A different from table B beyond the noise of each? The figures of compare.py.

Reads and writes nothing. Each side is a table with its bootstrap replicates on a set of
class pairs (the evaluate stage's matrices file). On the class pairs both sides kept:

  spearman        Spearman between A's and B's similarities, with the percentile interval of
                  Spearman(A_b, B_b) over the replicates b
  noise_ceiling   how alike two tables of one and the same underlying table would be, each
                  as noisy as its side: Spearman(M + (A_b - A), M + (B_b - B)) with M the
                  mean of A and B, averaged over b. Its replicates are the null distribution:
                  A and B are **different beyond noise** when their Spearman falls below the
                  share (1 - confidence) / 2 of them
  differing pairs class pairs whose difference A - B is beyond the noise of both: |A - B| /
                  se > c, with se the replicates' std of A_b - B_b and c the `confidence`
                  quantile over b of max over pairs |(A_b - B_b) - (A - B)| / se (a
                  simultaneous band: with 45 pairs, per-pair 95% intervals would flag two
                  pairs of identical tables by chance)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.evaluation.uncertainty import spearman_of


@dataclass(frozen=True)
class Side:
    """One table: its class names, its similarities and their replicates on kept pairs."""

    name: str
    classes: tuple[str, ...]
    mean: np.ndarray  # [C, C]
    pairs: np.ndarray  # int [Q, 2], i < j
    replicates: np.ndarray  # [B, Q]

    def on(self, names: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """(point values [P], replicates [B, P]) on the named class pairs."""
        index = {c: i for i, c in enumerate(self.classes)}
        column = {(int(a), int(b)): q for q, (a, b) in enumerate(self.pairs)}
        ij = [tuple(sorted((index[a], index[b]))) for a, b in names]
        cols = [column[p] for p in ij]
        rows, cc = np.array(ij).T
        return self.mean[rows, cc], self.replicates[:, cols]

    def named_pairs(self) -> list[tuple[str, str]]:
        return [(self.classes[a], self.classes[b]) for a, b in self.pairs]


@dataclass(frozen=True)
class Comparison:
    pairs: list[tuple[str, str]]  # the class pairs both sides kept
    a: np.ndarray  # [P] A's similarities
    b: np.ndarray  # [P]
    a_interval: np.ndarray  # [2, P] A's replicate interval per pair
    b_interval: np.ndarray  # [2, P]
    spearman: float | None
    spearman_interval: tuple[float, float] | None
    noise_ceiling: float | None
    ceiling_low: float | None  # the null's lower quantile: below it is beyond noise
    ceiling_high: float | None  # the null's upper quantile (with ceiling_low, its interval)
    different: bool
    differing: list[int]  # indices into pairs, largest |A - B| first
    confidence: float
    replicates: int

    @property
    def ceiling_interval(self) -> tuple[float, float] | None:
        """The noise ceiling's interval: its replicates' central `confidence` share."""
        if self.ceiling_low is None or self.ceiling_high is None:
            return None
        return self.ceiling_low, self.ceiling_high

    def as_dict(self, a_name: str, b_name: str) -> dict:
        def r(x):
            return None if x is None else round(float(x), 4)

        return {
            "a": a_name,
            "b": b_name,
            "class_pairs": len(self.pairs),
            "replicates": self.replicates,
            "confidence": self.confidence,
            "spearman": r(self.spearman),
            "spearman_interval": [r(x) for x in self.spearman_interval or ()] or None,
            "noise_ceiling": r(self.noise_ceiling),
            "noise_ceiling_low": r(self.ceiling_low),
            "noise_ceiling_high": r(self.ceiling_high),
            "different_beyond_noise": self.different,
            "differing_pairs": [
                {
                    "pair": list(self.pairs[q]),
                    "a": r(self.a[q]),
                    "b": r(self.b[q]),
                    "a_interval": [r(x) for x in self.a_interval[:, q]],
                    "b_interval": [r(x) for x in self.b_interval[:, q]],
                }
                for q in self.differing
            ],
        }


def compare_tables(a: Side, b: Side, confidence: float = 0.95) -> Comparison:
    """The figures of the module docstring."""
    if set(a.classes) != set(b.classes):
        only = sorted(set(a.classes) ^ set(b.classes))
        raise PipelineError(
            f"{a.name} and {b.name} name different classes ({', '.join(only[:10])} in one "
            "only); compare needs tables of the same classes"
        )
    theirs = {tuple(sorted(p)) for p in b.named_pairs()}
    names = [p for p in a.named_pairs() if tuple(sorted(p)) in theirs]
    if len(names) < 3:
        raise PipelineError(
            f"{a.name} and {b.name} share {len(names)} class pairs with replicates; "
            "compare needs 3 or more"
        )
    pa, ra = a.on(names)
    pb, rb = b.on(names)
    n = min(len(ra), len(rb))
    if n < 2:
        raise PipelineError(
            f"{a.name if len(ra) < 2 else b.name}: fewer than 2 bootstrap replicates; rerun "
            "resample with resample.bootstrap >= 2"
        )
    ra, rb = ra[:n], rb[:n]
    tail = 100 * (1 - confidence) / 2
    rhos = _valid([spearman_of(x, y) for x, y in zip(ra, rb, strict=True)])
    middle = (pa + pb) / 2
    null = _valid(
        [spearman_of(middle + x - pa, middle + y - pb) for x, y in zip(ra, rb, strict=True)]
    )
    rho = spearman_of(pa, pb)
    ceiling_low = float(np.percentile(null, tail)) if null.size else None
    ceiling_high = float(np.percentile(null, 100 - tail)) if null.size else None
    diff, boot = pa - pb, ra - rb
    se = np.nanstd(boot, axis=0)
    se = np.where(se > 0, se, np.nan)
    excess = np.nanmax(np.abs(boot - diff) / se, axis=1)
    critical = float(np.nanpercentile(excess, 100 - 2 * tail)) if excess.size else np.inf
    beyond = np.flatnonzero(np.abs(diff) / se > critical)
    return Comparison(
        pairs=names,
        a=pa,
        b=pb,
        a_interval=np.nanpercentile(ra, [tail, 100 - tail], axis=0),
        b_interval=np.nanpercentile(rb, [tail, 100 - tail], axis=0),
        spearman=rho,
        spearman_interval=(
            (float(np.percentile(rhos, tail)), float(np.percentile(rhos, 100 - tail)))
            if rhos.size
            else None
        ),
        noise_ceiling=float(null.mean()) if null.size else None,
        ceiling_low=ceiling_low,
        ceiling_high=ceiling_high,
        different=bool(rho is not None and ceiling_low is not None and rho < ceiling_low),
        differing=[int(q) for q in beyond[np.argsort(-np.abs(diff[beyond]), kind="stable")]],
        confidence=confidence,
        replicates=n,
    )


def _valid(values: list[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None], np.float64)
