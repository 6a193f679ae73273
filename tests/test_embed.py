"""Tests of the embed stage (confusion_embeddings/embedding/, stages/embed.py) on tiny
synthetic pairs with a planted structure: one vector set per classifier and word2vec seed,
and the word2vec / KeyedVectors exports (embedding/formats.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from gensim.models import KeyedVectors

from confusion_embeddings.config.embed import EmbedConfig
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.embedding.engines import (
    fit_classifiers,
    fit_runs,
    updates_per_class,
)
from confusion_embeddings.embedding.formats import write_word2vec
from confusion_embeddings.embedding.store import Embedding, load_vectors, write_embedding
from confusion_embeddings.pairs import Pairs, build_pairs, combine
from confusion_embeddings.predictions import load_predictions

from helpers import run_embed_stage
from synthetic import (
    PLANTED_CLASSES,
    PLANTED_GROUPS,
    make_synthetic_predictions,
    planted_pairs,
    write_predictions,
)

CLASSES = PLANTED_CLASSES


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Pairs:
    return planted_pairs(tmp_path_factory.mktemp("pred"), 1500)


def params(**overrides) -> EmbedConfig:
    """The gensim engine's config (tests/test_skipgram.py tests the jax engine)."""
    return EmbedConfig.from_params({"engine": "gensim", "seeds": [0, 1, 2], **overrides})


@pytest.fixture(scope="module")
def vectors(pairs) -> np.ndarray:
    return fit_runs(pairs, params())


def test_shape_and_dtype(vectors):
    assert vectors.shape == (3, len(CLASSES), 5) and vectors.dtype == np.float32


def test_same_seed_same_vectors_other_seed_differs(pairs, vectors):
    again = fit_runs(pairs, params(seeds=[1, 0]))
    np.testing.assert_array_equal(again[0], vectors[1])
    np.testing.assert_array_equal(again[1], vectors[0])
    assert not np.allclose(vectors[0], vectors[1])


def test_planted_pairs_are_nearest_on_average(vectors):
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    mean = (unit @ unit.transpose(0, 2, 1)).mean(axis=0)
    np.fill_diagonal(mean, -np.inf)
    nearest = mean.argmax(axis=1)
    assert nearest[0] == 1 and nearest[1] == 0
    assert nearest[2] == 3 and nearest[3] == 2


@pytest.fixture(scope="module")
def two_classifiers(tmp_path_factory, pairs) -> Pairs:
    """The planted pairs and those of a second classifier (other noise), combined."""
    path = tmp_path_factory.mktemp("pred2") / "seed_1.npz"
    write_predictions(
        path,
        make_synthetic_predictions(1500, CLASSES, PLANTED_GROUPS, confusion_strength=2.0, seed=1),
    )
    other = build_pairs(load_predictions(path), top_k=2, block_size=4096)
    return combine([pairs, other])


def test_one_vector_set_per_classifier_and_seed(two_classifiers, vectors):
    all_vectors, restarts = fit_classifiers(two_classifiers, params())
    assert restarts is None  # gensim: its seeds are the runs, nothing to restart from
    assert all_vectors.shape == (2, 3, len(CLASSES), 5) and all_vectors.dtype == np.float32
    # Each classifier's vectors are those of its own pairs alone: the first is `vectors`.
    np.testing.assert_array_equal(all_vectors[0], vectors)
    np.testing.assert_array_equal(all_vectors[1], fit_runs(two_classifiers.of(1), params()))
    assert not np.allclose(all_vectors[0], all_vectors[1])
    # One classifier: [1, S, C, dim].
    np.testing.assert_array_equal(
        fit_classifiers(two_classifiers.of(0), params())[0], vectors[None]
    )


def test_stage_writes_the_vectors_and_manifest_byte_identical(tmp_path, two_classifiers):
    p = params()
    one, two = (
        run_embed_stage(tmp_path / name, two_classifiers, engine=p.engine, seeds=p.seeds)
        for name in ("one", "two")
    )
    # Only these two: the word2vec exports are no longer the embed stage's.
    assert sorted(f.name for f in one.iterdir()) == ["manifest.json", "vectors.npy"]
    assert sorted(f.name for f in two.iterdir()) == ["manifest.json", "vectors.npy"]
    for f in one.iterdir():
        assert f.read_bytes() == (two / f.name).read_bytes(), f.name

    loaded, manifest = load_vectors(one)
    np.testing.assert_array_equal(loaded, fit_classifiers(two_classifiers, p)[0])
    # The vectors' contract (embedding/store.py); the manifest may record more about the
    # training (e.g. how many pairs reached the engine), checked here where named.
    expected = {
        "classes": CLASSES,
        "classifiers": ["pred", "seed_1"],
        "seeds": [0, 1, 2],
        "dim": 5,
        "engine": "gensim",
        "runs": 3,
        "updates_per_class": round(updates_per_class(two_classifiers, p), 1),
        "params": p.to_dict(),
    }
    assert {key: manifest.get(key) for key in expected} == expected
    assert json.loads((one / "manifest.json").read_text())["seeds"] == [0, 1, 2]


def test_vectors_of_another_shape_than_the_manifest_are_refused(tmp_path, vectors):
    """An embed folder from before the classifiers ([S, C, dim], no "classifiers" in the
    manifest), or one whose manifest lists another number of them, asks for a rerun."""
    manifest = {"classes": CLASSES, "seeds": [0, 1, 2], "dim": 5, "engine": "gensim"}
    write_embedding(tmp_path, Embedding(vectors, None, manifest))
    with pytest.raises(PipelineError, match=r"shape \(3, 6, 5\) does not match.*rerun embed"):
        load_vectors(tmp_path)
    write_embedding(
        tmp_path, Embedding(vectors[None], None, {**manifest, "classifiers": ["a", "b"]})
    )
    with pytest.raises(PipelineError, match=r"\(2, 3, 6, 5\); rerun embed"):
        load_vectors(tmp_path)
    write_embedding(tmp_path, Embedding(vectors[None], None, {**manifest, "classifiers": ["a"]}))
    assert load_vectors(tmp_path)[0].shape == (1, 3, 6, 5)


def test_word2vec_files_readable_by_gensim_and_byte_identical(tmp_path, vectors):
    """embedding/formats.py: <stem>.txt (word2vec text) and <stem>.kv (KeyedVectors), as
    gensim reads them back; equal vectors give equal bytes."""
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        write_word2vec(tmp_path / name, "seed_2", tuple(CLASSES), vectors[2])
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(f.name for f in one.iterdir()) == ["seed_2.kv", "seed_2.txt"]
    for f in one.iterdir():
        assert f.read_bytes() == (two / f.name).read_bytes(), f.name

    text = KeyedVectors.load_word2vec_format(str(one / "seed_2.txt"))
    kv = KeyedVectors.load(str(one / "seed_2.kv"))
    assert text.index_to_key == CLASSES and kv.index_to_key == CLASSES
    np.testing.assert_allclose(text.vectors, vectors[2], rtol=1e-6)
    np.testing.assert_array_equal(kv.vectors, vectors[2])


def test_class_in_no_pair_is_refused(pairs):
    lonely = dataclasses.replace(pairs, classes=(*pairs.classes, "ghost"), groups=None)
    with pytest.raises(PipelineError, match="ghost appear in no pair"):
        fit_runs(lonely, params(seeds=[0]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"engine": "torch"}, r"embed\.engine' = 'torch' is out of range"),
        ({"seeds": []}, r"embed\.seeds' = \[\] is out of range"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"seeds": [True]}, "integers"),
        ({"dim": 0}, r"embed\.dim' = 0"),
        ({"negative": 0}, r"embed\.negative' = 0"),
        ({"alpha": 0.0}, r"embed\.alpha' = 0.0"),
        ({"epocs": 3}, "did you mean 'epochs'"),
    ],
)
def test_params_validation(overrides, message):
    with pytest.raises(PipelineError, match=message):
        EmbedConfig.from_params(overrides)
