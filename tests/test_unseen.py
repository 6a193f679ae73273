"""Classes the classifier never saw, on planted predictions: pairs never guess them, the
jax engine places them from their input side alone, the report and metrics say where they
land and how well their pictures are told from known ones (evaluation/unseen.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import confusion_embeddings as ce
from confusion_embeddings import study
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.embedding.skipgram import train_skipgram
from confusion_embeddings.evaluation.unseen import auroc, read_reference, summary_lines
from confusion_embeddings.pairs import build_pairs, load_pairs, write_pairs
from confusion_embeddings.predictions import load_predictions, predictions_from_arrays

CLASSES = ["a", "b", "c", "d", "e", "new"]
FAST = {"bootstrap": 20, "seeds": [0], "jax_steps": 1500}


def planted(
    n: int = 300, seed: int = 0, known_conf: float = 0.97, unseen_conf: float = 0.6
) -> dict[str, np.ndarray]:
    """Predictions over CLASSES where "new" was never trained on (its column is 0).

    Known class i: its top guess is itself with probability ~known_conf (over-confident),
    its runner-up its pair-mate (a~b, c~d, e~a). "new": guessed "b" on 70% of its
    pictures and one of a/c/d/e otherwise, with a top probability of ~unseen_conf."""
    rng = np.random.default_rng(seed)
    mate = {0: 1, 1: 0, 2: 3, 3: 2, 4: 0}
    c, new = len(CLASSES), CLASSES.index("new")
    labels = np.repeat(np.arange(c), n)
    probs = np.zeros((len(labels), c))
    for row, y in enumerate(labels):
        if y == new:
            top = 1 if rng.random() < 0.7 else int(rng.choice([0, 2, 3, 4]))
            first, second = top, (2 if top == 1 else 1)
            p_first = unseen_conf + rng.uniform(-0.05, 0.05)
        else:
            first, second, p_first = y, mate[y], known_conf + rng.uniform(-0.02, 0.02)
        rest = [j for j in range(c - 1) if j not in (first, second)]
        probs[row, first] = p_first
        probs[row, second] = (1 - p_first) * 0.7
        probs[row, rest] = (1 - p_first) * 0.3 / len(rest)
    split = np.tile((np.arange(n) >= n * 5 // 6).astype(np.int8), c)
    return {
        "labels": labels,
        "classes": np.array(CLASSES),
        "probs": probs.astype(np.float32),
        "split": split,
        "splits": np.array(["train", "test"]),
        "unseen": np.array(["new"]),
    }


def _reference(path, nearest_of_new: str = "b"):
    """A similarity CSV where "new" was trained: nearest `nearest_of_new`."""
    order = [nearest_of_new] + [x for x in "abcde" if x != nearest_of_new]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["class", "neighbour", "cosine", "low", "high", "rank_low", "rank_high"])
        for rank, other in enumerate(order):
            w.writerow(["new", other, round(0.9 - 0.2 * rank, 2), "", "", "", ""])
    return path


def test_pairs_never_guess_an_unseen_class(tmp_path):
    arrays = planted(n=30)
    logits = np.log(np.maximum(arrays.pop("probs"), 1e-30))
    logits[:, -1] = logits.max() + 5.0  # even the top score in its column is ignored
    arrays["logits"] = logits
    pairs = build_pairs(predictions_from_arrays(arrays), top_k=3, block_size=16)
    assert pairs.unseen == ("new",) and not (pairs.guess == CLASSES.index("new")).any()
    assert (pairs.true == CLASSES.index("new")).sum() == 30 * 3  # its pictures are pairs
    write_pairs(pairs, tmp_path)
    assert load_pairs(tmp_path).unseen == ("new",)
    with pytest.raises(PipelineError, match=r"'pairs.top_k' = 5 .* C = 5 known"):
        build_pairs(predictions_from_arrays(planted(n=6)), top_k=5, block_size=16)


def test_the_known_classes_columns_alone_give_the_full_width_table(tmp_path):
    """A classifier trained on C - u classes outputs C - u columns: given as they are, in the
    order of the known classes, from Python or in a predictions file (a study's too), they
    give what the C-column form with the unseen columns 0 gives."""
    a = planted()
    narrow = np.delete(a["probs"], CLASSES.index("new"), axis=1)
    assert narrow.shape[1] == len(CLASSES) - 1
    full = ce.embed_predictions(a["labels"], CLASSES, probs=a["probs"], unseen=["new"], **FAST)
    mine = ce.embed_predictions(a["labels"], CLASSES, probs=narrow, unseen=["new"], **FAST)
    np.testing.assert_array_equal(mine.pairs.guess, full.pairs.guess)
    np.testing.assert_array_equal(mine.pairs.prob, full.pairs.prob)
    np.testing.assert_array_equal(mine.table, full.table)
    assert mine.metrics == full.metrics
    # Logits, as a model's last layer gives them: whatever the C-column form holds in the
    # unseen column, it is never a guess, so the two forms give the same pairs.
    logits = np.log(narrow + 1e-6)
    wide = np.insert(logits, CLASSES.index("new"), 50.0, axis=1)
    pairs = [
        build_pairs(predictions_from_arrays({**a, "probs": None, "logits": x}), 3, 64)
        for x in (logits, wide)
    ]
    np.testing.assert_array_equal(pairs[0].guess, pairs[1].guess)
    np.testing.assert_array_equal(pairs[0].prob, pairs[1].prob)
    # A predictions file with the known columns and its `unseen` key, as a study reads it.
    path = tmp_path / "nine.npz"
    np.savez(path, **{**a, "probs": narrow})
    from_file = build_pairs(load_predictions(path), top_k=3, block_size=100)
    np.testing.assert_array_equal(from_file.guess, full.pairs.guess)
    study.check_file(path)


def test_a_wrong_width_names_both_accepted_shapes():
    a = planted(n=6)
    n, c = len(a["labels"]), len(CLASSES)
    with pytest.raises(PipelineError) as refused:
        ce.embed_predictions(a["labels"], CLASSES, probs=a["probs"][:, :4], unseen=["new"])
    message = str(refused.value)
    assert f"[N, C] = ({n}, {c})" in message and f"[N, C - unseen] = ({n}, {c - 1})" in message
    assert message.endswith(f"got ({n}, 4)")
    # Without `unseen`, fewer columns than classes: the message says where to name them.
    with pytest.raises(PipelineError, match="fewer classes, name the others in 'unseen'"):
        ce.embed_predictions(a["labels"], CLASSES, probs=a["probs"][:, :5])


def test_a_topk_file_that_guesses_an_unseen_class_is_refused():
    arrays = {k: v for k, v in planted(n=6).items() if k != "probs"}
    arrays["topk"] = np.tile([[5, 0, 1]], (len(arrays["labels"]), 1))
    with pytest.raises(PipelineError, match="row 0 guesses an unseen class"):
        build_pairs(predictions_from_arrays(arrays), top_k=2, block_size=16)


def test_the_unseen_class_has_no_output_side():
    """Its column of the softmax is masked: its output vector feels only the l2 penalty
    (so it shrinks to 0), while its input vector follows its pictures' guesses."""
    counts = np.array([[50, 10, 0], [10, 50, 0], [35, 15, 0]])
    fit = train_skipgram(
        counts, 0, dim=2, steps=3000, lr=0.05, l2=0.01, objective="softmax", negative=5,
        init_std=0.1, unseen=(2,),
    )  # fmt: skip
    assert np.abs(fit.w_out[2]).max() < 1e-3
    p = fit.probs()
    assert p[2, 0] > p[2, 1]  # guessed "0" more often: placed by 0


def test_planted_unseen_class_lands_by_its_usual_guess(tmp_path):
    a = planted()
    r = ce.embed_predictions(
        a["labels"], CLASSES, probs=a["probs"], unseen=["new"],
        reference=_reference(tmp_path / "ref.csv"), **FAST,
    )  # fmt: skip
    u = r.evaluation.unseen
    (p,) = u.placements
    assert CLASSES[p.nearest] == "b" and p.match is True
    assert p.row_spearman is not None and p.row_spearman > 0
    assert "new" not in [CLASSES[j] for j in p.known]  # known classes only
    metrics = r.metrics
    assert metrics["unseen_nearest_match"] == 1.0
    assert metrics["unseen_row_spearman"] == pytest.approx(p.row_spearman, abs=1e-4)
    report = r.report()
    assert "## Classes the classifiers never saw" in report and "| new | b " in report
    lines = summary_lines(u, tuple(CLASSES))  # what the evaluate stage prints
    assert lines[0].startswith("unseen new: nearest b ") and "; reference b" in lines[0]
    assert "called new 300/300" in lines[1] and all(len(line) <= 80 for line in lines)


def test_a_reference_that_disagrees_counts_as_a_miss(tmp_path):
    a = planted()
    ref = _reference(tmp_path / "ref.csv", nearest_of_new="e")
    r = ce.embed_predictions(
        a["labels"], CLASSES, probs=a["probs"], unseen=["new"], reference=ref, **FAST
    )
    assert r.metrics["unseen_nearest_match"] == 0.0
    assert "(differs)" in r.report()


def test_novelty_auroc_behaves_as_designed():
    """Over-confident known pictures against hesitant unseen ones: every probability
    score separates them; unseen pictures as confident as the known: no better than chance."""
    a = planted()
    r = ce.embed_predictions(
        a["labels"], CLASSES, probs=a["probs"], unseen=["new"], novelty_score="entropy", **FAST
    )
    nov = r.evaluation.unseen.novelty
    assert nov.auroc["max_prob"] > 0.99 and nov.auroc["entropy"] > 0.99
    called, total = nov.called_new[CLASSES.index("new")]
    assert total == 300 and called / total > 0.95
    assert r.metrics["novelty_auroc_max_prob"] == pytest.approx(nov.auroc["max_prob"], 1e-4)
    assert r.metrics["novelty_auroc"] == pytest.approx(nov.auroc["entropy"], 1e-4)
    same = planted(known_conf=0.8, unseen_conf=0.8)
    nov = ce.embed_predictions(
        same["labels"], CLASSES, probs=same["probs"], unseen=["new"], **FAST
    ).evaluation.unseen.novelty
    assert 0.35 < nov.auroc["max_prob"] < 0.65


def test_auroc_counts_ties_half():
    assert auroc(np.array([2.0, 3.0]), np.array([1.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    assert auroc(np.array([np.nan]), np.array([1.0])) is None


def test_without_unseen_classes_nothing_changes():
    a = planted(n=60)
    known = a["labels"] != CLASSES.index("new")
    r = ce.embed_predictions(a["labels"], CLASSES, probs=a["probs"], **FAST)
    assert r.evaluation.unseen is None and "unseen_classes" not in r.metrics
    assert "never saw" not in r.report() and known.any()


def test_a_bad_reference_is_named(tmp_path):
    bad = tmp_path / "ref.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(PipelineError, match="ref.csv: not a similarity table"):
        read_reference(bad)
    with pytest.raises(PipelineError, match="cannot read the reference"):
        read_reference(tmp_path / "missing.csv")


def test_gensim_places_an_unseen_class_too():
    """gensim trains both directions of each two-word sentence: no mask is needed."""
    a = planted()
    r = ce.embed_predictions(
        a["labels"], CLASSES, probs=a["probs"], unseen=["new"], engine="gensim", sample=0,
        bootstrap=10,
    )  # fmt: skip
    assert CLASSES[r.evaluation.unseen.placements[0].nearest] == "b"
