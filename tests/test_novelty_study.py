"""The novelty study's readers of an experiment's dvc.lock and of the local DVC cache."""

from __future__ import annotations

import json

import pytest

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
