"""End to end through the real `dvc` CLI, on a tiny configuration in a temporary repository.

One test walks the workflow docs/experiments.md promises, with two classifiers (params
`classifiers.seeds` [0, 1]: stages train@0, train@1, predict@0, predict@1): repro runs
every stage; a second repro runs nothing; changing `embed.dim` reruns only embed and
evaluate and changes only that line of params.yaml (the raw data's .dvc file stays as it
is); `dvc params diff` and `dvc metrics diff` show the change, `dvc plots show` draws
the similarity table with the project's own template; adding a seed trains and predicts
only that classifier (then pairs, embed, evaluate), removing it again retrains nothing; a
class left out of training (`-S train.unseen=[truck]`) reruns everything but prepare and
places the class in the report; push to a remote, wipe cache and outputs, pull, clean.

The scratch repository holds what the project's own does: the stages, the library they
import, dvc.yaml, params.yaml as the project writes it, the archive tracked by a .dvc file
of the project's text, the custom plot template (.dvc/plots/) and .dvcignore.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dvc_repo import (
    CIFAR10,
    SEEDS,
    STAGES,
    make_repo,
    model_bytes,
    outputs,
    ran,
    redone,
    repo_params,
    run,
    set_seeds,
    similarity_table,
)
from helpers import changed_lines, cli_env, metric_files, metric_keys, stage_options


@pytest.mark.slow
def test_dvc_workflow_end_to_end(tmp_path):
    repo = make_repo(tmp_path, tracked_archive=True)
    params = repo_params(repo)

    out = run(repo, "dvc", "repro")
    assert ran(out) == set(STAGES), out
    for path in [
        "data/prepared/meta.json",
        *(f"models/cnn/seed_{s}/model.msgpack" for s in SEEDS),
        *(f"data/predictions/seed_{s}.npz" for s in SEEDS),
        "data/pairs/pairs.npz",
        "data/embed/manifest.json",
        "metrics/similarity.json",
        "reports/similarity.md",
        *(f"metrics/train/seed_{s}.json" for s in SEEDS),
        "metrics/pairs.json",
        *outputs(repo),
    ]:
        assert (repo / path).exists(), path
    # wall times: beside the metrics, not in them; one file per classifier
    for stage in ("prepare", *(f"{st}@{s}" for st in ("train", "predict") for s in SEEDS)):
        assert (repo / stage_options(stage, params)["--timings"]).exists(), stage
    assert {r["class"] for r in similarity_table(repo)} == set(CIFAR10)
    pairs_metrics = yaml.safe_load((repo / "metrics" / "pairs.json").read_text())
    assert pairs_metrics["classifiers"] == len(SEEDS)
    sim = yaml.safe_load((repo / stage_options("evaluate")["--metrics"]).read_text())
    assert sim["classifiers"] == len(SEEDS)
    # Two classifiers, trained each on its own: different models.
    models = [(repo / f"models/cnn/seed_{s}/model.msgpack").read_bytes() for s in SEEDS]
    assert models[0] != models[1]

    out = run(repo, "dvc", "repro")
    assert ran(out) == set(), out
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    # Every stage again, with byte-identical results: git stays clean (dvc.lock hashes no
    # wall time; those are in reports/timings/, which git ignores).
    out = run(repo, "dvc", "repro", "--force")
    assert ran(out) == set(STAGES), out
    assert run(repo, "git", "status", "--porcelain") == "", run(repo, "git", "diff", "--stat")

    committed = run(repo, "git", "show", "HEAD:params.yaml")
    out = run(repo, "dvc", "exp", "run", "-S", "embed.dim=10")
    assert ran(out) == {"embed", "resample", "evaluate"}, out  # no training, no prediction
    # DVC wrote params.yaml and the archive's .dvc file again: the diff is the one value.
    changed = changed_lines(committed, (repo / "params.yaml").read_text())
    assert [line.split("#")[0].strip() for line in changed] == ["-  dim: 5", "+  dim: 10"]
    assert run(repo, "git", "status", "--porcelain", "--", "params.yaml", "data/raw") == (
        " M params.yaml\n"
    )
    # dvc exp show reads well: headline scalars only (tens, not the hundreds of a flattened
    # matrix), and every one of them has a value in every row (baseline, workspace, exp).
    rows = list(csv.DictReader(io.StringIO(run(repo, "dvc", "exp", "show", "--csv"))))
    keys = metric_keys(repo)
    metric_columns = [c for c in rows[0] if c.split(":")[-1] in keys]
    assert len(metric_columns) == sum(len(v) for v in metric_files(repo).values())
    assert len(metric_columns) < 60, metric_columns
    assert rows[0]["rev"] == "workspace" and not rows[1]["Experiment"], rows  # + the commit
    assert len(rows) == 3 and rows[2]["Experiment"], rows  # the experiment, by its name
    for row in rows:
        for column in metric_columns:
            assert row[column] != "", (row["Experiment"], row["rev"], column)
    assert "embed.dim" in run(repo, "dvc", "params", "diff")
    metrics_diff = run(repo, "dvc", "metrics", "diff", "--all")
    assert "metrics/similarity.json" in metrics_diff and "spearman_vs_confusion" in metrics_diff
    # The vectors' dimension: in the embed manifest and the report (no longer a metric).
    embed_out = repo / stage_options("embed")["--out"]
    assert yaml.safe_load((embed_out / "manifest.json").read_text())["dim"] == 10
    assert (
        "(10 dimensions, engine jax)" in (repo / stage_options("evaluate")["--report"]).read_text()
    )
    # The 80-column view of the experiments: every name, its changed param and its
    # table_reliability in full, nothing cut to "…".
    view = subprocess.run(
        [sys.executable, "-m", "confusion_embeddings.experiments"],
        cwd=repo,
        env=cli_env(COLUMNS="80"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert all(len(line) <= 80 for line in view) and "…" not in "".join(view), view
    reliability = next(c for c in rows[2] if c.split(":")[-1] == "table_reliability")
    line = next(v for v in view if v.startswith(rows[2]["Experiment"] + " "))
    assert "dim=10" in line and f" {rows[2][reliability]}" in line, (line, rows[2][reliability])
    # The similarity table drawn with the project's template (.dvc/plots/similarity.json).
    table = stage_options("evaluate")["--table"]
    plots = run(repo, "dvc", "plots", "show", "--json", table)
    assert table in plots and "DVC_METRIC_DATA" not in plots, plots[:2000]
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "dim 10")

    # A param of the tables and the report alone: evaluate reruns, the refits do not.
    out = run(repo, "dvc", "exp", "run", "-S", "evaluate.top_n=2")
    assert ran(out) == {"evaluate"}, out
    run(repo, "git", "checkout", "--", ".")  # params, dvc.lock and evaluate's uncached outs
    run(repo, "dvc", "checkout")
    assert ran(run(repo, "dvc", "repro")) == set()

    # A classifier added: only it trains and predicts; the tables are made again.
    before = model_bytes(repo)
    set_seeds(repo, [*SEEDS, 2])
    out = run(repo, "dvc", "repro")
    assert ran(out) == {"train@2", "predict@2", "pairs", "embed", "resample", "evaluate"}, out
    after = model_bytes(repo)
    assert {k: v for k, v in after.items() if k in before} == before  # the others untouched
    assert "data/predictions/seed_2.npz" in after
    assert yaml.safe_load((repo / "metrics" / "pairs.json").read_text())["classifiers"] == 3
    embed_manifest = yaml.safe_load((embed_out / "manifest.json").read_text())
    assert embed_manifest["classifiers"] == ["seed_0", "seed_1", "seed_2"]
    assert "classifiers.seeds" in run(repo, "dvc", "params", "diff")
    out = run(repo, "dvc", "repro")
    assert ran(out) == set(), out

    # ... and removed again: nothing trains or predicts, the tables are made again without it
    # (embed may come from DVC's run cache: its pairs are those of before the seed came).
    set_seeds(repo, list(SEEDS))
    out = run(repo, "dvc", "repro")
    assert redone(out) == {"pairs", "embed", "resample", "evaluate"}, out
    assert {"pairs", "evaluate"} <= ran(out), out
    assert model_bytes(repo).items() >= before.items()
    embed_manifest = yaml.safe_load((embed_out / "manifest.json").read_text())
    assert embed_manifest["classifiers"] == [f"seed_{s}" for s in SEEDS]
    assert yaml.safe_load((repo / "metrics" / "pairs.json").read_text())["classifiers"] == 2
    assert not (repo / "data" / "predictions" / "seed_2.npz").exists()  # pairs removed it
    out = run(repo, "dvc", "repro")
    assert ran(out) == set(), out
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "seeds back")

    # A class the classifiers never see: one `dvc exp run -S` away; the data is untouched.
    def current_models() -> dict[str, bytes]:  # seed 2's old model may still lie there
        return {k: v for k, v in model_bytes(repo).items() if "seed_2" not in k}

    before = current_models()
    out = run(repo, "dvc", "exp", "run", "-S", "train.unseen=[truck]")
    assert ran(out) == set(STAGES) - {"prepare"}, out
    predictions = np.load(repo / "data" / "predictions" / "seed_0.npz")
    assert predictions["unseen"].tolist() == ["truck"]
    assert predictions["logits"].shape[1] == len(CIFAR10) - 1  # the known classes' outputs
    sim = yaml.safe_load((repo / stage_options("evaluate")["--metrics"]).read_text())
    assert sim["unseen_classes"] == 1 and sim["unseen_nearest_match"] in (0.0, 1.0)
    assert {"unseen_row_spearman", "novelty_auroc", "novelty_auroc_max_prob"} <= set(sim)
    report = (repo / stage_options("evaluate")["--report"]).read_text()
    assert "## Classes the classifiers never saw" in report and "\n| truck | " in report
    # Back to the committed run: nothing to redo, the default models as they were.
    run(repo, "git", "checkout", "--", ".")
    run(repo, "dvc", "checkout")
    assert current_models() == before
    out = run(repo, "dvc", "repro")
    assert ran(out) == set(), out

    remote = tmp_path / "remote"
    run(repo, "dvc", "remote", "add", "-d", "tmp", str(remote))
    run(repo, "dvc", "push")
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in [
        "data/prepared",
        "models",
        "data/pairs",
        "data/embed",
        "reports/similarity_matrices.npz",
        *(str(f.relative_to(repo)) for f in (repo / "data" / "predictions").glob("*.npz")),
    ]:
        p = repo / path
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run(repo, "dvc", "pull")
    for s in SEEDS:
        assert (repo / "models" / "cnn" / f"seed_{s}" / "model.msgpack").exists()
        assert (repo / "data" / "predictions" / f"seed_{s}.npz").exists()
    # The removed classifier's file went with pairs' rerun, so nothing here differs from a
    # fresh clone's checkout.
    status = run(repo, "dvc", "status")
    assert "up to date" in status, status


@pytest.mark.slow
def test_bring_your_own_predictions_through_dvc(tmp_path):
    """A user's own predictions, one file per classifier where predict@<seed> would write it
    (data/predictions/seed_<s>.npz, params `classifiers.seeds`), and the method's three
    stages only: `dvc repro --downstream pairs` runs pairs -> embed -> evaluate, trains and
    predicts nothing, and leaves the user's files alone."""
    from synthetic import make_synthetic_predictions, write_predictions

    repo = make_repo(tmp_path)
    classes = ["cat", "dog", "car", "truck"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["classifiers"]["seeds"] = [0, 1]
    files = {}
    for s in params["classifiers"]["seeds"]:
        arrays = make_synthetic_predictions(
            n_per_class=50,
            classes=classes,
            groups={"animals": ["cat", "dog"], "vehicles": ["car", "truck"]},
            confusion_strength=2.0,
            seed=s,
        )
        path = repo / stage_options(f"predict@{s}", params)["--out"]
        path.parent.mkdir(parents=True, exist_ok=True)
        files[path] = write_predictions(path, arrays).read_bytes()
    params["pairs"]["top_k"] = 2
    params["evaluate"]["groups"] = None  # use the groups stored in the file
    # 200 pictures are far too few for gensim's default down-sampling (it keeps ~1% of the
    # pairs on a tiny vocabulary); the directed JAX skip-gram trains on the exact counts.
    params["embed"]["engine"] = "jax"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = run(repo, "dvc", "repro", "--downstream", "pairs")
    assert ran(out) == {"pairs", "embed", "resample", "evaluate"}, out
    assert not (repo / "models").exists() and not (repo / "data" / "prepared").exists()
    assert {path: path.read_bytes() for path in files} == files
    sim = yaml.safe_load((repo / stage_options("evaluate")["--metrics"]).read_text())
    assert sim["classifiers"] == 2 and 0 < sim["table_reliability"] <= 1
    assert sim["group_nn_agreement"] == 1.0
    rows = similarity_table(repo)
    assert sorted({r["class"] for r in rows}) == sorted(classes)
    nearest = {}
    for r in rows:  # each class's neighbours come most similar first
        nearest.setdefault(r["class"], r["neighbour"])
    assert nearest["cat"] == "dog" and nearest["car"] == "truck"
    with np.load(repo / stage_options("evaluate")["--matrices"], allow_pickle=False) as mat:
        assert mat["classes"].tolist() == classes
