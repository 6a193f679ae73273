"""End to end through the real `dvc` CLI, on a tiny configuration in a temporary repository.

One test walks the workflow the README promises: repro runs every stage; a second repro
runs nothing; changing `embed.dim` reruns only embed and evaluate; `dvc params diff` and
`dvc metrics diff` show the change, `dvc plots show` draws the similarity table with the
project's own template; push to a remote, wipe cache and outputs, pull, clean.

The scratch repository holds what the project's own does: the stages, the library they
import, dvc.yaml, the custom plot template (.dvc/plots/) and .dvcignore.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import copy_code, make_dataset, make_tar_gz, stage_options

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY = {
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
STAGES = ["prepare", "train", "predict", "pairs", "embed", "evaluate"]


def _env() -> dict:
    # The stages run as `python -m stages.<name>`: the venv's python must come first.
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "JAX_PLATFORMS": "cpu",
        "DVC_NO_ANALYTICS": "1",
    }


def run(repo: Path, *args: str) -> str:
    """Run a command in the repo; fail the test with its output if it fails."""
    proc = subprocess.run(list(args), cwd=repo, env=_env(), capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def make_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    copy_code(repo)
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, over in TINY.items():
        params[section].update(over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
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
    (repo / ".gitignore").write_text("__pycache__/\n/.cache/\n/data/raw/\n")
    # dvclive (the train stage) fails in a git repository without any commit ("Empty git repo").
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    return repo


def outputs(repo: Path) -> list[str]:
    """Every output path dvc.yaml names (outs, metrics, plots), placeholders aside."""
    doc = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    return [
        path
        for entry in doc.values()
        for key in ("outs", "metrics", "plots")
        for item in entry.get(key, [])
        for path in ([item] if isinstance(item, str) else item)
    ]


def similarity_table(repo: Path) -> list[dict[str, str]]:
    """evaluate's --table: rows of class, neighbour, cosine, std, most similar first."""
    import csv

    path = repo / stage_options("evaluate")["--table"]
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_dvc_workflow_end_to_end(tmp_path):
    repo = make_repo(tmp_path)

    out = run(repo, "dvc", "repro")
    assert ran(out) == set(STAGES), out
    for path in [
        "data/prepared/meta.json",
        "models/cnn/model.msgpack",
        "data/predictions.npz",
        "data/pairs/pairs.npz",
        "data/embed/manifest.json",
        "metrics/similarity.json",
        "reports/similarity.md",
        "metrics/train.json",
        "metrics/pairs.json",
        *outputs(repo),
    ]:
        assert (repo / path).exists(), path
    for stage in ("prepare", "train", "predict"):  # wall times: beside the metrics, not in them
        assert (repo / stage_options(stage)["--timings"]).exists(), stage
    assert {r["class"] for r in similarity_table(repo)} == set(CIFAR10)

    out = run(repo, "dvc", "repro")
    assert ran(out) == set(), out
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["embed"]["dim"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(repo, "dvc", "repro")
    assert ran(out) == {"embed", "evaluate"}, out  # training and prediction untouched
    assert "embed.dim" in run(repo, "dvc", "params", "diff")
    metrics_diff = run(repo, "dvc", "metrics", "diff", "--all")
    assert "metrics/similarity.json" in metrics_diff and "spearman_vs_confusion" in metrics_diff
    # The vectors' dimension: in the embed manifest and the report (no longer a metric).
    embed_out = repo / stage_options("embed")["--out"]
    assert yaml.safe_load((embed_out / "manifest.json").read_text())["dim"] == 3
    assert "(3 dimensions)" in (repo / stage_options("evaluate")["--report"]).read_text()
    # The similarity table drawn with the project's template (.dvc/plots/similarity.json).
    table = stage_options("evaluate")["--table"]
    plots = run(repo, "dvc", "plots", "show", "--json", table)
    assert table in plots and "DVC_METRIC_DATA" not in plots, plots[:2000]

    remote = tmp_path / "remote"
    run(repo, "dvc", "remote", "add", "-d", "tmp", str(remote))
    run(repo, "dvc", "push")
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in [
        "data/prepared",
        "models",
        "data/pairs",
        "data/embed",
        "data/predictions.npz",
        "reports/similarity_matrices.npz",
    ]:
        p = repo / path
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run(repo, "dvc", "pull")
    status = run(repo, "dvc", "status")
    assert "up to date" in status, status
    assert (repo / "models" / "cnn" / "model.msgpack").exists()


@pytest.mark.slow
def test_bring_your_own_predictions_through_dvc(tmp_path):
    """The README's example: a user's own predictions file, `dvc repro evaluate`, no CNN."""
    from synthetic import make_synthetic_predictions, write_predictions

    repo = make_repo(tmp_path)
    classes = ["cat", "dog", "car", "truck"]
    arrays = make_synthetic_predictions(
        n_per_class=50,
        classes=classes,
        groups={"animals": ["cat", "dog"], "vehicles": ["car", "truck"]},
        confusion_strength=2.0,
        seed=0,
    )
    write_predictions(repo / "my_predictions.npz", arrays)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pairs"]["predictions"] = "my_predictions.npz"
    params["pairs"]["top_k"] = 2
    params["evaluate"]["groups"] = None  # use the groups stored in the file
    # 200 pictures are far too few for gensim's default down-sampling (it keeps ~1% of the
    # pairs on a tiny vocabulary); the directed JAX skip-gram trains on the exact counts.
    params["embed"]["engine"] = "jax"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = run(repo, "dvc", "repro", "evaluate")
    assert ran(out) == {"pairs", "embed", "evaluate"}, out
    assert not (repo / "models").exists() and not (repo / "data" / "prepared").exists()
    sim = yaml.safe_load((repo / stage_options("evaluate")["--metrics"]).read_text())
    assert sim["classes"] == len(classes)
    assert sim["group_nn_agreement"] == 1.0
    rows = similarity_table(repo)
    assert sorted({r["class"] for r in rows}) == sorted(classes)
    nearest = {}
    for r in rows:  # each class's neighbours come most similar first
        nearest.setdefault(r["class"], r["neighbour"])
    assert nearest["cat"] == "dog" and nearest["car"] == "truck"
    with np.load(repo / stage_options("evaluate")["--matrices"], allow_pickle=False) as mat:
        assert mat["classes"].tolist() == classes
