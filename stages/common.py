"""Shared plumbing of every stage: parameter validation, atomic outputs, clean errors.

Reads: one section of params.yaml (the stage names it).
Writes: nothing by itself; `atomic_dir` / `atomic_file` give stages a temporary path that
is renamed into place only when the stage succeeds, so a killed stage leaves either the
old complete output or none.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class PipelineError(Exception):
    """An error the user can fix: its message is one line naming what and how."""


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class Param:
    """One key of a params section: its type(s), default, and an optional range check.

    `check` returns None when the value is fine, or a short text of what is allowed.
    """

    types: type | tuple[type, ...]
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    required: bool = False
    nullable: bool = False


def at_least(lo: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= lo else f"a number >= {lo}"


def in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    return lambda v: None if lo <= v <= hi else f"a number in [{lo}, {hi}]"


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"one of {list(choices)}"


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
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, types)


def validate_section(
    section: str, raw: Mapping[str, Any] | None, schema: Mapping[str, Param]
) -> dict[str, Any]:
    """Check one params section against its schema; return it with defaults filled in.

    Raises PipelineError naming `section.key`, the value and what is allowed.
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
                raise PipelineError(f"params.yaml: '{section}.{key}' is required")
            out[key] = spec.default
            continue
        value = raw[key]
        if not _type_ok(value, spec):
            allowed = _type_name(spec.types) + (" or null" if spec.nullable else "")
            raise PipelineError(
                f"params.yaml: '{section}.{key}' = {value!r} has the wrong type; expected {allowed}"
            )
        if value is not None and spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise PipelineError(
                    f"params.yaml: '{section}.{key}' = {value!r} is out of range; expected {problem}"
                )
        out[key] = value
    return out


def load_params(
    section: str, schema: Mapping[str, Param], path: str | Path = "params.yaml"
) -> dict[str, Any]:
    """Read and validate one section of a params file (the stage's own, nothing else)."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: params file not found; run from the project root")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    sec = doc.get(section)
    if sec is not None and not isinstance(sec, dict):
        raise PipelineError(f"{path}: section '{section}' must be a mapping")
    return validate_section(section, sec, schema)


# --------------------------------------------------------------------------- atomic outputs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _sweep_stale(path: Path) -> None:
    """Remove temporary siblings of `path` left by a stage that was killed (SIGKILL, power
    cut): their names carry the writer's pid, and that process no longer exists."""
    for old in path.parent.glob(f".{path.name}.tmp-*"):
        pid = old.name[len(f".{path.name}.tmp-"):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove(old)


def _tmp_sibling(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    prefix = f".{path.name}.tmp-{os.getpid()}-"
    # mkdtemp/mkstemp create private (0700/0600) paths; the final output should carry the
    # ordinary permissions a plain open() would have given it.
    if kind == "file":
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())
        return Path(name)
    made = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    os.chmod(made, 0o777 & ~_umask())
    return made


def _fsync_tree(path: Path) -> None:
    """Flush file contents before the rename so that a power cut cannot expose empty files."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path, "dir")
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            # rename() cannot replace a non-empty directory: move the old one aside first.
            old = _tmp_sibling(path, "dir")
            old.rmdir()
            path.rename(old)
            tmp.rename(path)
            _remove(old)
        else:
            tmp.rename(path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces `path` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path, "file")
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, keys in a stable order so that reruns are byte-identical."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- entry points


def run_main(fn: Callable[[], None]) -> None:
    """Run a stage's main(); a PipelineError becomes one line on stderr and exit code 2."""
    try:
        fn()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
