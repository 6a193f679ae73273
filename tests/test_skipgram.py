"""Tests of the directed JAX skip-gram (confusion_embeddings/embedding/skipgram.py) and embed's
`engine: jax`."""

from __future__ import annotations

import dataclasses
import json
import sys

import chex
import jax
import numpy as np
import pytest
import yaml
from gensim.models import KeyedVectors

from confusion_embeddings.config.embed import SCHEMA, EmbedConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.embedding import engines, skipgram
from confusion_embeddings.embedding.consensus import cosine_matrices
from confusion_embeddings.embedding.engines import (
    fit_restarts,
    fit_runs,
    updates_per_class,
)
from confusion_embeddings.embedding.formats import write_word2vec
from confusion_embeddings.embedding.skipgram import train_skipgram
from confusion_embeddings.embedding.store import load_embedding, load_vectors
from confusion_embeddings.pairs import Pairs, count_matrix, write_pairs
from stages import embed

from helpers import run_embed_stage, stage_argv
from synthetic import PLANTED_CLASSES, planted_pairs

CLASSES = PLANTED_CLASSES


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Pairs:
    return planted_pairs(tmp_path_factory.mktemp("pred"), 600)


def params(**overrides) -> EmbedConfig:
    return EmbedConfig.from_params({"engine": "jax", "seeds": [0, 1, 2], **overrides})


def make_pairs(true: list[int], guess: list[int], classes: list[str]) -> Pairs:
    """Pairs with top_k = 1 from explicit (true, guess) lists."""
    n = len(true)
    return Pairs(
        true=np.asarray(true, np.int32),
        guess=np.asarray(guess, np.int32),
        rank=np.ones(n, np.int8),
        prob=np.full(n, np.nan, np.float32),
        split=np.full(n, -1, np.int8),
        classes=tuple(classes),
        splits=(),
        groups=None,
        top_k=1,
        classifier=np.zeros(n, np.int16),
        classifiers=("hand",),
    )


def mean_cosine(vectors: np.ndarray) -> np.ndarray:
    return cosine_matrices(vectors).mean(axis=0)


@pytest.fixture(scope="module")
def vectors(pairs) -> np.ndarray:
    """Every restart's vectors [S, C, dim] (the table keeps the lowest-loss one)."""
    return fit_restarts(pairs, params()).w_in


# --------------------------------------------------------------------------- results


def test_shape_and_dtype(vectors):
    assert vectors.shape == (3, len(CLASSES), 5) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize("objective", ["softmax", "negative"])
def test_planted_pairs_are_nearest(pairs, vectors, objective):
    vecs = (
        vectors
        if objective == "softmax"
        else fit_restarts(pairs, params(jax_objective="negative")).w_in
    )
    mean = mean_cosine(vecs)
    np.fill_diagonal(mean, -np.inf)
    nearest = mean.argmax(axis=1)
    assert nearest[0] == 1 and nearest[1] == 0
    assert nearest[2] == 3 and nearest[3] == 2


def test_same_seed_bitwise_identical_and_order_free(pairs, vectors):
    again = fit_restarts(pairs, params(seeds=[1, 0])).w_in
    np.testing.assert_array_equal(again[0], vectors[1])
    np.testing.assert_array_equal(again[1], vectors[0])
    # Different initial vectors ...
    assert not np.allclose(vectors[0], vectors[1])


def test_converged_result_hardly_depends_on_the_budget(pairs, vectors):
    # Each seed's result: doubling the training budget hardly moves it (gensim's moves a lot).
    doubled = fit_restarts(pairs, params(jax_steps=2 * SCHEMA["jax_steps"].default)).w_in
    assert np.abs(cosine_matrices(doubled) - cosine_matrices(vectors)).max() < 0.02


def fit(counts: np.ndarray, seed: int = 0, **overrides):
    """train_skipgram with embed's jax defaults."""
    d = EmbedConfig().to_dict()
    kw = {
        "dim": d["dim"],
        "steps": d["jax_steps"],
        "lr": d["jax_lr"],
        "l2": d["jax_l2"],
        "objective": d["jax_objective"],
        "negative": d["jax_negative"],
        "init_std": d["jax_init_std"],
        **overrides,
    }
    return train_skipgram(counts, seed, **kw)


def test_converges_to_a_stationary_point(pairs):
    counts = count_matrix(pairs.true, pairs.guess, pairs.n_classes)
    model = fit(counts)
    assert model.grad_norm < engines.JAX_CONVERGED_GRAD_NORM
    # The model's conditional p(guess | true) is close to the observed one (l2 is small).
    observed = counts / counts.sum(axis=1, keepdims=True)
    assert np.abs(model.probs() - observed).max() < 0.05


# --------------------------------------------------------------------------- directedness

# Four classes; class 0's pictures are guessed as 1, class 1's never as 0.
ASYM_CLASSES = ["a", "b", "c", "d"]
ASYM = (
    [(0, 0)] * 60
    + [(0, 1)] * 40
    + [(1, 1)] * 60
    + [(1, 2)] * 40
    + [(2, 2)] * 60
    + [(2, 3)] * 40
    + [(3, 3)] * 60
    + [(3, 2)] * 40
)


def test_count_matrix_is_directed():
    true, guess = zip(*ASYM, strict=True)
    counts = count_matrix(np.array(true), np.array(guess), 4)
    assert counts[0, 1] == 40 and counts[1, 0] == 0
    assert counts[1, 2] == 40 and counts[2, 1] == 0
    assert counts.sum() == len(ASYM) and counts.dtype == np.int64


def test_directed_objective_learns_the_asymmetry():
    true, guess = zip(*ASYM, strict=True)
    directed = make_pairs(list(true), list(guess), ASYM_CLASSES)
    # The same pairs plus their reverses: what gensim's two-word sentences amount to.
    symmetric = make_pairs(list(true) + list(guess), list(guess) + list(true), ASYM_CLASSES)
    fits = {}
    for name, p in (("directed", directed), ("symmetric", symmetric)):
        counts = count_matrix(p.true, p.guess, p.n_classes)
        assert np.array_equal(counts, counts.T) == (name == "symmetric")
        fits[name] = fit(counts, dim=3)
    p_dir, p_sym = fits["directed"].probs(), fits["symmetric"].probs()
    # a's pictures go to b 40% of the time, b's pictures never to a.
    assert p_dir[0, 1] == pytest.approx(0.4, abs=0.05)
    assert p_dir[1, 0] < 0.03
    # Trained on both directions (the reversed pairs added), b -> a is 40 of b's 200 pairs.
    assert p_sym[1, 0] == pytest.approx(0.2, abs=0.05)
    # And the vectors the engine returns (W_in) differ between the two inputs.
    cos_dir = mean_cosine(fit_runs(directed, params(seeds=[0])))
    cos_sym = mean_cosine(fit_runs(symmetric, params(seeds=[0])))
    assert np.abs(cos_dir - cos_sym).max() > 0.1


def test_class_never_a_true_class_is_refused():
    # "c" is guessed but has no picture: no input vector can be trained for it.
    p = make_pairs([0, 0, 1, 1], [0, 2, 1, 2], ["a", "b", "c"])
    with pytest.raises(PipelineError, match="c are never a true class"):
        fit_runs(p, params(seeds=[0]))
    gensim = EmbedConfig.from_params({"engine": "gensim", "seeds": [0]})
    fit_runs(p, gensim)  # gensim trains it


def test_seed_beyond_32_bits_is_refused(pairs):
    # jax.random.key(2**32) would be jax.random.key(0): refuse rather than repeat a seed.
    with pytest.raises(
        PipelineError, match=r"embed\.seeds' = \[4294967296\]: engine jax takes seeds below 2\*\*32"
    ):
        fit_runs(pairs, params(seeds=[0, 2**32]))


def test_class_in_no_pair_is_refused(pairs):
    lonely = dataclasses.replace(pairs, classes=(*pairs.classes, "ghost"), groups=None)
    with pytest.raises(PipelineError, match="ghost appear in no pair"):
        fit_runs(lonely, params(seeds=[0]))


# --------------------------------------------------------------------------- compilation


def test_training_compiles_once_per_shape(monkeypatch):
    """The settings (steps, lr, l2) are traced values: three fits of one shape trace the
    train function once (chex counts the traces; a second one fails), another shape again."""
    counted = jax.jit(
        chex.assert_max_traces(skipgram._train_fn, n=1), static_argnames=skipgram._TRAIN_STATIC
    )
    monkeypatch.setattr(skipgram, "_train", counted)
    counts = np.arange(49, dtype=np.int64).reshape(7, 7) + 1
    for seed, steps, lr, l2 in ((0, 10, 0.05, 1e-4), (1, 25, 0.01, 1e-3), (2, 7, 0.1, 0.5)):
        fit(counts, seed, dim=3, steps=steps, lr=lr, l2=l2)
    with pytest.raises(AssertionError, match="traced > 1 times"):
        fit(counts[:6, :6], 0, dim=3)


# --------------------------------------------------------------------------- outputs


def test_files_same_format_as_gensim_and_readable(tmp_path, pairs, vectors):
    jax_dir = run_embed_stage(tmp_path / "jax", pairs, engine="jax", seeds=[0, 1, 2])
    gensim_dir = run_embed_stage(tmp_path / "gensim", pairs, engine="gensim", seeds=[0, 1, 2])
    assert sorted(f.name for f in gensim_dir.iterdir()) == ["manifest.json", "vectors.npy"]
    # jax: the restarts too, where the resampling's refits start.
    assert sorted(f.name for f in jax_dir.iterdir()) == [
        "manifest.json",
        "restarts.npz",
        "vectors.npy",
    ]
    loaded, manifest = load_vectors(jax_dir)
    restarts = load_embedding(jax_dir).restarts
    np.testing.assert_array_equal(restarts.w_in[0], vectors)
    best = int(np.argmin(restarts.loss[0]))
    np.testing.assert_array_equal(loaded, vectors[None, best : best + 1])  # [1, 1, C, dim]
    # The vectors' contract (embedding/store.py); the manifest may record more about the
    # training (e.g. how many pairs reached the engine), checked here where named.
    expected = {
        "classes": CLASSES,
        "classifiers": list(pairs.classifiers),
        "seeds": [0, 1, 2],
        "dim": 5,
        "runs": 1,
        "engine": "jax",
        "updates_per_class": round(updates_per_class(pairs, params()), 1),
    }
    assert {key: manifest.get(key) for key in expected} == expected

    # The jax engine's vectors in gensim's formats (embedding/formats.py), as gensim reads them.
    write_word2vec(tmp_path, "seed_1", tuple(CLASSES), vectors[1])
    text = KeyedVectors.load_word2vec_format(str(tmp_path / "seed_1.txt"))
    kv = KeyedVectors.load(str(tmp_path / "seed_1.kv"))
    assert text.index_to_key == CLASSES and kv.index_to_key == CLASSES
    np.testing.assert_allclose(text.vectors, vectors[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kv.vectors, vectors[1])
    assert kv.most_similar("c0", topn=1)[0][0] == "c1"


def test_cli_with_engine_jax(tmp_path, monkeypatch, pairs):
    (tmp_path / "pairs").mkdir()
    write_pairs(pairs, tmp_path / "pairs")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"embed": {"engine": "jax", "seeds": [3, 4], "dim": 4}})
    )
    out = tmp_path / "embed"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "embed",
            *stage_argv("embed", pairs=tmp_path / "pairs", out=out),
            "--params",
            str(tmp_path / "params.yaml"),
        ],
    )
    embed.main()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "jax" and manifest["seeds"] == [3, 4] and manifest["dim"] == 4
    assert manifest["classifiers"] == list(pairs.classifiers)
    assert np.load(out / "vectors.npy").shape == (1, 1, len(CLASSES), 4)  # the best restart
    assert np.load(out / "restarts.npz")["w_in"].shape == (1, 2, len(CLASSES), 4)
    assert sorted(f.name for f in out.iterdir()) == ["manifest.json", "restarts.npz", "vectors.npy"]


# --------------------------------------------------------------------------- params


def test_defaults():
    p = EmbedConfig.from_params({})
    assert p.engine == "jax"  # the default engine (gensim is the paper's)
    assert (p.jax_steps, p.jax_lr, p.jax_l2, p.jax_objective, p.jax_negative) == (
        4000,
        0.05,
        0.01,
        "softmax",
        5,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"engine": "torch"}, r"embed\.engine' = 'torch' is out of range"),
        ({"jax_steps": 0}, r"embed\.jax_steps' = 0 is out of range"),
        ({"jax_steps": 2.5}, r"embed\.jax_steps' = 2.5 has the wrong type"),
        ({"jax_steps": True}, "wrong type"),
        ({"jax_lr": 0.0}, r"embed\.jax_lr' = 0.0 is out of range"),
        ({"jax_lr": -0.1}, "a number > 0"),
        ({"jax_l2": 0.0}, r"embed\.jax_l2' = 0.0 is out of range"),
        ({"jax_l2": "small"}, "wrong type"),
        (
            {"jax_objective": "hs"},
            r"embed\.jax_objective' = 'hs' is out of range; "
            r"expected one of \['softmax', 'negative'\]",
        ),
        ({"jax_negative": 0}, r"embed\.jax_negative' = 0"),
        ({"jax_step": 10}, "did you mean 'jax_steps'"),
    ],
)
def test_params_validation(overrides, message):
    with pytest.raises(PipelineError, match=message):
        EmbedConfig.from_params(overrides)


def test_jax_params_accepted():
    p = EmbedConfig.from_params(
        {
            "engine": "jax",
            "jax_steps": 100,
            "jax_lr": 1,
            "jax_l2": 1e-3,
            "jax_objective": "negative",
            "jax_negative": 10,
        },
    )
    assert p.jax_lr == 1 and p.jax_objective == "negative"
