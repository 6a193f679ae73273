"""A study of one's own predictions (confusion_embeddings/study.py), created for real: git,
DVC and the three stages run in a temporary folder."""

from __future__ import annotations

import subprocess

import pytest

from confusion_embeddings import study
from confusion_embeddings.core.errors import PipelineError

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
    assert warnings and all(w.startswith("warning: noisy similarity table") for w in warnings)
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
