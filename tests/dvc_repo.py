"""A scratch DVC repository of the project on a tiny configuration, for the tests that run
the real `dvc` CLI (test_dvc_pipeline, test_crash, test_inputs): its code, dvc.yaml, params
(TINY set in the project's own params.yaml, every other line as it is), a 10-class picture
archive where the prepare stage reads it (tracked by a .dvc file of the project's own text
where asked), git and DVC initialised; and what those tests read back from it.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import (
    ROOT,
    cli_env,
    copy_code,
    fill_placeholders,
    make_dataset,
    make_tar_gz,
    stage_options,
)
from synthetic import CIFAR10

TINY = {
    "classifiers": {"seeds": [0, 1]},
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "eval_batch_size": 16,
        "stem_width": 8,
        "widths": [8, 16],
        "lr": 0.01,
    },
    "predict": {"batch_size": 16},
    "embed": {"seeds": [0, 1]},
}
# The stages as `dvc repro` runs (and names) them under TINY, in pipeline order.
SEEDS = TINY["classifiers"]["seeds"]
STAGES = [
    "prepare",
    *(f"train@{s}" for s in SEEDS),
    *(f"predict@{s}" for s in SEEDS),
    "pairs",
    "embed",
    "resample",
    "evaluate",
]


def run(repo: Path, *args: str) -> str:
    """Run a command in the repo; fail the test with its output if it fails."""
    proc = subprocess.run(list(args), cwd=repo, env=cli_env(), capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    """The stages `dvc repro` ran ("Running stage 'train@2':"), whichever they are."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def redone(output: str) -> set[str]:
    """The stages `dvc repro` ran or restored from its run cache ("Stage 'embed' is cached -
    skipping run, checking out outputs": the same command on the same inputs ran before)."""
    return ran(output) | set(re.findall(r"Stage '([^']+)' is cached", output))


def repo_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def set_seeds(repo: Path, seeds: list[int]) -> None:
    params = repo_params(repo)
    params["classifiers"]["seeds"] = seeds
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_params_text() -> str:
    """The project's params.yaml with TINY's values set in place through ruamel's round trip,
    which keeps each untouched line and each list's style, so the scratch repository holds
    the project's own form of the file (not one that DVC's writer made)."""
    from ruamel.yaml import YAML

    rt = YAML()
    doc = rt.load((ROOT / "params.yaml").read_text())
    for section, over in TINY.items():
        for key, value in over.items():
            if isinstance(value, list):
                doc[section][key][:] = value  # the list object, and so its style, stays
            else:
                doc[section][key] = value
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def track_archive(repo: Path, archive: Path) -> None:
    """Track the picture archive with DVC as a clone of the project does: a .dvc file of the
    project's own text, with this archive's checksum and size put in."""
    name = str(archive.relative_to(repo))
    run(repo, "dvc", "add", "-q", name)  # into the cache; data/raw/.gitignore ignores it
    data = archive.read_bytes()
    text = (ROOT / f"{name}.dvc").read_text()
    text = re.sub(r"(?m)^- md5: \w+$", f"- md5: {hashlib.md5(data).hexdigest()}", text)
    text = re.sub(r"(?m)^  size: \d+$", f"  size: {len(data)}", text)
    (repo / f"{name}.dvc").write_text(text)


def make_repo(tmp: Path, tracked_archive: bool = False) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    copy_code(repo)
    shutil.copy(ROOT / "dvc.yaml", repo)
    (repo / "params.yaml").write_text(tiny_params_text())
    src = make_dataset(tmp / "images", CIFAR10, train=8, test=4, size=(16, 16))
    source = repo / stage_options("prepare")["--source"]
    source.parent.mkdir(parents=True)
    make_tar_gz(src, source)
    run(repo, "git", "init", "-q")
    run(repo, "git", "config", "user.email", "test@example.com")
    run(repo, "git", "config", "user.name", "test")
    run(repo, "dvc", "init", "-q")
    # After `dvc init`, which makes .dvc/ and a .dvcignore of its own.
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    raw = "" if tracked_archive else "/data/raw/\n"  # else only the archive is ignored
    (repo / ".gitignore").write_text(f"__pycache__/\n/.cache/\n{raw}")
    (repo / "reports").mkdir()
    shutil.copy(ROOT / "reports" / ".gitignore", repo / "reports" / ".gitignore")
    if tracked_archive:
        track_archive(repo, source)
    # dvclive (the train stage) fails in a git repository without any commit ("Empty git repo").
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    return repo


def outputs(repo: Path) -> list[str]:
    """Every output path dvc.yaml names (outs, metrics, plots), a foreach stage's for each
    of the repo's classifier seeds."""
    params = repo_params(repo)
    doc = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for entry in doc.values():
        items = [None]
        if "foreach" in entry:
            items = yaml.safe_load(fill_placeholders(entry["foreach"], params))
            entry = entry["do"]
        for item in items:
            paths += [
                fill_placeholders(path, params, item)
                for key in ("outs", "metrics", "plots")
                for listed in entry.get(key, [])
                for path in ([listed] if isinstance(listed, str) else listed)
            ]
    return paths


def similarity_table(repo: Path) -> list[dict[str, str]]:
    """evaluate's --table: rows of class, neighbour, cosine, std, most similar first."""
    import csv

    path = repo / stage_options("evaluate")["--table"]
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def model_bytes(repo: Path) -> dict[str, bytes]:
    """Every trained model's and predictions file's bytes, by path."""
    files = [*repo.glob("models/cnn/seed_*/*"), *repo.glob("data/predictions/*.npz")]
    return {str(f.relative_to(repo)): f.read_bytes() for f in sorted(files)}
