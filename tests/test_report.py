"""Tests of confusion_embeddings/evaluation/report.py (with the tables and plots of
evaluation/plots.py): the report and the metrics of one classifier or several, and of many
classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from confusion_embeddings.evaluation.plots import similarity_rows, write_plots
from confusion_embeddings.evaluation.ranking import table_agreement
from confusion_embeddings.evaluation.report import metrics_dict, render_report
from confusion_embeddings.evaluation.scores import compute_figures
from confusion_embeddings.evaluation.uncertainty import ranked_neighbours
from confusion_embeddings.pairs import combine

from helpers import SEVERAL_CLASSIFIERS, eval_params, headline
from synthetic import CIFAR10, hand_pairs, split_pairs


def test_many_classes_list_neighbours_and_keep_json_small(tmp_path):
    rng = np.random.default_rng(3)
    c, k = 60, 2
    classes = [f"n{i}" for i in range(c)]
    true = np.repeat(np.arange(c), 2 * k)
    guess = rng.integers(0, c, size=true.size)
    p = hand_pairs(true, guess, k, classes, groups={"a": classes[:30], "b": classes[30:]})
    vectors = rng.normal(size=(1, 2, c, 5)).astype(np.float32)
    replicates = vectors[:, :1] + 0.1 * rng.normal(size=(1, 8, c, 5)).astype(np.float32)
    params = eval_params(top_n=4, all_pairs_max_classes=c - 1)
    ev = compute_figures(p, vectors, params, replicates=replicates)
    report = render_report(ev, params)
    assert "## Nearest 4 classes of each class" in report and "| **n0**" not in report
    line = next(x for x in report.splitlines() if x.startswith("- **n0** (a):"))
    assert line.count("±") == 4 and line.count("(rank ") == 4
    m = metrics_dict(ev)
    # Two pictures per class: too few lower-ranked guesses for secondary_structure to rank
    # the class pairs (None), so secondary_vs_confusion is left out.
    assert ev.secondary is None
    absent = SEVERAL_CLASSIFIERS | {"secondary_vs_confusion"}
    assert list(m) == headline(m, absent)  # no tables in the metrics
    # Beyond all_pairs_max_classes the table keeps each class's top_n neighbours.
    rows = similarity_rows(ev)
    assert len(rows) == c * 4 and [r[0] for r in rows[:4]] == ["n0"] * 4
    assert [r[1] for r in rows[:4]] == [classes[j] for j in ranked_neighbours(ev.mean, 0)[:4]]
    write_plots(ev, tmp_path, params)
    # The plots of 60 classes: drawn at a readable size, not blank.
    for name in ("similarity_heatmap.png", "dendrogram.png", "class_map.png"):
        with Image.open(tmp_path / name) as im:
            pixels = np.asarray(im.convert("L"))
        assert min(pixels.shape) >= 300 and pixels.std() > 10, (name, pixels.shape)


def test_report_and_metrics_of_several_classifiers(tmp_path):
    parts = [split_pairs(tmp_path, s, f"seed_{s}") for s in range(3)]
    pairs = combine(parts)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 2, 10, 5)).astype(np.float32)
    replicates = vectors[:, :1] + 0.2 * rng.normal(size=(3, 30, 10, 5)).astype(np.float32)
    params = eval_params()
    ev = compute_figures(pairs, vectors, params, replicates=replicates)
    report = render_report(ev, params)
    assert "of 3 classifiers; each similarity is the mean of their tables" in report
    assert "(each the mean over 2 word2vec seeds)" in report
    assert "30 redraws of the pictures and the 3 classifiers" in report
    assert f"the {ev.uncertainty.dominant} dominate" in report
    # Each cell: mean ± half the width of its bootstrap interval.
    i, j = CIFAR10.index("cat"), ranked_neighbours(ev.mean, CIFAR10.index("cat"))[0]
    half = (ev.uncertainty.high[i, j] - ev.uncertainty.low[i, j]) / 2
    cell = f"{CIFAR10[j]} {ev.mean[i, j]:.2f} ± {half:.2f}"
    column = report.split("### animals")[1].split("###")[0]
    assert cell in column
    # The Classifiers table: one row per classifier, its test accuracy and its table's
    # Spearman against the mean table.
    section = report.split("## Classifiers")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| seed_")]
    assert [r.split(" | ")[0] for r in rows] == ["| seed_0", "| seed_1", "| seed_2"]
    for row, acc in zip(rows, ev.classifier_accuracy, strict=True):
        assert f"| {acc:.4f} |" in row
    m = metrics_dict(ev)
    assert list(m) == headline(m)
    assert m["classifiers"] == 3
    off = ~np.eye(10, dtype=bool)
    # The classifiers' part of the spread: the standard error of the mean over them.
    error = ev.tables.std(axis=0, ddof=1) / np.sqrt(3)
    assert m["classifier_spread"] == pytest.approx(error[off].mean(), abs=1e-4)
    assert m["seed_spread"] == pytest.approx(ev.seed_std[off].mean(), abs=1e-4)
    assert m["classifier_agreement"] == pytest.approx(table_agreement(ev.tables), abs=1e-4)
    assert m["secondary_vs_confusion"] == pytest.approx(ev.secondary, abs=1e-4)
    json.dumps(m)  # plain JSON values only

    # One classifier: no Classifiers table, the pictures alone, no agreement.
    alone = compute_figures(parts[0], vectors[:1], params, replicates=replicates[:1])
    report = render_report(alone, params)
    assert "## Classifiers" not in report and "30 redraws of the pictures and word2vec" in report
    m = metrics_dict(alone)
    assert list(m) == headline(m, SEVERAL_CLASSIFIERS) and m["classifiers"] == 1
    np.testing.assert_array_equal(alone.classifier_std, 0.0)
