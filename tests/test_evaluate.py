"""Tests of the evaluate stage (confusion_embeddings/evaluation/, stages/evaluate.py): the
figures on hand-made inputs, then the whole chain."""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pytest
import yaml

from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import validate_section
from confusion_embeddings.embedding.engines import SCHEMA as EMBED_SCHEMA
from confusion_embeddings.embedding.engines import train_vectors
from confusion_embeddings.evaluation.plots import (
    TABLE_ALL_PAIRS_MAX_CLASSES,
    similarity_rows,
    write_plots,
    write_similarity_csv,
)
from confusion_embeddings.evaluation.report import metrics_dict, render_report, warn_if_collapsed
from confusion_embeddings.evaluation.scores import (
    SCHEMA,
    adjusted_rand_index,
    collapse_reasons,
    confusion_counts,
    confusion_similarity,
    cosine_matrices,
    evaluate,
    ranked_neighbours,
    resolve_groups,
    seed_mean_std,
    spearman_upper,
)
from confusion_embeddings.pairs import Pairs, build_pairs
from confusion_embeddings.predictions import load_predictions
from stages import embed as embed_stage
from stages import evaluate as evaluate_stage
from stages import pairs as pairs_stage

from helpers import stage_argv
from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions, write_predictions

# The headline figures, the only keys of the metrics file (the tables are plot data).
HEADLINE = [
    "classes",
    "seeds",
    "spearman_vs_confusion",
    "mean_offdiag_cosine",
    "collapsed",
    "group_separation",
    "group_nn_agreement",
    "group_ari",
]


def read_table(text: str) -> list[dict[str, str]]:
    """The similarity table (--table) as its rows."""
    return list(csv.DictReader(io.StringIO(text)))


# 12 classes in 3 planted groups of 4: the model confuses classes only within their group.
CLASSES = [f"k{i:02d}" for i in range(12)]
PLANTED = {"g0": CLASSES[0:4], "g1": CLASSES[4:8], "g2": CLASSES[8:12]}
# The same classes regrouped so that each group takes classes from every planted group.
SHUFFLED = {
    "s0": ["k00", "k04", "k08", "k01"],
    "s1": ["k05", "k09", "k02", "k06"],
    "s2": ["k10", "k03", "k07", "k11"],
}


def eval_params(**overrides) -> dict:
    return validate_section("evaluate", overrides, SCHEMA)


def hand_pairs(true, guess, k, classes, groups=None) -> Pairs:
    true, guess = np.asarray(true, np.int32), np.asarray(guess, np.int32)
    return Pairs(
        true=true,
        guess=guess,
        rank=np.tile(np.arange(1, k + 1, dtype=np.int8), len(true) // k),
        prob=np.full(len(true), np.nan, np.float32),
        split=np.full(len(true), -1, np.int8),
        classes=tuple(classes),
        splits=(),
        groups=groups,
        top_k=k,
    )


# --------------------------------------------------------------------------- unit figures


def test_seed_mean_and_std_on_hand_made_vectors():
    # seed 0: class 1 at 0 degrees from class 0; seed 1: at 90 degrees. Class 2 opposite class 0.
    vectors = np.array([[[1, 0], [2, 0], [-1, 0]], [[1, 0], [0, 3], [-1, 0]]], dtype=np.float32)
    sims = cosine_matrices(vectors)
    np.testing.assert_allclose(sims[0], [[1, 1, -1], [1, 1, -1], [-1, -1, 1]], atol=1e-12)
    mean, std = seed_mean_std(sims)
    assert mean[0, 1] == pytest.approx(0.5) and std[0, 1] == pytest.approx(0.5)  # ddof=0
    assert mean[0, 2] == pytest.approx(-1.0) and std[0, 2] == pytest.approx(0.0)
    assert mean[1, 2] == pytest.approx(-0.5)
    np.testing.assert_allclose(np.diag(mean), 1.0)


def test_ranked_neighbours_descending_ties_by_index():
    mean = np.array([[1.0, 0.2, 0.9, 0.2], [0.2, 1, 0, 0], [0.9, 0, 1, 0], [0.2, 0, 0, 1]])
    np.testing.assert_array_equal(ranked_neighbours(mean, 0), [2, 1, 3])
    np.testing.assert_array_equal(ranked_neighbours(mean, 3), [0, 1, 2])


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], 1.0),
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),  # label names do not matter
        ([0, 0, 1, 2], [0, 0, 1, 1], 4 / 7),  # sklearn's documented example: 0.57
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),  # worse than chance
    ],
)
def test_adjusted_rand_index_known_values(a, b, expected):
    assert adjusted_rand_index(np.array(a), np.array(b)) == pytest.approx(expected)


def test_confusion_matrices_hand_made():
    # 3 pictures, top-2: (a: a, b), (b: a, c), (c: c, b)
    p = hand_pairs([0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 2, 1], 2, "abc")
    np.testing.assert_array_equal(confusion_counts(p), [[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    sim = confusion_similarity(p)
    # rates: a->b 1, b->a 1, b->c 1, c->b 1, others 0 (one picture per class)
    np.testing.assert_allclose(sim, [[0, 1, 0], [1, 0, 1], [0, 1, 0]])


def test_unknown_class_in_groups_refused():
    with pytest.raises(
        PipelineError,
        match=r"evaluate\.groups'.*unknown class 'kat' \(did you mean 'cat'\?\); "
        r"valid classes: airplane",
    ):
        resolve_groups({"animals": ["cat", "kat"]}, None, tuple(CIFAR10))
    with pytest.raises(PipelineError, match="must be a list of class names"):
        resolve_groups({"animals": "cat"}, None, tuple(CIFAR10))
    assert resolve_groups(None, {"x": ["cat"]}, tuple(CIFAR10)) == {"x": ["cat"]}


def test_collapse_detection_fires_on_nearly_identical_vectors(capsys):
    rng = np.random.default_rng(0)
    base = rng.normal(size=5)
    vectors = (base + 0.01 * rng.normal(size=(3, 4, 5))).astype(np.float32)
    p = hand_pairs(np.repeat(np.arange(4), 2), [0, 1, 1, 0, 2, 3, 3, 2], 2, "abcd")
    ev = evaluate(p, vectors, eval_params())
    assert ev.collapsed and ev.mean_offdiag > 0.99
    warn_if_collapsed(ev)
    err = capsys.readouterr().err
    # Banner, headline, one line per criterion that fired (here only the cosine one: the
    # two confused pairs give no Spearman), banner.
    assert "WARNING" in err and "COLLAPSED" in err and len(err.splitlines()) >= 4
    assert "collapse_mean_cosine" in err
    assert metrics_dict(ev)["collapsed"] is True
    assert "vectors look collapsed" in render_report(ev, eval_params())


def test_collapse_reasons_name_each_criterion():
    params = eval_params()
    assert collapse_reasons(0.9, 0.3, params) == ()
    assert collapse_reasons(None, 0.3, params) == ()  # no Spearman (constant input): no verdict
    (reason,) = collapse_reasons(0.1, 0.3, params)
    assert "collapse_threshold" in reason
    assert len(collapse_reasons(0.1, 0.9, params)) == 2


# --------------------------------------------------------------------------- planted groups


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "pred.npz"
    write_predictions(
        path, make_synthetic_predictions(500, CLASSES, PLANTED, confusion_strength=2.5, seed=0)
    )
    pairs = build_pairs(load_predictions(path), top_k=3, block_size=4096)
    # Few pairs per word here, so train on every pair (sample=0) with the shuffled corpus.
    embed = validate_section("embed", {"seeds": [0, 1, 2], "sample": 0.0}, EMBED_SCHEMA)
    vectors = train_vectors(pairs, embed)
    return pairs, vectors


def test_planted_groups_are_recovered(planted):
    pairs, vectors = planted
    ev = evaluate(pairs, vectors, eval_params())  # groups=None: the file's own (PLANTED)
    assert ev.groups == PLANTED
    assert ev.group_nn_agreement == 1.0
    assert ev.group_ari >= 0.9
    assert ev.group_separation > 0.3
    # Confusion rates here are two-level (in-group or not), which caps the rank correlation.
    assert ev.spearman > 0.3 and not ev.collapsed


def test_shuffled_groups_score_near_chance(planted):
    pairs, vectors = planted
    ev = evaluate(pairs, vectors, eval_params(groups=SHUFFLED))
    assert abs(ev.group_ari) < 0.2
    assert ev.group_nn_agreement < 0.5
    assert ev.group_separation < 0.1


def test_report_tables_plots_and_metrics(tmp_path, planted):
    pairs, vectors = planted
    params = eval_params(groups={"first": CLASSES[:6], "second": CLASSES[6:10]})
    ev = evaluate(pairs, vectors, params)
    report = render_report(ev, params)
    for heading in ("### first", "### second", "### other"):
        assert heading in report
    header = next(line for line in report.splitlines() if line.startswith("| **k00**"))
    assert header.count("|") == 7  # one column per class of the group
    rows_first = report.split("### first")[1].split("###")[0].strip().splitlines()
    assert len(rows_first) == 2 + len(CLASSES) - 1  # header, rule, every other class
    assert "±" in rows_first[2]

    write_plots(ev, tmp_path, params)
    for name in ("similarity_heatmap.png", "dendrogram.png", "class_map.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    m = metrics_dict(ev)
    assert list(m) == HEADLINE and m["classes"] == len(CLASSES) and m["seeds"] == 3
    # The tables: every ordered pair of distinct classes (12 <= TABLE_ALL_PAIRS_MAX_CLASSES),
    # neighbours most similar first, rounded to 4 decimals.
    write_similarity_csv(ev, tmp_path / "similarity.csv", params["top_n"])
    rows = read_table((tmp_path / "similarity.csv").read_text())
    assert list(rows[0]) == ["class", "neighbour", "cosine", "std"]
    assert [tuple(r.values()) for r in rows] == [
        tuple(str(x) for x in row) for row in similarity_rows(ev, params["top_n"])
    ]
    assert {r["class"] for r in rows} == set(CLASSES)
    assert len(rows) == len(CLASSES) * (len(CLASSES) - 1)
    k00 = [r for r in rows if r["class"] == "k00"]
    assert "k00" not in {r["neighbour"] for r in k00} and len(k00) == len(CLASSES) - 1
    assert k00[0]["neighbour"] in PLANTED["g0"]  # the nearest class, listed first
    cosines = [float(r["cosine"]) for r in k00]
    assert cosines == sorted(cosines, reverse=True)
    assert all(len(r[key].split(".")[-1]) <= 4 for r in k00 for key in ("cosine", "std"))
    i, j = CLASSES.index("k00"), CLASSES.index(k00[0]["neighbour"])
    assert float(k00[0]["cosine"]) == round(float(ev.mean[i, j]), 4)
    assert float(k00[0]["std"]) == round(float(ev.std[i, j]), 4)


def test_many_classes_list_neighbours_and_keep_json_small(tmp_path):
    rng = np.random.default_rng(3)
    c, k = 60, 2
    classes = [f"n{i}" for i in range(c)]
    true = np.repeat(np.arange(c), 2 * k)
    guess = rng.integers(0, c, size=true.size)
    p = hand_pairs(true, guess, k, classes, groups={"a": classes[:30], "b": classes[30:]})
    vectors = rng.normal(size=(2, c, 5)).astype(np.float32)
    params = eval_params(top_n=4)
    ev = evaluate(p, vectors, params)
    report = render_report(ev, params)
    assert "## Nearest 4 classes of each class" in report and "| **n0**" not in report
    line = next(x for x in report.splitlines() if x.startswith("- **n0** (a):"))
    assert line.count("±") == 4
    m = metrics_dict(ev)
    assert list(m) == HEADLINE and m["classes"] == c  # no tables in the metrics
    # Beyond TABLE_ALL_PAIRS_MAX_CLASSES the table keeps each class's top_n neighbours.
    assert c > TABLE_ALL_PAIRS_MAX_CLASSES
    rows = similarity_rows(ev, params["top_n"])
    assert len(rows) == c * 4 and [r[0] for r in rows[:4]] == ["n0"] * 4
    assert [r[1] for r in rows[:4]] == [classes[j] for j in ranked_neighbours(ev.mean, 0)[:4]]
    write_plots(ev, tmp_path, params)
    assert (tmp_path / "dendrogram.png").exists()


# --------------------------------------------------------------------------- the chain, via main()


def test_chain_through_main_is_byte_deterministic(tmp_path, monkeypatch, capsys):
    arrays = make_synthetic_predictions(
        300, CIFAR10, CIFAR10_GROUPS, confusion_strength=1.5, seed=1
    )
    pred = write_predictions(tmp_path / "pred.npz", arrays)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "pairs": {"predictions": str(pred)},
                "embed": {"seeds": [0, 1]},
                "evaluate": {"groups": CIFAR10_GROUPS},
            }
        )
    )

    def run_chain(tag: str) -> dict[str, bytes]:
        d = tmp_path / tag
        steps = [
            (
                pairs_stage,
                stage_argv(
                    "pairs", predictions=pred, out=f"{d}/pairs", metrics=f"{d}/m/pairs.json"
                ),
            ),
            (embed_stage, stage_argv("embed", pairs=f"{d}/pairs", out=f"{d}/embed")),
            (
                evaluate_stage,
                stage_argv(
                    "evaluate",
                    pairs=f"{d}/pairs",
                    embed=f"{d}/embed",
                    metrics=f"{d}/m/sim.json",
                    table=f"{d}/r/sim.csv",
                    report=f"{d}/r/sim.md",
                    plots=f"{d}/r/plots",
                    matrices=f"{d}/r/mat.npz",
                ),
            ),
        ]
        for module, args in steps:
            monkeypatch.setattr(sys, "argv", [module.__name__, *args, "--params", str(params)])
            run_main(module.main)
        return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}

    first, second = run_chain("a"), run_chain("b")
    assert first == second
    assert {"r/plots/class_map.png", "r/mat.npz", "embed/seed_1.kv", "pairs/confusion.csv"} <= set(
        first
    )
    assert "r/sim.csv" in first
    sim = json.loads(first["m/sim.json"])
    assert list(sim) == HEADLINE
    assert sim["classes"] == 10 and sim["seeds"] == 2 and sim["group_ari"] is not None
    report = first["r/sim.md"].decode()
    assert "### animals" in report and "### vehicles" in report
    assert "(5 dimensions)" in report  # the vectors' dimension: in the report, not the metrics
    rows = read_table(first["r/sim.csv"].decode())
    assert len(rows) == 10 * 9 and {r["class"] for r in rows} == set(CIFAR10)
    with np.load(tmp_path / "a" / "r" / "mat.npz", allow_pickle=False) as mat:
        assert mat["similarity_mean"].shape == (10, 10) and mat["confusion"].sum() == 3000
        assert mat["classes"].tolist() == CIFAR10
        # The table holds the matrices' values, rounded.
        for r in rows:
            i, j = CIFAR10.index(r["class"]), CIFAR10.index(r["neighbour"])
            assert float(r["cosine"]) == pytest.approx(mat["similarity_mean"][i, j], abs=6e-5)
            assert float(r["std"]) == pytest.approx(mat["similarity_std"][i, j], abs=6e-5)


def test_spearman_ignores_pairs_never_confused():
    # Three confused pairs ranked like the embedding, plus many unseen pairs (confusion 0)
    # whose embedding similarity is arbitrary: they must not drag the correlation down.
    rng = np.random.default_rng(0)
    emb = rng.uniform(-1, 1, (12, 12))
    emb = (emb + emb.T) / 2
    conf = np.zeros((12, 12))
    for (i, j), v in zip([(0, 1), (2, 3), (4, 5)], [0.3, 0.2, 0.1], strict=True):
        conf[i, j] = conf[j, i] = v
        emb[i, j] = emb[j, i] = 2 + v  # the embedding ranks them in the same order
    assert spearman_upper(emb, conf) == pytest.approx(1.0)
    assert spearman_upper(emb, np.zeros((12, 12))) is None


def test_spearman_keeps_only_the_most_confused_pairs():
    # Two informative pairs ranked like the embedding, plus ten rarely confused pairs whose
    # embedding order is reversed: noise that max_pairs drops.
    emb, conf = np.zeros((8, 8)), np.zeros((8, 8))
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    for rank, (i, j) in enumerate(pairs):
        strong = rank < 3
        conf[i, j] = conf[j, i] = (10.0 - rank) if strong else 0.01 * (1 + rank)
        emb[i, j] = emb[j, i] = (10.0 - rank) if strong else -0.01 * (1 + rank)
    assert spearman_upper(emb, conf, max_pairs=3) == pytest.approx(1.0)
    assert spearman_upper(emb, conf) < 0.5
