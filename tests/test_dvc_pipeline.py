"""End to end through the real `dvc` CLI, on a tiny configuration in a temporary repository.

One test walks the workflow the README promises: repro runs every stage; a second repro
runs nothing; changing `embed.dim` reruns only embed and evaluate; `dvc params diff` and
`dvc metrics diff` show the change; push to a remote, wipe cache and outputs, pull, clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import make_dataset, make_tar_gz

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
TINY = {
    "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "stem_width": 8,
              "widths": [8, 16], "lr": 0.01},
    "predict": {"batch_size": 16},
    "embed": {"seeds": [0, 1]},
}
STAGES = ["prepare", "train", "predict", "pairs", "embed", "evaluate"]


def _env() -> dict:
    # The stages run as `python -m stages.<name>`: the venv's python must come first.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"],
            "JAX_PLATFORMS": "cpu", "DVC_NO_ANALYTICS": "1"}


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
    shutil.copytree(ROOT / "stages", repo / "stages",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, over in TINY.items():
        params[section].update(over)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    src = make_dataset(tmp / "images", CIFAR10, train=8, test=4, size=(16, 16))
    (repo / "data" / "raw").mkdir(parents=True)
    make_tar_gz(src, repo / "data" / "raw" / "cifar10-jpeg.tar.gz")
    run(repo, "git", "init", "-q")
    run(repo, "git", "config", "user.email", "test@example.com")
    run(repo, "git", "config", "user.name", "test")
    run(repo, "dvc", "init", "-q")
    (repo / ".gitignore").write_text("__pycache__/\n/.cache/\n/data/raw/\n")
    # dvclive (the train stage) fails in a git repository without any commit ("Empty git repo").
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    return repo


@pytest.mark.slow
def test_dvc_workflow_end_to_end(tmp_path):
    repo = make_repo(tmp_path)

    out = run(repo, "dvc", "repro")
    assert ran(out) == set(STAGES), out
    for path in ["data/prepared/meta.json", "models/cnn/model.msgpack", "data/predictions.npz",
                 "data/pairs/pairs.npz", "data/embed/manifest.json", "metrics/similarity.json",
                 "reports/similarity.md", "metrics/train.json", "metrics/pairs.json"]:
        assert (repo / path).exists(), path

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
    assert "metrics/similarity.json" in metrics_diff and "dim" in metrics_diff

    remote = tmp_path / "remote"
    run(repo, "dvc", "remote", "add", "-d", "tmp", str(remote))
    run(repo, "dvc", "push")
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in ["data/prepared", "models", "data/pairs", "data/embed",
                 "data/predictions.npz", "reports/similarity_matrices.npz"]:
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
        n_per_class=50, classes=classes,
        groups={"animals": ["cat", "dog"], "vehicles": ["car", "truck"]},
        confusion_strength=2.0, seed=0)
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
    sim = yaml.safe_load((repo / "metrics" / "similarity.json").read_text())
    assert sim["classes"] == classes
    assert sim["nearest"]["cat"]["class"] == "dog" and sim["nearest"]["car"]["class"] == "truck"
    assert sim["group_nn_agreement"] == 1.0
