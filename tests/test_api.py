"""The Python API (confusion_embeddings/api.py): one call from predictions in memory to the
table, the same functions as the stages, so the same table, messages and files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import confusion_embeddings as ce
from confusion_embeddings import study
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.predictions import load_predictions

from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions, write_predictions


def digits_predictions() -> dict[str, np.ndarray]:
    """The walkthrough's predictions (docs/own-model.md): out-of-fold logistic regression on the
    digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    digits = load_digits()
    probs = cross_val_predict(
        LogisticRegression(max_iter=2000),
        digits.data / 16,
        digits.target,
        cv=5,
        method="predict_proba",
    )
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return {"labels": digits.target, "classes": np.array(names), "probs": probs.astype(np.float32)}


@pytest.mark.slow
def test_the_api_and_a_study_of_the_same_file_give_the_same_table_byte_for_byte(tmp_path):
    arrays = digits_predictions()
    path = write_predictions(tmp_path / "digits.npz", arrays)
    folder = study.create(tmp_path / "digits", path)
    result = ce.embed_predictions(arrays["labels"], arrays["classes"], probs=arrays["probs"])
    with np.load(folder / "reports" / "similarity_matrices.npz") as made:
        for key, value in result_matrices(result).items():
            np.testing.assert_array_equal(made[key], value, err_msg=key)
    assert (folder / "reports" / "similarity.md").read_text() == result.report()
    # save() writes what the stages write, byte for byte.
    saved = result.save(tmp_path / "saved")
    for name in ("metrics/similarity.json", "reports/similarity.csv", "data/pairs/pairs.npz"):
        assert (saved / name).read_bytes() == (folder / name).read_bytes(), name


def result_matrices(result) -> dict[str, np.ndarray]:
    from confusion_embeddings.method import matrices

    return matrices(result.evaluation)


def test_one_call_gives_the_table_its_intervals_and_the_long_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arrays = make_synthetic_predictions(80, CIFAR10, CIFAR10_GROUPS, 1.5, seed=0)
    result = ce.embed_predictions(
        arrays["labels"], list(CIFAR10), probs=arrays["probs"], groups=CIFAR10_GROUPS, bootstrap=30
    )
    assert list(tmp_path.iterdir()) == []  # nothing written unless asked
    c = len(CIFAR10)
    assert result.table.shape == (c, c) and np.allclose(np.diag(result.table), 1.0, atol=1e-5)
    off = ~np.eye(c, dtype=bool)
    assert (result.low[off] < result.high[off]).all()
    assert list(result.metrics)[0] == "table_reliability" and result.metrics["group_ari"] >= 0
    frame = result.to_frame()
    assert list(frame.columns) == [
        "class",
        "neighbour",
        "cosine",
        "low",
        "high",
        "rank_low",
        "rank_high",
    ]
    assert len(frame) == c * (c - 1)
    cat = frame[frame["class"] == "cat"].iloc[0]
    nearest = result.nearest("cat", 1)[0]
    assert (cat["neighbour"], round(cat["cosine"], 4)) == (nearest[0], round(nearest[1], 4))
    assert "Table reliability" in result.report()
    figure = result.plot()
    assert figure.axes and figure.axes[0].get_title().startswith("Class similarity")
    assert result.vectors.shape == (c, 5)


def test_several_classifiers_as_lists():
    parts = [make_synthetic_predictions(60, CIFAR10, CIFAR10_GROUPS, 1.5, seed=s) for s in (0, 1)]
    result = ce.embed_predictions(
        parts[0]["labels"], CIFAR10, probs=[p["probs"] for p in parts], bootstrap=20
    )
    assert result.evaluation.classifiers == ("predictions[0]", "predictions[1]")
    assert "classifier_agreement" in result.metrics and result.runs.shape[0] == 2
    labels = [parts[0]["labels"]] * 3
    with pytest.raises(
        PipelineError, match="'probs' holds 2 classifiers' arrays where another holds 3"
    ):
        ce.embed_predictions(labels, CIFAR10, probs=[p["probs"] for p in parts])


def test_bad_input_raises_the_studys_messages(tmp_path):
    arrays = make_synthetic_predictions(5, CIFAR10, None, 0.0, seed=0)
    bad = {**arrays, "labels": arrays["labels"] + 1}
    path = write_predictions(tmp_path / "bad.npz", bad)
    with pytest.raises(PipelineError) as from_file:
        load_predictions(path)
    with pytest.raises(PipelineError) as from_api:
        ce.embed_predictions(bad["labels"], CIFAR10, probs=bad["probs"])
    assert str(from_file.value) == f"{path}: " + str(from_api.value).removeprefix("predictions: ")
    with pytest.raises(
        PipelineError, match="unknown parameter 'bootstrp'; did you mean 'bootstrap'"
    ):
        ce.embed_predictions(arrays["labels"], CIFAR10, probs=arrays["probs"], bootstrp=10)


@pytest.mark.parametrize(
    "given, message",
    [
        ({"dim": 0}, "embed_predictions(dim=0) is out of range; expected a number >= 1"),
        ({"dim": "5"}, "embed_predictions(dim='5') has the wrong type; expected int"),
        ({"top_k": 10}, "embed_predictions(top_k=10) must be smaller than the number of classes"),
        ({"seeds": [2**32]}, "embed_predictions(seeds=[4294967296]): engine jax takes seeds"),
        ({"confidence": 2.0}, "embed_predictions(confidence=2.0) is out of range"),
    ],
)
def test_a_bad_keyword_argument_is_named_as_one(given, message):
    """From Python, a bad value is the keyword argument it was given as, not a key of a
    params.yaml the caller never wrote; the stages keep naming params.yaml (test_params)."""
    arrays = make_synthetic_predictions(5, CIFAR10, None, 0.0, seed=0)
    with pytest.raises(PipelineError) as refused:
        ce.embed_predictions(arrays["labels"], CIFAR10, probs=arrays["probs"], **given)
    assert str(refused.value).startswith(message), str(refused.value)
    assert "params.yaml" not in str(refused.value)


def test_pipeline_error_is_a_value_error_at_the_top_of_the_package():
    assert ce.PipelineError is PipelineError and issubclass(PipelineError, ValueError)
    arrays = make_synthetic_predictions(5, CIFAR10, None, 0.0, seed=0)
    with pytest.raises(ValueError, match=r"embed_predictions\(dim=0\)"):
        ce.embed_predictions(arrays["labels"], CIFAR10, probs=arrays["probs"], dim=0)


def test_nearest_gives_named_tuples_of_plain_floats():
    arrays = make_synthetic_predictions(60, CIFAR10, CIFAR10_GROUPS, 1.5, seed=0)
    result = ce.embed_predictions(arrays["labels"], CIFAR10, probs=arrays["probs"], bootstrap=20)
    nearest = result.nearest("cat")
    assert len(nearest) == 3 and all(isinstance(n, ce.Neighbour) for n in nearest)
    first = nearest[0]
    assert first._fields == ("neighbour", "cosine", "low", "high")
    assert [type(v) for v in first] == [str, float, float, float]
    assert first.low <= first.cosine <= first.high
    assert [n.cosine for n in nearest] == sorted((n.cosine for n in nearest), reverse=True)
    i, j = CIFAR10.index("cat"), CIFAR10.index(first.neighbour)
    assert first.cosine == float(result.table[i, j]) and first.low == float(result.low[i, j])
    # Printed, four decimals to read; the fields keep every digit.
    assert repr(first) == (
        f"Neighbour({first.neighbour!r}, cosine={first.cosine:.4f}, low={first.low:.4f}, "
        f"high={first.high:.4f})"
    )


def test_importing_the_package_loads_no_jax_cnn_gensim_or_dvc():
    code = (
        "import sys, confusion_embeddings as ce; ce.PipelineError; "
        "print(sorted(m for m in ('jax', 'flax', 'gensim', 'dvc', 'confusion_embeddings.cnn') "
        "if m in sys.modules)); ce.embed_predictions; "
        "print(sorted(m for m in ('flax', 'gensim', 'dvc', 'confusion_embeddings.cnn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "[]"]
