"""`python -m confusion_embeddings.compare` (compare.py, evaluation/comparison.py): two tables
that differ in one planted class pair differ there and only there; two resamples of one
file are not different."""

from __future__ import annotations

import json

import numpy as np

import confusion_embeddings as ce
from confusion_embeddings.compare import main as compare_main
from confusion_embeddings.core.errors import PipelineError

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
