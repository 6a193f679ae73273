"""Stage embed: word2vec skip-gram on the (true class, guess) pairs, per classifier and seed.

Reads:  --pairs (pairs.npz, confusion_embeddings/pairs.py), params.yaml's `embed:` section
        (engines: confusion_embeddings/embedding/engines.py).
Writes: --out, replaced atomically: vectors.npy [classifiers, seeds, classes, dim] +
        manifest.json (confusion_embeddings/embedding/store.py).
"""

from __future__ import annotations

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir
from confusion_embeddings.core.params import load_params
from confusion_embeddings.embedding.engines import (
    SCHEMA,
    picture_reliability,
    train_all,
    updates_per_class,
)
from confusion_embeddings.embedding.store import write_vectors
from confusion_embeddings.pairs import load_pairs


def main() -> None:
    args = stage_args(
        __doc__,
        {"--pairs": "pairs directory (pairs stage output)", "--out": "output directory"},
    )
    params = load_params("embed", SCHEMA, args.params)
    pairs = load_pairs(args.pairs)
    vectors = train_all(pairs, params)
    manifest = {
        "classes": list(pairs.classes),
        "classifiers": list(pairs.classifiers),
        "seeds": params["seeds"],
        "dim": params["dim"],
        "engine": params["engine"],
        "updates_per_class": round(updates_per_class(pairs, params), 1),
        "picture_reliability": [
            picture_reliability(pairs.of(i), params) for i in range(len(pairs.classifiers))
        ],
    }
    with atomic_dir(args.out) as tmp:
        write_vectors(tmp, vectors, manifest)
    m, s = vectors.shape[:2]
    print(
        f"embed: {m} classifier(s) x {s} seed(s) x {pairs.n_classes} classes x "
        f"{params['dim']} dims -> {args.out}"
    )


if __name__ == "__main__":
    run_main(main)
