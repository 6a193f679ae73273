"""Benchmark: pairs -> embed -> evaluate on an ImageNet-sized predictions file.

Writes (in a temporary directory, removed at the end unless --keep): a synthetic `topk`
predictions file of 1,281,167 pictures x 1000 classes (by default the full ranking, k = 1000,
int16: 2.6 GB) with a planted structure (100 groups of 10 classes; a picture's true class is
boosted, and so are the other classes of its group), then runs each stage's real CLI
(`python -m stages.<name>`) one after the other and prints, per stage, the wall time and the
peak resident memory of that stage's process (os.wait4's ru_maxrss, see run_stage).

    .venv/bin/python benchmarks/pairs_many_classes.py            # the full run (~10 min)
    .venv/bin/python benchmarks/pairs_many_classes.py --n 100000 --k 5 --seeds 2   # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml
from numpy.lib import format as npy_format

ROOT = Path(__file__).resolve().parents[1]
GROUP_SIZE = 10
TRUE_BONUS = 3.0  # logit-like boost of the true class: ~85% top-1 accuracy
GROUP_BONUS = 1.5  # boost of the other classes of the true class's group
GEN_BLOCK = 16384  # rows generated at once


def write_synthetic_topk(path: Path, n: int, c: int, k: int, seed: int) -> None:
    """Stream a predictions npz to disk: labels, classes, topk (int16), split(s), groups."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n).astype(np.int32)
    classes = np.array([f"n{i:08d}" for i in range(c)])
    groups = {
        f"g{g:03d}": classes[g * GROUP_SIZE : (g + 1) * GROUP_SIZE].tolist()
        for g in range(c // GROUP_SIZE)
    }
    group_of = np.arange(c) // GROUP_SIZE
    small = {
        "labels": labels,
        "classes": classes,
        "split": np.zeros(n, np.int8),
        "splits": np.array(["train"]),
        "groups": np.array(json.dumps(groups)),
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in small.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                npy_format.write_array(fh, arr, allow_pickle=False)
        with zf.open("topk.npy", "w", force_zip64=True) as fh:
            header = {
                "descr": npy_format.dtype_to_descr(np.dtype(np.int16)),
                "fortran_order": False,
                "shape": (n, k),
            }
            npy_format.write_array_header_2_0(fh, header)
            for start in range(0, n, GEN_BLOCK):
                lab = labels[start : start + GEN_BLOCK]
                scores = rng.standard_normal((lab.size, c), dtype=np.float32)
                scores += GROUP_BONUS * (group_of[None, :] == group_of[lab][:, None])
                scores[np.arange(lab.size), lab] += TRUE_BONUS
                if k < c:
                    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
                    ranked = np.take_along_axis(top, order, axis=1)
                else:
                    ranked = np.argsort(-scores, axis=1)
                fh.write(ranked.astype(np.int16).tobytes())


# Runs the stage and reports on it. On Linux a child's ru_maxrss includes what its parent
# had resident when it forked (exec keeps the high-water mark), so measured straight from a
# benchmark process holding PyTorch and JAX it reads as that process's size, not the stage's.
# This launcher is a fresh, small interpreter: the stage it forks starts from ~10 MiB.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"seconds": time.perf_counter() - start, "rss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, fh)
"""


def run_stage(name: str, args: list[str]) -> tuple[float, float]:
    """Run `python -m stages.<name> args`; return (wall seconds, peak RSS in MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        subprocess.run(
            [
                sys.executable,
                "-c",
                _LAUNCHER,
                str(report),
                sys.executable,
                "-m",
                f"stages.{name}",
                *args,
            ],
            cwd=ROOT,
            check=True,
        )
        usage = json.loads(report.read_text())
    if usage["code"] != 0:
        raise SystemExit(f"stage {name} failed with exit code {usage['code']}")
    return usage["seconds"], usage["rss_kib"] / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167, help="pictures")
    parser.add_argument("--c", type=int, default=1000, help="classes (a multiple of 10)")
    parser.add_argument("--k", type=int, default=1000, help="guesses stored per picture")
    parser.add_argument("--top-k", type=int, default=3, help="pairs.top_k")
    parser.add_argument("--seeds", type=int, default=10, help="embed seeds")
    parser.add_argument("--dim", type=int, default=5, help="embed.dim")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    try:
        pred = tmp / "predictions.npz"
        t = time.perf_counter()
        write_synthetic_topk(pred, args.n, args.c, args.k, seed=0)
        gen_s = time.perf_counter() - t
        print(
            f"generated {pred.stat().st_size / 2**30:.2f} GiB ({args.n} x {args.k} topk int16, "
            f"C={args.c}) in {gen_s:.1f} s"
        )

        params = tmp / "params.yaml"
        params.write_text(
            yaml.safe_dump(
                {
                    "pairs": {"top_k": args.top_k},
                    "embed": {"seeds": list(range(args.seeds)), "dim": args.dim},
                    "evaluate": {"groups": None},
                }
            )
        )
        p = ["--params", str(params)]
        # One predictions file (no --seeds): one classifier, the pairs stage's single-file mode.
        stages = [
            (
                "pairs",
                [
                    "--predictions",
                    str(pred),
                    "--out",
                    f"{tmp}/pairs",
                    "--metrics",
                    f"{tmp}/pairs.json",
                    *p,
                ],
            ),
            ("embed", ["--pairs", f"{tmp}/pairs", "--out", f"{tmp}/embed", *p]),
            (
                "evaluate",
                [
                    "--pairs",
                    f"{tmp}/pairs",
                    "--embed",
                    f"{tmp}/embed",
                    "--metrics",
                    f"{tmp}/similarity.json",
                    "--table",
                    f"{tmp}/similarity.csv",
                    "--report",
                    f"{tmp}/similarity.md",
                    "--plots",
                    f"{tmp}/plots",
                    "--matrices",
                    f"{tmp}/m.npz",
                    "--vectors",
                    f"{tmp}/class_vectors",
                    *p,
                ],
            ),
        ]
        results = [(name, *run_stage(name, stage_args)) for name, stage_args in stages]

        print(f"\n{'stage':<10}{'wall s':>10}{'peak RSS MiB':>15}")
        for name, wall, rss in results:
            print(f"{name:<10}{wall:>10.1f}{rss:>15.0f}")
        sim = json.loads((tmp / "similarity.json").read_text())
        print(
            "\nevaluate: "
            + ", ".join(
                f"{key} {sim[key]}"
                for key in (
                    "spearman_vs_confusion",
                    "mean_offdiag_cosine",
                    "collapsed",
                    "group_separation",
                    "group_nn_agreement",
                    "group_ari",
                )
            )
        )
        print("pairs:", (tmp / "pairs.json").read_text().replace("\n", " "))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
