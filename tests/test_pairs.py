"""Tests of confusion_embeddings/pairs.py (one classifier's pairs, and several combined) and
the pairs stage (stages/pairs.py: one predictions file, or with --seeds the folder of the
classifiers' files). The predictions file's own contract: tests/test_predictions.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath

import chex
import jax
import numpy as np
import pytest
import yaml

from confusion_embeddings import topk as topk_module
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.pairs import (
    Pairs,
    build_pairs,
    combine,
    load_pairs,
    pairs_metrics,
    predictions_files,
    write_pairs,
)
from confusion_embeddings.predictions import load_predictions
from stages import pairs as pairs_stage

from helpers import stage_argv, stage_options
from synthetic import HAND_CLASSES as CLASSES
from synthetic import HAND_PROBS as PROBS
from synthetic import hand_arrays as base
from synthetic import hand_file as save


@pytest.fixture
def pred(tmp_path):
    return load_predictions(save(tmp_path, **base()))


def test_pairs_from_probs_exact(pred):
    p = build_pairs(pred, top_k=3, block_size=1000)
    np.testing.assert_array_equal(p.true, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    np.testing.assert_array_equal(p.guess, [0, 1, 2, 2, 1, 0, 3, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(p.rank, [1, 2, 3] * 4)
    np.testing.assert_allclose(
        p.prob, [0.70, 0.20, 0.06, 0.50, 0.30, 0.10, 0.60, 0.20, 0.15, 0.40, 0.35, 0.15], rtol=1e-6
    )
    assert p.true.dtype == np.int32 and p.guess.dtype == np.int32
    assert p.rank.dtype == np.int8 and p.prob.dtype == np.float32 and p.split.dtype == np.int8
    np.testing.assert_array_equal(p.split, -1)  # no split in the file
    # One classifier, named after its file unless named.
    assert p.classifier.dtype == np.int16 and (p.classifier == 0).all()
    assert p.classifier.shape == p.true.shape and p.classifiers == ("pred",)
    assert build_pairs(pred, 3, 1000, "seed_4").classifiers == ("seed_4",)


def test_blocks_give_identical_pairs(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(7), size=23).astype(np.float32)
    path = save(
        tmp_path, labels=rng.integers(0, 7, 23), classes=np.array(list("abcdefg")), probs=probs
    )
    pred = load_predictions(path)
    small, large = build_pairs(pred, 3, block_size=2), build_pairs(pred, 3, block_size=1000)
    for field in ("true", "guess", "rank", "prob", "split"):
        np.testing.assert_array_equal(getattr(small, field), getattr(large, field))


def test_topk_compiles_once_for_many_blocks(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), size=11).astype(np.float32)
    path = save(
        tmp_path, labels=rng.integers(0, 5, 11), classes=np.array(list("abcde")), probs=probs
    )
    counted = jax.jit(
        chex.assert_max_traces(topk_module.topk_block.__wrapped__, n=1),
        static_argnames=("k", "from_logits"),
    )
    monkeypatch.setattr(topk_module, "topk_block", counted)
    # 11 rows in blocks of 4: three calls, the last one padded; a retrace would raise.
    p = build_pairs(load_predictions(path), 2, block_size=4)
    assert p.true.shape == (22,)


def test_logits_give_softmax_probabilities(tmp_path, pred):
    logits = np.log(PROBS) + 3.0  # softmax of these is PROBS again
    lp = build_pairs(
        load_predictions(save(tmp_path, "l.npz", **base(probs=None, logits=logits))), 3, 2
    )
    pp = build_pairs(pred, 3, 2)
    np.testing.assert_array_equal(lp.guess, pp.guess)
    np.testing.assert_allclose(lp.prob, pp.prob, rtol=1e-5)


def test_topk_input(tmp_path):
    topk = np.array([[0, 1, 2], [2, 1, 0], [3, 2, 1], [0, 1, 2]], dtype=np.int16)
    pred = load_predictions(save(tmp_path, **base(probs=None, topk=topk)))
    p = build_pairs(pred, top_k=2, block_size=3)
    np.testing.assert_array_equal(p.guess, [0, 1, 2, 1, 3, 2, 0, 1])
    assert np.isnan(p.prob).all()
    with pytest.raises(PipelineError, match=r"pairs\.top_k' = 3 .*k = 2"):
        build_pairs(
            load_predictions(save(tmp_path, "k2.npz", **base(probs=None, topk=topk[:, :2]))), 3, 10
        )


@pytest.mark.parametrize("top_k", [4, 5])
def test_top_k_at_least_classes_refused(pred, top_k):
    with pytest.raises(PipelineError, match=rf"pairs\.top_k' = {top_k} .*C = 4"):
        build_pairs(pred, top_k, 10)


def test_metrics_hand_made(tmp_path):
    split = np.array([0, 0, 1, 1])
    path = save(tmp_path, **base(split=split, splits=np.array(["train", "test"])))
    m = pairs_metrics(build_pairs(load_predictions(path), 2, 10))
    # top-1 right: picture 0 only; top-2 right: pictures 0, 1 and 2 (true class at rank 2)
    assert m == {
        "classifiers": 1,
        "pictures": 4,
        "classes": 4,
        "top_k": 2,
        "pairs": 8,
        "top1_accuracy": {"all": 0.25, "train": 0.5, "test": 0.0},
        "topk_accuracy": {"all": 0.75, "train": 1.0, "test": 0.5},
    }


def test_write_and_load_roundtrip_is_byte_identical(tmp_path, pred):
    p = build_pairs(pred, 3, 2)
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        write_pairs(p, tmp_path / name)
    for f in ("pairs.npz", "confusion.csv"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    back = load_pairs(tmp_path / "one")
    np.testing.assert_array_equal(back.guess, p.guess)
    assert back.classes == ("a", "b", "c", "d") and back.top_k == 3 and back.groups is None
    csv = (tmp_path / "one" / "confusion.csv").read_text().splitlines()
    # Counts per non-empty (true, top-1 guess) cell, cells in class order.
    assert csv == ["actual,predicted,count", "a,a,1", "b,c,1", "c,d,1", "d,a,1"]


def test_compressed_and_fortran_files_stream_the_same(tmp_path, pred):
    ref = build_pairs(pred, 3, 2)
    np.savez_compressed(tmp_path / "z.npz", **base())
    np.savez(tmp_path / "f.npz", **base(probs=np.asfortranarray(PROBS)))
    for name in ("z.npz", "f.npz"):
        np.testing.assert_array_equal(
            build_pairs(load_predictions(tmp_path / name), 3, 3).guess, ref.guess
        )


def test_main_writes_outputs_and_fails_cleanly(tmp_path, monkeypatch, capsys):
    # As dvc.yaml runs it: predict@<seed>'s files by their pattern, `--seeds` from params.
    folder = tmp_path / "predictions"
    folder.mkdir()
    seeds = stage_options("pairs")["--seeds"].split()
    for s in seeds:
        save(folder, f"seed_{s}.npz", **base())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pairs": {"top_k": 2}}))
    out, metrics = tmp_path / "data" / "pairs", tmp_path / "metrics" / "pairs.json"
    pattern = folder / PurePosixPath(stage_options("pairs")["--predictions"]).name
    args = stage_argv("pairs", predictions=pattern, out=out, metrics=metrics)
    monkeypatch.setattr(sys, "argv", ["pairs", *args, "--params", str(params)])
    run_main(pairs_stage.main)
    m = json.loads(metrics.read_text())
    assert m["classifiers"] == len(seeds) and m["pairs"] == 8 * len(seeds)
    assert m["pictures"] == 4 * len(seeds)
    assert load_pairs(out).classifiers == tuple(f"seed_{s}" for s in seeds)
    assert f"pairs: {len(seeds)} classifier(s)" in capsys.readouterr().out

    params.write_text(yaml.safe_dump({"pairs": {"top_k": 9}}))
    with pytest.raises(SystemExit) as exc:
        run_main(pairs_stage.main)
    assert exc.value.code == 2
    assert "pairs.top_k' = 9" in capsys.readouterr().err
    assert (out / "pairs.npz").exists()  # the old output is left whole


def run_pairs_stage(tmp_path, monkeypatch, predictions, seeds=None, top_k=2) -> Path:
    """The pairs stage on `predictions` (a file, or with `seeds` a folder, whose files
    seed_<s>.npz it reads through the pattern seed_{seed}.npz); returns --out."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pairs": {"top_k": top_k}}))
    out = tmp_path / "out"
    args = ["--predictions", str(predictions), "--out", str(out)]
    args += ["--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    if seeds is not None:
        args[1] = str(Path(predictions) / "seed_{seed}.npz")
        args += ["--seeds", *map(str, seeds)]
    monkeypatch.setattr(sys, "argv", ["pairs", *args])
    run_main(pairs_stage.main)
    return out


def test_one_predictions_file_without_seeds(tmp_path, monkeypatch):
    """A user's own file (no --seeds): one classifier, named after the file."""
    path = save(tmp_path, "mine.npz", **base())
    back = load_pairs(run_pairs_stage(tmp_path, monkeypatch, path))
    assert back.classifiers == ("mine",) and (back.classifier == 0).all()
    ref = build_pairs(load_predictions(path), 2, 10)
    np.testing.assert_array_equal(back.guess, ref.guess)


def test_seeds_read_the_folder_files_in_the_order_given(tmp_path, monkeypatch):
    folder = tmp_path / "predictions"
    folder.mkdir()
    rng = np.random.default_rng(5)
    files = {}
    for s in (0, 3, 7):  # seed 7: in the folder but not asked for
        probs = rng.dirichlet(np.ones(4), size=4).astype(np.float32)
        files[s] = save(folder, f"seed_{s}.npz", **base(probs=probs))
    back = load_pairs(run_pairs_stage(tmp_path, monkeypatch, folder, seeds=[3, 0]))
    assert back.classifiers == ("seed_3", "seed_0")
    np.testing.assert_array_equal(back.classifier, np.repeat([0, 1], 8).astype(np.int16))
    for i, s in enumerate((3, 0)):
        one = build_pairs(load_predictions(files[s]), 2, 10)
        np.testing.assert_array_equal(back.of(i).guess, one.guess)
        np.testing.assert_array_equal(back.of(i).true, one.true)
    assert predictions_files(folder / "seed_{seed}.npz", [3, 0]) == [
        ("seed_3", folder / "seed_3.npz"),
        ("seed_0", folder / "seed_0.npz"),
    ]
    assert predictions_files(files[0], None) == [("seed_0", files[0])]


def test_a_missing_seed_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "predictions"
    folder.mkdir()
    save(folder, "seed_0.npz", **base())
    with pytest.raises(SystemExit) as exc:
        run_pairs_stage(tmp_path, monkeypatch, folder, seeds=[0, 1])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'seed_1.npz'}: predictions file not found")
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_seeds_without_a_pattern_or_twice_the_same_seed_are_refused(tmp_path, monkeypatch, capsys):
    path = save(tmp_path, "seed_0.npz", **base())
    args = ["--predictions", str(path), "--out", str(tmp_path / "out")]
    args += ["--metrics", str(tmp_path / "m.json"), "--seeds", "0"]
    monkeypatch.setattr(sys, "argv", ["pairs", *args])
    with pytest.raises(SystemExit):
        run_main(pairs_stage.main)  # a file where --seeds needs a pattern
    err = capsys.readouterr().err
    assert "with --seeds, a pattern with {seed} in it" in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        run_pairs_stage(tmp_path, monkeypatch, tmp_path, seeds=[0, 0])
    err = capsys.readouterr().err
    assert "two classifiers share a name in ['seed_0', 'seed_0']" in err, err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- several classifiers


def _parts(tmp_path, n=3, **over) -> list[Pairs]:
    """n classifiers' pairs on the same 4 pictures (different scores), named seed_<i>."""
    rng = np.random.default_rng(11)
    parts = []
    for i in range(n):
        probs = rng.dirichlet(np.ones(4), size=4).astype(np.float32)
        arrays = base(probs=probs, split=np.array([0, 0, 1, 1]), splits=np.array(["train", "test"]))
        arrays.update(over)
        path = save(tmp_path, f"seed_{i}.npz", **arrays)
        parts.append(build_pairs(load_predictions(path), 2, 3))
    return parts


def test_combine_stacks_the_classifiers_and_of_gives_each_back(tmp_path):
    parts = _parts(tmp_path)
    both = combine(parts)
    assert both.classifiers == ("seed_0", "seed_1", "seed_2")
    assert both.classifier.dtype == np.int16
    np.testing.assert_array_equal(both.classifier, np.repeat([0, 1, 2], 8))
    assert both.n_pictures == 12 and both.top_k == 2 and both.classes == parts[0].classes
    for i, part in enumerate(parts):
        one = both.of(i)
        assert one.classifiers == (f"seed_{i}",) and (one.classifier == 0).all()
        for field in ("true", "guess", "rank", "prob", "split", "classifier"):
            np.testing.assert_array_equal(getattr(one, field), getattr(part, field), field)
        assert (one.classes, one.splits, one.groups, one.top_k) == (
            part.classes,
            part.splits,
            part.groups,
            part.top_k,
        )
    # Taken apart and put together again: the same pairs.
    again = combine([both.of(i) for i in range(3)])
    for field in ("true", "guess", "rank", "prob", "split", "classifier"):
        np.testing.assert_array_equal(getattr(again, field), getattr(both, field), field)
    assert again.classifiers == both.classifiers
    assert combine(parts[:1]).classifiers == ("seed_0",)


def test_combined_metrics_count_every_classifier(tmp_path):
    parts = _parts(tmp_path, 2)
    m = pairs_metrics(combine(parts))
    assert list(m)[0] == "classifiers" and m["classifiers"] == 2
    assert m["pictures"] == 8 and m["pairs"] == 16
    one = [pairs_metrics(p)["top1_accuracy"]["all"] for p in parts]
    assert m["top1_accuracy"]["all"] == pytest.approx(np.mean(one), abs=1e-6)


@pytest.mark.parametrize(
    "over, what",
    [
        ({"classes": np.array(["a", "b", "c", "e"])}, "classes"),
        ({"splits": np.array(["train", "val"])}, "splits"),
        ({"groups": np.array(json.dumps({"g": ["a", "b"]}))}, "groups"),
    ],
)
def test_combine_refuses_classifiers_of_other_classes_or_splits(tmp_path, over, what):
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = _parts(tmp_path / "good", 1)[0]  # seed_0
    bad = _parts(tmp_path / "bad", 2, **over)[1]  # seed_1, other classes, splits or groups
    with pytest.raises(PipelineError, match=rf"seed_1 and seed_0 differ in their {what}") as exc:
        combine([good, bad])
    assert "must predict the same classes and splits" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_combine_refuses_other_top_k_and_shared_names(tmp_path):
    a, b = _parts(tmp_path, 2)
    k1 = build_pairs(load_predictions(tmp_path / "seed_1.npz"), 1, 3)
    with pytest.raises(PipelineError, match="differ in their top_k"):
        combine([a, k1])
    with pytest.raises(
        PipelineError, match=r"two classifiers share a name in \['seed_0', 'seed_0'\]"
    ):
        combine([a, a])


def test_pairs_file_keeps_the_classifiers(tmp_path):
    both = combine(_parts(tmp_path))
    (tmp_path / "out").mkdir()
    write_pairs(both, tmp_path / "out")
    back = load_pairs(tmp_path / "out")
    assert back.classifiers == both.classifiers and back.classifier.dtype == np.int16
    for field in ("true", "guess", "rank", "prob", "split", "classifier"):
        np.testing.assert_array_equal(getattr(back, field), getattr(both, field), field)
    with np.load(tmp_path / "out" / "pairs.npz", allow_pickle=False) as npz:
        assert npz["classifiers"].tolist() == ["seed_0", "seed_1", "seed_2"]
    for i in range(3):
        np.testing.assert_array_equal(back.of(i).guess, both.of(i).guess)
    # The confusion plot: the TEST pictures' (2 of 4) top-1 guesses of every classifier, as
    # counts per (true, guess) cell.
    rows = (tmp_path / "out" / "confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted,count"
    expect: dict[tuple[str, str], int] = {}
    for i in range(3):
        one = both.of(i)
        first = (one.rank == 1) & (one.split == 1)
        for t, g in zip(one.true[first], one.guess[first], strict=True):
            key = (CLASSES[t], CLASSES[g])
            expect[key] = expect.get(key, 0) + 1
    got = {tuple(r.split(",")[:2]): int(r.split(",")[2]) for r in rows[1:]}
    assert got == expect and sum(got.values()) == 2 * 3


def test_a_pairs_file_without_classifiers_asks_for_a_rerun(tmp_path):
    """A pairs.npz written before the classifiers existed is refused with what to do."""
    one = _parts(tmp_path, 1)[0]
    (tmp_path / "out").mkdir()
    write_pairs(one, tmp_path / "out")
    path = tmp_path / "out" / "pairs.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in ("classifier", "classifiers")}
    np.savez(path, **arrays)
    with pytest.raises(PipelineError, match="classifier") as exc:
        load_pairs(tmp_path / "out")
    assert "pairs" in str(exc.value) and "\n" not in str(exc.value)
