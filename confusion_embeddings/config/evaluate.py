"""params.yaml's `evaluate:` section (the evaluate stage: figures, report, plots). Reads
nothing."""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import at_least, in_range, one_of

# Per-picture new-or-known scores (evaluation/unseen.py, novelty.py); max_prob is the usual
# baseline; max_logit and energy need logits, the Mahalanobis ones a "train" split.
NOVELTY_SCORES = (
    "max_prob",
    "margin",
    "entropy",
    "spread",
    "max_logit",
    "energy",
    "mahalanobis",
    "relative_mahalanobis",
)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """What the evaluate stage reports of the class vectors and their refits."""

    SECTION = "evaluate"

    # {group: [class names]} or null (then the predictions file's own `groups`, if any)
    groups: dict[str, list[str]] | None = knob(dict, None, nullable=True)
    top_n: int = knob(int, 9, at_least(1))  # neighbours listed per class (many classes)
    table_max_classes: int = knob(int, 20, at_least(1))  # up to this many: paper-style tables
    # Up to this many classes every class pair is listed and its replicates kept (compare
    # reads them); beyond, each class's top_n (a 1,000-class table is a million rows).
    all_pairs_max_classes: int = knob(int, 50, at_least(2))
    collapse_threshold: float = knob(float, 0.2, in_range(-1.0, 1.0))
    collapse_mean_cosine: float = knob(float, 0.8, in_range(-1.0, 1.0))
    # "noisy" (a different thing from collapsed; docs/design/embedding-engines.md has the
    # measurements): the table's reliability over redrawn pictures (table_reliability)
    # below this...
    min_table_reliability: float = knob(float, 0.8, in_range(-1.0, 1.0))
    # ... or the split-half Spearman over word2vec's seeds (engine gensim) below this...
    min_seed_reliability: float = knob(float, 0.8, in_range(-1.0, 1.0))
    # ... or fewer pairs per class and epoch than this reach the engine (after gensim's
    # down-sampling; see embedding/engines.py:updates_per_class).
    min_updates_per_class: float = knob(float, 50.0, at_least(0.0))
    # A class whose vectors, refitted on redrawn pictures, sit farther than this (mean
    # 1 - cosine) from its consensus vector is flagged as not stable (embedding/consensus.py).
    unstable_dispersion: float = knob(float, 0.1, in_range(0.0, 2.0))
    confidence: float = knob(float, 0.95, in_range(0.5, 0.999))  # the intervals' coverage
    # "unstable ranks": a class whose nearest class is the table's in fewer redraws.
    nearest_stability: float = knob(float, 0.8, in_range(0.0, 1.0))
    # "no structure in the lower guesses": secondary_vs_confusion below this
    # (docs/uncertainty.md has the figures it was chosen from).
    min_secondary: float = knob(float, 0.2, in_range(-1.0, 1.0))
    # Classes the classifiers never saw (train.unseen; evaluation/unseen.py): the
    # per-picture new-or-known score the report leads with (max_prob, the baseline, is shown
    # beside it; the best of the leave-one-class-out runs: docs/unseen.md, and
    # method_studies/novelty_study.json's best), and the share of known test pictures its
    # threshold keeps as known.
    novelty_score: str = knob(str, "entropy", one_of(*NOVELTY_SCORES))
    novelty_keep_known: float = knob(float, 0.95, in_range(0.5, 0.999))


SCHEMA = EvaluateConfig.schema()  # {key: Param}, as core/params.py validates a section
