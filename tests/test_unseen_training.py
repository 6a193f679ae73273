"""train.unseen on the classifier's side: training leaves the classes out (C - k outputs),
predict scores every picture and names the unseen classes in the predictions file, and a
model trained on every class is saved exactly as before the param existed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from confusion_embeddings.cnn.checkpoint import load_model
from confusion_embeddings.cnn.config import RunConfig
from confusion_embeddings.cnn.inference import softmax
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data.prepared import load_prepared
from confusion_embeddings.data.selection import known_classes, without_classes
from confusion_embeddings.predictions import load_predictions

from cnn_helpers import OPTIONS, tiny_run, train_project
from helpers import make_prepared, run_stage_main, stage_argv, stage_options


def test_without_classes_drops_pictures_and_renumbers(tmp_path):
    data = load_prepared(make_prepared(tmp_path / "p", num_classes=4, train=8, test=4))
    names = data.classes
    kept = without_classes(data, (names[1],))
    assert kept.classes == [names[0], names[2], names[3]]
    for name, split in kept.splits.items():
        original = data.splits[name]
        rows = original.labels != 1
        np.testing.assert_array_equal(split.images, original.images[rows])
        # 0 -> 0, 2 -> 1, 3 -> 2: the known classes in their order
        np.testing.assert_array_equal(split.labels, np.array([0, -1, 1, 2])[original.labels[rows]])
    assert without_classes(data, ()) is data  # nothing copied, nothing renumbered


def test_unseen_names_are_checked(tmp_path):
    classes = ["cat", "dog", "truck"]
    assert known_classes(classes, ["dog"]) == [0, 2]
    with pytest.raises(PipelineError, match=r"'train.unseen' names \['lorry'\].*cat, dog, truck"):
        known_classes(classes, ["lorry"])
    with pytest.raises(PipelineError, match="leaves 1 of 3 classes"):
        known_classes(classes, ["cat", "dog"])
    with pytest.raises(PipelineError, match="cannot be combined"):
        tiny_run(unseen=["cat"], crossfit_folds=2)


def test_train_and_predict_leave_a_class_out(tmp_path, monkeypatch):
    project = train_project(tmp_path, epochs=1)
    names = load_prepared(project / OPTIONS["--prepared"]).classes
    params = project / "params.yaml"
    text = params.read_text().replace("unseen: []", f"unseen: [{names[2]}]")
    assert text != params.read_text()
    params.write_text(text)
    monkeypatch.chdir(project)
    run_stage_main("train", stage_argv("train"))
    model = load_model(project / OPTIONS["--model"])
    assert model.run.num_classes == 3 and model.run.train.unseen == (names[2],)
    assert json.loads((project / OPTIONS["--model"] / "config.json").read_text())["run"]["train"][
        "unseen"
    ] == [names[2]]
    # predict.scores: probs -> every class's column, the unseen class's 0.
    probs_text = params.read_text().replace("scores: logits", "scores: probs")
    assert "scores: probs" in probs_text
    params.write_text(probs_text)
    run_stage_main("predict", stage_argv("predict"))
    out = project / stage_options("predict")["--out"]
    pred = load_predictions(out)
    data = load_prepared(project / OPTIONS["--prepared"])
    assert pred.unseen == (names[2],) and pred.classes == tuple(names)
    assert pred.n == sum(len(s.labels) for s in data.splits.values())  # every picture
    probs = np.load(out)["probs"]
    assert (probs[:, 2] == 0).all() and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (pred.labels == 2).sum() > 0  # the unseen class's pictures are scored

    # predict.scores: logits (the default) -> the network's outputs, one column per known
    # class, whose softmax is the probabilities above.
    params.write_text(text)
    run_stage_main("predict", stage_argv("predict"))
    with np.load(out) as npz:
        assert "probs" not in npz
        logits = npz["logits"]
    assert logits.shape == (pred.n, 3)
    np.testing.assert_allclose(softmax(logits), probs[:, [0, 1, 3]], rtol=1e-5, atol=1e-6)
    pred = load_predictions(out)
    assert pred.kind == "logits" and pred.unseen == (names[2],)


def test_a_model_of_every_class_is_saved_without_the_key(tmp_path):
    run = tiny_run()
    assert run.train.unseen == ()
    saved = run.to_dict()
    assert "unseen" not in saved["train"]  # the bytes of config.json as before the param
    assert RunConfig.from_dict(saved) == run
    unseen = tiny_run(unseen=["x"])
    assert RunConfig.from_dict(json.loads(json.dumps(unseen.to_dict()))) == unseen
