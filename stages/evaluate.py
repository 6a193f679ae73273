"""Stage evaluate: how well the class vectors reflect what the classifier confuses.

Reads:  --pairs (confusion_embeddings/pairs.py), --embed (vectors.npy + manifest.json,
        embedding/store.py), params.yaml's `evaluate:` section
        (confusion_embeddings/evaluation/scores.py).
Writes: --metrics (headline scalars), --table (class, neighbour, cosine, std: the
        similarity tables as plot data), --report (markdown with the paper-style tables),
        --plots (PNG heatmap, dendrogram, class map of the consensus embedding), --matrices
        (npz: the full matrices, also each classifier's table and both spreads), --vectors
        (the consensus class vectors: word2vec text, gensim KeyedVectors, CSV, TensorBoard
        projector files; confusion_embeddings/embedding/formats.py).
"""

from __future__ import annotations

import numpy as np

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir, atomic_file, save_npz, write_json
from confusion_embeddings.core.params import load_params
from confusion_embeddings.embedding.formats import write_class_vectors
from confusion_embeddings.embedding.store import load_vectors
from confusion_embeddings.evaluation.plots import write_plots, write_similarity_csv
from confusion_embeddings.evaluation.report import (
    fmt,
    metrics_dict,
    render_report,
    warn_if_collapsed,
    warn_if_noisy,
)
from confusion_embeddings.evaluation.scores import SCHEMA, evaluate
from confusion_embeddings.pairs import load_pairs


def main() -> None:
    args = stage_args(
        __doc__,
        {
            "--pairs": "pairs directory",
            "--embed": "embed directory",
            "--metrics": "headline figures (JSON)",
            "--table": "similarity tables as plot data (CSV)",
            "--report": "markdown report",
            "--plots": "directory of PNG plots",
            "--matrices": "full matrices (npz)",
            "--vectors": "the consensus class vectors, in every format (folder)",
        },
    )

    params = load_params("evaluate", SCHEMA, args.params)
    pairs = load_pairs(args.pairs)
    vectors, manifest = load_vectors(args.embed)
    if (tuple(manifest["classes"]), tuple(manifest["classifiers"])) != (
        pairs.classes,
        pairs.classifiers,
    ):
        raise PipelineError(
            f"{args.embed}: its classes or classifiers differ from those of {args.pairs}; "
            "rerun embed (dvc repro embed)"
        )
    ev = evaluate(pairs, vectors, params, manifest)
    warn_if_collapsed(ev)
    warn_if_noisy(ev)

    with atomic_dir(args.plots) as tmp:
        write_plots(ev, tmp, params)
    with atomic_file(args.table) as tmp:
        write_similarity_csv(ev, tmp, params["top_n"])
    with atomic_file(args.report) as tmp:
        tmp.write_text(render_report(ev, params))
    with atomic_file(args.matrices) as tmp:
        save_npz(
            tmp,
            {
                "classes": np.array(ev.classes, dtype=str),
                "classifiers": np.array(ev.classifiers, dtype=str),
                "similarity_mean": ev.mean.astype(np.float32),
                "similarity_std": ev.std.astype(np.float32),
                "similarity_per_classifier": ev.tables.astype(np.float32),
                "classifier_std": ev.classifier_std.astype(np.float32),
                "seed_std": ev.seed_std.astype(np.float32),
                "confusion": ev.confusion,
                "confusion_similarity": ev.confusion_sim.astype(np.float32),
                "leaf_order": ev.leaf_order,
            },
        )
    group_names = list((ev.groups or {}).keys())
    group_of = [group_names[g] if g >= 0 else "" for g in ev.group_labels]
    with atomic_dir(args.vectors) as tmp:
        write_class_vectors(
            tmp, ev.classes, group_of, ev.consensus.vectors, ev.consensus.dispersion
        )
    write_json(args.metrics, metrics_dict(ev))
    print(
        f"evaluate: Spearman vs confusion {fmt(ev.spearman)}, mean off-diagonal cosine "
        f"{ev.mean_offdiag:.4f}, collapsed {ev.collapsed}, noisy {ev.noisy}; classifier "
        f"agreement {fmt(ev.classifier_agreement)}; report {args.report}"
    )


if __name__ == "__main__":
    run_main(main)
