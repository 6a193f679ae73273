"""Not only CIFAR-10: a generated 4-class dataset of 16x16 pictures, prepare -> evaluate."""

from __future__ import annotations

import numpy as np
from helpers import make_dataset, make_tar_gz

from stages import embed, evaluate, pairs, predict, prepare, train
from stages.common import validate_section
from stages.predictions import load_predictions


def test_four_classes_of_16x16_end_to_end(tmp_path):
    classes = ["circle", "square", "star", "wave"]
    src = make_dataset(tmp_path / "images", classes, train=48, test=12, size=(16, 16))
    archive = make_tar_gz(src, tmp_path / "mine.tar.gz")

    meta = prepare.prepare(archive, tmp_path / "prepared",
                           validate_section("prepare", {}, prepare.SCHEMA))
    assert meta["num_classes"] == 4 and meta["image_shape"] == [16, 16, 3]

    tp = validate_section("train", {"epochs": 3, "batch_size": 16, "eval_batch_size": 16,
                                    "stem_width": 8, "widths": [8, 16], "lr": 0.01}, train.SCHEMA)
    m = train.train(tmp_path / "prepared", tmp_path / "model", tmp_path / "train.json",
                    tmp_path / "live", tp, resume_dir=tmp_path / "resume", progress=False)
    assert m["test_accuracy"] >= 0.75, m

    pp = validate_section("predict", {"batch_size": 16}, predict.SCHEMA)
    predict.predict(tmp_path / "prepared", tmp_path / "model", tmp_path / "pred.npz", pp,
                    progress=False)
    pred = load_predictions(tmp_path / "pred.npz")
    assert list(pred.classes) == classes and pred.n == 4 * 60

    pr = pairs.build_pairs(pred, top_k=2, block_size=64)
    assert len(pr.true) == 2 * 4 * 60 and set(np.unique(pr.rank)) == {1, 2}
    ep = validate_section("embed", {"seeds": [0, 1], "dim": 3}, embed.SCHEMA)
    vectors = embed.train_vectors(pr, ep)
    assert vectors.shape == (2, 4, 3)
    ev = evaluate.evaluate(pr, vectors, validate_section("evaluate", {}, evaluate.SCHEMA))
    assert ev.mean.shape == (4, 4) and np.allclose(np.diag(ev.mean), 1.0, atol=1e-5)
