"""A study of one's own predictions (confusion_embeddings/study.py), created for real: git,
DVC and the three stages run in a temporary folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from confusion_embeddings import study
from confusion_embeddings.core.errors import PipelineError

from helpers import changed_lines, cli_env, dvc_set_params
from synthetic import CIFAR10, make_synthetic_predictions, write_predictions


@pytest.mark.slow
def test_a_study_reports_its_stages_and_a_noisy_table(tmp_path, capsys):
    """Too few pictures without structure (10 per class, guesses at random): the study is
    created and committed, and the user sees the stages' summaries and evaluate's warning,
    not only "study ready"."""
    arrays = make_synthetic_predictions(10, CIFAR10, None, 0.0, seed=0)
    folder = study.create(tmp_path / "tiny", write_predictions(tmp_path / "p.npz", arrays))
    out, err = capsys.readouterr()
    assert "pairs: 1 classifier(s), 100 pictures" in out
    assert out.count("evaluate: ") == 1 and "noisy True" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert any(
        w.startswith("warning: noisy similarity table: the table's reliability") for w in warnings
    )
    # Random guesses: no class keeps its nearest class through the redraws either.
    assert any(w.startswith("warning: unstable ranks") for w in warnings)
    kinds = ("warning: noisy similarity table", "warning: unstable ranks", "warning: no structure")
    assert all(w.startswith(kinds) for w in warnings)
    log = subprocess.run(
        ["git", "log", "--oneline"], cwd=folder, capture_output=True, text=True, check=True
    )
    assert len(log.stdout.splitlines()) == 1  # the baseline, committed


def test_a_study_refuses_a_folder_in_use(tmp_path):
    arrays = make_synthetic_predictions(10, CIFAR10, None, 0.0, seed=0)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match="exists and is not empty"):
        study.create(tmp_path / "used", write_predictions(tmp_path / "p.npz", arrays))
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["notes.txt"]


def _tiny_unseen(path):
    """8 pictures of which none is of class eight or nine: known from the labels alone."""
    arrays = make_synthetic_predictions(1, CIFAR10, None, 0.0, seed=0)
    keep = arrays["labels"] < 8
    arrays = {**arrays, "labels": arrays["labels"][keep], "probs": arrays["probs"][keep]}
    arrays["split"] = arrays["split"][keep]
    return write_predictions(path, arrays)


def test_a_file_a_later_stage_would_refuse_fails_before_anything_is_created(tmp_path, capsys):
    predictions = _tiny_unseen(tmp_path / "tiny8.npz")
    with pytest.raises(PipelineError) as exc:
        study.create(tmp_path / "s_tiny8", predictions)
    assert "ship, truck are never a true class" in str(exc.value)
    assert "add pictures of them or use embed.engine: gensim" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny8.npz"]  # nothing created


@pytest.mark.slow
def test_a_stage_that_fails_inside_the_study_shows_its_reason_and_leaves_nothing(
    tmp_path, monkeypatch
):
    """A failure only the study's own `dvc repro` meets (here a params value the evaluate
    stage refuses): its `error:` line reaches the user and no folder is left behind, so the
    same command can run again once the cause is fixed."""
    arrays = make_synthetic_predictions(20, CIFAR10, None, 1.0, seed=0)
    predictions = write_predictions(tmp_path / "p.npz", arrays)
    real = study.study_params

    def bad():
        params = real()
        params["resample"]["bootstrap"] = 1
        return params

    monkeypatch.setattr(study, "study_params", bad)
    with pytest.raises(PipelineError) as exc:
        study.create(tmp_path / "s", predictions)
    assert "stopped: params.yaml: 'resample.bootstrap' = 1 is out of range" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
    monkeypatch.setattr(study, "study_params", real)
    assert study.create(tmp_path / "s", predictions).is_dir()  # the retry just works


def test_a_missing_predictions_file_names_the_flag_and_the_files_nearby(tmp_path):
    arrays = make_synthetic_predictions(2, CIFAR10, None, 0.0, seed=0)
    write_predictions(tmp_path / "digits.npz", arrays)
    with pytest.raises(PipelineError) as exc:
        study.create(tmp_path / "s", tmp_path / "digit.npz")
    assert str(exc.value) == (
        f"--predictions {tmp_path / 'digit.npz'}: no such file; .npz files in {tmp_path}: "
        "digits.npz"
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_the_plots_of_a_study_of_sixty_thousand_pictures_stay_small(tmp_path):
    """The confusion plot data are counts per cell, not one row per picture: `dvc plots show`
    of a 60,000-picture study writes well under 1 MB of HTML (11 MB with a row per picture)."""
    arrays = make_synthetic_predictions(6000, CIFAR10, None, 1.0, seed=0)
    folder = study.create(tmp_path / "big", write_predictions(tmp_path / "p.npz", arrays))
    subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-q"], cwd=folder, check=True, env=cli_env()
    )
    html = folder / "dvc_plots" / "index.html"
    assert 0 < html.stat().st_size < 1_000_000
    rows = (folder / "data" / "pairs" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted,count" and len(rows) <= 1 + 10 * 10
    status = subprocess.run(
        ["git", "status", "--short"], cwd=folder, capture_output=True, text=True, check=True
    )
    assert status.stdout == ""  # dvc_plots/ is ignored


def test_the_study_params_are_written_as_dvc_writes_them(tmp_path):
    """An experiment in a study (`dvc exp run -S embed.dim=10`) changes that line alone."""
    text = study.params_text()
    assert yaml.safe_load(text) == study.study_params()
    path = tmp_path / "params.yaml"
    path.write_text(text)
    dvc_set_params(path, "embed.dim=10")
    assert changed_lines(text, path.read_text()) == ["-  dim: 5", "+  dim: 10"]
    path.write_text(text)
    dvc_set_params(path, "evaluate.groups=null", "pairs.top_k=3")  # as they are: no change
    assert path.read_text() == text
