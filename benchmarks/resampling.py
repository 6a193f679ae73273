"""What resampling over pictures costs, and what the Python API costs, measured side by side.

    python -m benchmarks.resampling [--rounds 3] [--big-replicates 20]

1. The evaluate stage's function (method.assess) on the committed CIFAR-10 run's pairs and
   vectors (data/pairs, data/embed: run `dvc repro` or `dvc pull` first) with
   resample.bootstrap = 200 and = 2, alternating over rounds (this machine's speed wanders):
   `evaluate_s_bootstrap_200`, `evaluate_s_bootstrap_2` and their difference, the added cost.
2. 1,000 classes x 1,281,167 pictures (synthetic top-10 guesses, as ImageNet's size): the
   refits' peak memory (resident set size) and time at --big-replicates replicates.
3. The Python API: `import confusion_embeddings` in a fresh interpreter, and one
   `embed_predictions` call on 60,000 pictures x 10 classes (the CIFAR-10 predictions of
   classifier seed_0 where present, else synthetic ones of that size).

Writes benchmarks/resampling.json and benchmarks/api.json (figures with the CPU's name), and
the CIFAR-10 figures under "resampling" in benchmarks/results.json beside `make bench`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.embedding.resampling import resample
from confusion_embeddings.embedding.store import load_embedding
from confusion_embeddings.method import evaluate
from confusion_embeddings.pairs import load_pairs

HERE = Path(__file__).resolve().parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def evaluate_cost(rounds: int) -> dict:
    pairs, embedding = load_pairs("data/pairs"), load_embedding("data/embed")
    config = EvaluateConfig()

    def resample_and_evaluate(bootstrap: int) -> None:  # the two stages, as they run
        replicates = resample(pairs, embedding, ResampleConfig(bootstrap=bootstrap))
        evaluate(pairs, embedding, replicates, config)

    times: dict[int, list[float]] = {200: [], 2: []}
    resample_and_evaluate(2)  # compile once, outside the timing
    for _ in range(rounds):
        for b in (200, 2):
            start = time.perf_counter()
            resample_and_evaluate(b)
            times[b].append(time.perf_counter() - start)
    full, bare = np.median(times[200]), np.median(times[2])
    return {
        "pictures": pairs.n_pictures,
        "classifiers": len(pairs.classifiers),
        "evaluate_s_bootstrap_200": round(float(full), 2),
        "evaluate_s_bootstrap_2": round(float(bare), 2),
        "bootstrap_200_adds_s": round(float(full - bare), 2),
        "rounds": {str(k): [round(t, 2) for t in v] for k, v in times.items()},
    }


def big_cost(replicates: int) -> dict:
    """Run in a child process so that its peak RSS is its own."""
    code = f"""
import json, resource, time
import numpy as np
from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.embedding.engines import embed
from confusion_embeddings.embedding.resampling import replicate_vectors
from confusion_embeddings.pairs import Pairs
n, c, k = 1_281_167, 1000, 10
rng = np.random.default_rng(0)
true = rng.integers(0, c, n).astype(np.int32)
# distinct guesses per picture, none the true class; the first is right 70% of the time
guess = (true[:, None] + rng.integers(1, 40, (n, k)).cumsum(axis=1)) % c
guess[:, 0] = np.where(rng.random(n) < 0.7, true, guess[:, 0])
pairs = Pairs(true=np.repeat(true, k), guess=guess.astype(np.int32).ravel(),
              rank=np.tile(np.arange(1, k + 1, dtype=np.int8), n),
              prob=np.full(n * k, np.nan, np.float32), split=np.full(n * k, -1, np.int8),
              classes=tuple(f"c{{i}}" for i in range(c)), splits=(), groups=None, top_k=k,
              classifier=np.zeros(n * k, np.int16), classifiers=("big",))
params = EmbedConfig(seeds=[0])
e = embed(pairs, params)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
replicate_vectors(pairs, e.restarts, params, ResampleConfig(bootstrap={replicates}))
print(json.dumps({{"seconds": time.perf_counter() - start,
                   "peak_rss_mib_before": before / 1024,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "classes": 1000,
        "pictures": 1_281_167,
        "top_k": 10,
        "replicates": replicates,
        "refit_s": round(got["seconds"], 1),
        "refit_s_per_replicate": round(got["seconds"] / replicates, 2),
        "peak_rss_mib_before_resampling": round(got["peak_rss_mib_before"]),
        "peak_rss_mib": round(got["peak_rss_mib"]),
    }


def api_cost() -> dict:
    code = (
        "import time; t = time.perf_counter(); import confusion_embeddings; "
        "print(time.perf_counter() - t)"
    )
    imports = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    import confusion_embeddings as ce

    source = Path("data/predictions/seed_0.npz")
    if source.exists():
        with np.load(source) as npz:
            labels, classes, probs = npz["labels"], npz["classes"], npz["probs"]
        what = str(source)
    else:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(10), 6000)
        logits = rng.normal(size=(60_000, 10)) + 2 * np.eye(10)[labels]
        probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
        classes, what = [f"c{i}" for i in range(10)], "synthetic"
    calls = []
    for _ in range(3):
        start = time.perf_counter()
        ce.embed_predictions(labels, list(classes), probs=probs)
        calls.append(time.perf_counter() - start)
    return {
        "import_s": round(float(np.median(imports)), 4),
        "predictions": what,
        "pictures": int(len(labels)),
        "call_s_first": round(calls[0], 2),  # JAX compiles on the first call
        "call_s": round(float(np.median(calls[1:])), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-replicates", type=int, default=20)
    args = ap.parse_args()
    machine = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0))}
    api = {**machine, **api_cost()}
    (HERE / "api.json").write_text(json.dumps(api, indent=2) + "\n")
    print(json.dumps(api, indent=2))
    figures = {
        **machine,
        "cifar10": evaluate_cost(args.rounds),
        "many_classes": big_cost(args.big_replicates),
    }
    (HERE / "resampling.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    merge_into_results(figures)


def merge_into_results(figures: dict) -> None:
    """results.json's "resampling" entry: the CIFAR-10 evaluate figures and the CPU."""
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["resampling"] = {"cpu": figures["cpu"], **figures["cifar10"]}
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
