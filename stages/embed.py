"""Stage embed: word2vec skip-gram on the (true class, guess) pairs, one model per seed.

Reads:  --pairs (pairs.npz, confusion_embeddings/pairs.py), params.yaml's `embed:` section
        (engines: confusion_embeddings/embedding/engines.py).
Writes: --out, replaced atomically: vectors.npy + manifest.json (embedding/store.py), and
        per seed seed_<s>.txt (word2vec text) + seed_<s>.kv (gensim KeyedVectors).
"""

from __future__ import annotations

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir
from confusion_embeddings.core.params import load_params
from confusion_embeddings.embedding.engines import SCHEMA, train_vectors
from confusion_embeddings.embedding.formats import write_word2vec
from confusion_embeddings.embedding.store import write_vectors
from confusion_embeddings.pairs import load_pairs


def main() -> None:
    args = stage_args(
        __doc__, {"--pairs": "pairs directory (pairs stage output)", "--out": "output directory"}
    )

    params = load_params("embed", SCHEMA, args.params)
    pairs = load_pairs(args.pairs)
    vectors = train_vectors(pairs, params)
    with atomic_dir(args.out) as tmp:
        for seed, vecs in zip(params["seeds"], vectors, strict=True):
            write_word2vec(tmp, f"seed_{seed}", pairs.classes, vecs)
        write_vectors(
            tmp,
            vectors,
            {
                "classes": list(pairs.classes),
                "seeds": params["seeds"],
                "dim": params["dim"],
                "engine": params["engine"],
            },
        )
    print(
        f"embed: {len(params['seeds'])} seed(s) x {pairs.n_classes} classes x "
        f"{params['dim']} dims -> {args.out}"
    )


if __name__ == "__main__":
    run_main(main)
