"""Stage resample: the class vectors refitted on bootstrap redraws of the pictures (and of
the classifiers), the data every interval of the evaluate stage is read from.

Reads:  --pairs (confusion_embeddings/pairs.py), --embed (embedding/store.py: the vectors,
        the jax engine's restarts the refits start from, and the embed params they were made
        with), params.yaml's `resample:` section (config/resample.py).
Writes: --out, replaced atomically: replicates.npy [classifiers, redraws, classes, dim] and
        manifest.json (embedding/store.py).
"""

from __future__ import annotations

from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir
from confusion_embeddings.embedding.resampling import resample
from confusion_embeddings.embedding.store import load_embedding, write_replicates
from confusion_embeddings.pairs import load_pairs


def main() -> None:
    args = stage_args(
        __doc__,
        {"--pairs": "pairs directory", "--embed": "embed directory", "--out": "output directory"},
    )
    config = ResampleConfig.load(args.params)
    sources = {"pairs": str(args.pairs), "embed": str(args.embed)}
    replicates = resample(load_pairs(args.pairs), load_embedding(args.embed), config, sources)
    with atomic_dir(args.out) as tmp:
        write_replicates(tmp, replicates)
    m, b, c = replicates.vectors.shape[:3]
    print(f"resample: {m} classifier(s) x {b} redraws x {c} classes, refitted -> {args.out}")


if __name__ == "__main__":
    run_main(main)
