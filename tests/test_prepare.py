"""Tests of the prepare stage (confusion_embeddings/data/, stages/prepare.py): every source
format, the subset and resize knobs, refusals."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from confusion_embeddings.config.prepare import SCHEMA
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import load_params
from confusion_embeddings.data import prepare as prep
from stages import prepare as prepare_stage

from helpers import (
    make_cifar_tarball,
    make_dataset,
    make_image_folder,
    make_tar_gz,
    stage_argv,
    tar_with,
)

CLASSES = ["dog", "ant", "cat"]  # sorted order is ant, cat, dog
SIZE = (8, 8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "src", CLASSES, train=4, test=2, size=SIZE)


def expected(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What the stage should produce, read file by file in class-then-name order."""
    out = {}
    for split in ("train", "test"):
        classes = sorted(p.name for p in (root / split).iterdir())
        imgs, labels = [], []
        for ci, cls in enumerate(classes):
            for f in sorted((root / split / cls).glob("[!.]*")):
                with Image.open(f) as im:
                    imgs.append(np.asarray(im.convert("RGB")))
                labels.append(ci)
        out[split] = (np.stack(imgs), np.asarray(labels, dtype=np.int32))
    return out


def load_out(out: Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    meta = json.loads((out / "meta.json").read_text())
    arrays = {
        s: (np.load(out / f"{s}_images.npy"), np.load(out / f"{s}_labels.npy"))
        for s in ("train", "test")
    }
    return meta, arrays


def png_bytes(size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size[::-1]).save(buf, format="PNG")
    return buf.getvalue()


def assert_fails(source: Path, out: Path, *fragments: str, params: dict | None = None) -> str:
    """prepare() raises a one-line PipelineError naming all fragments and leaves no trace."""
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    with pytest.raises(PipelineError) as err:
        prep.prepare(source, out, params or {})
    msg = str(err.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    after = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert after == before
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
    return msg


# --------------------------------------------------------------------------- formats


def test_image_folder_directory(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    (folder / ".git" / "objects" / "ab" / "cd").mkdir(parents=True)  # hidden: skipped
    (folder / "train" / "ant" / ".DS_Store").write_bytes(b"\0\0")
    metrics = prep.prepare(folder, out, {})
    meta, arrays = load_out(out)
    assert meta == {
        "source_format": "image-folder",
        "classes": ["ant", "cat", "dog"],
        "splits": {"train": 12, "test": 6},
        "image_shape": [8, 8, 3],
        "groups": None,
        "per_class": {
            "train": {"ant": 4, "cat": 4, "dog": 4},
            "test": {"ant": 2, "cat": 2, "dog": 2},
        },
    }
    want = expected(folder)
    for split in ("train", "test"):
        imgs, labels = arrays[split]
        assert imgs.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(imgs, want[split][0])
        np.testing.assert_array_equal(labels, want[split][1])
    # Headline figures only: per-class counts live in meta.json, the wall time in --timings.
    assert metrics == {
        "format": "image-folder",
        "classes": 3,
        "image_shape": [8, 8, 3],
        "pictures": {"train": 12, "test": 6},
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "test_images.npy",
        "test_labels.npy",
        "train_images.npy",
        "train_labels.npy",
    ]


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tgz", "zip", "zip-wrapped", "tar-wrapped"])
def test_archives_match_directory(folder: Path, tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"data.{kind.split('-')[0]}"
    wrapped = kind.endswith("wrapped")
    if kind in ("tar.gz", "tgz"):
        make_tar_gz(folder, archive)
    elif kind.startswith("tar"):
        with tarfile.open(archive, "w") as tar:
            tar.add(folder, arcname="cifar-ish") if wrapped else [
                tar.add(c, arcname=c.name) for c in sorted(folder.iterdir())
            ]
    else:
        with zipfile.ZipFile(archive, "w") as zf:
            for f in sorted(folder.rglob("*")):
                rel = f.relative_to(folder).as_posix()
                zf.write(f, f"wrapper/{rel}" if wrapped else rel)
            zf.writestr("__MACOSX/._junk", b"junk")  # archiver debris is skipped
    prep.prepare(archive, tmp_path / "out", {})
    _, arrays = load_out(tmp_path / "out")
    want = expected(folder)
    for split in ("train", "test"):
        np.testing.assert_array_equal(arrays[split][0], want[split][0])
        np.testing.assert_array_equal(arrays[split][1], want[split][1])


def test_jpeg_and_odd_modes_become_rgb(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", ["a", "b"], train=2, test=1, size=SIZE, ext="jpg")
    Image.new("L", (8, 8), 77).save(src / "train" / "a" / "gray.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(src / "train" / "a" / "rgba.PNG")
    Image.new("P", (8, 8), 3).save(src / "train" / "b" / "pal.gif")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(src / "train" / "b" / "x.bmp")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(src / "train" / "b" / "y.webp", lossless=True)
    prep.prepare(src, tmp_path / "out", {})
    meta, arrays = load_out(tmp_path / "out")
    imgs, labels = arrays["train"]
    assert imgs.shape == (9, 8, 8, 3) and meta["image_shape"] == [8, 8, 3]
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    # a: 0000.jpg 0001.jpg gray.png rgba.PNG; b: 0000.jpg 0001.jpg pal.gif x.bmp y.webp
    assert (imgs[2] == 77).all()
    assert (imgs[3] == [10, 20, 30]).all()
    assert (imgs[-2] == [1, 2, 3]).all() and (imgs[-1] == 9).all()


def test_cifar10_python(tmp_path: Path) -> None:
    raw = make_cifar_tarball(tmp_path / "c10.tar.gz", "cifar-10", ["zebra", "apple", "mango"])
    metrics = prep.prepare(tmp_path / "c10.tar.gz", tmp_path / "out", {})
    meta, arrays = load_out(tmp_path / "out")
    assert meta["source_format"] == metrics["format"] == "cifar-10-python"
    assert meta["classes"] == ["zebra", "apple", "mango"]  # the file's order, not sorted
    assert meta["splits"] == {"train": 15, "test": 6} and meta["groups"] is None
    for split in ("train", "test"):
        data, labels = raw[split]
        order = np.argsort(labels, kind="stable")  # by class, then position in the file
        want = data[order].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(arrays[split][0], want)
        np.testing.assert_array_equal(arrays[split][1], labels[order])
        assert arrays[split][1].dtype == np.int32
    assert meta["per_class"]["train"] == {"zebra": 5, "apple": 5, "mango": 5}
    assert metrics["classes"] == 3 and metrics["pictures"] == {"train": 15, "test": 6}


def test_cifar100_python_groups(tmp_path: Path) -> None:
    coarse = {"vehicles": ["truck", "bus"], "animals": ["cat", "ape"]}
    make_cifar_tarball(
        tmp_path / "weird-name.bin", "cifar-100", coarse=coarse, train_per_class=3, test_per_class=1
    )
    prep.prepare(tmp_path / "weird-name.bin", tmp_path / "out", {"image_size": 16})
    meta, arrays = load_out(tmp_path / "out")
    assert meta["source_format"] == "cifar-100-python"
    assert meta["classes"] == ["truck", "bus", "cat", "ape"]
    assert meta["groups"] == coarse
    assert meta["image_shape"] == [16, 16, 3] and arrays["train"][0].shape == (12, 16, 16, 3)
    assert arrays["train"][1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


# --------------------------------------------------------------------------- knobs


def test_max_per_class_is_balanced_seeded_and_deterministic(tmp_path: Path) -> None:
    src = make_dataset(
        tmp_path / "src", ["a", "b", "c"], train={"a": 10, "b": 10, "c": 2}, test=3, size=(4, 4)
    )
    full = expected(src)
    runs = {}
    for name, seed in (("x", 0), ("y", 0), ("z", 1)):
        prep.prepare(src, tmp_path / name, {"max_per_class": 4, "seed": seed})
        runs[name] = load_out(tmp_path / name)[1]
    imgs, labels = runs["x"]["train"]
    assert np.bincount(labels).tolist() == [4, 4, 2]  # min(n, max_per_class) per class
    assert np.bincount(runs["x"]["test"][1]).tolist() == [3, 3, 3]
    for split in ("train", "test"):
        for i in range(2):
            np.testing.assert_array_equal(runs["x"][split][i], runs["y"][split][i])
    assert not np.array_equal(runs["x"]["train"][0], runs["z"]["train"][0])
    # a subset of the original rows, still in class-then-name order
    rows = [int(np.flatnonzero((full["train"][0] == img).all(axis=(1, 2, 3)))[0]) for img in imgs]
    assert rows == sorted(rows) and len(set(rows)) == 10


def test_image_size_resizes_mixed_sizes(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", ["a", "b"], train=1, test=1, size=(8, 8))
    big = tmp_path / "src" / "train" / "b" / "big.png"
    make_image_folder(tmp_path / "tmpbig", ["b"], 1, size=(20, 30))
    shutil.move(tmp_path / "tmpbig" / "b" / "0000.png", big)
    prep.prepare(src, tmp_path / "out", {"image_size": 12})
    meta, arrays = load_out(tmp_path / "out")
    assert meta["image_shape"] == [12, 12, 3]
    assert arrays["train"][0].shape == (3, 12, 12, 3)
    with Image.open(big) as im:
        want = np.asarray(im.resize((12, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(arrays["train"][0][2], want)


def test_main_writes_metrics_and_errors_exit_2(folder: Path, tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  max_per_class: 1\ntrain:\n  anything: 1\n")
    metrics, timings = tmp_path / "metrics" / "prepare.json", tmp_path / "timings" / "prepare.json"
    args = stage_argv(
        "prepare", source=folder, out=tmp_path / "out", metrics=metrics, timings=timings
    )
    prepare_stage.main([*args, "--params", str(params)])
    doc = json.loads(metrics.read_text())
    assert doc["pictures"] == {"train": 3, "test": 3}
    assert list(doc) == ["format", "classes", "image_shape", "pictures"]
    assert doc["classes"] == 3
    seconds = json.loads(timings.read_text())
    assert list(seconds) == ["seconds"] and seconds["seconds"] >= 0
    assert "3 train + 3 test" in capsys.readouterr().out
    metrics.unlink()
    timings.unlink()
    bad = stage_argv(
        "prepare", source=tmp_path / "nope", out=tmp_path / "o2", metrics=metrics, timings=timings
    )
    with pytest.raises(SystemExit) as exc:
        run_main(lambda: prepare_stage.main([*bad, "--params", str(params)]))
    assert exc.value.code == 2
    assert "nope: not found" in capsys.readouterr().err
    assert not metrics.exists() and not timings.exists() and not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("max_per_clas: 3", "did you mean 'max_per_class'"),
        ("max_per_class: 0", "'prepare.max_per_class' = 0 is out of range"),
        ("max_per_class: many", "'prepare.max_per_class' = 'many' has the wrong type"),
        ("image_size: true", "'prepare.image_size' = True has the wrong type"),
        ("image_size: 0", "'prepare.image_size' = 0 is out of range"),
        ("seed: 1.5", "'prepare.seed' = 1.5 has the wrong type"),
        ("seed: -1", "'prepare.seed' = -1 is out of range"),
    ],
)
def test_params_refused(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(f"prepare:\n  {yaml_text}\n")
    with pytest.raises(PipelineError, match=fragment.replace("(", r"\(")):
        load_params("prepare", SCHEMA, path)


def test_params_defaults_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  max_per_class: null\n  image_size: 32\n")
    assert load_params("prepare", SCHEMA, path) == {
        "max_per_class": None,
        "image_size": 32,
        "seed": 0,
    }
    with pytest.raises(PipelineError, match="did you mean 'seed'"):
        prep.prepare(tmp_path / "x", tmp_path / "out", {"sed": 1})


# --------------------------------------------------------------------------- refusals


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    make_cifar_tarball(tmp_path / "good.tar.gz", "cifar-10")
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    with (
        tarfile.open(tmp_path / "good.tar.gz") as good,
        tarfile.open(tmp_path / "bad.tar", "w") as bad,
    ):
        for m in good.getmembers():
            blob = evil if m.name.endswith("data_batch_2") else good.extractfile(m).read()
            m.size = len(blob)
            bad.addfile(m, io.BytesIO(blob))
    msg = assert_fails(
        tmp_path / "bad.tar", tmp_path / "out", "data_batch_2", "refusing to unpickle", "system"
    )
    assert "posix.system" in msg or "nt.system" in msg
    assert not marker.exists()


def test_cifar_incomplete_and_not_a_pickle(tmp_path: Path) -> None:
    info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
    tar_with(tmp_path / "a.tar", None, [(info, b"not a pickle")])
    assert_fails(tmp_path / "a.tar", tmp_path / "out", "batches.meta", "not a readable pickle")
    info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
    tar_with(tmp_path / "b.tar", None, [(info, pickle.dumps({b"label_names": [b"a", b"b"]}, 2))])
    assert_fails(tmp_path / "b.tar", tmp_path / "out", "data_batch_1", "missing")


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    "member, blob, fragments",
    [
        (_member("../../x.png"), png_bytes(), ["../../x.png", "'..'"]),
        (_member("train/ant/../../../x.png"), png_bytes(), ["'..'"]),
        (_member("/tmp/abs.png"), png_bytes(), ["/tmp/abs.png", "absolute"]),
        (
            _member("train/ant/p.png", tarfile.SYMTYPE, "/etc/passwd"),
            b"",
            ["train/ant/p.png", "symlink", "/etc/passwd"],
        ),
        (
            _member("train/ant/h.png", tarfile.LNKTYPE, "train/ant/0000.png"),
            b"",
            ["train/ant/h.png", "hardlink"],
        ),
        (_member("train/ant/fifo", tarfile.FIFOTYPE), b"", ["train/ant/fifo", "not a regular"]),
    ],
)
def test_hostile_tar_members(folder: Path, tmp_path: Path, member, blob, fragments) -> None:
    archive = tar_with(tmp_path / "bad.tar", folder, [(member, blob)])
    assert_fails(archive, tmp_path / "out", str(archive), *fragments)


def test_hostile_zip_members(folder: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("../evil.png", png_bytes())
    assert_fails(tmp_path / "a.zip", tmp_path / "out", "../evil.png", "'..'")
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        link = zipfile.ZipInfo("train/ant/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    assert_fails(tmp_path / "b.zip", tmp_path / "out", "train/ant/link.png", "symlink")


def test_directory_symlinks(folder: Path, tmp_path: Path) -> None:
    inside = folder / "train" / "ant" / "zz_same.png"
    inside.symlink_to(folder / "train" / "ant" / "0000.png")  # inside the tree: fine
    prep.prepare(folder, tmp_path / "ok", {})
    assert load_out(tmp_path / "ok")[1]["train"][0].shape[0] == 13
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes())
    (folder / "train" / "ant" / "zz_out.png").symlink_to(outside)
    assert_fails(folder, tmp_path / "out", "train/ant/zz_out.png", "outside the source")


def test_failure_keeps_previous_output(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    prep.prepare(folder, out, {})
    old = (out / "train_images.npy").read_bytes()
    (folder / "train" / "cat" / "0001.png").write_bytes(b"garbage")
    assert_fails(folder, out, "train/cat/0001.png", "not a readable image")
    assert (out / "train_images.npy").read_bytes() == old


def test_bad_pictures(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jpg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        jpg, format="JPEG"
    )
    bad = folder / "test" / "dog" / "trunc.jpg"
    bad.write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    assert_fails(folder, out, "test/dog/trunc.jpg", "not a readable image")
    bad.write_text("this is text, not a jpeg\n")
    assert_fails(folder, out, "test/dog/trunc.jpg", "not a readable image")
    bad.unlink()
    Image.new("RGB", (9, 8)).save(folder / "test" / "dog" / "wide.png")
    assert_fails(folder, out, "test/dog/wide.png", "9x8", "8x8", "prepare.image_size")
    (folder / "test" / "dog" / "wide.png").unlink()
    (folder / "test" / "dog" / "notes.txt").write_text("hi")
    assert_fails(folder, out, "test/dog/notes.txt", "not a picture")


def test_decompression_bomb(folder: Path, tmp_path: Path) -> None:
    bomb = folder / "train" / "ant" / "bomb.png"
    Image.new("1", (5000, 5000)).save(bomb)  # a few KB on disk, 25 M pixels
    assert bomb.stat().st_size < 100_000
    assert_fails(folder, tmp_path / "out", "train/ant/bomb.png", "5000x5000", "decompression bomb")


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda r: shutil.rmtree(r / "test" / "cat"), ["'cat'", "train but none in test"]),
        (
            lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()],
            ["train/dog", "empty class"],
        ),
        (
            lambda r: [shutil.rmtree(r / s / c) for s in ("train", "test") for c in ("cat", "dog")],
            ["1 class", "['ant']", "at least two"],
        ),
        (lambda r: (r / "test").rename(r / "val"), ["train/ and test/", "['train', 'val']"]),
        (lambda r: (r / "README.md").write_text("x"), ["README.md", "<split>/<class>/<image>"]),
        (lambda r: (r / "train" / "ant" / "sub").mkdir(), ["train/ant/sub/", "inside a class"]),
    ],
)
def test_bad_layouts(folder: Path, tmp_path: Path, mutate, fragments) -> None:
    mutate(folder)
    assert_fails(folder, tmp_path / "out", *fragments)


def test_bad_layout_in_archive(folder: Path, tmp_path: Path) -> None:
    shutil.rmtree(folder / "test" / "ant")
    make_tar_gz(folder, tmp_path / "d.tar.gz")
    assert_fails(tmp_path / "d.tar.gz", tmp_path / "out", "d.tar.gz", "'ant'", "none in test")
    (folder / "test" / "ant").mkdir()
    make_tar_gz(folder, tmp_path / "e.tar.gz")  # holds the folder member test/ant/ only
    assert_fails(tmp_path / "e.tar.gz", tmp_path / "out", "test/ant", "empty class")


def test_missing_and_unknown_sources(tmp_path: Path, monkeypatch) -> None:
    assert_fails(
        tmp_path / "nothing.tar.gz", tmp_path / "out", "nothing.tar.gz", "not found", "--source"
    )
    monkeypatch.chdir(tmp_path)
    assert_fails(
        Path("data/raw/cifar.tar.gz"), tmp_path / "out", "data/raw/cifar.tar.gz", "run `dvc pull`"
    )
    (tmp_path / "notes.txt").write_text("hello")
    assert_fails(tmp_path / "notes.txt", tmp_path / "out", "notes.txt", "unrecognised file type")
    good = tmp_path / "src"
    make_dataset(good, ["a", "b"], train=1, test=1, size=(4, 4))
    make_tar_gz(good, tmp_path / "cut.tar.gz")
    data = (tmp_path / "cut.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    assert_fails(tmp_path / "cut.tar.gz", tmp_path / "out", "cut.tar.gz", "corrupt")
