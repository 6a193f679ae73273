"""Tests of the embed stage (confusion_embeddings/embedding/, stages/embed.py) on tiny
synthetic pairs with a planted structure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from gensim.models import KeyedVectors

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import validate_section
from confusion_embeddings.embedding.engines import SCHEMA, train_vectors
from confusion_embeddings.embedding.store import load_vectors
from confusion_embeddings.pairs import Pairs

from helpers import run_embed_stage
from synthetic import PLANTED_CLASSES, planted_pairs

CLASSES = PLANTED_CLASSES


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Pairs:
    return planted_pairs(tmp_path_factory.mktemp("pred"), 1500)


def params(**overrides) -> dict:
    return validate_section("embed", {"seeds": [0, 1, 2], **overrides}, SCHEMA)


@pytest.fixture(scope="module")
def vectors(pairs) -> np.ndarray:
    return train_vectors(pairs, params())


def test_shape_and_dtype(vectors):
    assert vectors.shape == (3, len(CLASSES), 5) and vectors.dtype == np.float32


def test_same_seed_same_vectors_other_seed_differs(pairs, vectors):
    again = train_vectors(pairs, params(seeds=[1, 0]))
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


def test_files_readable_by_gensim_and_byte_identical(tmp_path, pairs, vectors):
    p = params()
    one, two = (
        run_embed_stage(tmp_path / name, pairs, seeds=p["seeds"]) for name in ("one", "two")
    )
    assert sorted(f.name for f in one.iterdir()) == sorted(f.name for f in two.iterdir())
    assert sorted(f.name for f in one.iterdir()) == sorted(
        [
            "manifest.json",
            "vectors.npy",
            *(f"seed_{s}.{x}" for s in (0, 1, 2) for x in ("txt", "kv")),
        ]
    )
    for f in one.iterdir():
        assert f.read_bytes() == (two / f.name).read_bytes(), f.name

    text = KeyedVectors.load_word2vec_format(str(one / "seed_2.txt"))
    kv = KeyedVectors.load(str(one / "seed_2.kv"))
    assert text.index_to_key == CLASSES and kv.index_to_key == CLASSES
    np.testing.assert_allclose(text.vectors, vectors[2], rtol=1e-6)
    np.testing.assert_array_equal(kv.vectors, vectors[2])

    loaded, manifest = load_vectors(one)
    np.testing.assert_array_equal(loaded, vectors)
    assert manifest == {"classes": CLASSES, "seeds": [0, 1, 2], "dim": 5, "engine": "gensim"}
    assert json.loads((one / "manifest.json").read_text())["seeds"] == [0, 1, 2]


def test_class_in_no_pair_is_refused(pairs):
    lonely = dataclasses.replace(pairs, classes=(*pairs.classes, "ghost"), groups=None)
    with pytest.raises(PipelineError, match="ghost appear in no pair"):
        train_vectors(lonely, params(seeds=[0]))


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
        validate_section("embed", overrides, SCHEMA)
