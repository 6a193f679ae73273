"""params.yaml's `predict:` section (the predict stage: cnn/run.py, cnn/inference.py). Reads
nothing. Test-time augmentation is not here: predict runs the network as train saved it."""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import at_least, one_of


def _split_names(v: list) -> str | None:
    ok = v and all(isinstance(s, str) for s in v) and len(set(v)) == len(v)
    return None if ok else "a non-empty list of distinct split names"


@dataclass(frozen=True)
class PredictConfig(Section):
    """Which pictures a classifier scores, and in what batches."""

    SECTION = "predict"

    # Every picture by default, train and test, as in the paper.
    splits: list[str] = knob(list, ["train", "test"], _split_names)
    batch_size: int = knob(int, 1000, at_least(1))
    # What the file holds per picture (predictions.py): the logits, which keep each
    # picture's scale (the max_logit and energy novelty scores need it), or probabilities.
    scores: str = knob(str, "logits", one_of("logits", "probs"))


SCHEMA = PredictConfig.schema()  # {key: Param}, as core/params.py validates a section
