"""Tests of the evaluate stage (confusion_embeddings/evaluation/, stages/evaluate.py): the
figures on hand-made inputs, several classifiers (their agreement and spread), what the
lower-ranked guesses say on their own, then the whole chain."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import validate_section
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import SCHEMA as EMBED_SCHEMA
from confusion_embeddings.embedding.engines import embed
from confusion_embeddings.evaluation.caveats import (
    collapse_reasons,
    flat_guesses_reason,
    ordinal,
)
from confusion_embeddings.evaluation.confusion import (
    confusion_counts,
    confusion_similarity,
    on_test_split,
    secondary_structure,
    top1_accuracy,
)
from confusion_embeddings.evaluation.groups import adjusted_rand_index, resolve_groups
from confusion_embeddings.evaluation.plots import (
    SIMILARITY_COLUMNS,
    similarity_rows,
    write_plots,
    write_similarity_csv,
)
from confusion_embeddings.evaluation.ranking import seed_mean_std, spearman_upper, table_agreement
from confusion_embeddings.evaluation.report import metrics_dict, print_warnings, render_report
from confusion_embeddings.evaluation.scores import SCHEMA, evaluate
from confusion_embeddings.evaluation.uncertainty import ranked_neighbours
from confusion_embeddings.method import assess
from confusion_embeddings.pairs import Pairs, build_pairs, combine
from confusion_embeddings.predictions import load_predictions, predictions_from_arrays
from stages import embed as embed_stage
from stages import evaluate as evaluate_stage
from stages import pairs as pairs_stage

from helpers import stage_argv, stage_options
from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions, write_predictions

# The headline figures, the only keys of the metrics file (the tables are plot data).
HEADLINE = [
    "table_reliability",
    "classifiers",
    "interval_halfwidth",
    "nearest_share_min",
    "picture_spread",
    "classifier_spread",
    "classifier_agreement",
    "seed_spread",
    "seed_reliability",
    "spearman_vs_confusion",
    "secondary_vs_confusion",
    "mean_offdiag_cosine",
    "collapsed",
    "noisy",
    "flat_guesses",
    "unstable_ranks",
    "consensus_vs_mean_table",
    "least_stable_dispersion",
    "group_separation",
    "group_nn_agreement",
    "group_ari",
]
# Figures that apply to several classifiers only: left out of the metrics of one.
SEVERAL_CLASSIFIERS = {"classifier_agreement", "classifier_spread"}
# Figures of several runs per classifier (gensim's seeds): the jax engine's table is one fit.
SEVERAL_RUNS = {"seed_spread", "seed_reliability"}
# Figures of the resampling: left out when evaluate was given no replicates.
RESAMPLED = {"table_reliability", "interval_halfwidth", "nearest_share_min", "picture_spread"}


def headline(m: dict, absent: set[str] = frozenset()) -> list[str]:
    """HEADLINE in its order, less the figures that do not apply (left out, never null)."""
    assert None not in m.values(), m
    return [key for key in HEADLINE if key not in absent]


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


def hand_pairs(true, guess, k, classes, groups=None, name="c0") -> Pairs:
    """One classifier's pairs, pictures without a split."""
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
        classifier=np.zeros(len(true), np.int16),
        classifiers=(name,),
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
    vectors = (base + 0.01 * rng.normal(size=(1, 3, 4, 5))).astype(np.float32)
    p = hand_pairs(np.repeat(np.arange(4), 2), [0, 1, 1, 0, 2, 3, 3, 2], 2, "abcd")
    ev = evaluate(p, vectors, eval_params())
    assert ev.collapsed and ev.mean_offdiag > 0.99
    print_warnings(ev)
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
    # The jax engine (the default), three restarts: [1, 1, C, dim], one classifier.
    embedding = embed(pairs, validate_section("embed", {"seeds": [0, 1, 2]}, EMBED_SCHEMA))
    return pairs, embedding


def test_planted_groups_are_recovered(planted):
    pairs, embedding = planted
    ev = assess(pairs, embedding, eval_params(bootstrap=20))  # groups: the file's own (PLANTED)
    assert ev.groups == PLANTED
    assert ev.group_nn_agreement == 1.0
    assert ev.group_ari >= 0.9
    assert ev.group_separation > 0.3
    # Confusion rates here are two-level (in-group or not), which caps the rank correlation.
    assert ev.spearman > 0.3 and not ev.collapsed


def test_shuffled_groups_score_near_chance(planted):
    pairs, embedding = planted
    ev = evaluate(pairs, embedding.vectors, eval_params(groups=SHUFFLED))
    assert abs(ev.group_ari) < 0.2
    assert ev.group_nn_agreement < 0.5
    assert ev.group_separation < 0.1


def test_report_tables_plots_and_metrics(tmp_path, planted):
    pairs, embedding = planted
    params = eval_params(groups={"first": CLASSES[:6], "second": CLASSES[6:10]}, bootstrap=20)
    ev = assess(pairs, embedding, params)
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
    ev = evaluate(p, vectors, params, replicates=replicates)
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
            {"embed": {"seeds": [0, 1]}, "evaluate": {"groups": CIFAR10_GROUPS, "bootstrap": 20}}
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
                        predictions=folder,
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
                evaluate_stage,
                stage_argv(
                    "evaluate",
                    **paths(
                        "evaluate",
                        d,
                        pairs=f"{d}/pairs",
                        embed=f"{d}/embed",
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


# --------------------------------------------------------------------------- several classifiers


def test_table_agreement_identical_and_shuffled():
    rng = np.random.default_rng(0)
    c = 8
    base = rng.uniform(-1, 1, (c, c))
    base = (base + base.T) / 2
    np.fill_diagonal(base, 1.0)
    assert table_agreement(np.stack([base, base, base])) == pytest.approx(1.0)
    assert table_agreement(base[None]) is None  # one classifier: nothing to agree with
    # A table whose class pairs are shuffled ranks them otherwise.
    iu = np.triu_indices(c, k=1)
    shuffled = np.eye(c)
    shuffled[iu] = rng.permutation(base[iu])
    shuffled = shuffled + np.triu(shuffled, 1).T
    two = table_agreement(np.stack([base, shuffled]))
    assert two < 0.5
    # The mean over pairs of tables: (1 + r + r) / 3 for base, base, shuffled.
    assert table_agreement(np.stack([base, base, shuffled])) == pytest.approx((1 + 2 * two) / 3)
    # Only the ranking counts: a monotone transform of a table agrees fully.
    assert table_agreement(np.stack([base, 0.5 * base**3 + 0.1])) == pytest.approx(1.0)


def _split_pairs(tmp_path, seed: int, name: str, **kwargs) -> Pairs:
    """One classifier's top-3 pairs of a 10-class synthetic file with train/test splits."""
    path = tmp_path / f"{name}.npz"
    write_predictions(
        path, make_synthetic_predictions(200, CIFAR10, CIFAR10_GROUPS, 1.5, seed=seed, **kwargs)
    )
    return build_pairs(load_predictions(path), top_k=3, block_size=4096)


def test_identical_classifiers_have_no_spread(tmp_path):
    one = _split_pairs(tmp_path, 0, "seed_0")
    two = combine([one, dataclasses.replace(one, classifiers=("seed_1",))])
    rng = np.random.default_rng(1)
    runs = rng.normal(size=(1, 3, 10, 5)).astype(np.float32)  # 3 word2vec seeds
    ev = evaluate(two, np.concatenate([runs, runs]), eval_params())
    assert ev.classifiers == ("seed_0", "seed_1") and ev.seeds == 3 and ev.dim == 5
    assert ev.tables.shape == (2, 10, 10)
    np.testing.assert_array_equal(ev.classifier_std, 0.0)
    assert ev.classifier_agreement == pytest.approx(1.0)
    # The seed spread is the single classifier's, and the mean its table.
    alone = evaluate(one, runs, eval_params())
    np.testing.assert_allclose(ev.seed_std, alone.seed_std, atol=1e-12)
    np.testing.assert_allclose(ev.mean, alone.mean, atol=1e-12)
    assert ev.seed_std[~np.eye(10, dtype=bool)].min() > 0
    assert alone.classifier_agreement is None
    np.testing.assert_array_equal(alone.classifier_std, 0.0)
    assert ev.classifier_accuracy == (alone.classifier_accuracy[0],) * 2


def test_classifier_spread_mean_and_accuracy_by_hand(tmp_path):
    """Two classifiers whose vectors differ: the mean of their tables, the population std
    across them, the seed spread averaged over them, and each one's test accuracy."""
    parts = [_split_pairs(tmp_path, s, f"seed_{s}", true_bonus=b) for s, b in ((0, 2.0), (1, 3.0))]
    pairs = combine(parts)
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(2, 2, 10, 4)).astype(np.float32)
    ev = evaluate(pairs, vectors, eval_params())
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


def test_test_pictures_and_top1_accuracy_without_a_test_split():
    p = hand_pairs([0, 0, 1, 1, 2, 2], [0, 1, 0, 2, 2, 1], 2, "abc")
    assert on_test_split(p).all()  # no test split: every picture
    assert top1_accuracy(p) == pytest.approx(2 / 3)


def test_report_and_metrics_of_several_classifiers(tmp_path):
    parts = [_split_pairs(tmp_path, s, f"seed_{s}") for s in range(3)]
    pairs = combine(parts)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, 2, 10, 5)).astype(np.float32)
    replicates = vectors[:, :1] + 0.2 * rng.normal(size=(3, 30, 10, 5)).astype(np.float32)
    params = eval_params()
    ev = evaluate(pairs, vectors, params, replicates=replicates)
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
    alone = evaluate(parts[0], vectors[:1], params, replicates=replicates[:1])
    report = render_report(alone, params)
    assert "## Classifiers" not in report and "30 redraws of the pictures and word2vec" in report
    m = metrics_dict(alone)
    assert list(m) == headline(m, SEVERAL_CLASSIFIERS) and m["classifiers"] == 1
    np.testing.assert_array_equal(alone.classifier_std, 0.0)


# --------------------------------------------------------------------------- lower-ranked guesses

# 20 classes in 4 groups of 5, a classifier about 93% right on top-1 whose mistakes stay in
# the group: many class pairs, so the rank correlation is not at the mercy of a few.
SECONDARY_CLASSES = [f"s{i:02d}" for i in range(20)]
SECONDARY_GROUPS = {f"g{g}": SECONDARY_CLASSES[5 * g : 5 * g + 5] for g in range(4)}


def _secondary_arrays(seed: int) -> dict[str, np.ndarray]:
    return make_synthetic_predictions(
        1500, SECONDARY_CLASSES, SECONDARY_GROUPS, confusion_strength=1.0, seed=seed, true_bonus=4.0
    )


def _random_lower_guesses(arrays: dict, seed: int) -> dict[str, np.ndarray]:
    """The same top-1 guesses, the 2nd and 3rd drawn uniformly among the other wrong classes
    (a `topk` predictions file): lower-ranked guesses that carry no structure."""
    probs, labels = arrays["probs"], arrays["labels"]
    n, c = probs.shape
    top1 = probs.argmax(axis=1)
    keys = np.random.default_rng(seed).random((n, c))
    keys[np.arange(n), labels] = 2.0  # never the true class ...
    keys[np.arange(n), top1] = -1.0  # ... and the top-1 guess first
    out = {k: v for k, v in arrays.items() if k != "probs"}
    out["topk"] = np.argsort(keys, axis=1)[:, :3].astype(np.int16)
    return out


def _pairs_of(tmp_path, arrays, name="pred") -> Pairs:
    path = write_predictions(tmp_path / f"{name}.npz", arrays)
    return build_pairs(load_predictions(path), top_k=3, block_size=65536)


@pytest.mark.parametrize("seed", [0, 1])
def test_secondary_structure_follows_planted_lower_guesses(tmp_path, seed):
    max_pairs = len(SECONDARY_CLASSES) * eval_params()["top_n"]
    arrays = _secondary_arrays(seed)
    planted = _pairs_of(tmp_path, arrays)
    assert 0.85 < top1_accuracy(planted) < 0.97
    assert secondary_structure(planted, max_pairs) > 0.5
    flat = _pairs_of(tmp_path, _random_lower_guesses(arrays, seed), "flat")
    np.testing.assert_array_equal(flat.guess[flat.rank == 1], planted.guess[planted.rank == 1])
    assert abs(secondary_structure(flat, max_pairs)) < 0.3


def test_secondary_structure_in_evaluate_is_the_mean_over_classifiers(tmp_path):
    max_pairs = len(SECONDARY_CLASSES) * eval_params()["top_n"]
    parts = [_pairs_of(tmp_path, _secondary_arrays(s), f"seed_{s}") for s in (0, 1)]
    vectors = np.random.default_rng(0).normal(size=(2, 1, 20, 5)).astype(np.float32)
    ev = evaluate(combine(parts), vectors, eval_params())
    expect = np.mean([secondary_structure(p, max_pairs) for p in parts])
    assert ev.secondary == pytest.approx(expect)


def test_secondary_structure_ignores_top1_mistakes_for_a_weaker_classifier(tmp_path):
    """Random lower-ranked guesses of a classifier right only ~63% of the time: still no
    order among its wrong classes beyond the top-1, so near zero."""
    max_pairs = len(SECONDARY_CLASSES) * eval_params()["top_n"]
    for seed in (0, 1):
        arrays = make_synthetic_predictions(
            1500, SECONDARY_CLASSES, SECONDARY_GROUPS, 1.5, seed=seed, true_bonus=3.0
        )
        flat = _pairs_of(tmp_path, _random_lower_guesses(arrays, seed), "flat")
        assert abs(secondary_structure(flat, max_pairs)) < 0.3


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
    max_pairs = len(SECONDARY_CLASSES) * eval_params()["top_n"]
    with_unseen, known_only = _left_out(_secondary_arrays(0), unseen)
    pairs = build_pairs(predictions_from_arrays(with_unseen), top_k=3, block_size=65536)
    alone = build_pairs(predictions_from_arrays(known_only), top_k=3, block_size=65536)
    secondary = secondary_structure(pairs, max_pairs)
    assert secondary == secondary_structure(alone, max_pairs) > eval_params()["min_secondary"]
    assert top1_accuracy(pairs) == top1_accuracy(alone)
    c = len(SECONDARY_CLASSES)
    vectors = np.random.default_rng(0).normal(size=(1, 1, c, 5)).astype(np.float32)
    ev = evaluate(pairs, vectors, eval_params())
    assert ev.secondary == secondary and ev.flat_guesses is None
    known = [i for i, name in enumerate(SECONDARY_CLASSES) if name not in unseen]
    block = np.ix_(known, known)
    assert ev.spearman == spearman_upper(ev.mean[block], ev.confusion_sim[block], max_pairs)


def test_ordinals_and_the_lower_guesses_named_for_any_k():
    expected = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 10: "10th", 11: "11th", 12: "12th"}
    expected |= {13: "13th", 21: "21st", 22: "22nd", 23: "23rd", 101: "101st", 111: "111th"}
    assert {n: ordinal(n) for n in expected} == expected
    params = eval_params()
    for k, words in ((2, "the 2nd guesses"), (3, "the 2nd to 3rd guesses"), (22, "to 22nd")):
        line = flat_guesses_reason(0.0, k, params)
        assert words in line and "-th" not in line, line


def test_default_engine_holds_on_a_thousand_pictures(tmp_path):
    """Small data, every embed and evaluate param at its default: 1,000 pictures (100 per
    class) with planted confusions within the CIFAR-10 groups. The table must not collapse
    and must rank class pairs like the confusions (gensim collapsed on data this small)."""
    path = tmp_path / "small.npz"
    write_predictions(path, make_synthetic_predictions(100, CIFAR10, CIFAR10_GROUPS, 1.5, seed=3))
    pairs = build_pairs(load_predictions(path), top_k=3, block_size=4096)
    params = validate_section("embed", {}, EMBED_SCHEMA)
    assert params["engine"] == "jax"  # the default this test is about
    ev = assess(pairs, embed(pairs, params), eval_params(groups=CIFAR10_GROUPS))
    assert not ev.collapsed and not ev.noisy
    assert ev.spearman >= 0.5, ev.spearman
