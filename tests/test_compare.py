"""`python -m confusion_embeddings.compare` (compare.py, evaluation/table_difference.py): two tables
that differ in one planted class pair differ there and only there; two resamples of one
file are not different."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import confusion_embeddings as ce
from confusion_embeddings.compare import main as compare_main
from confusion_embeddings.compare import verdict_line
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.evaluation.table_difference import Comparison

from synthetic import LINKED_CLASSES as CLASSES
from synthetic import linked_predictions as planted

# c6 and c7 are confused only in B; every other class pair has the same strength in both.
A_LINKS = {(0, 1): 1.0, (2, 3): 1.0, (4, 5): 1.0}
B_LINKS = {**A_LINKS, (6, 7): 1.5}


def saved(tmp_path, name, labels, probs):
    folder = tmp_path / name
    ce.embed_predictions(labels, CLASSES, probs=probs, bootstrap=200).save(folder)
    return folder / "reports" / "similarity_matrices.npz"


def run(capsys, a, b, out):
    compare_main([str(a), str(b), "--out", str(out)])
    return capsys.readouterr().out, json.loads((out / "comparison.json").read_text())


def test_a_planted_difference_is_found_in_that_pair_only(tmp_path, capsys):
    a = saved(tmp_path, "a", *planted(A_LINKS, 400, 0))
    b = saved(tmp_path, "b", *planted(B_LINKS, 400, 1))
    printed, figures = run(capsys, a, b, tmp_path / "ab")
    assert [d["pair"] for d in figures["differing_pairs"]] == [["c6", "c7"]]
    assert "c6~c7: A " in printed
    assert (tmp_path / "ab" / "comparison.png").stat().st_size > 10_000
    pair = figures["differing_pairs"][0]
    assert pair["b"] > pair["a_interval"][1]  # B's c6~c7 is above A's whole interval


def test_two_resamples_of_one_file_are_not_different(tmp_path, capsys):
    labels, probs = planted(A_LINKS, 400, 0)
    a = saved(tmp_path, "a", labels, probs)
    again = np.random.default_rng(7).integers(0, labels.size, labels.size)
    b = saved(tmp_path, "b", labels[again], probs[again])
    printed, figures = run(capsys, a, b, tmp_path / "ab")
    assert figures["different_beyond_noise"] is False
    assert figures["differing_pairs"] == []
    assert "not different beyond noise" in printed
    assert figures["spearman"] >= figures["noise_ceiling_low"]


def test_a_table_without_replicates_is_refused_with_the_remedy(tmp_path, capsys):
    old = tmp_path / "old.npz"
    np.savez(old, classes=np.array(CLASSES), similarity_mean=np.eye(len(CLASSES)))
    try:
        compare_main([str(old), str(old), "--out", str(tmp_path / "x")])
    except PipelineError as exc:
        assert "holds no bootstrap replicates" in str(exc) and "dvc repro evaluate" in str(exc)
    else:
        raise AssertionError("compare accepted a table without replicates")


def test_the_folder_result_save_wrote_is_a_side(tmp_path, capsys):
    """compare takes what `Result.save(folder)` writes, the folder itself, and prints the
    two figures its verdict compares: the Spearman and the noise ceiling's low bound."""
    labels, probs = planted(A_LINKS, 400, 0)
    saved(tmp_path, "a", labels, probs)
    again = np.random.default_rng(7).integers(0, labels.size, labels.size)
    saved(tmp_path, "b", labels[again], probs[again])
    printed, figures = run(capsys, tmp_path / "a", tmp_path / "b", tmp_path / "ab")
    verdict = next(line for line in printed.splitlines() if "beyond noise" in line)
    assert verdict.startswith("not different beyond noise: ")
    assert f"Spearman {figures['spearman']:.4f} >= " in verdict
    assert f"low bound {figures['noise_ceiling_low']:.4f} (its 2.5% quantile)" in verdict
    low, high = figures["noise_ceiling_low"], figures["noise_ceiling_high"]
    assert low <= figures["noise_ceiling"] <= high
    assert f"noise ceiling: {figures['noise_ceiling']:.3f} ({low:.3f} to {high:.3f}, 95%" in printed


def test_a_verdict_held_by_a_hair_shows_the_hair():
    """The two figures the verdict compares, to 4 decimals, either way it goes."""
    empty = np.zeros((2, 0))
    close = Comparison(
        pairs=[], a=empty[0], b=empty[0], a_interval=empty, b_interval=empty,
        spearman=0.98771, spearman_interval=(0.97, 0.99), noise_ceiling=0.991,
        ceiling_low=0.98752, ceiling_high=0.996, different=False, differing=[],
        confidence=0.95, replicates=200,
    )  # fmt: skip
    assert verdict_line(close) == (
        "not different beyond noise: Spearman 0.9877 >= the noise ceiling's low bound 0.9875 "
        "(its 2.5% quantile)"
    )
    below = dataclasses.replace(close, spearman=0.98731, different=True)
    assert verdict_line(below) == (
        "DIFFERENT beyond noise: Spearman 0.9873 < the noise ceiling's low bound 0.9875 "
        "(its 2.5% quantile)"
    )


def test_a_folder_without_a_table_is_refused_with_what_it_takes(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="neither dvc.yaml nor similarity_matrices.npz"):
        compare_main([str(tmp_path / "empty"), str(tmp_path / "empty")])
