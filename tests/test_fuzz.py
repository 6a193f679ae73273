"""Fuzzing: no input makes the loaders raise anything but PipelineError, or hang.

Targets: the prepare stage's readers (archives, picture files, CIFAR pickles), the
predictions-file validation (confusion_embeddings/predictions.py) and pair extraction
(confusion_embeddings/pairs.py).
Inputs are random bytes, valid files with random bytes flipped / cut / inserted, random
Python objects pickled, and random arrays of random dtypes and shapes.

Hypothesis runs derandomized (the same examples on every run, so CI cannot flake), with a
deadline per example and a pytest-timeout per test as the guard against hangs.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
import shutil
import tarfile
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data import prepare as prep
from confusion_embeddings.data.images import decode_image
from confusion_embeddings.pairs import build_pairs
from confusion_embeddings.predictions import load_predictions

from helpers import make_cifar_tarball, make_dataset, make_tar_gz

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=40,
    deadline=timedelta(seconds=10),  # far above any honest example; a hang trips it
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


# --------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """`seed` with a few random edits: byte flips, a cut, an insertion, or random bytes."""
    how = draw(st.sampled_from(["flip", "cut", "insert", "random"]))
    data = bytearray(seed)
    if how == "random":
        return draw(st.binary(max_size=512))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    if how == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


def assert_clean_failure_or_success(fn, *args) -> object | None:
    """Call fn; a PipelineError must be one line. Anything else propagates (a test failure)."""
    try:
        return fn(*args)
    except PipelineError as exc:
        assert "\n" not in str(exc), str(exc)
        return None


# --------------------------------------------------------------------------- prepare


def _image_bytes(fmt: str, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (6, 5, 3), np.uint8)).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {
    fmt: _image_bytes(fmt, mode)
    for fmt, mode in [
        ("PNG", "RGB"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("WEBP", "RGB"),
    ]
}


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(sorted(IMAGES)), size=st.sampled_from([None, 4]))
def test_decode_image_never_crashes(data, fmt, size):
    blob = data.draw(mutated(IMAGES[fmt]))
    img = assert_clean_failure_or_success(decode_image, blob, "x/y.png", size)
    if img is not None:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        if size is not None:
            assert img.shape[:2] == (size, size)


@functools.cache
def archives() -> dict[str, bytes]:
    """Small valid sources, as bytes: image folders as tar.gz / tar / zip, a CIFAR-10 tarball.

    A cached function rather than a fixture, so that hypothesis does not print it."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        src = make_dataset(tmp / "src", ["ant", "bee"], train=2, test=1, size=(4, 4))
        make_tar_gz(src, tmp / "a.tar.gz")
        with tarfile.open(tmp / "a.tar", "w") as tar:
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name)
        with zipfile.ZipFile(tmp / "a.zip", "w") as zf:
            for f in sorted(src.rglob("*")):
                zf.write(f, f.relative_to(src).as_posix())
        make_cifar_tarball(tmp / "c.tar.gz", "cifar-10", train_per_class=1, test_per_class=1)
        return {n: (tmp / n).read_bytes() for n in ("a.tar.gz", "a.tar", "a.zip", "c.tar.gz")}


def _prepare_must_not_crash(source: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)  # hypothesis reuses tmp_path across examples
    metrics = assert_clean_failure_or_success(prep.prepare, source, out, {})
    if metrics is None:  # failed: nothing written, no temporary folder left behind
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))


@FUZZ
@given(data=st.data())
def test_prepare_survives_damaged_archives(data, tmp_path):
    name = data.draw(st.sampled_from(sorted(archives())))
    source = tmp_path / f"in-{name}"
    source.write_bytes(data.draw(mutated(archives()[name])))
    _prepare_must_not_crash(source, tmp_path / "out")


@FUZZ
@given(data=st.data())
def test_prepare_survives_bad_picture_members(data, tmp_path):
    """A valid image-folder archive in which one picture is fuzzed bytes."""
    fmt = data.draw(st.sampled_from(sorted(IMAGES)))
    blob = data.draw(mutated(IMAGES[fmt]))
    source = tmp_path / "in.tar"
    with tarfile.open(source, "w") as tar:
        for split in ("train", "test"):
            for cls in ("ant", "bee"):
                b = blob if (split, cls) == ("train", "bee") else IMAGES[fmt]
                info = tarfile.TarInfo(f"{split}/{cls}/0.{fmt.lower()}")
                info.size = len(b)
                tar.addfile(info, io.BytesIO(b))
    _prepare_must_not_crash(source, tmp_path / "out")


# Random Python objects of the kinds a pickle may hold (and a CIFAR file does hold).
PY_OBJECTS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.binary(max_size=8)
    | st.text(max_size=8)
    | hnp.arrays(
        st.sampled_from([np.uint8, np.int64, np.float32]),
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=4),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from([b"data", b"labels", b"label_names", "data", b"x"]),
            children,
            max_size=4,
        )
        | st.tuples(children, children)
    ),
    max_leaves=10,
)
CIFAR_MEMBERS = ["batches.meta", "data_batch_1", "data_batch_3", "test_batch"]


def _cifar_members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


@FUZZ
@given(data=st.data())
def test_prepare_survives_bad_pickles(data, tmp_path):
    """A CIFAR-10 tarball in which one member is fuzzed pickle bytes or a random object."""
    members = _cifar_members(archives()["c.tar.gz"])
    target = "cifar-10-batches-py/" + data.draw(st.sampled_from(CIFAR_MEMBERS))
    if data.draw(st.booleans()):
        members[target] = data.draw(mutated(members[target]))
    else:
        obj = data.draw(PY_OBJECTS)
        members[target] = pickle.dumps(obj, protocol=data.draw(st.sampled_from([0, 2, 4, 5])))
    source = tmp_path / "c.tar"
    with tarfile.open(source, "w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    _prepare_must_not_crash(source, tmp_path / "out")


# --------------------------------------------------------------------------- predictions


VALID = {
    "labels": np.array([0, 1, 2, 1]),
    "classes": np.array(["a", "b", "c"]),
    "probs": np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]], np.float32
    ),
    "split": np.array([0, 0, 1, 1], np.int8),
    "splits": np.array(["train", "test"]),
    "groups": np.array(json.dumps({"g": ["a", "b"]})),
}
KEYS = ["labels", "classes", "probs", "logits", "topk", "split", "splits", "groups"]
DTYPES = st.sampled_from(
    [
        np.bool_,
        np.int8,
        np.uint8,
        np.int32,
        np.uint64,
        np.int64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.dtype("U3"),
        np.dtype("S2"),
        np.dtype("M8[s]"),
        np.dtype([("x", np.int32)]),
    ]
)
RANDOM_ARRAYS = DTYPES.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
)


def _stage_reads(path: Path, top_k: int, block: int) -> None:
    """What the pairs stage does with a predictions file: validate, then extract pairs."""
    pred = load_predictions(path, check_values=False)
    pairs = build_pairs(pred, top_k, block)
    assert pairs.true.shape == pairs.guess.shape == (pred.n * top_k,)
    assert ((pairs.guess >= 0) & (pairs.guess < pred.n_classes)).all()


@FUZZ
@given(data=st.data(), top_k=st.integers(1, 3), block=st.integers(1, 8))
def test_predictions_random_arrays(data, top_k, block, tmp_path):
    """Valid files with some keys dropped or replaced by random arrays of random dtypes."""
    arrays = dict(VALID)
    for key in data.draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()) and key in arrays:
            del arrays[key]
        else:
            arrays[key] = data.draw(RANDOM_ARRAYS)
    path = tmp_path / "pred.npz"
    np.savez(path, **arrays)
    assert_clean_failure_or_success(_stage_reads, path, top_k, block)
    assert_clean_failure_or_success(load_predictions, path)


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_predictions_damaged_bytes(data, compressed, tmp_path):
    """A valid .npz with random bytes flipped, cut or inserted (zip headers, CRCs, .npy headers)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **VALID)
    path = tmp_path / "pred.npz"
    path.write_bytes(data.draw(mutated(buf.getvalue())))
    assert_clean_failure_or_success(_stage_reads, path, 2, 3)


# --------------------------------------------------------------------------- pairs


@st.composite
def predictions(draw):
    n = draw(st.integers(1, 12))
    c = draw(st.integers(2, 5))
    kind = draw(st.sampled_from(["probs", "logits", "topk"]))
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    values = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    scores = np.array(
        draw(st.lists(st.lists(values, min_size=c, max_size=c), min_size=n, max_size=n)), np.float32
    )
    if kind == "probs":
        e = np.abs(scores) + 1e-3
        scores = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    elif kind == "topk":
        k = draw(st.integers(1, c))
        scores = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int32)
    return {"labels": labels, "classes": np.array([f"c{i}" for i in range(c)]), kind: scores}


@FUZZ
@given(arrays=predictions(), top_k=st.integers(1, 5), block=st.integers(1, 16))
def test_pair_extraction(arrays, top_k, block, tmp_path):
    """Any valid file: pairs are the top_k best guesses in order, or a clean refusal."""
    path = tmp_path / "pred.npz"
    np.savez(path, **arrays)
    pred = load_predictions(path)
    try:
        pairs = build_pairs(pred, top_k, block)
    except PipelineError as exc:
        assert "pairs.top_k" in str(exc)
        assert top_k >= pred.n_classes or (pred.kind == "topk" and top_k > pred.width)
        return
    guess = pairs.guess.reshape(pred.n, top_k)
    np.testing.assert_array_equal(pairs.true.reshape(pred.n, top_k)[:, 0], arrays["labels"])
    np.testing.assert_array_equal(pairs.rank.reshape(pred.n, top_k)[0], np.arange(1, top_k + 1))
    assert all(len(set(row)) == top_k for row in guess.tolist())
    if pred.kind == "topk":
        np.testing.assert_array_equal(guess, arrays["topk"][:, :top_k])
        assert np.isnan(pairs.prob).all()
        return
    scores = arrays[pred.kind]
    # The chosen classes hold the top_k largest scores, best first (ties in any order).
    chosen = np.take_along_axis(scores, guess, axis=1)
    np.testing.assert_array_equal(chosen, -np.sort(-scores, axis=1)[:, :top_k])
    prob = pairs.prob.reshape(pred.n, top_k)
    assert np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1 + 1e-6).all()
    assert (np.diff(prob, axis=1) <= 1e-6).all()
