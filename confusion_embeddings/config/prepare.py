"""params.yaml's `prepare:` section (the prepare stage: data/prepare.py). Reads nothing."""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import at_least, in_range


@dataclass(frozen=True)
class PrepareConfig(Section):
    """From a raw picture collection to the prepared arrays."""

    SECTION = "prepare"

    # Keep at most this many pictures per class and split (a seeded random sample); null = all.
    max_per_class: int | None = knob(int, None, at_least(1), nullable=True)
    # Resize every picture to image_size x image_size (PIL bilinear); null = keep the
    # source's size, which must then be the same for all pictures.
    image_size: int | None = knob(int, None, in_range(1, 4096), nullable=True)
    # Seed of the class-balanced subset drawn when max_per_class is set.
    seed: int = knob(int, 0, at_least(0))


SCHEMA = PrepareConfig.schema()  # {key: Param}, as core/params.py validates a section
