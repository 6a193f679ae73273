"""Params sections: their schemas, validation and loading.

Reads: one section of params.yaml (the stage names it); writes nothing.

Every knob has exactly one default, in config/ (a module per section, e.g.
`config/train.py:SCHEMA`); params.yaml spells the same values out so that `dvc exp run -S`
and `dvc params diff` see them (tests/test_dvc_yaml.py checks the two agree). The one
exception is project data rather than a default: CIFAR-10's two groups in `evaluate.groups`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from confusion_embeddings.core.errors import PipelineError, first_line

Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Param:
    """One key of a params section: its type(s), default, and an optional range check.

    `check` returns None when the value is fine, or a short text of what is allowed.
    """

    types: type | tuple[type, ...]
    default: Any = None
    check: Check | None = None
    required: bool = False
    nullable: bool = False


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"a number >= {lo}"


def above(lo: float) -> Check:
    return lambda v: None if v > lo else f"a number > {lo}"


def in_range(lo: float, hi: float) -> Check:
    return lambda v: None if lo <= v <= hi else f"a number in [{lo}, {hi}]"


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"one of {list(choices)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def int_list(lo: int, distinct: bool = False, what: str = "integers") -> Check:
    """A non-empty list of ints >= lo (distinct ones if asked)."""

    def check(v: list) -> str | None:
        allowed = f"a non-empty list of {'distinct ' if distinct else ''}{what} >= {lo}"
        if not v or not all(_is_int(x) and x >= lo for x in v):
            return allowed
        if distinct and len(set(v)) != len(v):
            return allowed
        return None

    return check


def int_or_auto(lo: int) -> Check:
    return lambda v: (
        None if v == "auto" or (_is_int(v) and v >= lo) else f"'auto' or an int >= {lo}"
    )


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _type_ok(value: Any, spec: Param) -> bool:
    if value is None:
        return spec.nullable
    types = spec.types if isinstance(spec.types, tuple) else (spec.types,)
    # bool is an int subclass in Python; a YAML `true` must not pass as an epoch count.
    if isinstance(value, bool) and bool not in types:
        return False
    if float in types and _is_int(value):
        return True
    return isinstance(value, types)


# Where the params a message names were given: params.yaml (the stages; None) or the keyword
# arguments of a Python function (its name), set for the length of one call.
_GIVEN_TO: ContextVar[str | None] = ContextVar("params_given_to", default=None)
_NO_VALUE = object()


@contextmanager
def params_given_to(function: str) -> Iterator[None]:
    """Within the block, messages about a param name it as a keyword argument of `function`
    ("embed_predictions(dim=0)") instead of a key of params.yaml ("params.yaml: 'embed.dim'
    = 0")."""
    token = _GIVEN_TO.set(function)
    try:
        yield
    finally:
        _GIVEN_TO.reset(token)


def param_ref(section: str, key: str, value: Any = _NO_VALUE) -> str:
    """How a message names one param, and its value if given: "params.yaml: 'embed.dim' = 0",
    or "embed_predictions(dim=0)" inside `params_given_to("embed_predictions")`."""
    function = _GIVEN_TO.get()
    if function is None:
        return f"params.yaml: '{section}.{key}'" + ("" if value is _NO_VALUE else f" = {value!r}")
    return f"{function}({key}" + (")" if value is _NO_VALUE else f"={value!r})")


def defaults(schema: Mapping[str, Param]) -> dict[str, Any]:
    """The section as it is when params.yaml leaves every key out."""
    return {key: spec.default for key, spec in schema.items() if not spec.required}


def validate_section(
    section: str, raw: Mapping[str, Any] | None, schema: Mapping[str, Param]
) -> dict[str, Any]:
    """Check one params section against its schema; return it with defaults filled in.

    Raises PipelineError naming `section.key` (param_ref), the value and what is allowed.
    """
    raw = dict(raw or {})
    for key in raw:
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PipelineError(
                f"params.yaml: unknown key '{section}.{key}'{hint} "
                f"(valid keys: {', '.join(sorted(schema))})"
            )
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if key not in raw:
            if spec.required:
                raise PipelineError(f"{param_ref(section, key)} is required")
            out[key] = spec.default
            continue
        value = raw[key]
        if not _type_ok(value, spec):
            allowed = _type_name(spec.types) + (" or null" if spec.nullable else "")
            raise PipelineError(
                f"{param_ref(section, key, value)} has the wrong type; expected {allowed}"
            )
        if value is not None and spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise PipelineError(
                    f"{param_ref(section, key, value)} is out of range; expected {problem}"
                )
        out[key] = value
    return out


def read_params_file(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The whole params file as a mapping of sections, with clear errors."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: params file not found; run from the project root")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    return doc


def load_params(
    section: str, schema: Mapping[str, Param], path: str | Path = "params.yaml"
) -> dict[str, Any]:
    """Read and validate one section of a params file (the stage's own, nothing else)."""
    return params_section(read_params_file(path), section, schema, path)


def params_section(
    doc: Mapping[str, Any], section: str, schema: Mapping[str, Param], path: str | Path
) -> dict[str, Any]:
    """Validate one section of a params file already read (`read_params_file`), so that a
    process needing several sections reads the file once; `path` names it in errors."""
    sec = doc.get(section)
    if sec is not None and not isinstance(sec, dict):
        raise PipelineError(f"{path}: section '{section}' must be a mapping")
    return validate_section(section, sec, schema)
