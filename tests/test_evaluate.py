"""Tests of the whole evaluate path (evaluation/scores.py's `compute_figures`, method.py's
`resample` and `evaluate`, stages/resample.py and stages/evaluate.py): collapse detection,
planted groups recovered, the report, tables, plots and metrics of one run, several classifiers
(their agreement and spread), the lower-ranked guesses' figure in evaluate, then the whole
chain. The figures one by one are in test_caveats, test_confusion, test_groups, test_ranking,
test_report and test_uncertainty."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys

import numpy as np
import pytest
import yaml

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import embed
from confusion_embeddings.evaluation.confusion import secondary_structure, top1_accuracy
from confusion_embeddings.evaluation.plots import (
    SIMILARITY_COLUMNS,
    similarity_rows,
    write_plots,
    write_similarity_csv,
)
from confusion_embeddings.evaluation.ranking import spearman_upper
from confusion_embeddings.evaluation.report import metrics_dict, print_warnings, render_report
from confusion_embeddings.evaluation.scores import compute_figures
from confusion_embeddings.pairs import build_pairs, combine
from confusion_embeddings.predictions import load_predictions, predictions_from_arrays
from stages import embed as embed_stage
from stages import evaluate as evaluate_stage
from stages import pairs as pairs_stage
from stages import resample as resample_stage

from helpers import (
    SEVERAL_CLASSIFIERS,
    SEVERAL_RUNS,
    eval_params,
    headline,
    resample_and_evaluate,
    stage_argv,
    stage_options,
)
from synthetic import (
    CIFAR10,
    CIFAR10_GROUPS,
    SECONDARY_CLASSES,
    hand_pairs,
    make_synthetic_predictions,
    pairs_of,
    secondary_arrays,
    split_pairs,
    write_predictions,
)


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


# --------------------------------------------------------------------------- collapse


def test_collapse_detection_fires_on_nearly_identical_vectors(capsys):
    rng = np.random.default_rng(0)
    base = rng.normal(size=5)
    vectors = (base + 0.01 * rng.normal(size=(1, 3, 4, 5))).astype(np.float32)
    p = hand_pairs(np.repeat(np.arange(4), 2), [0, 1, 1, 0, 2, 3, 3, 2], 2, "abcd")
    ev = compute_figures(p, vectors, eval_params())
    assert ev.collapsed and ev.mean_offdiag > 0.99
    print_warnings(ev)
    err = capsys.readouterr().err
    # Banner, headline, one line per criterion that fired (here only the cosine one: the
    # two confused pairs give no Spearman), banner.
    assert "WARNING" in err and "COLLAPSED" in err and len(err.splitlines()) >= 4
    assert "collapse_mean_cosine" in err
    assert metrics_dict(ev)["collapsed"] is True
    assert "vectors look collapsed" in render_report(ev, eval_params())


# --------------------------------------------------------------------------- planted groups


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "pred.npz"
    write_predictions(
        path, make_synthetic_predictions(500, CLASSES, PLANTED, confusion_strength=2.5, seed=0)
    )
    pairs = build_pairs(load_predictions(path), top_k=3, block_size=4096)
    # The jax engine (the default), three restarts: [1, 1, C, dim], one classifier.
    embedding = embed(pairs, EmbedConfig.from_params({"seeds": [0, 1, 2]}))
    return pairs, embedding


def test_planted_groups_are_recovered(planted):
    pairs, embedding = planted
    ev = resample_and_evaluate(pairs, embedding, 20)  # groups: the file's own (PLANTED)
    assert ev.groups == PLANTED
    assert ev.group_nn_agreement == 1.0
    assert ev.group_ari >= 0.9
    assert ev.group_separation > 0.3
    # Confusion rates here are two-level (in-group or not), which caps the rank correlation.
    assert ev.spearman > 0.3 and not ev.collapsed


def test_shuffled_groups_score_near_chance(planted):
    pairs, embedding = planted
    ev = compute_figures(pairs, embedding.vectors, eval_params(groups=SHUFFLED))
    assert abs(ev.group_ari) < 0.2
    assert ev.group_nn_agreement < 0.5
    assert ev.group_separation < 0.1


def test_report_tables_plots_and_metrics(tmp_path, planted):
    pairs, embedding = planted
    params = eval_params(groups={"first": CLASSES[:6], "second": CLASSES[6:10]})
    ev = resample_and_evaluate(pairs, embedding, 20, groups=params.groups)
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
    assert list(m) == headline(m, SEVERAL_CLASSIFIERS | SEVERAL_RUNS)
    assert m["classifiers"] == 1 and ev.seeds == 1  # jax: the lowest-loss restart alone
    # The tables: every ordered pair of distinct classes (12 <= all_pairs_max_classes),
    # neighbours most similar first, rounded to 4 decimals.
    write_similarity_csv(ev, tmp_path / "similarity.csv")
    rows = read_table((tmp_path / "similarity.csv").read_text())
    assert tuple(rows[0]) == SIMILARITY_COLUMNS
    assert [tuple(r.values()) for r in rows] == [
        tuple(str(x) for x in row) for row in similarity_rows(ev)
    ]
    assert {r["class"] for r in rows} == set(CLASSES)
    assert len(rows) == len(CLASSES) * (len(CLASSES) - 1)
    k00 = [r for r in rows if r["class"] == "k00"]
    assert "k00" not in {r["neighbour"] for r in k00} and len(k00) == len(CLASSES) - 1
    assert k00[0]["neighbour"] in PLANTED["g0"]  # the nearest class, listed first
    cosines = [float(r["cosine"]) for r in k00]
    assert cosines == sorted(cosines, reverse=True)
    keys = ("cosine", "low", "high")
    assert all(len(r[key].split(".")[-1]) <= 4 for r in k00 for key in keys)
    i, j = CLASSES.index("k00"), CLASSES.index(k00[0]["neighbour"])
    assert float(k00[0]["cosine"]) == round(float(ev.mean[i, j]), 4)
    assert float(k00[0]["low"]) == round(float(ev.uncertainty.low[i, j]), 4)
    assert float(k00[0]["high"]) == round(float(ev.uncertainty.high[i, j]), 4)
    assert all(float(r["low"]) < float(r["high"]) for r in rows)  # never zero width
    assert all(1 <= int(r["rank_low"]) <= int(r["rank_high"]) <= 11 for r in rows)


# --------------------------------------------------------------------------- the chain, via main()


def test_chain_through_main_is_byte_deterministic(tmp_path, monkeypatch, capsys):
    # As dvc.yaml runs it: one predictions file per classifier seed, read through --seeds.
    seeds = [int(s) for s in stage_options("pairs")["--seeds"].split()]
    folder = tmp_path / "predictions"
    folder.mkdir()
    for s in seeds:
        arrays = make_synthetic_predictions(
            300, CIFAR10, CIFAR10_GROUPS, confusion_strength=1.5, seed=1 + s
        )
        write_predictions(folder / f"seed_{s}.npz", arrays)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "embed": {"seeds": [0, 1]},
                "resample": {"bootstrap": 20},
                "evaluate": {"groups": CIFAR10_GROUPS},
            }
        )
    )
    monkeypatch.chdir(tmp_path)  # an option the test does not name writes here, not in the repo

    def paths(stage: str, d, **named: str) -> dict[str, str]:
        """Every option of the stage's command line pointed into d (`named` as given)."""
        out = {f[2:]: f"{d}/{stage}_{f[2:]}" for f in stage_options(stage) if f != "--seeds"}
        return {**out, **named}

    def run_chain(tag: str) -> dict[str, bytes]:
        d = tmp_path / tag
        steps = [
            (
                pairs_stage,
                stage_argv(
                    "pairs",
                    **paths(
                        "pairs",
                        d,
                        predictions=f"{folder}/seed_{{seed}}.npz",
                        out=f"{d}/pairs",
                        metrics=f"{d}/m/pairs.json",
                    ),
                ),
            ),
            (
                embed_stage,
                stage_argv("embed", **paths("embed", d, pairs=f"{d}/pairs", out=f"{d}/embed")),
            ),
            (
                resample_stage,
                stage_argv(
                    "resample",
                    **paths("resample", d, pairs=f"{d}/pairs", embed=f"{d}/embed", out=f"{d}/res"),
                ),
            ),
            (
                evaluate_stage,
                stage_argv(
                    "evaluate",
                    **paths(
                        "evaluate",
                        d,
                        pairs=f"{d}/pairs",
                        embed=f"{d}/embed",
                        resample=f"{d}/res",
                        metrics=f"{d}/m/sim.json",
                        table=f"{d}/r/sim.csv",
                        report=f"{d}/r/sim.md",
                        plots=f"{d}/r/plots",
                        matrices=f"{d}/r/mat.npz",
                    ),
                ),
            ),
        ]
        for module, args in steps:
            monkeypatch.setattr(sys, "argv", [module.__name__, *args, "--params", str(params)])
            run_main(module.main)
        return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}

    first, second = run_chain("a"), run_chain("b")
    assert first == second
    assert not [
        f for f in tmp_path.iterdir() if f.name not in ("a", "b", "predictions", "params.yaml")
    ]
    assert {
        "r/plots/class_map.png",
        "r/mat.npz",
        "embed/vectors.npy",
        "pairs/confusion.csv",
    } <= set(first)
    assert "r/sim.csv" in first
    sim = json.loads(first["m/sim.json"])
    several = set() if len(seeds) > 1 else SEVERAL_CLASSIFIERS
    assert list(sim) == headline(sim, several | SEVERAL_RUNS)
    assert sim["group_ari"] is not None and 0 < sim["table_reliability"] <= 1
    assert sim["classifiers"] == len(seeds)
    if len(seeds) > 1:
        assert -1 <= sim["classifier_agreement"] <= 1 and sim["classifier_spread"] > 0
    report = first["r/sim.md"].decode()
    assert "### animals" in report and "### vehicles" in report
    assert "(5 dimensions, engine jax)" in report  # in the report, not the metrics
    assert ("## Classifiers" in report) == (len(seeds) > 1)
    rows = read_table(first["r/sim.csv"].decode())
    assert len(rows) == 10 * 9 and {r["class"] for r in rows} == set(CIFAR10)
    with np.load(tmp_path / "a" / "r" / "mat.npz", allow_pickle=False) as mat:
        m = len(seeds)
        assert mat["similarity_mean"].shape == (10, 10)
        assert mat["confusion"].sum() == 3000 * m  # every classifier's top-1 guesses
        assert mat["classes"].tolist() == CIFAR10
        assert mat["classifiers"].tolist() == [f"seed_{s}" for s in seeds]
        assert mat["similarity_per_classifier"].shape == (m, 10, 10)
        np.testing.assert_allclose(
            mat["similarity_per_classifier"].mean(axis=0), mat["similarity_mean"], atol=1e-6
        )
        np.testing.assert_allclose(
            mat["similarity_per_classifier"].std(axis=0), mat["classifier_std"], atol=1e-6
        )
        assert mat["seed_std"].shape == (10, 10)
        # The replicates compare.py reads: every class pair i < j, one row per replicate.
        assert mat["bootstrap_pairs"].shape == (45, 2) and mat["bootstrap_tables"].shape == (20, 45)
        # The table holds the matrices' values, rounded.
        for r in rows:
            i, j = CIFAR10.index(r["class"]), CIFAR10.index(r["neighbour"])
            assert float(r["cosine"]) == pytest.approx(mat["similarity_mean"][i, j], abs=6e-5)
            for end in ("low", "high"):
                value = mat[f"similarity_{end}"][i, j]
                assert float(r[end]) == pytest.approx(value, abs=6e-5)


# --------------------------------------------------------------------------- several classifiers


def test_identical_classifiers_have_no_spread(tmp_path):
    one = split_pairs(tmp_path, 0, "seed_0")
    two = combine([one, dataclasses.replace(one, classifiers=("seed_1",))])
    rng = np.random.default_rng(1)
    runs = rng.normal(size=(1, 3, 10, 5)).astype(np.float32)  # 3 word2vec seeds
    ev = compute_figures(two, np.concatenate([runs, runs]), eval_params())
    assert ev.classifiers == ("seed_0", "seed_1") and ev.seeds == 3 and ev.dim == 5
    assert ev.tables.shape == (2, 10, 10)
    np.testing.assert_array_equal(ev.classifier_std, 0.0)
    assert ev.classifier_agreement == pytest.approx(1.0)
    # The seed spread is the single classifier's, and the mean its table.
    alone = compute_figures(one, runs, eval_params())
    np.testing.assert_allclose(ev.seed_std, alone.seed_std, atol=1e-12)
    np.testing.assert_allclose(ev.mean, alone.mean, atol=1e-12)
    assert ev.seed_std[~np.eye(10, dtype=bool)].min() > 0
    assert alone.classifier_agreement is None
    np.testing.assert_array_equal(alone.classifier_std, 0.0)
    assert ev.classifier_accuracy == (alone.classifier_accuracy[0],) * 2


def test_classifier_spread_mean_and_accuracy_by_hand(tmp_path):
    """Two classifiers whose vectors differ: the mean of their tables, the population std
    across them, the seed spread averaged over them, and each one's test accuracy."""
    parts = [split_pairs(tmp_path, s, f"seed_{s}", true_bonus=b) for s, b in ((0, 2.0), (1, 3.0))]
    pairs = combine(parts)
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(2, 2, 10, 4)).astype(np.float32)
    ev = compute_figures(pairs, vectors, eval_params())
    sims = cosine_matrices(vectors)  # [M, S, C, C]
    tables = sims.mean(axis=1)
    np.testing.assert_allclose(ev.tables, tables)
    np.testing.assert_allclose(ev.mean, (tables[0] + tables[1]) / 2)
    np.testing.assert_allclose(ev.classifier_std, np.abs(tables[0] - tables[1]) / 2, atol=1e-12)
    np.testing.assert_allclose(ev.seed_std, (sims[0].std(axis=0) + sims[1].std(axis=0)) / 2)
    for i, part in enumerate(parts):
        first = (part.rank == 1) & (part.split == part.splits.index("test"))
        expect = float((part.true[first] == part.guess[first]).mean())
        assert ev.classifier_accuracy[i] == pytest.approx(expect)
        assert top1_accuracy(part) == pytest.approx(expect)
    assert ev.classifier_accuracy[0] < ev.classifier_accuracy[1]  # the larger true bonus
    assert ev.n_pictures == 4000  # both classifiers' pictures


# --------------------------------------------------------------------------- lower-ranked guesses


def test_secondary_structure_in_evaluate_is_the_mean_over_classifiers(tmp_path):
    max_pairs = len(SECONDARY_CLASSES) * eval_params().top_n
    parts = [pairs_of(tmp_path, secondary_arrays(s), f"seed_{s}") for s in (0, 1)]
    vectors = np.random.default_rng(0).normal(size=(2, 1, 20, 5)).astype(np.float32)
    ev = compute_figures(combine(parts), vectors, eval_params())
    expect = np.mean([secondary_structure(p, max_pairs) for p in parts])
    assert ev.secondary == pytest.approx(expect)


def _left_out(arrays: dict, unseen: list[str]) -> tuple[dict, dict]:
    """A classifier that never saw `unseen`, two ways: every picture with those classes named
    unseen (their columns 0, the rest renormalised), and the same classifier's known classes'
    pictures alone, as a run of the known classes only."""
    classes = arrays["classes"].tolist()
    ids = [classes.index(u) for u in unseen]
    probs = arrays["probs"].copy()
    probs[:, ids] = 0
    probs /= probs.sum(axis=1, keepdims=True)
    common = {"split": arrays["split"], "splits": arrays["splits"]}
    with_unseen = {**common, "labels": arrays["labels"], "classes": arrays["classes"]}
    with_unseen |= {"probs": probs, "unseen": np.array(unseen)}
    keep = ~np.isin(arrays["labels"], ids)
    known = [c for c in classes if c not in unseen]
    index = np.array([known.index(c) if c in known else -1 for c in classes])
    known_only = {
        "labels": index[arrays["labels"][keep]],
        "classes": np.array(known),
        "probs": np.delete(probs[keep], ids, axis=1),
        "split": arrays["split"][keep],
        "splits": arrays["splits"],
    }
    return with_unseen, known_only


@pytest.mark.parametrize("unseen", [["s00"], ["s00", "s05", "s10"]])
def test_a_planted_unseen_class_leaves_the_lower_guesses_figure_alone(unseen):
    """A class the classifier never saw is never guessed: its pictures are all mistakes and
    have no right top-1 guess. The figures that read the guesses (secondary_vs_confusion,
    the accuracy, spearman_vs_confusion) are over the known classes, so its pictures change
    none of them, and no false "no structure in the lower guesses" warning fires."""
    max_pairs = len(SECONDARY_CLASSES) * eval_params().top_n
    with_unseen, known_only = _left_out(secondary_arrays(0), unseen)
    pairs = build_pairs(predictions_from_arrays(with_unseen), top_k=3, block_size=65536)
    alone = build_pairs(predictions_from_arrays(known_only), top_k=3, block_size=65536)
    secondary = secondary_structure(pairs, max_pairs)
    assert secondary == secondary_structure(alone, max_pairs) > eval_params().min_secondary
    assert top1_accuracy(pairs) == top1_accuracy(alone)
    c = len(SECONDARY_CLASSES)
    vectors = np.random.default_rng(0).normal(size=(1, 1, c, 5)).astype(np.float32)
    ev = compute_figures(pairs, vectors, eval_params())
    assert ev.secondary == secondary and ev.flat_guesses is None
    known = [i for i, name in enumerate(SECONDARY_CLASSES) if name not in unseen]
    block = np.ix_(known, known)
    assert ev.spearman == spearman_upper(ev.mean[block], ev.confusion_sim[block], max_pairs)


def test_default_engine_holds_on_a_thousand_pictures(tmp_path):
    """Small data, every embed and evaluate param at its default: 1,000 pictures (100 per
    class) with planted confusions within the CIFAR-10 groups. The table must not collapse
    and must rank class pairs like the confusions (gensim collapsed on data this small)."""
    path = tmp_path / "small.npz"
    write_predictions(path, make_synthetic_predictions(100, CIFAR10, CIFAR10_GROUPS, 1.5, seed=3))
    pairs = build_pairs(load_predictions(path), top_k=3, block_size=4096)
    params = EmbedConfig()
    assert params.engine == "jax"  # the default this test is about
    ev = resample_and_evaluate(pairs, embed(pairs, params), 200, groups=CIFAR10_GROUPS)
    assert not ev.collapsed and not ev.noisy
    assert ev.spearman >= 0.5, ev.spearman
