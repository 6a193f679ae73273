"""New-or-known scores from each picture's whole output (novelty.py) and how the evaluate
step reads them (evaluation/unseen.py): on planted predictions where the known classes'
pictures are over-confident and the new class's hesitant, every score tells them apart;
the scores that need logits or a "train" split say so; and nothing is learned from a
picture of the unseen class."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from confusion_embeddings import novelty
from confusion_embeddings.config.evaluate import NOVELTY_SCORES
from confusion_embeddings.evaluation.unseen import FALLBACK
from confusion_embeddings.evaluation.unseen import novelty as novelty_figures
from confusion_embeddings.pairs import build_pairs, load_pairs, write_pairs
from confusion_embeddings.predictions import predictions_from_arrays

CLASSES = ["a", "b", "c", "d", "e", "new"]
NEW = CLASSES.index("new")
KNOWN = [i for i in range(len(CLASSES)) if i != NEW]


def planted_logits(n: int = 200, seed: int = 0, with_split: bool = True) -> dict[str, np.ndarray]:
    """Logits over the 5 known classes (the narrow form): a known picture's own class 5
    above noise (over-confident), the new class's pictures noise alone (hesitant); the
    last sixth of each class is the test split."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n)
    logits = rng.normal(0.0, 1.0, (len(labels), len(KNOWN)))
    for col, cls in enumerate(KNOWN):
        logits[labels == cls, col] += 5.0
    arrays = {
        "labels": labels,
        "classes": np.array(CLASSES),
        "logits": logits.astype(np.float32),
        "unseen": np.array(["new"]),
    }
    if with_split:
        arrays["split"] = np.tile((np.arange(n) >= n * 5 // 6).astype(np.int8), len(CLASSES))
        arrays["splits"] = np.array(["train", "test"])
    return arrays


def as_probs(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same predictions as probabilities (softmax of the logits), no logits."""
    z = arrays["logits"].astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    out = {k: v for k, v in arrays.items() if k != "logits"}
    out["probs"] = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def figures(arrays: dict[str, np.ndarray], score: str = "relative_mahalanobis"):
    pairs = build_pairs(predictions_from_arrays(arrays), 3, 64)
    vectors = np.random.default_rng(1).normal(size=(len(CLASSES), 5))
    return pairs, novelty_figures(pairs, vectors, score, 0.95)


def test_every_score_tells_hesitant_new_pictures_from_over_confident_known_ones():
    _, nov = figures(planted_logits())
    assert set(nov.auroc) == set(NOVELTY_SCORES)
    for name in NOVELTY_SCORES:
        floor = 0.7 if name == "spread" else 0.95  # spread reads random class vectors here
        assert nov.auroc[name] > floor, (name, nov.auroc[name])
    # ... and an over-confident new class is what every score misses: the same pictures with
    # the new class's top guess as confident as a known one's (automobile for a truck).
    confident = planted_logits()
    new_rows = confident["labels"] == NEW
    confident["logits"][new_rows, 1] += 5.0
    _, nov = figures(confident)
    assert nov.auroc["max_prob"] < 0.65


def test_from_probabilities_the_logit_scores_are_absent_and_the_learned_ones_the_same():
    arrays = planted_logits()
    _, from_logits = figures(arrays)
    _, from_probs = figures(as_probs(arrays))
    assert "max_logit" not in from_probs.auroc and "energy" not in from_probs.auroc
    # Centred log-probabilities are the centred logits: the same distances.
    for name in novelty.LEARNED:
        assert from_probs.auroc[name] == pytest.approx(from_logits.auroc[name], abs=1e-3)


def test_without_a_train_split_the_learned_scores_are_absent_and_the_fallback_leads():
    _, nov = figures(planted_logits(with_split=False), score="mahalanobis")
    assert "mahalanobis" not in nov.auroc and "relative_mahalanobis" not in nov.auroc
    assert nov.score == FALLBACK and nov.asked == "mahalanobis"
    _, nov = figures(as_probs(planted_logits()), score="energy")
    assert nov.score == FALLBACK and nov.asked == "energy"


def test_nothing_is_learned_from_the_unseen_class():
    """A leak planted where a careless fit would take it: the unseen class's pictures marked
    as training pictures, then changed beyond recognition (all their mass on class a, then
    noise). The known pictures' scores must not move by a bit, so nothing was fitted on
    them (and the change must move the new pictures' own scores, or the test shows
    nothing)."""
    arrays = planted_logits()
    new_rows = arrays["labels"] == NEW
    arrays["split"][new_rows] = 0  # "train": a fit by split alone would now read them
    before = novelty.picture_scores(predictions_from_arrays(arrays), 64)
    for change in (lambda z: z * 0 + np.eye(len(KNOWN))[0] * 50, lambda z: z[::-1] * 3):
        leaked = {**arrays, "logits": arrays["logits"].copy()}
        leaked["logits"][new_rows] = change(arrays["logits"][new_rows])
        after = novelty.picture_scores(predictions_from_arrays(leaked), 64)
        for name in novelty.SCORES:
            np.testing.assert_array_equal(after[name][~new_rows], before[name][~new_rows])
            assert not np.array_equal(after[name][new_rows], before[name][new_rows])


def test_a_fit_that_reads_the_unseen_pictures_is_caught():
    """The check above can fail: with the known-class filter taken out of the fit (every
    training picture counts, the unseen ones as class 0), the known pictures' scores move."""
    arrays = planted_logits()
    new_rows = arrays["labels"] == NEW
    arrays["split"][new_rows] = 0
    leaky = predictions_from_arrays(arrays)
    before = novelty.picture_scores(leaky, 64)["mahalanobis"][~new_rows]
    labels = leaky.labels.copy()
    labels[new_rows] = 0  # what a fit that ignored which classes are known would see
    moved = novelty.picture_scores(replace(leaky, labels=labels), 64)["mahalanobis"][~new_rows]
    assert not np.allclose(moved, before)


def test_the_pairs_file_keeps_the_scores_and_the_default_file_has_none(tmp_path):
    pairs = build_pairs(predictions_from_arrays(planted_logits()), 3, 64)
    write_pairs(pairs, tmp_path)
    back = load_pairs(tmp_path)
    assert set(back.novelty) == set(novelty.SCORES)
    for name in novelty.SCORES:
        np.testing.assert_array_equal(back.novelty[name], pairs.novelty[name])
        assert back.novelty[name].shape == pairs.true.shape
    known_only = planted_logits()
    keep = known_only["labels"] != NEW
    plain = {
        "labels": known_only["labels"][keep],
        "classes": np.array(CLASSES[:NEW]),
        "logits": known_only["logits"][keep],
    }
    other = tmp_path / "plain"
    other.mkdir()
    write_pairs(build_pairs(predictions_from_arrays(plain), 3, 64), other)
    with np.load(other / "pairs.npz") as npz:
        assert not [key for key in npz.files if key.startswith("novelty_")]
