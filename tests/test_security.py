"""Hostile inputs: nothing runs, nothing is written outside the output folder.

tests/test_prepare.py already checks that prepare() refuses each of these with a clear
message. Here every case goes through the stage's command line (`run_main(main)`, exit code
2) inside a scratch folder nested a few levels deep, and the whole temporary tree, plus the
listing of its parent, is compared before and after: a refused input must leave no file
anywhere, and an accepted one only the stage's declared outputs.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from confusion_embeddings.core.cli import run_main
from stages import pairs as pairs_stage
from stages import prepare as prep

from helpers import (
    make_cifar_tarball,
    make_dataset,
    make_tar_gz,
    png_bomb,
    stage_argv,
    stage_options,
    tar_with,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- harness


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under folder: files and links as (size, mtime_ns), folders as (-1, 0)."""
    out = {}
    for p in folder.rglob("*"):
        st = p.lstat()
        is_dir = p.is_dir() and not p.is_symlink()
        out[str(p.relative_to(folder))] = (-1, 0) if is_dir else (st.st_size, st.st_mtime_ns)
    return out


class Sandbox:
    """tmp/a/b/work as the working directory: `../../x` from the output lands inside tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.work = tmp / "a" / "b" / "work"
        self.work.mkdir(parents=True)
        self.marker = tmp / "pwned"

    def snapshot(self) -> tuple[dict, list[str]]:
        return tree(self.tmp), sorted(os.listdir(self.tmp.parent))

    def prepare_refuses(self, source: Path, *fragments: str, capsys) -> str:
        """Run the prepare stage on source; it must exit 2 and write nothing anywhere."""
        argv = [
            *stage_argv(
                "prepare",
                source=source,
                out=self.work / "data" / "prepared",
                metrics=self.work / "metrics" / "prepare.json",
                timings=self.work / "reports" / "timings" / "prepare.json",
            ),
            "--params",
            str(self.work / "params.yaml"),
        ]
        (self.work / "params.yaml").write_text("prepare: {}\n")
        before = self.snapshot()
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_main(lambda: prep.main(argv))
        err = capsys.readouterr().err
        assert exc.value.code == 2, err
        for fragment in fragments:
            assert fragment in err, (fragment, err)
        (files, parent) = self.snapshot()
        assert parent == before[1], "something was written next to the temporary folder"
        # The output's parent folder may have been made (empty) before the input was found
        # bad; nothing else may appear or change.
        allowed = {str((self.work / "data").relative_to(self.tmp))}
        assert set(files) - set(before[0]) <= allowed, set(files) - set(before[0])
        assert {k: v for k, v in files.items() if k not in allowed} == before[0]
        assert not any(list((self.tmp / p).iterdir()) for p in allowed if (self.tmp / p).exists())
        assert not self.marker.exists(), "the payload ran"
        return err


@pytest.fixture
def box(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_dataset(tmp_path / "src", ["ant", "bee"], train=2, test=1, size=(8, 8))


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- pickles


class Gadget:
    """Unpickling this calls `fn(*args)`: the classic pickle code-execution payload."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path) -> dict[str, object]:
    touch = f"touch {marker}"
    return {
        "os.system": Gadget(os.system, touch),
        "subprocess.call": Gadget(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": Gadget(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": Gadget(eval, f"open({str(marker)!r}, 'w')"),
    }


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.exec", "builtins.eval"])
@pytest.mark.parametrize("member", ["batches.meta", "data_batch_3"])
def test_pickle_payload_never_runs(box, capsys, name, member):
    good = box.tmp / "good.tar.gz"
    make_cifar_tarball(good, "cifar-10", train_per_class=1, test_per_class=1)
    gadget = payloads(box.marker)[name]
    evil = pickle.dumps({b"label_names": gadget, b"data": gadget, b"labels": [0]}, protocol=2)
    bad = box.tmp / "evil.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            blob = evil if m.name.endswith(member) else src.extractfile(m).read()
            m.size = len(blob)
            dst.addfile(m, io.BytesIO(blob))
    good.unlink()
    box.prepare_refuses(bad, member, "refusing to unpickle", capsys=capsys)


def test_pickled_object_array_in_predictions_never_runs(box, monkeypatch, capsys):
    """An .npz whose `classes` is an object array pickling os.system: np.load must refuse
    it (allow_pickle=False) before anything is unpickled."""
    # The first classifier's file in the folder the pairs stage reads (dvc.yaml's --seeds).
    folder = box.work / "predictions"
    folder.mkdir()
    first = stage_options("pairs")["--seeds"].split()[0]
    path = folder / f"seed_{first}.npz"
    evil = np.array([Gadget(os.system, f"touch {box.marker}"), "b"], dtype=object)
    np.savez(
        path,
        labels=np.array([0, 1]),
        classes=evil,
        probs=np.array([[0.6, 0.4], [0.3, 0.7]], np.float32),
    )
    (box.work / "params.yaml").write_text("pairs:\n  top_k: 1\n")
    monkeypatch.chdir(box.work)
    pattern = folder / PurePosixPath(stage_options("pairs")["--predictions"]).name
    monkeypatch.setattr(sys, "argv", ["pairs", *stage_argv("pairs", predictions=pattern)])
    before = box.snapshot()
    with pytest.raises(SystemExit) as exc:
        run_main(pairs_stage.main)
    assert exc.value.code == 2
    assert "'classes' is an object array" in capsys.readouterr().err
    assert box.snapshot() == before and not box.marker.exists()


# --------------------------------------------------------------------------- path traversal


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("mode", ["w", "w:gz"])
@pytest.mark.parametrize(
    "name, fragment",
    [
        ("../../x", "'..'"),
        ("../../x.png", "'..'"),
        ("train/ant/../../../../x.png", "'..'"),
        ("..\\..\\x.png", "'..'"),
        ("/tmp/x.png", "absolute path"),
    ],
)
def test_tar_path_traversal(box, folder, capsys, mode, name, fragment):
    archive = tar_with(box.tmp / "t.tar", folder, [(_member(name), png_bytes())], mode)
    box.prepare_refuses(archive, name, fragment, capsys=capsys)
    assert not (box.tmp / "x").exists() and not (box.tmp / "a" / "x.png").exists()


@pytest.mark.parametrize(
    "name, fragment",
    [("../../x.png", "'..'"), ("/tmp/x.png", "absolute path"), ("C:/x.png", "absolute path")],
)
def test_zip_path_traversal(box, folder, capsys, name, fragment):
    archive = box.tmp / "z.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f.relative_to(folder).as_posix())
        zf.writestr(name, png_bytes())
    box.prepare_refuses(archive, name, fragment, capsys=capsys)


# --------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.parametrize("name", ["train/ant/p.png", "train/evil"])
def test_tar_links_to_etc_passwd(box, folder, capsys, kind, name):
    archive = tar_with(box.tmp / "t.tar", folder, [(_member(name, kind, "/etc/passwd"), b"")])
    box.prepare_refuses(archive, name, "link", "/etc/passwd", capsys=capsys)


def test_zip_symlink_to_etc_passwd(box, folder, capsys):
    archive = box.tmp / "z.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f.relative_to(folder).as_posix())
        link = zipfile.ZipInfo("train/ant/passwd.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    box.prepare_refuses(archive, "train/ant/passwd.png", "symlink", capsys=capsys)


@pytest.mark.parametrize(
    "target, link",
    [("/etc/passwd", "train/ant/zz.png"), ("/etc", "train/etc"), ("/etc", "test/bee/etc")],
)
def test_folder_symlinks_out_of_the_source(box, folder, capsys, target, link):
    (folder / link).symlink_to(target)
    box.prepare_refuses(folder, link, "outside the source folder", capsys=capsys)


def test_output_symlink_is_replaced_not_followed(box, folder):
    """A pre-existing output path that is a symlink to a folder elsewhere: the stage
    replaces the link; the folder it pointed to is left exactly as it was."""
    victim = box.tmp / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    out = box.work / "data" / "prepared"
    out.parent.mkdir(parents=True)
    out.symlink_to(victim, target_is_directory=True)
    before = tree(victim)
    prep.main(
        [
            *stage_argv(
                "prepare",
                source=folder,
                out=out,
                metrics=box.work / "metrics" / "prepare.json",
                timings=box.work / "reports" / "timings" / "prepare.json",
            ),
            "--params",
            str(ROOT / "params.yaml"),
        ]
    )
    assert not out.is_symlink() and (out / "meta.json").exists()
    assert tree(victim) == before and (victim / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(out.parent)) == ["prepared"]  # no temporary sibling left


# --------------------------------------------------------------------------- bombs


@pytest.mark.parametrize(
    "width, height, complete, fragment",
    [
        (5000, 5000, True, "above the limit"),  # under PIL's own limit, over the stage's
        (20000, 20000, True, "decompression bomb"),  # over PIL's: refused on open
        (2**31 - 1, 1, False, "decompression bomb"),
    ],
)
def test_decompression_bomb_pictures(box, folder, capsys, width, height, complete, fragment):
    bomb = png_bomb(width, height, complete)
    archive = tar_with(
        box.tmp / "t.tar.gz", folder, [(_member("train/ant/bomb.png"), bomb)], "w:gz"
    )
    assert archive.stat().st_size < 10_000
    box.prepare_refuses(archive, "train/ant/bomb.png", fragment, capsys=capsys)


def test_bomb_refused_from_the_header_with_little_memory(tmp_path):
    """A complete 12000x12000 PNG (about 20 KB, 144 M pixels, under PIL's own bomb limit):
    refused from its header in a fresh process whose peak memory stays far below what
    decoding would take (144 MB as 1-bit, 432 MB as RGB)."""
    src = make_dataset(tmp_path / "src", ["ant", "bee"], train=1, test=1, size=(8, 8))
    (src / "train" / "ant" / "bomb.png").write_bytes(png_bomb(12000, 12000))
    make_tar_gz(src, tmp_path / "bomb.tar.gz")
    # VmHWM (peak resident memory of this process image) rather than ru_maxrss, which Linux
    # carries over from the forking parent, here a pytest process holding jax.
    script = (
        "import re, sys\n"
        "from confusion_embeddings.core.cli import run_main\n"
        "from stages.prepare import main\n"
        "try:\n"
        "    run_main(lambda: main(sys.argv[1:]))\n"
        "finally:\n"
        "    hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
        "    print('maxrss_kb', hwm, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            *stage_argv(
                "prepare",
                source=tmp_path / "bomb.tar.gz",
                out=tmp_path / "out",
                metrics=tmp_path / "m.json",
                timings=tmp_path / "t.json",
            ),
            "--params",
            str(ROOT / "params.yaml"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "decompression bomb" in proc.stderr
    maxrss_mb = int(proc.stderr.split("maxrss_kb")[1].split()[0]) / 1024
    assert maxrss_mb < 300, f"peak memory {maxrss_mb:.0f} MB"
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()
    assert not (tmp_path / "t.json").exists()
