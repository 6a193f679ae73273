"""Is model A's embedding different from model B's? Two tables, compared against their noise.

    python -m confusion_embeddings.compare A B [--out comparison]

A and B each name a table made by the evaluate stage:
  - a folder: a study, or this project (its dvc.yaml's evaluate `--matrices` file), or a
    folder without dvc.yaml holding one matrices file, in it or one level down (what the
    Python API's `Result.save(folder)` writes: folder/reports/similarity_matrices.npz), or
  - a matrices file itself (`similarity_matrices.npz`), or
  - a git revision or an experiment name of the repository in the current folder
    (`dvc exp show` lists them), read through DVC from its cache.

Prints the Spearman between the two tables with its bootstrap interval, the noise ceiling
(how alike two tables of the same underlying table would be, each as noisy as its side) with
its interval, whether they are different beyond noise with the two figures that verdict
compares (the Spearman and the noise ceiling's low bound), and the class pairs that differ
beyond their intervals (evaluation/table_difference.py has the definitions). Writes into --out:
comparison.json (the same figures) and comparison.png (A against B, one dot per class pair,
with interval bars; the differing pairs named).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.dvc_yaml import stage_path
from confusion_embeddings.evaluation.table_difference import Comparison, Side, compare_tables

JSON_FILE = "comparison.json"
PLOT_FILE = "comparison.png"
MATRICES_FILE = "similarity_matrices.npz"  # the evaluate stage's --matrices, by its name


def matrices_path(dvc_yaml: Path) -> Path:
    """The evaluate stage's `--matrices` path in a dvc.yaml, relative to its folder."""
    return stage_path(dvc_yaml, "evaluate", "--matrices")


def _read(data: bytes | Path, name: str) -> Side:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with np.load(source, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("classes", "similarity_mean") if k in npz.files}
            if "bootstrap_tables" in npz.files:
                arrays["pairs"], arrays["tables"] = npz["bootstrap_pairs"], npz["bootstrap_tables"]
    except (OSError, ValueError, EOFError) as exc:
        raise PipelineError(f"{name}: not a matrices file of the evaluate stage ({exc})") from None
    if "tables" not in arrays or "similarity_mean" not in arrays:
        raise PipelineError(
            f"{name}: holds no bootstrap replicates (made before resampling existed?); rerun "
            "its evaluate stage (dvc repro evaluate)"
        )
    return Side(
        name,
        tuple(arrays["classes"].tolist()),
        arrays["similarity_mean"].astype(np.float64),
        arrays["pairs"],
        arrays["tables"].astype(np.float64),
    )


def load_side(spec: str) -> Side:
    """A table from a folder, a matrices file, or a revision of the current repository."""
    path = Path(spec)
    if path.is_file():
        return _read(path, spec)
    if path.is_dir():
        dvc_yaml = path / "dvc.yaml"
        if not dvc_yaml.exists():
            return _read(_saved_matrices(path, spec), spec)
        target = path / matrices_path(dvc_yaml)
        if not target.exists():
            raise PipelineError(f"{target}: not found; run `dvc repro` in {spec} first")
        return _read(target, spec)
    dvc_yaml = Path("dvc.yaml")
    if not dvc_yaml.exists():
        raise PipelineError(
            f"{spec!r} is no folder or file here, and the current folder has no dvc.yaml to "
            "read a revision of; run from the repository, or name folders"
        )
    import dvc.api  # only for revisions: DVC is slow to import
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    target = matrices_path(dvc_yaml).as_posix()
    try:
        with dvc.api.open(target, repo=".", rev=spec, mode="rb") as fh:
            return _read(fh.read(), spec)
    except (DvcException, SCMError, FileNotFoundError) as exc:
        raise PipelineError(
            f"{spec!r}: no folder, file, git revision or experiment of this repository with "
            f"{target} ({type(exc).__name__}); `dvc exp show` lists the experiments"
        ) from None


def _saved_matrices(folder: Path, spec: str) -> Path:
    """The one matrices file in a folder without dvc.yaml, in it or one level down (what
    `Result.save(folder)` writes)."""
    found = sorted([*folder.glob(MATRICES_FILE), *folder.glob(f"*/{MATRICES_FILE}")])
    if len(found) == 1:
        return found[0]
    if not found:
        raise PipelineError(
            f"{spec}: a folder with neither dvc.yaml nor {MATRICES_FILE} (in it or one level "
            "down); name a study, a project, a folder Result.save() wrote, or the file itself"
        )
    raise PipelineError(
        f"{spec}: holds {len(found)} matrices files ({', '.join(map(str, found))}); name one"
    )


def _f(x: float | None, decimals: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{decimals}f}"


def verdict_line(result: Comparison) -> str:
    """The verdict with the two figures it compares, to 4 decimals: one held by a hair
    (0.9877 against 0.9875) says so."""
    tail = f"{(1 - result.confidence) / 2:.1%}"
    bound = f"the noise ceiling's low bound {_f(result.ceiling_low, 4)} (its {tail} quantile)"
    if result.different:
        return f"DIFFERENT beyond noise: Spearman {_f(result.spearman, 4)} < {bound}"
    if result.spearman is None or result.ceiling_low is None:
        return "not different beyond noise: the replicates do not vary enough to tell"
    return f"not different beyond noise: Spearman {_f(result.spearman, 4)} >= {bound}"


def summary_lines(result: Comparison, a: str, b: str) -> list[str]:
    """What the command prints."""
    lo, hi = result.spearman_interval or (None, None)
    c_lo, c_hi = result.ceiling_interval or (None, None)
    share = f"{result.confidence:.0%}"
    lines = [
        f"compare: A = {a}, B = {b} ({len(result.pairs)} class pairs, {result.replicates} "
        "replicates)",
        f"Spearman A vs B: {_f(result.spearman)} (between redraws of A and of B: {_f(lo)} to "
        f"{_f(hi)}, {share})",
        f"noise ceiling: {_f(result.noise_ceiling)} ({_f(c_lo)} to {_f(c_hi)}, {share}; two "
        "tables of the same underlying table, each as noisy as its side)",
        verdict_line(result),
    ]
    if result.differing:
        lines.append(f"class pairs that differ beyond their intervals ({len(result.differing)}):")
        for q in result.differing:
            x, y = result.pairs[q]
            lines.append(
                f"  {x}~{y}: A {result.a[q]:.2f} [{result.a_interval[0, q]:.2f}, "
                f"{result.a_interval[1, q]:.2f}], B {result.b[q]:.2f} "
                f"[{result.b_interval[0, q]:.2f}, {result.b_interval[1, q]:.2f}]"
            )
    else:
        lines.append("no class pair differs beyond its interval")
    return lines


def plot(result: Comparison, a: str, b: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 6.5))
    ax = fig.subplots()
    flagged = np.zeros(len(result.pairs), bool)
    flagged[result.differing] = True
    for mask, colour, label in (
        (~flagged, "tab:blue", "within noise"),
        (flagged, "tab:red", "differs"),
    ):
        if not mask.any():
            continue
        ax.errorbar(
            result.a[mask],
            result.b[mask],
            xerr=np.abs(result.a_interval[:, mask] - result.a[mask]),
            yerr=np.abs(result.b_interval[:, mask] - result.b[mask]),
            fmt="o",
            ms=4,
            color=colour,
            ecolor=colour,
            alpha=0.8,
            elinewidth=0.8,
            label=label,
        )
    for q in result.differing:
        ax.annotate("~".join(result.pairs[q]), (result.a[q], result.b[q]), fontsize=8)
    ax.plot([-1, 1], [-1, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"A: {a} (cosine similarity)")
    ax.set_ylabel(f"B: {b} (cosine similarity)")
    ax.set_title(
        f"One dot per class pair; Spearman {result.spearman:.3f}, "
        f"noise ceiling {result.noise_ceiling:.3f}",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="folder, matrices file, git revision or experiment name")
    ap.add_argument("b", help="the same for the other table")
    ap.add_argument("--out", type=Path, default=Path("comparison"), help="output folder")
    ap.add_argument("--confidence", type=float, default=0.95, help="coverage of the intervals")
    args = ap.parse_args(argv)
    if not 0.5 <= args.confidence < 1:
        raise PipelineError(f"--confidence {args.confidence}: a number in [0.5, 1)")
    result = compare_tables(load_side(args.a), load_side(args.b), args.confidence)
    print("\n".join(summary_lines(result, args.a, args.b)))
    with atomic_dir(args.out) as tmp:
        write_json(tmp / JSON_FILE, result.as_dict(args.a, args.b))
        plot(result, args.a, args.b, tmp / PLOT_FILE)
    print(f"written: {args.out / JSON_FILE}, {args.out / PLOT_FILE}")


def cli() -> None:
    """The console script (pyproject.toml): errors as one line and exit code 2."""
    run_main(main)


if __name__ == "__main__":
    cli()
