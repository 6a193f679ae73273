"""A study of one's own predictions: a git + DVC repository running pairs -> embed -> resample
-> evaluate.

    python -m confusion_embeddings.study studies/digits --predictions digits.npz

Creates the folder (it must not exist, or be empty) as a repository of its own, so that every
DVC command run there (`dvc repro`, `dvc exp run -S ...`, `dvc exp show`, `dvc params diff`,
`dvc metrics diff`, `dvc plots diff`) concerns that study alone:
    inputs/predictions.npz  a copy of the file, tracked by DVC (inputs/predictions.npz.dvc),
                            never by git
    params.yaml             the pairs, embed, resample and evaluate sections at their defaults, with
                            pairs.predictions naming the file and evaluate.groups null (the
                            file's own groups, if it has any), written as DVC writes it, so
                            that `dvc exp run -S` changes only the values it sets
    project                 a link to this checkout of the project (absolute, committed)
    dvc.yaml                the project's pairs, embed, resample and evaluate stages, made from its
                            dvc.yaml: the same stage code (run through the link, and a
                            dependency of every stage, so a change to it reruns them), the
                            study's own data and outputs
    .dvc/plots/             the similarity heatmap template
then runs the pipeline once and commits the result as the study's baseline. The file is
checked against the predictions-file contract (predictions.py) before anything is created.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.config.pairs import PairsConfig
from confusion_embeddings.config.resample import ResampleConfig
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.dvc_yaml import PROJECT, project_dvc_yaml, read_stages, stage_command
from confusion_embeddings.embedding.engines import check_trainable
from confusion_embeddings.pairs import make_pairs
from confusion_embeddings.predictions import load_predictions

CONFIGS = (PairsConfig, EmbedConfig, ResampleConfig, EvaluateConfig)
STAGES = tuple(config.SECTION for config in CONFIGS)
INPUTS = "inputs"
PREDICTIONS = f"{INPUTS}/predictions.npz"
# The study's link to the project's checkout (an absolute symbolic link, committed): the
# stages' code and its deps are read through it, so each dependency has one path inside the
# study, and a queued experiment's temporary copy of the study (`dvc exp run --queue`)
# still finds the code.
CODE = "project"
# The project's pairs stage reads its classifiers' files (--seeds, by DVC's ${classifiers});
# a study's reads its one file, which its params name.
STUDY_PREDICTIONS = "${pairs.predictions}"
SHIPPED = ("stages", "confusion_embeddings", "references")  # read through the CODE link


def study_params() -> dict[str, dict[str, Any]]:
    """The study's params: every section at its defaults, pairs.predictions its file."""
    params = {config.SECTION: config().to_dict() for config in CONFIGS}
    params["pairs"]["predictions"] = PREDICTIONS
    return params


def params_text() -> str:
    """The study's params.yaml in the form DVC writes when `dvc exp run -S` sets a value
    (its own YAML dumper: block lists, null left blank), so an experiment's diff of the file
    is the changed values alone."""
    from dvc.utils.serialize import dumps_yaml  # DVC's own dumper, not a copy of its style

    return dumps_yaml(study_params())


def _through_link(path: str) -> str:
    return f"{CODE}/{path}" if path.split("/", 1)[0] in SHIPPED else path


def study_stage(dvc_yaml: Path, name: str) -> dict[str, Any]:
    """One of the project's stages for the study: its code run through the CODE link, the
    references read through it, the predictions from inputs/, every other path as is."""
    entry = dict(read_stages(dvc_yaml)[name])
    command = stage_command(dvc_yaml, name)
    options = {flag: _through_link(value) for flag, value in command.options.items()}
    if "--predictions" in options:  # the one file, not the classifiers' (no ${classifiers})
        options["--predictions"] = STUDY_PREDICTIONS
        command = replace(command, other=())
    program = ("python", f"{CODE}/stages/{name}.py")
    entry["cmd"] = replace(command, program=program, options=options).text()
    # The inputs folder, not the file: a mistyped pairs.predictions then reaches the
    # stage, which names the param, instead of stopping DVC with a bare missing path.
    entry["deps"] = [INPUTS if d == "data/predictions" else _through_link(d) for d in entry["deps"]]
    return entry


def study_pipeline(project: Path) -> dict[str, Any]:
    """The study's dvc.yaml, made from the project's (study_stage), with its plots."""
    dvc_yaml = project / "dvc.yaml" if project != PROJECT else project_dvc_yaml()
    doc = yaml.safe_load(dvc_yaml.read_text())
    stages = {name: study_stage(dvc_yaml, name) for name in STAGES}
    return {"stages": stages, "plots": doc.get("plots", [])}


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        text = proc.stdout + proc.stderr
        # A stage's own one-line reason (run_main prints "error: ...") says what to do.
        reasons = [
            line[len("error: ") :] for line in text.splitlines() if line.startswith("error: ")
        ]
        if reasons:
            raise PipelineError(f"the study's `{' '.join(cmd)}` stopped: {reasons[-1]}")
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {last[0]}")
    return proc.stdout + proc.stderr


def _git_identity(cwd: Path) -> list[str]:
    """`-c` options naming a committer where git has none configured (a fresh CI machine)."""
    known = subprocess.run(["git", "config", "user.email"], cwd=cwd, capture_output=True)
    if known.returncode == 0 and known.stdout.strip():
        return []
    return ["-c", "user.name=confusion-embeddings study", "-c", "user.email=study@localhost"]


def check_file(predictions: Path) -> None:
    """Every check the study's stages would make that the file alone decides (the contract,
    pairs.top_k against the classes, classes the engine could not place), before anything
    is created."""
    if not predictions.is_file():
        here = predictions.parent if predictions.parent.is_dir() else Path(".")
        nearby = sorted(p.name for p in here.glob("*.npz"))[:10]
        raise PipelineError(
            f"--predictions {predictions}: no such file"
            + (f"; .npz files in {here}: {', '.join(nearby)}" if nearby else "")
        )
    pairs = make_pairs([(predictions.stem, load_predictions(predictions))], PairsConfig())
    check_trainable(pairs, EmbedConfig())


def create(folder: str | Path, predictions: str | Path, project: Path = PROJECT) -> Path:
    """Create and run the study (module docstring); return its folder. It is built in a
    hidden sibling folder and renamed into place only once its baseline is committed: a
    study that fails leaves nothing behind, and the same command can simply be run again."""
    folder, predictions = Path(folder), Path(predictions)
    if not (project / "stages" / "pairs.py").exists():
        raise PipelineError(
            f"{project}: no stages/ here; create studies from a checkout of "
            "the project (pip install -e .)"
        )
    if folder.exists() and any(folder.iterdir()):
        raise PipelineError(f"{folder}: exists and is not empty; pick a new folder")
    check_file(predictions)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp's is private (0700); a study is a plain folder
    try:
        _build(partial, predictions, project)
        if folder.exists():
            folder.rmdir()  # empty, checked above
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def _build(folder: Path, predictions: Path, project: Path) -> None:
    (folder / INPUTS).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(predictions, folder / PREDICTIONS)
    _run(["git", "init", "-q", "-b", "main"], folder)
    _run(["dvc", "init", "-q"], folder)
    shutil.copytree(project / ".dvc" / "plots", folder / ".dvc" / "plots")
    # dvc_plots/, comparison/: what `dvc plots diff` and compare write, never history.
    (folder / ".gitignore").write_text("__pycache__/\n/.cache/\n/dvc_plots/\n/comparison/\n")
    (folder / ".dvcignore").write_text("__pycache__/\n")
    (folder / "params.yaml").write_text(params_text())
    (folder / CODE).symlink_to(project.resolve(), target_is_directory=True)
    pipeline = study_pipeline(project)
    (folder / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    _run(["dvc", "add", "-q", PREDICTIONS], folder)
    ran = _run(["dvc", "repro"], folder)
    # The stages' one-line summaries and their warnings (a noisy table, say) reach the user.
    for line in ran.splitlines():
        if line.startswith("warning:"):
            print(line, file=sys.stderr)
        elif line.startswith(tuple(f"{stage}:" for stage in STAGES)):
            print(line)
    _run(["git", "add", "-A"], folder)
    _run(
        [
            "git",
            *_git_identity(folder),
            "commit",
            "-q",
            "-m",
            f"Baseline study of {predictions.name}: {', '.join(STAGES)} at default params",
        ],
        folder,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="the study's folder (new, or empty)")
    ap.add_argument(
        "--predictions",
        type=Path,
        required=True,
        help="your predictions file (.npz; see confusion_embeddings/predictions.py)",
    )
    args = ap.parse_args()
    folder = create(args.folder, args.predictions)
    print(
        f"study ready in {folder}: its baseline is committed; there, run `dvc exp run -S "
        "embed.dim=10` (say), then `dvc exp show`"
    )


def cli() -> None:
    """The console script (pyproject.toml): errors as one line and exit code 2."""
    run_main(main)


if __name__ == "__main__":
    cli()
