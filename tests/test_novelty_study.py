"""The novelty study's readers of an experiment's dvc.lock and of the local DVC cache, its
choice of the best score, and the defaults that follow it."""

from __future__ import annotations

import json

import pytest

from confusion_embeddings.config.evaluate import EvaluateConfig
from confusion_embeddings.evaluation.unseen import FALLBACK
from method_studies import novelty_logits, novelty_study

LOCK = {
    "stages": {
        "train@0": {
            "outs": [  # DVC lists a stage's outputs in no order the study may rely on
                {"path": "metrics/train/seed_0.json", "md5": "56dd341c2fdc468db974fcab1dd312e3"},
                {"path": "models/cnn/seed_0", "md5": "6b17780ab7ecd72d2dc3446a3c184d81.dir"},
            ]
        }
    }
}


def test_an_output_is_found_by_its_path_not_its_place(tmp_path, monkeypatch):
    monkeypatch.setattr(novelty_study, "CACHE", tmp_path)
    found = novelty_study.cached(LOCK, "train@0", "models/cnn/seed_0")
    assert found == tmp_path / "6b" / "17780ab7ecd72d2dc3446a3c184d81.dir"
    with pytest.raises(SystemExit, match="train@0 has no output models/cnn/seed_1"):
        novelty_study.cached(LOCK, "train@0", "models/cnn/seed_1")


def test_a_cached_folder_is_restored_file_by_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(novelty_logits, "CACHE", cache)
    files = {
        "config.json": ("0123456789abcdef0123456789abcdef", b"{}"),
        "sub/model.msgpack": ("fedcba9876543210fedcba9876543210", b"\x00\x01"),
    }
    for md5, content in files.values():
        (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
        (cache / md5[:2] / md5[2:]).write_bytes(content)
    listing = tmp_path / "listing.dir"
    listing.write_text(json.dumps([{"md5": m, "relpath": r} for r, (m, _) in files.items()]))
    out = novelty_logits._restore_dir(listing, tmp_path / "model")
    for relpath, (_, content) in files.items():
        assert (out / relpath).read_bytes() == content


def test_the_best_score_meets_more_targets_then_has_the_highest_median_wins_mean():
    rows = {  # three left-out classes; max_prob is the baseline each score must beat
        "a": {"max_prob": 0.70, "entropy": 0.72, "energy": 0.90, "spread": 0.71},
        "b": {"max_prob": 0.80, "entropy": 0.81, "energy": 0.81, "spread": 0.82},
        "c": {"max_prob": 0.60, "entropy": 0.61, "energy": 0.80, "spread": 0.61},
    }
    stats = novelty_study.summary(rows)
    assert stats["energy"] == {"mean": 0.8367, "median": 0.81, "beats_max_prob": 3, "classes": 3}
    # Each of energy, entropy and spread beats max_prob on 3 of 3 (one target met, the
    # median of 0.85 not): the highest median, energy's 0.81 against 0.72 and 0.71.
    assert novelty_study.best(stats) == "energy"
    # energy is not among the scores any probabilities file gives; of those, entropy has the
    # highest median (0.72 against spread's 0.71 and max_prob's 0.70).
    assert novelty_study.best(stats, novelty_study.FROM_ANY_PROBABILITIES) == "entropy"
    # Equal medians: the wins decide, then the mean.
    rows["c"]["spread"] = 0.72
    rows["a"]["spread"] = 0.72
    stats = novelty_study.summary(rows)
    assert stats["spread"]["median"] == stats["entropy"]["median"] == 0.72
    assert stats["spread"]["beats_max_prob"] == stats["entropy"]["beats_max_prob"] == 3
    assert novelty_study.best(stats, ("entropy", "spread")) == "spread"  # mean 0.7533 > 0.7133
    # A score measured on fewer classes (no logits for one) is not a candidate.
    del rows["b"]["energy"]
    assert novelty_study.best(novelty_study.summary(rows)) != "energy"
    # Meeting a target (beat max_prob on 90% of the classes) outranks a higher median.
    rows = {c: {"max_prob": 0.7, "entropy": 0.71, "max_logit": 0.8} for c in "abcdefghij"}
    rows["a"]["max_logit"] = rows["b"]["max_logit"] = 0.6
    stats = novelty_study.summary(rows)
    assert stats["max_logit"]["beats_max_prob"] == 8 and stats["entropy"]["beats_max_prob"] == 10
    assert novelty_study.best(stats) == "entropy"
    rows["c"]["max_logit"] = 0.9  # 9 of 10 too: now the higher median decides
    rows["b"]["max_logit"] = 0.8
    assert novelty_study.best(novelty_study.summary(rows)) == "max_logit"


def test_the_defaults_are_the_measured_best():
    """evaluate.novelty_score's default and the report's fallback are the study's choices
    (method_studies/novelty_study.json, from the leave-one-class-out runs)."""
    doc = json.loads((novelty_study.ROOT / "method_studies" / "novelty_study.json").read_text())
    assert EvaluateConfig().novelty_score == doc["best"]
    assert doc["best_from_probabilities"] == FALLBACK
    assert FALLBACK in novelty_study.FROM_ANY_PROBABILITIES
