"""Tests of stages/evaluate.py: the figures on hand-made inputs, then the whole chain."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

from stages import embed as embed_stage
from stages import evaluate as evaluate_stage
from stages import pairs as pairs_stage
from stages.common import PipelineError, validate_section
from stages.embed import train_vectors
from stages.evaluate import (
    SCHEMA,
    adjusted_rand_index,
    collapse_reasons,
    confusion_counts,
    confusion_similarity,
    cosine_matrices,
    evaluate,
    metrics_dict,
    ranked_neighbours,
    render_report,
    resolve_groups,
    seed_mean_std,
    spearman_upper,
    warn_if_collapsed,
    write_plots,
)
from stages.pairs import Pairs, build_pairs
from stages.predictions import load_predictions
from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions, write_predictions

# 12 classes in 3 planted groups of 4: the model confuses classes only within their group.
CLASSES = [f"k{i:02d}" for i in range(12)]
PLANTED = {"g0": CLASSES[0:4], "g1": CLASSES[4:8], "g2": CLASSES[8:12]}
# The same classes regrouped so that each group takes classes from every planted group.
SHUFFLED = {"s0": ["k00", "k04", "k08", "k01"], "s1": ["k05", "k09", "k02", "k06"], "s2": ["k10", "k03", "k07", "k11"]}


def eval_params(**overrides) -> dict:
    return validate_section("evaluate", overrides, SCHEMA)


def hand_pairs(true, guess, k, classes, groups=None) -> Pairs:
    true, guess = np.asarray(true, np.int32), np.asarray(guess, np.int32)
    return Pairs(
        true=true, guess=guess, rank=np.tile(np.arange(1, k + 1, dtype=np.int8), len(true) // k),
        prob=np.full(len(true), np.nan, np.float32), split=np.full(len(true), -1, np.int8),
        classes=tuple(classes), splits=(), groups=groups, top_k=k,
    )


# --------------------------------------------------------------------------- unit figures


def test_seed_mean_and_std_on_hand_made_vectors():
    # seed 0: class 1 at 0 degrees from class 0; seed 1: at 90 degrees. Class 2 opposite class 0.
    vectors = np.array(
        [[[1, 0], [2, 0], [-1, 0]], [[1, 0], [0, 3], [-1, 0]]], dtype=np.float32
    )
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
    with pytest.raises(PipelineError, match=r"evaluate\.groups'.*unknown class 'kat' \(did you mean 'cat'\?\); valid classes: airplane"):
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
    write_predictions(path, make_synthetic_predictions(500, CLASSES, PLANTED, confusion_strength=2.5, seed=0))
    pairs = build_pairs(load_predictions(path), top_k=3, block_size=4096)
    # Few pairs per word here, so train on every pair (sample=0) with the shuffled corpus.
    vectors = train_vectors(pairs, validate_section("embed", {"seeds": [0, 1, 2], "sample": 0.0}, embed_stage.SCHEMA))
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
    assert set(m["similarity_mean"]) == set(CLASSES) and "k00" not in m["similarity_mean"]["k00"]
    assert m["nearest"]["k00"]["class"] in PLANTED["g0"]
    assert all(len(str(x).split(".")[-1]) <= 4 for x in m["similarity_mean"]["k00"].values())


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
    assert "similarity_mean" not in m and len(m["nearest"]) == c
    write_plots(ev, tmp_path, params)
    assert (tmp_path / "dendrogram.png").exists()


# --------------------------------------------------------------------------- the chain, via main()


def test_chain_through_main_is_byte_deterministic(tmp_path, monkeypatch, capsys):
    arrays = make_synthetic_predictions(300, CIFAR10, CIFAR10_GROUPS, confusion_strength=1.5, seed=1)
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
            (pairs_stage, ["--predictions", str(pred), "--out", f"{d}/pairs", "--metrics", f"{d}/m/pairs.json"]),
            (embed_stage, ["--pairs", f"{d}/pairs", "--out", f"{d}/embed"]),
            (
                evaluate_stage,
                ["--pairs", f"{d}/pairs", "--embed", f"{d}/embed", "--metrics", f"{d}/m/sim.json",
                 "--report", f"{d}/r/sim.md", "--plots", f"{d}/r/plots", "--matrices", f"{d}/r/mat.npz"],
            ),
        ]
        for module, args in steps:
            monkeypatch.setattr(sys, "argv", [module.__name__, *args, "--params", str(params)])
            module.run_main(module.main)
        return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}

    first, second = run_chain("a"), run_chain("b")
    assert first == second
    assert {"r/plots/class_map.png", "r/mat.npz", "embed/seed_1.kv", "pairs/confusion.csv"} <= set(first)
    sim = json.loads(first["m/sim.json"])
    assert sim["seeds"] == 2 and sim["dim"] == 5 and sim["group_ari"] is not None
    assert "### animals" in first["r/sim.md"].decode() and "### vehicles" in first["r/sim.md"].decode()
    with np.load(tmp_path / "a" / "r" / "mat.npz", allow_pickle=False) as mat:
        assert mat["similarity_mean"].shape == (10, 10) and mat["confusion"].sum() == 3000


def test_spearman_ignores_pairs_never_confused():
    # Three confused pairs ranked like the embedding, plus many unseen pairs (confusion 0)
    # whose embedding similarity is arbitrary: they must not drag the correlation down.
    rng = np.random.default_rng(0)
    emb = rng.uniform(-1, 1, (12, 12))
    emb = (emb + emb.T) / 2
    conf = np.zeros((12, 12))
    for (i, j), v in zip([(0, 1), (2, 3), (4, 5)], [0.3, 0.2, 0.1]):
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
