"""Stage evaluate: how far the class vectors reflect what the classifiers confuse, and how far
each similarity can be trusted.

Reads:  --pairs (confusion_embeddings/pairs.py), --embed (embedding/store.py), --resample (the
        refitted vectors, embedding/store.py), params.yaml's `evaluate:` section
        (config/evaluate.py), and --reference (a similarity table CSV of a run where every
        class was trained) only where the pairs have classes the classifiers never saw
        (train.unseen; evaluation/unseen.py).
Writes: --metrics (headline scalars, table_reliability first), --table (class, neighbour,
        cosine, its bootstrap interval low/high and rank interval: the similarity tables as
        plot data), --report (markdown: reliability and warnings first, then the paper-style
        tables), --plots (PNG heatmap, dendrogram, class map), --matrices (npz: the full
        matrices, the intervals and the bootstrap replicates, which compare reads),
        --vectors (the consensus class vectors in every format; embedding/formats.py).
"""

from __future__ import annotations

from confusion_embeddings import method
from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.core.cli import run_main, stage_args
from confusion_embeddings.evaluation.report import print_summary

INPUTS = {
    "--pairs": "pairs directory",
    "--embed": "embed directory",
    "--resample": "resample directory",
    "--reference": "similarity table CSV the unseen classes' rows are compared with",
}
OUTPUTS = {
    "--metrics": "headline figures (JSON)",
    "--table": "similarity tables as plot data (CSV)",
    "--report": "markdown report",
    "--plots": "directory of PNG plots",
    "--matrices": "full matrices and bootstrap replicates (npz)",
    "--vectors": "the consensus class vectors, in every format (folder)",
}


def main() -> None:
    args = stage_args(__doc__, {**INPUTS, **OUTPUTS})
    config = EvaluateConfig.load(args.params)
    ev = method.evaluate_files(args.pairs, args.embed, args.resample, args.reference, config)
    outputs = method.EvaluateOutputs(**{flag[2:]: getattr(args, flag[2:]) for flag in OUTPUTS})
    method.write_evaluation(ev, config, outputs)
    print_summary(ev, args.report)


if __name__ == "__main__":
    run_main(main)
