"""Tests of confusion_embeddings/predictions.py, the predictions-file contract between any
classifier and the method: what a file must and may hold, each refusal (one line naming the
file, the key and what to do instead), damaged files, and the same checks on arrays in memory.

The messages for the mistakes a new user makes are checked verbatim: each names what was
found and what to write instead."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.pairs import build_pairs
from confusion_embeddings.predictions import load_predictions, predictions_from_arrays

from helpers import with_unknown_compression
from synthetic import HAND_PROBS, hand_arrays, hand_file

# --------------------------------------------------------------------------- messages

NAMES = np.array(["zero", "one", "two"])
LABELS = np.array([0, 1, 2, 1])
PROBS = np.full((4, 3), 1 / 3, np.float32)


def refusal(tmp_path, **arrays) -> str:
    path = tmp_path / "p.npz"
    np.savez(path, **arrays)
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    return str(exc.value).removeprefix(f"{path}: ")


def test_a_misnamed_score_key_lists_the_keys_and_the_likely_name(tmp_path):
    assert refusal(tmp_path, labels=LABELS, classes=NAMES, proba=PROBS) == (
        "needs exactly one of 'probs', 'logits', 'topk'; found none (keys found: classes, "
        "labels, proba); did you mean 'probs' (not 'proba')?"
    )


def test_groups_saved_as_a_dict_show_the_json_form(tmp_path):
    groups = np.array({"low": ["zero", "one"]}, dtype=object)
    assert refusal(tmp_path, labels=LABELS, classes=NAMES, probs=PROBS, groups=groups) == (
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
    assert refusal(tmp_path, labels=LABELS + 1, classes=NAMES, probs=PROBS) == (
        "'labels'[2] = 3 is outside [0, 3) (there are 3 classes); labels are 0-based indices "
        "into 'classes', and these run from 1 to 3: subtract 1"
    )


def test_mismatched_lengths_name_both(tmp_path):
    assert refusal(tmp_path, labels=LABELS, classes=NAMES, probs=PROBS[:3]) == (
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


# --------------------------------------------------------------------------- validation
# A refusal for each of the contract's checks, on the hand-made file of tests/synthetic.py.

BAD_ROWS = HAND_PROBS.copy()
BAD_ROWS[2] *= 0.5
NAN_PROBS = HAND_PROBS.copy()
NAN_PROBS[1, 1] = np.nan
NEG_PROBS = HAND_PROBS.copy()
NEG_PROBS[3] = [0.7, -0.1, 0.3, 0.1]


@pytest.mark.parametrize(
    "arrays, message",
    [
        (hand_arrays(labels=None), "missing key 'labels'"),
        (hand_arrays(classes=None), "missing key 'classes'"),
        (hand_arrays(probs=None), "exactly one of 'probs', 'logits', 'topk'; found none"),
        (hand_arrays(logits=HAND_PROBS), "found probs and logits"),
        (hand_arrays(probs=HAND_PROBS[:, :3]), r"'probs' must have shape \[N, C\] = \(4, 4\)"),
        (hand_arrays(probs=HAND_PROBS[:3]), r"'labels' has 4 entries and 'probs' 3 rows"),
        (hand_arrays(probs=HAND_PROBS.astype(np.int32)), "'probs' must be a float array"),
        (hand_arrays(labels=np.array([0, 1, 2, 4])), r"'labels'\[3\] = 4 is outside \[0, 4\)"),
        (hand_arrays(labels=np.array([0, -1, 2, 3])), r"'labels'\[1\] = -1"),
        (hand_arrays(labels=np.array([0.0, 1.0, 2.0, 3.0])), "'labels' must be an integer array"),
        (hand_arrays(labels=np.zeros((4, 1), int)), "'labels' must be a non-empty 1-D array"),
        (hand_arrays(probs=NAN_PROBS), "'probs' row 1 holds NaN"),
        (hand_arrays(probs=NEG_PROBS), "'probs' row 3 has a negative probability"),
        (hand_arrays(probs=BAD_ROWS), "'probs' row 2 sums to 0.5.*save them as 'logits'"),
        (
            hand_arrays(probs=None, logits=np.where(np.isnan(NAN_PROBS), np.inf, HAND_PROBS)),
            "'logits' row 1 holds NaN or inf",
        ),
        (
            hand_arrays(probs=None, topk=np.array([[0, 1], [1, 4], [0, 1], [0, 1]])),
            r"'topk' row 1 holds a class index outside \[0, 4\)",
        ),
        (
            hand_arrays(probs=None, topk=np.array([[0, 1], [1, 2], [3, 3], [0, 1]])),
            "'topk' row 2 lists a class twice",
        ),
        (
            hand_arrays(probs=None, topk=np.zeros((4, 2), np.float32)),
            "'topk' must be an integer array",
        ),
        (
            hand_arrays(probs=None, topk=np.zeros((4, 5), int)),
            r"'topk' must have shape \[N=4, k\] with 1 <= k <= C=4",
        ),
        (hand_arrays(classes=np.array(["a", "b", "a", "d"])), "'classes' lists 'a' twice"),
        (hand_arrays(classes=np.array(["a", "", "c", "d"])), r"'classes'\[1\] is an empty name"),
        (
            hand_arrays(classes=np.array(["a", "b c", "c", "d"])),
            r"'classes'\[1\] = 'b c' contains whitespace",
        ),
        (hand_arrays(classes=np.array([b"a", b"b", b"c", b"d"])), "'classes' must be a str array"),
        (
            hand_arrays(
                classes=np.array(["a"]),
                probs=HAND_PROBS[:, :1] / HAND_PROBS[:, :1],
                labels=np.zeros(4, int),
            ),
            "at least 2 are needed",
        ),
        (hand_arrays(split=np.array([0, 1, 0, 1])), "'split' and 'splits' go together"),
        (
            hand_arrays(split=np.array([0, 1, 2, 1]), splits=np.array(["train", "test"])),
            r"'split'\[2\] = 2 is outside \[0, 2\)",
        ),
        (
            hand_arrays(split=np.array([0, 0, 0, 0]), splits=np.array(["train", "train"])),
            "'splits' lists 'train' twice",
        ),
        (
            hand_arrays(groups=np.array(json.dumps({"g": ["a", "x"]}))),
            "group 'g' names unknown class 'x'",
        ),
        (
            hand_arrays(groups=np.array(json.dumps({"g": ["a"], "h": ["a"]}))),
            "class 'a' is in both group 'g' and group 'h'",
        ),
        (hand_arrays(groups=np.array("{not json")), "'groups' is not valid JSON"),
        (hand_arrays(groups=np.array(json.dumps(["a", "b"]))), r"'groups' must be a JSON object"),
    ],
)
def test_predictions_validation(tmp_path, arrays, message):
    path = hand_file(tmp_path, **arrays)
    with pytest.raises(PipelineError, match=message) as exc:
        load_predictions(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file_names_the_param(tmp_path):
    with pytest.raises(PipelineError, match=r"nope\.npz: predictions file not found") as exc:
        load_predictions(tmp_path / "nope.npz")
    # How to get one: the pipeline's predict stages, or a study's own file (the param).
    assert "dvc repro" in str(exc.value) and "'pairs.predictions'" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(PipelineError, match="cannot be read as an .npz"):
        load_predictions(tmp_path / "x.npz")
    np.save(tmp_path / "y.npy", HAND_PROBS)
    with pytest.raises(PipelineError, match="single .npy array"):
        load_predictions(tmp_path / "y.npy")


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    path = hand_file(tmp_path, **hand_arrays(classes=np.array(["a", "b", "c", "d"], dtype=object)))
    with pytest.raises(PipelineError, match="'classes' is an object array"):
        load_predictions(path)


def test_value_errors_surface_on_the_stage_pass_too(tmp_path):
    # check_values=False defers value checks to the blocks build_pairs reads.
    pred = load_predictions(hand_file(tmp_path, **hand_arrays(probs=NAN_PROBS)), check_values=False)
    with pytest.raises(PipelineError, match="'probs' row 1 holds NaN"):
        build_pairs(pred, 2, 1)


# --------------------------------------------------------------------------- damaged files

VALID = {
    "labels": np.array([0, 1, 1]),
    "classes": np.array(["a", "b"]),
    "probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], np.float32),
}


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return path


def flip_byte_in(path: Path, member: str, offset_from_data: int) -> None:
    """Flip one byte of a stored member's data: its CRC no longer matches."""
    raw = bytearray(path.read_bytes())
    start = raw.find(b"\x93NUMPY", raw.find(member.encode()))
    raw[start + offset_from_data] ^= 0xFF
    path.write_bytes(bytes(raw))


def refused(path: Path, *fragments: str, stream: bool = False) -> str:
    """load_predictions (or, with stream, the pairs stage's streaming read) refuses path."""
    with pytest.raises(PipelineError) as exc:
        if stream:
            build_pairs(load_predictions(path, check_values=False), 1, 2)
        else:
            load_predictions(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


# --------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("member", ["labels", "classes"])
def test_bad_crc_in_a_small_array(tmp_path, member):
    path = write_zip(tmp_path / "p.npz", {f"{k}.npy": npy_bytes(v) for k, v in VALID.items()})
    flip_byte_in(path, f"{member}.npy", 130)
    refused(path, f"'{member}' cannot be read (BadZipFile: Bad CRC-32", "damaged")


@pytest.mark.parametrize("stream", [False, True])
def test_bad_crc_in_the_scores_is_found_while_streaming(tmp_path, stream):
    path = write_zip(tmp_path / "p.npz", {f"{k}.npy": npy_bytes(v) for k, v in VALID.items()})
    flip_byte_in(path, "probs.npy", 130)
    refused(path, "'probs' cannot be read (BadZipFile: Bad CRC-32", stream=stream)


def test_unknown_compression_method(tmp_path):
    path = write_zip(
        tmp_path / "p.npz", {f"{k}.npy": npy_bytes(v) for k, v in VALID.items()}, zipfile.ZIP_BZIP2
    )
    with_unknown_compression(path)  # bzip2 (12) -> 99 in every header
    refused(path, "cannot be read (NotImplementedError: That compression method is not supported)")


@pytest.mark.parametrize("member", ["labels", "probs"])
def test_member_that_is_not_npy_data(tmp_path, member):
    members = {f"{k}.npy": npy_bytes(v) for k, v in VALID.items()}
    members[f"{member}.npy"] = b"these are not .npy bytes"
    path = write_zip(tmp_path / "p.npz", members)
    refused(path, f"'{member}'", "not .npy data" if member == "labels" else "not a valid array")


def test_members_without_the_npy_suffix(tmp_path):
    """np.load shows a member `probs` (no .npy) as key 'probs'; it must be read, not crash."""
    path = write_zip(tmp_path / "p.npz", {k: npy_bytes(v) for k, v in VALID.items()})
    pred = load_predictions(path)
    assert pred.kind == "probs" and pred.n == 3
    np.testing.assert_array_equal(build_pairs(pred, 1, 2).guess, [0, 1, 1])


def test_groups_nested_too_deeply(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, **VALID, groups=np.array("[" * 100_000 + "]" * 100_000))
    refused(path, "'groups' is nested too deeply")


# --------------------------------------------------------------------------- unseen classes


def test_predictions_contract_for_unseen():
    base = {
        "labels": np.array([0, 1, 2]),
        "classes": np.array(["a", "b", "c"]),
        "probs": np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.5, 0.5, 0]]),
    }
    assert predictions_from_arrays({**base, "unseen": np.array(["c"])}).unseen == ("c",)
    assert predictions_from_arrays(base).unseen == ()
    for unseen, message in (
        (["d"], r"'unseen' names \['d'\]"),
        (["c", "c"], "lists a class twice"),
        (["b", "c"], "leaves 1 of 3 classes known"),
    ):
        with pytest.raises(PipelineError, match=message):
            predictions_from_arrays({**base, "unseen": np.array(unseen)})
