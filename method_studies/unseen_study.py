"""The leave-one-class-out table (docs/unseen.md): one DVC experiment per unseen class.

Reads the experiments named <prefix><class> (git refs refs/exps/.../<name>, as `dvc exp
run -n` names them): from each, params.yaml, metrics/train/seed_<s>.json (the test accuracy
on the known classes), metrics/similarity.json (unseen_*, novelty_auroc_*) and
reports/similarity.csv (the unseen class's row); and the reference table
references/similarity.csv; the report's line with every novelty score's AUROC. Prints the
markdown table and writes method_studies/unseen_study.json.

    python -m method_studies.unseen_study [--prefix unseen-] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def experiments(prefix: str) -> dict[str, str]:
    """{experiment name: commit} of every experiment whose name starts with `prefix`."""
    out = {}
    for line in git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").split("\n"):
        if not line:
            continue
        sha, ref = line.split()
        name = ref.rsplit("/", 1)[-1]
        if name.startswith(prefix) and not ref.startswith("refs/exps/celery"):
            out[name] = sha
    return dict(sorted(out.items()))


def nearest(rows: list[dict[str, str]], cls: str, skip: set[str]) -> str | None:
    """The class's most similar neighbour outside `skip` in a similarity CSV's rows."""
    mine = [r for r in rows if r["class"] == cls and r["neighbour"] not in skip]
    return max(mine, key=lambda r: float(r["cosine"]))["neighbour"] if mine else None


def study_row(sha: str, reference: list[dict[str, str]]) -> dict:
    params = yaml.safe_load(git("show", f"{sha}:params.yaml"))
    (cls,) = params["train"]["unseen"]  # one class left out per experiment
    seeds = params["classifiers"]["seeds"]
    train = [json.loads(git("show", f"{sha}:metrics/train/seed_{s}.json")) for s in seeds]
    sim = json.loads(git("show", f"{sha}:metrics/similarity.json"))
    table = list(csv.DictReader(io.StringIO(git("show", f"{sha}:reports/similarity.csv"))))
    report = git("show", f"{sha}:reports/similarity.md")
    every = re.search(r"Every score's AUROC, all unseen pictures: (.*)\.", report)
    scores = dict(item.split() for item in every.group(1).split(", ")) if every else {}
    return {
        "unseen": cls,
        "classifiers": len(seeds),
        "epochs": params["train"]["epochs"],
        "known_test_accuracy": round(statistics.mean(t["test_accuracy"] for t in train), 4),
        "nearest": nearest(table, cls, {cls}),
        "reference_nearest": nearest(reference, cls, {cls}),
        **{k: v for k, v in sim.items() if k.startswith(("unseen_", "novelty_"))},
        "auroc_every_score": {k: float(v) for k, v in scores.items() if v != "-"},
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| unseen class | test accuracy (known classes) | nearest known class | reference's "
        "nearest | row Spearman | novelty AUROC | AUROC max_prob | called new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "" if r["nearest"] == r["reference_nearest"] else " (differs)"
        lines.append(
            f"| {r['unseen']} | {r['known_test_accuracy']:.4f} | {r['nearest']}{mark} | "
            f"{r['reference_nearest']} | {r.get('unseen_row_spearman', '-')} | "
            f"{r.get('novelty_auroc', '-')} | {r.get('novelty_auroc_max_prob', '-')} | "
            f"{r.get('unseen_called_new', 0):.0%} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> dict:
    rhos = [r["unseen_row_spearman"] for r in rows if "unseen_row_spearman" in r]
    out = {
        "experiments": len(rows),
        "unseen_nearest_match": sum(r["nearest"] == r["reference_nearest"] for r in rows),
        "median_unseen_row_spearman": round(statistics.median(rhos), 4) if rhos else None,
    }
    for score in sorted({k for r in rows for k in r["auroc_every_score"]}):
        values = [r["auroc_every_score"][score] for r in rows if score in r["auroc_every_score"]]
        out[f"mean_auroc_{score}"] = round(statistics.mean(values), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="unseen-")
    ap.add_argument("--out", type=Path, default=ROOT / "method_studies" / "unseen_study.json")
    args = ap.parse_args()
    with open(ROOT / "references" / "similarity.csv", newline="") as fh:
        reference = list(csv.DictReader(fh))
    exps = experiments(args.prefix)
    if not exps:
        raise SystemExit(f"no experiment named {args.prefix}*: run the study (docs/unseen.md)")
    rows = [study_row(sha, reference) for sha in exps.values()]
    result = {"summary": summary(rows), "rows": rows, "experiments": exps}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print()
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
