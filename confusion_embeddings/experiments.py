"""The experiments of this repository (the project or a study) in a normal terminal.

    python -m confusion_embeddings.experiments [--metrics NAME ...] [--width N]

`dvc exp show` prints every param, metric and dependency: over a hundred columns, which an
80-column terminal cuts to "…". This prints one line per experiment (the workspace, the
baseline commit and every experiment from `dvc exp show --csv`): its name, the params that
differ between the rows (key=value, the section left out where the key is unique) and the
headline figures, table_reliability first, fitted to the terminal's width (COLUMNS, else 80).
Reads `dvc exp show --csv` in the current folder; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys

from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError

# The figures to read first (docs/results.md, "How far to trust a similarity"), in that order.
HEADLINE = ("table_reliability", "interval_halfwidth", "spearman_vs_confusion")
SECTIONS = ("prepare", "classifiers", "train", "predict", "pairs", "embed", "evaluate")
SHORT = {
    "table_reliability": "reliab.",
    "interval_halfwidth": "±mean",
    "spearman_vs_confusion": "vs conf.",
    "nearest_share_min": "nearest",
    "secondary_vs_confusion": "2nd-3rd",
    "classifier_agreement": "agree",
}


def read_experiments(cwd: str | None = None) -> list[dict[str, str]]:
    """The rows of `dvc exp show --csv`, workspace first."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--csv"],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(f"dvc exp show failed here ({last[0]}); run it in a DVC repository")
    return list(csv.DictReader(io.StringIO(proc.stdout)))


def _metric(row: dict[str, str], name: str) -> str:
    """A metric's value whatever file prefix `dvc exp show` gave its column."""
    for column, value in row.items():
        if column == name or column.endswith(f":{name}"):
            return value
    return ""


def changed_params(rows: list[dict[str, str]]) -> list[str]:
    """The param columns whose value differs between the rows."""
    params = [c for c in rows[0] if "." in c and c.split(".", 1)[0] in SECTIONS]
    return [c for c in params if len({row.get(c, "") for row in rows}) > 1]


def _short_keys(columns: list[str]) -> dict[str, str]:
    keys = [c.split(".", 1)[1] for c in columns]
    return {c: (k if keys.count(k) == 1 else c) for c, k in zip(columns, keys, strict=True)}


def table(rows: list[dict[str, str]], metrics: tuple[str, ...], width: int) -> list[str]:
    """The lines to print: name, changed params, then each metric, within `width`."""
    names = [row.get("Experiment") or row.get("rev") or "?" for row in rows]
    changed = changed_params(rows)
    short = _short_keys(changed)
    params = [" ".join(f"{short[c]}={row.get(c, '')}" for c in changed) or "-" for row in rows]
    heads = [SHORT.get(m, m[:8]) for m in metrics]
    values = [[_metric(row, m) or "-" for m in metrics] for row in rows]
    metric_widths = [max(len(h), *(len(v[i]) for v in values)) for i, h in enumerate(heads)]
    name_width = max(len("experiment"), *(len(n) for n in names))
    fixed = name_width + sum(w + 2 for w in metric_widths) + 2
    param_width = max(8, min(max(len("params"), *(len(p) for p in params)), width - fixed))
    lines = [
        f"{'experiment':<{name_width}}  {'params':<{param_width}}"
        + "".join(f"  {h:>{w}}" for h, w in zip(heads, metric_widths, strict=True))
    ]
    for name, p, vals in zip(names, params, values, strict=True):
        shown = p if len(p) <= param_width else p[: param_width - 3] + "..."
        lines.append(
            f"{name:<{name_width}}  {shown:<{param_width}}"
            + "".join(f"  {v:>{w}}" for v, w in zip(vals, metric_widths, strict=True))
        )
    return [line.rstrip() for line in lines]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--metrics", nargs="+", default=list(HEADLINE), help="metric names to show, in order"
    )
    ap.add_argument("--width", type=int, default=None, help="columns (default: the terminal's)")
    args = ap.parse_args(argv)
    width = args.width or int(os.environ.get("COLUMNS") or shutil.get_terminal_size().columns)
    rows = read_experiments()
    if not rows:
        raise PipelineError("no experiments here: run `dvc exp run` first")
    print("\n".join(table(rows, tuple(args.metrics), width)))


def cli() -> None:
    """The console script (pyproject.toml): errors as one line and exit code 2."""
    run_main(main)


if __name__ == "__main__":
    cli()
