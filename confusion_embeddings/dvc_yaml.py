"""What the library reads of a dvc.yaml: the pipeline's stages and their command lines.

Reads the dvc.yaml it is given (the project's, next to this package in a checkout, or a
study's); writes nothing. dvc.yaml names every path of the pipeline once, on its stages'
command lines; whatever in the library needs one of those paths (api.py's `Result.save`,
compare.py, study.py) asks this module for it rather than spelling it again.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from confusion_embeddings.core.errors import PipelineError, first_line

# A checkout of the project: this package's parent folder, holding dvc.yaml and stages/.
PROJECT = Path(__file__).resolve().parents[1]


def project_dvc_yaml() -> Path:
    """The project's dvc.yaml, or an error saying that a checkout is needed."""
    path = PROJECT / "dvc.yaml"
    if not path.exists():
        raise PipelineError(
            f"{path}: not found; this needs a checkout of the project (git clone, then "
            "pip install -e .), whose dvc.yaml names the pipeline's paths"
        )
    return path


def read_stages(path: Path) -> dict[str, dict[str, Any]]:
    """The `stages:` mapping of a dvc.yaml, with an error naming the file."""
    try:
        stages = yaml.safe_load(path.read_text())["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: no stages to read ({first_line(exc)})") from None
    if not isinstance(stages, dict):
        raise PipelineError(f"{path}: `stages` is not a mapping")
    return stages


@dataclass(frozen=True)
class Command:
    """A stage's command line: `python -m stages.<name>` (or `python <path>`), then its
    `--option value` pairs in order, and the tokens that are neither (DVC's `${...}` of a
    mapping, such as `${classifiers}`, which DVC unpacks into options of its own)."""

    program: tuple[str, ...]
    options: dict[str, str]
    other: tuple[str, ...] = ()

    def text(self) -> str:
        """The command line, as dvc.yaml's `cmd` holds it."""
        words = [*self.program, *(w for o, v in self.options.items() for w in (o, v)), *self.other]
        return " ".join(words)


def stage_command(path: Path, stage: str) -> Command:
    """A stage's command line in `path` (a dvc.yaml), split into its parts."""
    stages = read_stages(path)
    if stage not in stages or "cmd" not in stages[stage]:
        raise PipelineError(f"{path}: no {stage} stage with a command to read")
    words = shlex.split(stages[stage]["cmd"])
    program = tuple(words[:3] if words[:2] == ["python", "-m"] else words[:2])
    options: dict[str, str] = {}
    other: list[str] = []
    rest = iter(words[len(program) :])
    for word in rest:
        if word.startswith("--"):
            options[word] = next(rest, "")
        else:
            other.append(word)
    return Command(program, options, tuple(other))


def stage_path(path: Path, stage: str, option: str) -> Path:
    """The path a stage's command gives `option` (e.g. evaluate's --matrices), relative to
    the dvc.yaml's folder."""
    options = stage_command(path, stage).options
    if option not in options:
        raise PipelineError(f"{path}: the {stage} stage names no {option}")
    return Path(options[option])
