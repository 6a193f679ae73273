"""The method, from predictions to a trusted table: one path for the pairs, embed, resample
and evaluate stages, a study, and the Python API (api.py), so that all of them give the same
table. Each step takes its stage's config (config/) whole:

    pairs.make_pairs(predictions, PairsConfig)         -> Pairs
    embedding.engines.embed(pairs, EmbedConfig)        -> Embedding
    embedding.resampling.resample(pairs, embedding, ResampleConfig)
                                                       -> Replicates (the refits: the cost)
    evaluate(pairs, embedding, replicates, EvaluateConfig) -> Evaluation (every figure)

`evaluate_files` reads the stages' folders for `evaluate`; `write_evaluation` writes what the
evaluate stage writes. Nothing else here reads or writes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.core.files import atomic_dir, atomic_file, save_npz, write_json
from confusion_embeddings.embedding.formats import write_class_vectors
from confusion_embeddings.embedding.store import (
    Embedding,
    Replicates,
    Sources,
    check_same_classes,
    load_embedding,
    load_replicates,
)
from confusion_embeddings.evaluation.groups import resolve_groups
from confusion_embeddings.evaluation.plots import write_plots, write_similarity_csv
from confusion_embeddings.evaluation.report import metrics_dict, render_report
from confusion_embeddings.evaluation.scores import Evaluation, compute_figures
from confusion_embeddings.evaluation.unseen import assess_unseen, read_reference
from confusion_embeddings.pairs import Pairs, load_pairs


def evaluate(
    pairs: Pairs,
    embedding: Embedding,
    replicates: Replicates,
    config: EvaluateConfig,
    reference: tuple[str, dict[tuple[str, str], float]] | None = None,
    sources: Sources | None = None,
) -> Evaluation:
    """Every figure of the table (evaluation/scores.py), its intervals from the replicates.
    Where the pairs have unseen classes, `reference` (where from, and its table:
    evaluation/unseen.py's read_reference) is what their rows are compared with."""
    check_same_classes(pairs, embedding.manifest, "embed", sources)
    check_same_classes(pairs, replicates.manifest, "resample", sources)
    ev = compute_figures(
        pairs, embedding.vectors, config, embedding.manifest, replicates.vectors, replicates.seed
    )
    if not pairs.unseen:
        return ev
    u = ev.uncertainty
    unseen = assess_unseen(pairs, ev.mean, u.low, u.high, ev.consensus.vectors, config, reference)
    return replace(ev, unseen=unseen)


def evaluate_files(
    pairs_dir: Path, embed_dir: Path, resample_dir: Path, reference: Path, config: EvaluateConfig
) -> Evaluation:
    """`evaluate` on the pairs, embed and resample stages' folders; the reference table is
    read only where the pairs have unseen classes (something to place)."""
    pairs = load_pairs(pairs_dir)
    resolve_groups(config.groups, pairs.groups, pairs.classes)  # the params first, then the rest
    sources = {"pairs": str(pairs_dir), "embed": str(embed_dir), "resample": str(resample_dir)}
    embedding = load_embedding(embed_dir)
    check_same_classes(pairs, embedding.manifest, "embed", sources)  # before the refits' files
    replicates = load_replicates(resample_dir)
    table = (str(reference), read_reference(reference)) if pairs.unseen else None
    return evaluate(pairs, embedding, replicates, config, table, sources)


@dataclass(frozen=True)
class EvaluateOutputs:
    """Where the evaluate stage writes (dvc.yaml names each path)."""

    metrics: Path
    table: Path
    report: Path
    plots: Path
    matrices: Path
    vectors: Path


def matrices(ev: Evaluation) -> dict[str, np.ndarray]:
    """The full matrices file: tables, intervals and the bootstrap replicates (compare.py)."""
    return {
        "classes": np.array(ev.classes, dtype=str),
        "classifiers": np.array(ev.classifiers, dtype=str),
        "similarity_mean": ev.mean.astype(np.float32),
        "similarity_low": ev.uncertainty.low.astype(np.float32),
        "similarity_high": ev.uncertainty.high.astype(np.float32),
        "similarity_per_classifier": ev.tables.astype(np.float32),
        "classifier_std": ev.classifier_std.astype(np.float32),
        "seed_std": ev.seed_std.astype(np.float32),
        "bootstrap_pairs": np.stack(ev.uncertainty.pairs, axis=1).astype(np.int32),
        "bootstrap_tables": ev.uncertainty.tables,
        "confusion": ev.confusion,
        "confusion_similarity": ev.confusion_sim.astype(np.float32),
        "leaf_order": ev.leaf_order,
    }


def write_evaluation(ev: Evaluation, config: EvaluateConfig, out: EvaluateOutputs) -> None:
    """Everything the evaluate stage writes, each output replaced atomically."""
    with atomic_dir(out.plots) as tmp:
        write_plots(ev, tmp, config)
    with atomic_file(out.table) as tmp:
        write_similarity_csv(ev, tmp)
    with atomic_file(out.report) as tmp:
        tmp.write_text(render_report(ev, config))
    with atomic_file(out.matrices) as tmp:
        save_npz(tmp, matrices(ev))
    group_names = list((ev.groups or {}).keys())
    group_of = [group_names[g] if g >= 0 else "" for g in ev.group_labels]
    with atomic_dir(out.vectors) as tmp:
        write_class_vectors(
            tmp, ev.classes, group_of, ev.consensus.vectors, ev.consensus.dispersion
        )
    write_json(out.metrics, metrics_dict(ev))
