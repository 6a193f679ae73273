"""Stage evaluate: how far the class vectors reflect what the classifiers confuse, and how far
each similarity can be trusted.

Reads:  --pairs (confusion_embeddings/pairs.py), --embed (embedding/store.py), params.yaml's
        `evaluate:` section (confusion_embeddings/evaluation/scores.py), and --reference (a
        similarity table CSV of a run where every class was trained) only where the pairs
        have classes the classifiers never saw (train.unseen; evaluation/unseen.py).
Writes: --metrics (headline scalars, table_reliability first), --table (class, neighbour,
        cosine, its bootstrap interval low/high and rank interval: the similarity tables as
        plot data), --report (markdown: reliability and warnings first, then the paper-style
        tables), --plots (PNG heatmap, dendrogram, class map), --matrices (npz: the full
        matrices, the intervals and the bootstrap replicates, which compare reads),
        --vectors (the consensus class vectors in every format; embedding/formats.py).
"""

from __future__ import annotations

from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.core.params import load_params
from confusion_embeddings.embedding.store import load_embedding
from confusion_embeddings.evaluation.report import fmt, print_warnings
from confusion_embeddings.evaluation.scores import SCHEMA
from confusion_embeddings.evaluation.unseen import read_reference, summary_lines
from confusion_embeddings.method import EvaluateOutputs, assess, write_evaluation
from confusion_embeddings.pairs import load_pairs

OUTPUTS = {
    "--metrics": "headline figures (JSON)",
    "--table": "similarity tables as plot data (CSV)",
    "--report": "markdown report",
    "--plots": "directory of PNG plots",
    "--matrices": "full matrices and bootstrap replicates (npz)",
    "--vectors": "the consensus class vectors, in every format (folder)",
}


def main() -> None:
    inputs = {
        "--pairs": "pairs directory",
        "--embed": "embed directory",
        "--reference": "similarity table CSV the unseen classes' rows are compared with",
    }
    args = stage_args(__doc__, {**inputs, **OUTPUTS})
    params = load_params("evaluate", SCHEMA, args.params)
    sources = (str(args.embed), str(args.pairs))
    pairs = load_pairs(args.pairs)
    reference = None
    if pairs.unseen:  # the reference is read only where there is something to place
        reference = (str(args.reference), read_reference(args.reference))
    ev = assess(pairs, load_embedding(args.embed), params, sources, reference)
    print_warnings(ev)
    write_evaluation(ev, params, EvaluateOutputs(**{f[2:]: getattr(args, f[2:]) for f in OUTPUTS}))
    for line in summary_lines(ev.unseen, ev.classes) if ev.unseen else []:
        print(line)
    print(
        f"evaluate: table reliability {fmt(ev.uncertainty.reliability)}, Spearman vs confusion "
        f"{fmt(ev.spearman)}, collapsed {ev.collapsed}, noisy {ev.noisy}; classifier "
        f"agreement {fmt(ev.classifier_agreement)}; report {args.report}"
    )


if __name__ == "__main__":
    run_main(main)
