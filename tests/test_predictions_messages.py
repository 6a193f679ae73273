"""The predictions contract's messages for the mistakes a new user makes, checked verbatim
(confusion_embeddings/predictions.py): each names what was found and what to write instead."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.predictions import load_predictions

NAMES = np.array(["zero", "one", "two"])
LABELS = np.array([0, 1, 2, 1])
PROBS = np.full((4, 3), 1 / 3, np.float32)


def refused(tmp_path, **arrays) -> str:
    path = tmp_path / "p.npz"
    np.savez(path, **arrays)
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    return str(exc.value).removeprefix(f"{path}: ")


def test_a_misnamed_score_key_lists_the_keys_and_the_likely_name(tmp_path):
    assert refused(tmp_path, labels=LABELS, classes=NAMES, proba=PROBS) == (
        "needs exactly one of 'probs', 'logits', 'topk'; found none (keys found: classes, "
        "labels, proba); did you mean 'probs' (not 'proba')?"
    )


def test_groups_saved_as_a_dict_show_the_json_form(tmp_path):
    groups = np.array({"low": ["zero", "one"]}, dtype=object)
    assert refused(tmp_path, labels=LABELS, classes=NAMES, probs=PROBS, groups=groups) == (
        "'groups' is an object array (a dict saved as it is); store it as a JSON string: "
        'groups=np.array(json.dumps({"round": ["zero", "six"], ...}))'
    )
    # ... and that form is accepted.
    path = tmp_path / "ok.npz"
    np.savez(
        path, labels=LABELS, classes=NAMES, probs=PROBS, groups=np.array(json.dumps({"g": ["one"]}))
    )
    assert load_predictions(path).groups == {"g": ["one"]}


def test_one_based_labels_get_the_hint(tmp_path):
    assert refused(tmp_path, labels=LABELS + 1, classes=NAMES, probs=PROBS) == (
        "'labels'[2] = 3 is outside [0, 3) (there are 3 classes); labels are 0-based indices "
        "into 'classes', and these run from 1 to 3: subtract 1"
    )


def test_mismatched_lengths_name_both(tmp_path):
    assert refused(tmp_path, labels=LABELS, classes=NAMES, probs=PROBS[:3]) == (
        "'labels' has 4 entries and 'probs' 3 rows; give one label and one row of scores per "
        "picture, in the same order"
    )


def test_a_score_array_shorter_than_its_header_is_named_as_truncated(tmp_path):
    """The reader's own one-line message comes through as it is (a PipelineError is a
    ValueError, which the reader also catches for damaged members)."""
    path = tmp_path / "p.npz"
    np.savez(path, labels=LABELS, classes=NAMES)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": PROBS.shape}
    )
    with zipfile.ZipFile(path, "a") as zf:  # the header says 4 rows, the data holds 2
        zf.writestr("probs.npy", header.getvalue() + PROBS[:2].tobytes())
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    assert str(exc.value) == f"{path}: 'probs' is truncated; write the file again"
