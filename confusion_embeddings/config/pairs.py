"""params.yaml's `classifiers:` and `pairs:` sections (the pairs stage). Reads nothing."""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import at_least, int_list


@dataclass(frozen=True)
class ClassifiersConfig(Section):
    """One CNN per seed (dvc.yaml's train@<seed> and predict@<seed>), whose predictions
    files the pairs stage reads; dvc.yaml hands the seeds to the stages."""

    SECTION = "classifiers"

    seeds: list[int] = knob(list, [0, 1, 2], int_list(0, distinct=True, what="seeds"))


@dataclass(frozen=True)
class PairsConfig(Section):
    """(true class, k-th guess) pairs from each picture's top-k guesses (pairs.py)."""

    SECTION = "pairs"

    # A study's own predictions file (confusion_embeddings/study.py); the CIFAR-10 pipeline's
    # pairs stage reads its classifiers' files, named in dvc.yaml, and leaves this null.
    predictions: str | None = knob(str, None, nullable=True)
    # Guesses per picture: 1 <= top_k < the number of known classes (and <= the k of a
    # `topk` predictions file).
    top_k: int = knob(int, 3, at_least(1))
    # Pictures per jitted top-k block: memory stays flat in the number of pictures.
    block_size: int = knob(int, 65536, at_least(1))


SCHEMA = PairsConfig.schema()  # {key: Param}, as core/params.py validates a section
CLASSIFIERS = ClassifiersConfig.schema()
