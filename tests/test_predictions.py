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
from confusion_embeddings.predictions import (
    check_groups,
    load_predictions,
    parse_groups,
    predictions_from_arrays,
)

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


# --------------------------------------------------------------------------- what a file holds


def test_a_probs_file_loads_as_stored(tmp_path):
    labels = np.array([0, 1, 2, 3], np.uint8)  # any integer dtype
    pred = load_predictions(hand_file(tmp_path, **hand_arrays(labels=labels)))
    assert (pred.kind, pred.width, pred.n, pred.n_classes) == ("probs", 4, 4, 4)
    assert pred.classes == ("a", "b", "c", "d") and pred.labels.dtype == np.uint8
    assert pred.split is None and pred.splits == () and pred.groups is None
    assert pred.unseen == () and pred.known_ids == [0, 1, 2, 3] and not pred.known_only
    np.testing.assert_array_equal(np.concatenate(list(pred.blocks(3))), HAND_PROBS)


def test_logits_and_topk_files(tmp_path):
    logits = np.log(HAND_PROBS) - 7.0  # unnormalised, negative: fine as logits
    pred = load_predictions(hand_file(tmp_path, **hand_arrays(probs=None, logits=logits)))
    assert (pred.kind, pred.width) == ("logits", 4)
    np.testing.assert_array_equal(np.concatenate(list(pred.blocks(4))), logits)
    topk = np.array([[0, 1], [2, 1], [3, 2], [0, 1]], np.int8)
    pred = load_predictions(hand_file(tmp_path, "k.npz", **hand_arrays(probs=None, topk=topk)))
    assert (pred.kind, pred.width, pred.n_classes) == ("topk", 2, 4)
    np.testing.assert_array_equal(np.concatenate(list(pred.blocks(1))), topk)


def test_split_splits_and_groups_are_read(tmp_path):
    groups = {"first": ["a", "b"], "last": ["d"]}
    arrays = hand_arrays(
        split=np.array([1, 0, 1, 0], np.int8),
        splits=np.array(["train", "test"]),
        groups=np.array(json.dumps(groups)),
    )
    pred = load_predictions(hand_file(tmp_path, **arrays))
    np.testing.assert_array_equal(pred.split, [1, 0, 1, 0])
    assert pred.splits == ("train", "test") and pred.groups == groups
    none = load_predictions(hand_file(tmp_path, "n.npz", **hand_arrays(groups=np.array("null"))))
    assert none.groups is None


def test_blocks_stream_every_row_once_the_last_block_shorter(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=11).astype(np.float32)
    path = hand_file(tmp_path, **hand_arrays(labels=rng.integers(0, 4, 11), probs=probs))
    pred = load_predictions(path)
    blocks = list(pred.blocks(4))
    assert [b.shape for b in blocks] == [(4, 4), (4, 4), (3, 4)]
    np.testing.assert_array_equal(np.concatenate(blocks), probs)
    assert not blocks[0].flags.writeable  # read-only: the bytes as read


def test_row_sums_within_the_tolerance_pass(tmp_path):
    probs = HAND_PROBS.astype(np.float64)
    probs[0, 0] += 0.0009  # sums to 1.0009: within +-1e-3
    load_predictions(hand_file(tmp_path, **hand_arrays(probs=probs)))
    probs[0, 0] += 0.0002  # 1.0011: not
    with pytest.raises(PipelineError, match=r"'probs' row 0 sums to 1\.0011, not 1 \(\+-0\.001\)"):
        load_predictions(hand_file(tmp_path, "off.npz", **hand_arrays(probs=probs)))


# --------------------------------------------------------------------------- more refusals


@pytest.mark.parametrize(
    "arrays, message",
    [
        (hand_arrays(labels=np.array([], int)), "'labels' must be a non-empty 1-D array, got"),
        (hand_arrays(labels=np.array([True, False, True, True])), "got dtype bool"),
        (hand_arrays(probs=HAND_PROBS.astype(complex)), "'probs' must be a float array, got"),
        (hand_arrays(probs=None, logits=HAND_PROBS.astype(int)), "'logits' must be a float"),
        (hand_arrays(probs=HAND_PROBS[None]), r"'probs' must have shape \[N, C\] = \(4, 4\), got"),
        (
            hand_arrays(probs=None, topk=np.array([0, 1, 2, 3])),
            r"'topk' must have shape \[N=4, k\]",
        ),
        (
            hand_arrays(probs=None, topk=np.zeros((3, 2), int)),
            "'labels' has 4 entries and 'topk' 3 rows",
        ),
        (hand_arrays(classes=np.array([["a", "b", "c", "d"]])), "'classes' must have 1 dimension"),
        (
            hand_arrays(split=np.array([0, 0, 0, 0]), splits=np.array([], dtype=str)),
            "'splits' lists 0 names; give 1 to 127, or drop 'split' and 'splits'",
        ),
        (
            hand_arrays(split=np.zeros(4, int), splits=np.array([f"s{i}" for i in range(128)])),
            "'splits' lists 128 names",
        ),
        (
            hand_arrays(split=np.array([0, 0, 0]), splits=np.array(["train"])),
            r"'split' must have shape \(4,\), got \(3,\)",
        ),
        (hand_arrays(splits=np.array(["train"])), "'split' and 'splits' go together"),
        (
            hand_arrays(split=np.zeros(4), splits=np.array(["train"])),
            "'split' must be an integer array",
        ),
        (
            hand_arrays(groups=np.array([json.dumps({"g": ["a"]})])),
            r"'groups' must have 0 dimension\(s\), got shape \(1,\)",
        ),
        (hand_arrays(groups=np.array(json.dumps({"g": []}))), "group 'g' is empty; list at least"),
        (
            hand_arrays(groups=np.array(json.dumps({"g": ["aa"]}))),
            r"unknown class 'aa' \(did you mean 'a'\?\); valid classes: a, b, c, d",
        ),
        (hand_arrays(groups=np.array(json.dumps({"g": "a"}))), "must be a JSON object"),
        (hand_arrays(unseen=np.array([1, 2])), "'unseen' must be a str array"),
        (hand_arrays(labels=np.array([1, 2, 3, 4])), "these run from 1 to 4: subtract 1"),
    ],
)
def test_more_refusals(tmp_path, arrays, message):
    path = hand_file(tmp_path, **arrays)
    with pytest.raises(PipelineError, match=message) as exc:
        load_predictions(path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_a_misspelt_required_key_gets_the_likely_name(tmp_path):
    path = hand_file(tmp_path, **hand_arrays(labels=None, label=np.array([0, 1, 2, 3])))
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    assert str(exc.value) == (
        f"{path}: missing key 'labels' (keys found: classes, label, probs); did you mean "
        "'labels' (not 'label')?"
    )


def test_fewer_columns_than_classes_point_at_unseen(tmp_path):
    path = hand_file(
        tmp_path, **hand_arrays(probs=HAND_PROBS[:, :3] / HAND_PROBS[:, :3].sum(1)[:, None])
    )
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    assert str(exc.value) == (
        f"{path}: 'probs' must have shape [N, C] = (4, 4), got (4, 3); if the classifier was "
        "trained on fewer classes, name the others in 'unseen'"
    )


# --------------------------------------------------------------------------- check_values


BAD_VALUES = [
    (
        {"probs": np.where(np.arange(4)[:, None] == 3, np.nan, HAND_PROBS)},
        "'probs' row 3 holds NaN",
    ),
    (
        {"probs": np.where(np.arange(4)[:, None] == 3, -HAND_PROBS, HAND_PROBS)},
        "'probs' row 3 has a negative probability",
    ),
    ({"probs": HAND_PROBS * np.array([[1], [1], [1], [2]])}, "'probs' row 3 sums to 2"),
    (
        {"probs": None, "logits": np.where(np.arange(4)[:, None] == 3, -np.inf, HAND_PROBS)},
        "'logits' row 3 holds NaN or inf",
    ),
    (
        {"probs": None, "topk": np.array([[0, 1], [1, 2], [2, 3], [3, -1]])},
        r"'topk' row 3 holds a class index outside \[0, 4\)",
    ),
    (
        {"probs": None, "topk": np.array([[0, 1], [1, 2], [2, 3], [1, 1]])},
        "'topk' row 3 lists a class twice",
    ),
]


@pytest.mark.parametrize("over, message", BAD_VALUES)
def test_check_values_false_defers_the_value_checks_to_blocks(tmp_path, over, message):
    """The header and the small arrays are checked at once; the scores' values only when
    read, in blocks, naming the row by its place in the whole file (here the 2nd block)."""
    path = hand_file(tmp_path, **hand_arrays(**over))
    with pytest.raises(PipelineError, match=message):
        load_predictions(path)
    pred = load_predictions(path, check_values=False)
    blocks = pred.blocks(2)
    next(blocks)  # rows 0 and 1 are fine
    with pytest.raises(PipelineError, match=message) as exc:
        next(blocks)
    assert str(exc.value).startswith(f"{path}: ")


def test_check_values_false_still_checks_the_header(tmp_path):
    path = hand_file(tmp_path, **hand_arrays(probs=HAND_PROBS.astype(np.int32)))
    with pytest.raises(PipelineError, match="'probs' must be a float array, got dtype int32"):
        load_predictions(path, check_values=False)


# ----------------------------------------------------------------- unseen classes' columns

NARROW = HAND_PROBS[:, [0, 1, 3]] / HAND_PROBS[:, [0, 1, 3]].sum(axis=1, keepdims=True)


def test_narrow_probs_come_widened_with_zero_in_the_unseen_column(tmp_path):
    arrays = hand_arrays(probs=NARROW.astype(np.float32), unseen=np.array(["c"]))
    pred = load_predictions(hand_file(tmp_path, **arrays))
    assert pred.unseen == ("c",) and pred.known_only and pred.width == 4
    assert pred.known_ids == [0, 1, 3]
    wide = np.concatenate(list(pred.blocks(3)))
    assert wide.shape == (4, 4) and wide.dtype == np.float32
    np.testing.assert_array_equal(wide[:, 2], 0.0)
    np.testing.assert_array_equal(wide[:, [0, 1, 3]], NARROW.astype(np.float32))


def test_narrow_logits_come_widened_with_minus_inf(tmp_path):
    logits = np.log(NARROW)
    arrays = hand_arrays(probs=None, logits=logits, unseen=np.array(["c"]))
    pred = load_predictions(hand_file(tmp_path, **arrays))
    wide = np.concatenate(list(pred.blocks(4)))
    assert np.isneginf(wide[:, 2]).all()
    np.testing.assert_array_equal(wide[:, [0, 1, 3]], logits)


def test_full_width_probs_with_a_zero_unseen_column(tmp_path):
    full = np.insert(NARROW, 2, 0.0, axis=1)
    arrays = hand_arrays(probs=full, unseen=np.array(["c"]))
    pred = load_predictions(hand_file(tmp_path, **arrays))
    assert pred.unseen == ("c",) and not pred.known_only and pred.width == 4
    np.testing.assert_array_equal(np.concatenate(list(pred.blocks(4))), full)


def test_full_width_probs_that_give_the_unseen_class_a_probability_are_refused(tmp_path):
    """A classifier never trained on 'c' cannot give it probability: such a file is a
    classifier that saw 'c', and reading it as one that did not would be wrong."""
    full = np.insert(NARROW * 0.9, 2, 0.1, axis=1).astype(np.float32)
    path = hand_file(tmp_path, **hand_arrays(probs=full, unseen=np.array(["c"])))
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    assert str(exc.value).startswith(
        f"{path}: 'probs' row 0 gives the unseen class 'c' probability 0.1; a classifier "
        "never trained on a class gives it 0"
    )


def test_full_width_logits_keep_any_finite_value_in_the_unseen_column(tmp_path):
    logits = np.insert(np.log(NARROW), 2, 5.0, axis=1)  # above every known logit: ignored
    path = hand_file(tmp_path, **hand_arrays(probs=None, logits=logits, unseen=np.array(["c"])))
    pred = load_predictions(path)
    np.testing.assert_array_equal(np.concatenate(list(pred.blocks(4))), logits)


@pytest.mark.parametrize("column", [0, 2])  # inside and beyond the top_k the pairs read
def test_a_topk_row_that_holds_an_unseen_class_is_refused_where_it_loads(tmp_path, column):
    topk = np.array([[0, 1, 3], [1, 0, 3], [3, 1, 0], [0, 1, 3]])
    topk[1, column] = 2
    path = hand_file(tmp_path, **hand_arrays(probs=None, topk=topk, unseen=np.array(["c"])))
    with pytest.raises(PipelineError, match=r"'topk' row 1 guesses an unseen class"):
        load_predictions(path)


def test_widened_blocks_are_read_only_like_the_stored_ones(tmp_path):
    arrays = hand_arrays(probs=NARROW.astype(np.float32), unseen=np.array(["c"]))
    for block in load_predictions(hand_file(tmp_path, **arrays)).blocks(2):
        with pytest.raises(ValueError, match="read-only"):
            block[0, 0] = 1.0


def test_a_key_outside_the_contract_is_named_in_a_warning(tmp_path, capsys):
    path = hand_file(tmp_path, **hand_arrays(unseen_classes=np.array(["c"]), ids=np.arange(4)))
    pred = load_predictions(path)
    assert pred.unseen == ()  # ignored, as the warning says
    assert capsys.readouterr().err == (
        f"warning: {path}: ignored key(s) 'ids', 'unseen_classes', not in the contract "
        "('unseen_classes' is not 'unseen': rename it if it was meant)\n"
    )
    load_predictions(hand_file(tmp_path, "plain.npz", **hand_arrays()))
    assert capsys.readouterr().err == ""


def test_a_wrong_width_with_unseen_names_both_shapes(tmp_path):
    arrays = hand_arrays(probs=HAND_PROBS[:, :2] * 2, unseen=np.array(["c"]))
    path = hand_file(tmp_path, **arrays)
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    assert str(exc.value) == (
        f"{path}: 'probs' must have shape [N, C] = (4, 4) (every class's column) or "
        "[N, C - unseen] = (4, 3) (the known classes' columns, in the order of 'classes' "
        "without the 1 unseen), got (4, 2)"
    )


def test_unseen_in_a_file_is_checked_like_train_unseen(tmp_path):
    path = hand_file(tmp_path, **hand_arrays(unseen=np.array(["c", "x"])))
    with pytest.raises(PipelineError) as exc:
        load_predictions(path)
    assert str(exc.value) == (f"{path}: 'unseen' names ['x'], not among the classes (a, b, c, d)")


# --------------------------------------------------------------------------- arrays in memory


def test_arrays_in_memory_give_what_the_file_gives(tmp_path):
    groups = {"g": ["a", "b"]}
    arrays = hand_arrays(split=np.array([0, 1, 0, 1]), splits=np.array(["train", "test"]))
    from_file = load_predictions(hand_file(tmp_path, **arrays, groups=np.array(json.dumps(groups))))
    mine = predictions_from_arrays({**arrays, "groups": groups, "topk": None})  # a dict: fine
    assert mine.path == Path("predictions")
    for name in ("classes", "kind", "width", "splits", "groups", "unseen", "known_only"):
        assert getattr(mine, name) == getattr(from_file, name), name
    np.testing.assert_array_equal(mine.labels, from_file.labels)
    np.testing.assert_array_equal(mine.split, from_file.split)
    np.testing.assert_array_equal(next(mine.blocks(10)), next(from_file.blocks(10)))


@pytest.mark.parametrize("over, message", BAD_VALUES)
def test_arrays_in_memory_have_every_value_checked(over, message):
    with pytest.raises(PipelineError, match=message) as exc:
        predictions_from_arrays(hand_arrays(**over), name="mine")
    assert str(exc.value).startswith("mine: ")


def test_arrays_in_memory_that_are_not_arrays():
    with pytest.raises(PipelineError, match=r"^predictions: 'probs' is not an array \("):
        predictions_from_arrays(hand_arrays(probs=[[0.5, 0.5], [1.0]]))
    with pytest.raises(PipelineError, match="^predictions: 'classes' is an object array"):
        predictions_from_arrays(hand_arrays(classes=np.array(["a", "b", "c", 4], dtype=object)))


# --------------------------------------------------------------------------- groups


def test_parse_groups_and_check_groups_name_their_source():
    classes = ("cat", "dog", "car")
    assert parse_groups("params.yaml", "null", classes) is None
    assert parse_groups("here", '{"pets": ["cat", "dog"]}', classes) == {"pets": ["cat", "dog"]}
    with pytest.raises(PipelineError, match=r"^here: 'groups' is not valid JSON \(Expecting"):
        parse_groups("here", "{", classes)
    with pytest.raises(PipelineError) as exc:
        check_groups("here", {"pets": ["cat", "dgo"]}, classes)
    assert str(exc.value) == (
        "here: group 'pets' names unknown class 'dgo' (did you mean 'dog'?); "
        "valid classes: cat, dog, car"
    )
    many = tuple(f"c{i}" for i in range(25))
    with pytest.raises(PipelineError, match=r"valid classes: c0, .*, c19, \.\.\. \(25 in all\)$"):
        check_groups("here", {"g": ["zzz"]}, many)
