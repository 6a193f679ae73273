"""The method, from predictions to a trusted table: one path for the pairs, embed and evaluate
stages, a study, and the Python API (api.py), so that all of them give the same table.

    pairs.make_pairs(predictions, pairs params)  -> Pairs
    embedding.engines.embed(pairs, embed params) -> Embedding
    assess(pairs, embedding, evaluate params)    -> Evaluation (resampling, then every figure)

and `write_evaluation`, what the evaluate stage writes. Reads nothing; writes only there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import atomic_dir, atomic_file, save_npz, write_json
from confusion_embeddings.embedding.engines import Embedding
from confusion_embeddings.embedding.formats import write_class_vectors
from confusion_embeddings.embedding.resampling import replicate_vectors
from confusion_embeddings.evaluation.groups import resolve_groups
from confusion_embeddings.evaluation.plots import write_plots, write_similarity_csv
from confusion_embeddings.evaluation.report import metrics_dict, render_report
from confusion_embeddings.evaluation.scores import Evaluation, evaluate
from confusion_embeddings.evaluation.unseen import assess_unseen
from confusion_embeddings.pairs import Pairs


def assess(
    pairs: Pairs,
    embedding: Embedding,
    params: dict[str, Any],
    sources: tuple[str, str] = ("the class vectors", "the pairs"),
    reference: tuple[str, dict[tuple[str, str], float]] | None = None,
) -> Evaluation:
    """Every figure of the table (evaluate params), the vectors refitted on
    `evaluate.bootstrap` redraws of the pictures first (embedding/resampling.py).
    `sources` names the embedding and the pairs in the error when they do not match.
    Where the pairs have unseen classes, `reference` (where from, and its table:
    evaluation/unseen.py's read_reference) is what their rows are compared with."""
    manifest = embedding.manifest
    if (tuple(manifest["classes"]), tuple(manifest["classifiers"])) != (
        pairs.classes,
        pairs.classifiers,
    ):
        raise PipelineError(
            f"{sources[0]}: its classes or classifiers differ from those of {sources[1]}; "
            "rerun embed (dvc repro embed)"
        )
    # The groups are checked before the resampling, which takes the longest.
    resolve_groups(params["groups"], pairs.groups, pairs.classes)
    replicates = replicate_vectors(
        pairs, embedding.restarts, manifest["params"], params["bootstrap"], params["seed"]
    )
    ev = evaluate(pairs, embedding.vectors, params, manifest, replicates)
    if not pairs.unseen:
        return ev
    u = ev.uncertainty
    unseen = assess_unseen(pairs, ev.mean, u.low, u.high, ev.consensus.vectors, params, reference)
    return replace(ev, unseen=unseen)


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


def write_evaluation(ev: Evaluation, params: dict[str, Any], out: EvaluateOutputs) -> None:
    """Everything the evaluate stage writes, each output replaced atomically."""
    with atomic_dir(out.plots) as tmp:
        write_plots(ev, tmp, params)
    with atomic_file(out.table) as tmp:
        write_similarity_csv(ev, tmp)
    with atomic_file(out.report) as tmp:
        tmp.write_text(render_report(ev, params))
    with atomic_file(out.matrices) as tmp:
        save_npz(tmp, matrices(ev))
    group_names = list((ev.groups or {}).keys())
    group_of = [group_names[g] if g >= 0 else "" for g in ev.group_labels]
    with atomic_dir(out.vectors) as tmp:
        write_class_vectors(
            tmp, ev.classes, group_of, ev.consensus.vectors, ev.consensus.dispersion
        )
    write_json(out.metrics, metrics_dict(ev))
