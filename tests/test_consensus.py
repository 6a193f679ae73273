"""The consensus embedding (embedding/consensus.py) and the files it is written to
(embedding/formats.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from gensim.models import KeyedVectors
from scipy.stats import special_ortho_group

from confusion_embeddings.embedding.consensus import align_runs, cosine_matrices, unit
from confusion_embeddings.embedding.formats import write_class_vectors

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog")
GROUPS = ["vehicles", "vehicles", "animals", "animals", "animals", ""]


def planted(c: int = len(CLASSES), dim: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(c, dim))


def rotations(n: int, dim: int, seed: int = 1) -> np.ndarray:
    return special_ortho_group.rvs(dim, size=n, random_state=seed)


def test_alignment_recovers_known_rotations():
    """Runs that are the planted vectors under known rotations (and other lengths) are
    rotated back onto one another: every aligned run is the first run, to float tolerance."""
    v = planted()
    rots = rotations(5, v.shape[1])
    scales = np.array([1.0, 2.0, 0.5, 3.0, 1.5])[:, None, None]
    runs = np.stack([v @ r for r in rots]) * scales
    c = align_runs(runs)
    for aligned in c.aligned:
        np.testing.assert_allclose(aligned, unit(runs[0]), atol=1e-10)
    # The rotation found for run i is the known one that takes it onto run 0.
    for r, run in zip(rots, unit(runs), strict=True):
        found = np.linalg.lstsq(run, unit(runs[0]), rcond=None)[0]
        np.testing.assert_allclose(found, r.T @ rots[0], atol=1e-8)
    np.testing.assert_allclose(c.table(), cosine_matrices(v), atol=1e-10)
    np.testing.assert_allclose(c.dispersion, 0.0, atol=1e-12)


def test_consensus_of_identical_runs_is_that_run():
    v = planted(seed=3)
    c = align_runs(np.stack([v] * 4))
    np.testing.assert_allclose(c.vectors, unit(v), atol=1e-12)
    np.testing.assert_allclose(c.table(), cosine_matrices(v), atol=1e-12)
    np.testing.assert_allclose(c.dispersion, 0.0, atol=1e-12)
    assert c.iterations == 1


def test_dispersion_grows_with_the_noise():
    v = planted(seed=4)
    rots = rotations(8, v.shape[1], seed=5)
    noise = np.random.default_rng(6).normal(size=(8, *v.shape))
    mean_dispersion = []
    for sigma in (0.0, 0.02, 0.1, 0.4):
        runs = np.stack([v @ r for r in rots]) + sigma * noise
        mean_dispersion.append(float(align_runs(runs).dispersion.mean()))
    assert mean_dispersion[0] == pytest.approx(0.0, abs=1e-12)
    assert mean_dispersion == sorted(mean_dispersion) and len(set(mean_dispersion)) == 4, (
        mean_dispersion
    )
    # Noise on one class alone: that class is the least stable.
    runs = np.stack([v @ r for r in rots])
    runs[:, 2] += 0.3 * noise[:, 2]
    dispersion = align_runs(runs).dispersion
    assert int(np.argmax(dispersion)) == 2 and dispersion[2] > 5 * np.delete(dispersion, 2).max()


def test_every_file_format_loads_back(tmp_path):
    v = planted().astype(np.float32)
    dispersion = np.linspace(0.0, 0.05, len(CLASSES))
    write_class_vectors(tmp_path, CLASSES, GROUPS, v, dispersion)

    text = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.txt"))
    assert list(text.index_to_key) == list(CLASSES)
    np.testing.assert_allclose(text.vectors, v, rtol=1e-5)
    kv = KeyedVectors.load(str(tmp_path / "vectors.kv"))
    assert list(kv.index_to_key) == list(CLASSES)
    np.testing.assert_array_equal(kv.vectors, v)
    assert (
        kv.most_similar("airplane", topn=1)[0][0]
        == CLASSES[int(np.argsort(-cosine_matrices(v)[0])[1])]
    )

    with open(tmp_path / "vectors.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == list(CLASSES) and [r["group"] for r in rows] == GROUPS
    np.testing.assert_allclose([float(r["dispersion"]) for r in rows], dispersion, atol=1e-6)
    np.testing.assert_allclose(
        [[float(r["v1"]), float(r["v4"])] for r in rows], v[:, [0, 3]], rtol=1e-5
    )

    # The projector's files, as a plain TSV reader sees them.
    numbers = [
        line.split("\t")
        for line in (tmp_path / "projector" / "vectors.tsv").read_text().splitlines()
    ]
    np.testing.assert_allclose(np.array(numbers, dtype=float), v, rtol=1e-5)
    meta = [
        line.split("\t")
        for line in (tmp_path / "projector" / "metadata.tsv").read_text().splitlines()
    ]
    assert meta[0] == ["class", "group"] and meta[1:] == [
        list(p) for p in zip(CLASSES, GROUPS, strict=True)
    ]


def test_equal_vectors_give_equal_bytes(tmp_path):
    v = planted().astype(np.float32)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_class_vectors(tmp_path / folder, CLASSES, GROUPS, v, np.zeros(len(CLASSES)))
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    assert len(files) == 5
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
