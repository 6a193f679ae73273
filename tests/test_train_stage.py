"""stages/train.py: the train stage's main() (a smoke run, what it refuses before writing
anything, bf16 through the stage and into predict)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from confusion_embeddings import host
from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import count_flops
from confusion_embeddings.cnn.training import muon_flops_per_step, train_and_evaluate
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data.prepared import load_prepared
from confusion_embeddings.predictions import load_predictions
from stages import train as train_stage

from cnn_helpers import KERNEL, NO_BF16, OPTIONS, fake_cpu_isa, tiny_run, train_project
from helpers import (
    default_params,
    run_in_project,
    run_stage_main,
    stage_argv,
    stage_options,
    without_fallback_warnings,
)


def run_train_stage(folder: Path, monkeypatch, **paths) -> None:
    """The train stage's main() in this process, from `folder`, with dvc.yaml's command."""
    monkeypatch.chdir(folder)
    run_stage_main("train", stage_argv("train", **paths))


def test_smoke_one_epoch(tmp_path, monkeypatch):
    project = train_project(tmp_path, epochs=1)
    seed = default_params()["classifiers"]["seeds"][0]
    assert stage_argv("train")[stage_argv("train").index("--seed") + 1] == str(seed)
    assert f"seed_{seed}" in OPTIONS["--model"]  # the first classifier's paths
    run_train_stage(project, monkeypatch)
    m = json.loads((project / OPTIONS["--metrics"]).read_text())
    # Headline figures only; wall times and speed in --timings.
    assert list(m) == [
        "test_accuracy",
        "test_accuracy_no_tta",
        "train_accuracy",
        "train_loss",
        "train_pflops",
        "optimizer_pflops",
        "conv_impl_used",
        "precision_used",
        "backend",
        "cpu",
    ]
    assert np.isfinite(m["train_loss"])
    # The default convolution and precision where this machine runs them (conv.resolve).
    want = tiny_run(4, seed=seed, epochs=1)
    assert (m["conv_impl_used"], m["precision_used"]) == (want.conv_impl, want.precision)
    assert m["backend"] == jax.default_backend() and m["cpu"] == host.cpu_isa()
    t = json.loads((project / OPTIONS["--timings"]).read_text())
    assert list(t) == [
        "train_seconds",
        "wall_seconds",
        "images_per_second",
        "gflops_per_image_train",
        "device_count",
    ]
    assert t["device_count"] == jax.device_count() and t["wall_seconds"] >= t["train_seconds"] > 0
    assert t["images_per_second"] > 0 and t["gflops_per_image_train"] > 0
    # What predict needs to run the network as train did, saved with it: the whole run.
    model = load_model(project / OPTIONS["--model"])
    assert model.run == want  # seed, class count, train params, convolution, precision
    assert model.run.model.widths == (8, 16) and model.run.holdout is None
    assert model.norm[0].shape == model.norm[1].shape == (3,)
    # The compute: one training picture's FLOPs x every picture of the one epoch's full
    # batches (batch 16).
    data = load_prepared(project / OPTIONS["--prepared"], ["train"])
    pictures = len(data.splits["train"].labels) // 16 * 16
    per_image = 3 * count_flops(model.run.model, data.image_hw)
    assert m["train_pflops"] == pytest.approx(per_image * pictures / 1e15, rel=1e-3)
    # Beside it, the optimizer's own compute: Muon's iterations once a step (the default).
    assert model.run.train.optimizer == "muon"
    muon = muon_flops_per_step(model.params) * (pictures // 16)
    assert m["optimizer_pflops"] == pytest.approx(muon / 1e15, rel=1e-3) and muon > 0
    # The headline figures are the saved model's: its test accuracy, recomputed from the
    # model with the saved test-time augmentation and without, and the last epoch's curve.
    test = load_prepared(project / OPTIONS["--prepared"], ["test"]).splits["test"]
    t = model.run.train
    for key, tta in (
        ("test_accuracy", (t.tta_flip, t.tta_translate)),
        ("test_accuracy_no_tta", (False, 0)),
    ):
        infer = make_inference_fn(model.graphdef, model.norm, *tta)
        logits = np.asarray(infer(model.params, model.rest, np.asarray(test.images)))
        assert m[key] == round(float((logits.argmax(-1) == test.labels).mean()), 6), key
    live = project / OPTIONS["--live"]
    assert (live / "plots" / "metrics" / "test" / "accuracy.tsv").exists()
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["step"] == 0  # one epoch
    assert summary["train"] == {"loss": m["train_loss"], "accuracy": m["train_accuracy"]}
    assert not list((project / OPTIONS["--checkpoints"]).glob("*.msgpack"))  # removed at the end


def test_bad_batch_size_is_refused_before_any_output(tmp_path, monkeypatch, capsys):
    project = train_project(tmp_path, train=2, test=2, batch_size=64)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["stages.train", *stage_argv("train")])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    assert "train.batch_size" in capsys.readouterr().err
    for option in ("--model", "--metrics", "--timings", "--live", "--checkpoints"):
        assert not (project / OPTIONS[option]).exists(), option
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    # The library refuses it too, before training anything.
    with pytest.raises(PipelineError, match="train.batch_size"):
        train_and_evaluate(
            load_prepared(project / OPTIONS["--prepared"]),
            tiny_run(4, "xla", batch_size=64),
            show_progress=False,
        )


def test_git_repo_without_commits_gives_a_clear_error(tmp_path, monkeypatch, capsys):
    project = train_project(tmp_path / "repo", train=2, test=2, epochs=1, batch_size=2)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["stages.train", *stage_argv("train")])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    err = without_fallback_warnings(capsys.readouterr().err)
    assert err.startswith("error: dvclive could not read the git repository")
    assert "commit once" in err
    for option in ("--model", "--metrics", "--timings"):
        assert not (project / OPTIONS[option]).exists(), option


def test_train_stage_needs_its_dvc_yaml_entry(tmp_path, monkeypatch, capsys):
    """The stage reads its dependencies (the resume fingerprint's) from dvc.yaml: run from
    a folder without one, it says so and writes nothing."""
    project = train_project(tmp_path, epochs=1)
    (project / "dvc.yaml").unlink()
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["stages.train", *stage_argv("train")])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "dvc.yaml: cannot read stage 'train'" in err and "project root" in err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def _bf16_project(folder: Path, **over) -> Path:
    project = train_project(folder, epochs=1, precision="bf16", **over)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["predict"]["batch_size"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


@pytest.mark.skipif(not KERNEL, reason="needs the oneDNN kernel")
def test_bf16_falls_back_through_the_train_stage_with_one_warning(tmp_path, monkeypatch, capsys):
    """train.precision bf16 on a CPU without bf16 instructions (forced): one warning line,
    and f32 is what runs, is reported and is saved with the model."""
    fake_cpu_isa(monkeypatch, NO_BF16)
    project = _bf16_project(tmp_path)
    capsys.readouterr()
    run_in_project(project, "train")
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "precision bf16 unavailable" in warnings[0], warnings
    assert json.loads((project / OPTIONS["--metrics"]).read_text())["precision_used"] == "f32"
    assert read_config(project / OPTIONS["--model"]).precision == "f32"


@pytest.mark.skipif(
    not (KERNEL and host.native_bf16()), reason="needs the oneDNN kernel and a bf16 CPU"
)
def test_bf16_train_and_predict_through_the_stages(tmp_path, monkeypatch, capsys):
    """A tiny bf16 run end to end: train records bf16 in its metrics and in the saved model,
    predict runs it in bf16 (no warning) and, on a CPU without bf16, in f32 with one."""
    project = _bf16_project(tmp_path)
    run_in_project(project, "train")
    m = json.loads((project / OPTIONS["--metrics"]).read_text())
    assert m["precision_used"] == "bf16" and m["conv_impl_used"] == "onednn"
    assert np.isfinite(m["train_loss"]) and 0 <= m["test_accuracy"] <= 1
    assert read_config(project / OPTIONS["--model"]).precision == "bf16"
    out = project / stage_options("predict")["--out"]
    capsys.readouterr()
    run_in_project(project, "predict")
    assert not _warnings(capsys.readouterr().err)
    kind = load_predictions(out).kind  # the scores params.yaml's predict.scores names
    scores = np.load(out)[kind]
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    fake_cpu_isa(monkeypatch, NO_BF16)
    run_in_project(project, "predict")
    assert len(_warnings(capsys.readouterr().err)) == 1
    # The same weights in f32: the same classes up to bf16 rounding of near-ties.
    assert (np.load(out)[kind].argmax(1) == scores.argmax(1)).mean() >= 0.9
