"""stages/predict.py and cnn/run.py's predict_classifier: the predictions file a saved model
gives (the network run as its RunConfig says), and the convolution it runs where the saved
one cannot (conv.resolve_saved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from confusion_embeddings.cnn import conv, onednn
from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.data.prepared import load_prepared
from confusion_embeddings.predictions import load_predictions

from helpers import (
    make_prepared,
    run_stage_main,
    save_tiny_model,
    scratch_project,
    stage_argv,
    stage_options,
)

OPTIONS = stage_options("predict")


def predict_project(folder: Path, monkeypatch, conv_impl: str = "xla") -> Path:
    """A project with a prepared dataset (4 classes x 12 + 6) and an untrained model with test-time
    augmentation at predict's paths; the current folder."""
    scratch_project(folder, {"predict": {"batch_size": 4, "splits": ["train", "test"]}})
    monkeypatch.chdir(folder)
    make_prepared(folder / OPTIONS["--prepared"], num_classes=4, train=12, test=6)
    save_tiny_model(
        folder / OPTIONS["--model"], 4, conv_impl=conv_impl, tta_flip=True, tta_translate=1
    )
    return folder


def test_the_file_holds_what_the_saved_model_computes(tmp_path, monkeypatch):
    project = predict_project(tmp_path, monkeypatch)
    run_stage_main("predict", stage_argv("predict"))
    pred = load_predictions(project / OPTIONS["--out"])
    data = load_prepared(project / OPTIONS["--prepared"])
    n_train, n_test = len(data.splits["train"].labels), len(data.splits["test"].labels)
    assert list(pred.splits) == ["train", "test"] and pred.n == n_train + n_test == 72
    assert list(pred.classes) == list(data.classes)
    with np.load(project / OPTIONS["--out"]) as npz:
        labels, split, logits = npz["labels"], npz["split"], npz["logits"]
    np.testing.assert_array_equal(
        labels, np.concatenate([data.splits["train"].labels, data.splits["test"].labels])
    )
    np.testing.assert_array_equal(split, np.repeat([0, 1], [n_train, n_test]))
    # The logits of the saved network with its saved test-time augmentation.
    m = load_model(project / OPTIONS["--model"])
    assert m.run.train.tta_flip and m.run.train.tta_translate == 1
    infer = make_inference_fn(m.graphdef, m.norm, tta_flip=True, tta_translate=1)
    test = data.splits["test"]
    want = np.asarray(infer(m.params, m.rest, np.asarray(test.images)))
    np.testing.assert_allclose(logits[split == 1], want, rtol=1e-5, atol=1e-6)
    assert (project / OPTIONS["--timings"]).exists()


def test_resolve_saved_keeps_a_convolution_that_runs_here():
    for impl in ("xla", "matmul"):
        assert conv.resolve_saved(impl, "f32") == conv.ConvChoice(impl, "f32")


def test_a_model_saved_with_onednn_runs_where_the_kernel_cannot(tmp_path, monkeypatch, capsys):
    """Moved to a machine where oneDNN's kernel does not load, the model runs on XLA's
    convolutions (the same numbers up to rounding) after one warning line."""

    def unavailable():
        raise onednn.KernelUnavailable("no kernel here", reason="no compiler")

    monkeypatch.setattr(onednn, "platform_supported", lambda: True)
    monkeypatch.setattr(onednn, "load", unavailable)
    project = predict_project(tmp_path, monkeypatch, conv_impl="onednn")
    assert read_config(project / OPTIONS["--model"]).conv_impl == "onednn"
    capsys.readouterr()
    run_stage_main("predict", stage_argv("predict"))
    warnings = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert len(warnings) == 1 and "oneDNN convolutions unavailable (no compiler)" in warnings[0]
    assert load_predictions(project / OPTIONS["--out"]).n == 72
