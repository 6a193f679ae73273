"""What every stage entry point shares: error handling, progress bars, its dvc.yaml entry.

Reads: dvc.yaml (only `stage_deps`, for the paths a stage depends on); writes nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from tqdm import tqdm

from confusion_embeddings.core.errors import PipelineError

T = TypeVar("T")


def stage_args(
    doc: str, paths: Mapping[str, str], argv: list[str] | None = None, **options: Any
) -> argparse.Namespace:
    """Parse a stage's command line: every flag in `paths` ({flag: help}) is a required path
    (dvc.yaml names them all), `--params` defaults to params.yaml, and `options` adds other
    flags ({name: argparse keyword arguments}, e.g. seed={"type": int, "required": True})."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    for flag, text in paths.items():
        ap.add_argument(flag, type=Path, required=True, help=text)
    for name, kwargs in options.items():
        ap.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    return ap.parse_args(argv)


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


def progress(
    items: Iterable[T], desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any
) -> tqdm:
    """A progress bar on stderr that stays off when stderr is not a terminal (a log file,
    CI, `dvc exp run --queue`): there it would print one line per refresh."""
    return tqdm(
        items,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        leave=False,
        mininterval=1.0,
        disable=None if enabled else True,
        **kwargs,
    )


_PLACEHOLDER = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def _lookup(name: str, values: Mapping[str, Any]) -> Any:
    node: Any = values
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(name)
        node = node[part]
    return node


def stage_deps(
    stage: str,
    dvc_yaml: str | Path = "dvc.yaml",
    item: Any = None,
    params: Mapping[str, Any] | None = None,
) -> list[Path]:
    """The paths dvc.yaml lists as `stage`'s dependencies, placeholders filled in.

    `stage` is the name in dvc.yaml (a `foreach` stage's name without `@item`); `${item}`
    becomes `item`, `${section.key}` the value from `params` (params.yaml's sections).
    """
    path = Path(dvc_yaml)
    try:
        doc = yaml.safe_load(path.read_text())
        entry = doc["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise PipelineError(
            f"{path}: cannot read stage '{stage}' ({exc}); run from the project root"
        ) from None
    entry = entry.get("do", entry)
    values = {**(params or {}), "item": item}
    deps = []
    for dep in entry.get("deps", []):
        try:
            deps.append(Path(_PLACEHOLDER.sub(lambda m: str(_lookup(m.group(1), values)), dep)))
        except KeyError as exc:
            raise PipelineError(
                f"{path}: stage '{stage}' dependency {dep!r} names "
                f"{exc.args[0]!r}, which is not known here"
            ) from None
    return deps
