"""params.yaml's `resample:` section (the resample stage). Reads nothing."""

from __future__ import annotations

from dataclasses import dataclass

from confusion_embeddings.config.section import Section, knob
from confusion_embeddings.core.params import at_least


@dataclass(frozen=True)
class ResampleConfig(Section):
    """The class vectors refitted on bootstrap redraws of the pictures (and classifiers):
    the data of every interval (embedding/resampling.py, evaluation/uncertainty.py)."""

    SECTION = "resample"

    # Redraws, each refitted: 200 give intervals whose ends move by ~0.005 between seeds.
    bootstrap: int = knob(int, 200, at_least(2))
    seed: int = knob(int, 0, at_least(0))  # of the redraws (pictures, then classifiers)


SCHEMA = ResampleConfig.schema()  # {key: Param}, as core/params.py validates a section
