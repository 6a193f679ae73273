"""Stage embed: word2vec skip-gram on the (true class, guess) pairs, per classifier.

Reads:  --pairs (pairs.npz, confusion_embeddings/pairs.py), params.yaml's `embed:` section
        (config/embed.py; engines: confusion_embeddings/embedding/engines.py).
Writes: --out, replaced atomically: vectors.npy [classifiers, runs, classes, dim],
        restarts.npz (engine jax) and manifest.json (confusion_embeddings/embedding/store.py).
"""

from __future__ import annotations

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.files import atomic_dir
from confusion_embeddings.embedding.engines import embed
from confusion_embeddings.embedding.store import write_embedding
from confusion_embeddings.pairs import load_pairs


def main() -> None:
    args = stage_args(
        __doc__,
        {"--pairs": "pairs directory (pairs stage output)", "--out": "output directory"},
    )
    config = EmbedConfig.load(args.params)
    pairs = load_pairs(args.pairs)
    result = embed(pairs, config)
    with atomic_dir(args.out) as tmp:
        write_embedding(tmp, result)
    m, runs = result.vectors.shape[:2]
    each = f"{runs} seed(s)" if result.restarts is None else f"best of {len(config.seeds)} restarts"
    print(
        f"embed: {m} classifier(s) x {each} x {pairs.n_classes} classes x "
        f"{config.dim} dims -> {args.out}"
    )


if __name__ == "__main__":
    run_main(main)
