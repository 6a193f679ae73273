"""`Section`, a params section as a frozen typed config, and `knob`, one of its keys.

Reads params.yaml only when `Section.load` is called; writes nothing. Validation is
core/params.py's (the same messages for a stage, a study and the Python API).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from confusion_embeddings.core.params import Check, Param, load_params, validate_section


def knob(
    types: type | tuple[type, ...],
    default: Any = None,
    check: Check | None = None,
    *,
    nullable: bool = False,
) -> Any:
    """One field of a `Section`: its default, and the Param spec (types, range check) that
    validates params.yaml's value for it. A list or dict default is copied per instance."""
    spec = Param(types, default, check, nullable=nullable)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"param": spec})
    return field(default=default, metadata={"param": spec})


@dataclass(frozen=True)
class Section:
    """A params section as a frozen, typed config: one subclass per section, one `knob` field
    per key, in params.yaml's order. Built once from the section (`from_params`, which
    validates it), passed whole, and saved whole (`to_dict`) in the stage's manifest."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def schema(cls) -> dict[str, Param]:
        """{key: Param}: every key's type, default and range, from the fields."""
        return {f.name: f.metadata["param"] for f in fields(cls)}

    @classmethod
    def from_params(cls, raw: Mapping[str, Any] | None = None) -> Self:
        """The section validated (errors name `section.key`), defaults filled in."""
        return cls(**validate_section(cls.SECTION, raw, cls.schema()))

    @classmethod
    def load(cls, path: str | Path = "params.yaml") -> Self:
        """Read params.yaml's section of this config (its own, nothing else)."""
        return cls(**load_params(cls.SECTION, cls.schema(), path))

    def to_dict(self) -> dict[str, Any]:
        """{key: value} in field order: what a manifest saves, and `from_params` reads back."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` validated as params.yaml values would be."""
        return self.from_params({**self.to_dict(), **changes})
