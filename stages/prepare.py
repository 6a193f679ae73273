"""Stage `prepare`: turn a raw picture collection into uint8 arrays the other stages load.

Reads:
  --source   one of
             * an image-folder tree `train/<class>/<image>` + `test/<class>/<image>`
               (jpg, jpeg, png, bmp, gif, webp), as a directory or a .tar, .tar.gz/.tgz
               or .zip archive, optionally wrapped in one top-level folder;
             * the official CIFAR-10 or CIFAR-100 python tarball
               (`cifar-10-batches-py/...`, `cifar-100-python/...`).
             Archives are read member by member, never extracted to disk; the format is
             detected from the member names, not from the file name.
  --params   only its `prepare:` section (see SCHEMA).
Writes:
  --out      a directory, replaced atomically: `<split>_images.npy` (uint8 [N, H, W, 3],
             NHWC) and `<split>_labels.npy` (int32 [N]) for the splits train and test, and
             `meta.json` (source format, ordered class names, split sizes, image shape,
             CIFAR-100 coarse groups or null). Rows are ordered by class, then file name
             (CIFAR: then position in the file).
  --metrics  JSON: format, class count, image shape, pictures per split and per class,
             wall seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
import stat
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from stages.common import (
    Param,
    PipelineError,
    at_least,
    atomic_dir,
    in_range,
    load_params,
    run_main,
    validate_section,
    write_json,
)

SCHEMA = {
    # Keep at most this many pictures per class and split (a seeded random sample); null = all.
    "max_per_class": Param(int, None, at_least(1), nullable=True),
    # Resize every picture to image_size x image_size (PIL bilinear); null = keep the
    # source's size, which must then be the same for all pictures.
    "image_size": Param(int, None, in_range(1, 4096), nullable=True),
    # Seed of the class-balanced subset drawn when max_per_class is set.
    "seed": Param(int, 0, at_least(0)),
}

SPLITS = ("train", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Formats PIL may parse; a file named .jpg that is really some exotic format is refused
# rather than handed to a rarely used decoder (camera MPO files open through JPEG).
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
# A safety limit, not a knob: a small PNG can claim billions of pixels (a decompression
# bomb); anything above this is refused from its header, before it is decoded.
MAX_PIXELS = 4096 * 4096
# Folders that archivers add and that are no part of the data (macOS resource forks);
# names starting with "." (.DS_Store, ._x.jpg) are skipped as well.
JUNK_DIRS = {"__MACOSX"}
CIFAR_SIDE = 32


# --------------------------------------------------------------------------- sources


def _check_member_name(source: Path, name: str) -> str:
    """Return an archive member's name as a clean relative posix path, or refuse it."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise PipelineError(
            f"{source}: member '{name}' has an absolute path; refusing to read this archive"
        )
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if ".." in parts:
        raise PipelineError(
            f"{source}: member '{name}' contains a '..' component; refusing to read this archive"
        )
    return "/".join(parts)


class _Source:
    """A directory, tar or zip archive seen as {relative posix path: handle} plus folders.

    `files` keeps storage order, so reading in that order streams a compressed tar forward.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, Any] = {}
        self.dirs: set[str] = set()
        self._tar: tarfile.TarFile | None = None
        self._zip: zipfile.ZipFile | None = None
        try:
            if path.is_dir():
                self._list_dir(path, "", 0)
            elif zipfile.is_zipfile(path):
                self._list_zip()
            elif self._is_tar(path):
                self._list_tar()
            else:
                raise PipelineError(
                    f"{path}: unrecognised file type; expected a directory, a .tar, "
                    ".tar.gz/.tgz or .zip archive, or the CIFAR-10/100 python tarball"
                )
        except BaseException:
            self.close()
            raise

    def _is_tar(self, path: Path) -> bool:
        # is_tarfile lets some errors of a cut .gz through (EOFError on a cut gzip header).
        try:
            return tarfile.is_tarfile(path)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise self._corrupt(exc) from None

    # -- listing
    def _list_dir(self, folder: Path, rel: str, depth: int) -> None:
        root = self.path.resolve()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if _is_junk(entry.name):
                continue
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not target.is_relative_to(root):
                    raise PipelineError(
                        f"{self.path}: {sub} is a symlink to {target}, outside the source "
                        "folder; copy the file in instead"
                    )
                if not target.exists():
                    raise PipelineError(f"{self.path}: {sub} is a broken symlink; remove it")
            if entry.is_dir():
                # wrapper/split/class/image is the deepest layout; the bound also keeps a
                # symlink to an ancestor folder from looping forever.
                if depth >= 3:
                    raise PipelineError(
                        f"{self.path}: {sub}/ is nested too deeply; "
                        "expected <split>/<class>/<image>"
                    )
                self.dirs.add(sub)
                self._list_dir(Path(entry.path), sub, depth + 1)
            elif entry.is_file():
                self.files[sub] = Path(entry.path)
            else:
                raise PipelineError(f"{self.path}: {sub} is not a regular file; remove it")

    def _list_tar(self) -> None:
        try:
            self._tar = tarfile.open(self.path, "r:*")
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise self._corrupt(exc) from None
        for m in members:
            name = _check_member_name(self.path, m.name)
            if m.issym() or m.islnk():
                kind = "symlink" if m.issym() else "hardlink"
                raise PipelineError(
                    f"{self.path}: member '{m.name}' is a {kind} (-> {m.linkname}); "
                    "refusing to read this archive; pack real files instead"
                )
            if m.isdir():
                if name:
                    self.dirs.add(name)
            elif m.isreg():
                self.files[name] = m
            else:
                raise PipelineError(
                    f"{self.path}: member '{m.name}' is not a regular file or folder; "
                    "refusing to read this archive"
                )

    def _list_zip(self) -> None:
        try:
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise self._corrupt(exc) from None
        for info in infos:
            name = _check_member_name(self.path, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise PipelineError(
                    f"{self.path}: member '{info.filename}' is a symlink; "
                    "refusing to read this archive; pack real files instead"
                )
            if info.is_dir():
                if name:
                    self.dirs.add(name)
            else:
                self.files[name] = info

    # -- reading
    def read(self, rel: str) -> bytes:
        handle = self.files[rel]
        try:
            if self._tar is not None:
                fh = self._tar.extractfile(handle)
                assert fh is not None  # regular members always have a file object
                return fh.read()
            if self._zip is not None:
                return self._zip.read(handle)
            return handle.read_bytes()
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error,
                RuntimeError) as exc:
            raise self._corrupt(exc, rel) from None

    def _corrupt(self, exc: BaseException, rel: str | None = None) -> PipelineError:
        what = f"{self.path}: {rel}" if rel else str(self.path)
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        return PipelineError(
            f"{what}: cannot read ({type(exc).__name__}: {detail}); the file may be "
            "truncated or corrupt, fetch it again (e.g. `dvc pull --force`)"
        )

    def close(self) -> None:
        for handle in (self._tar, self._zip):
            if handle is not None:
                handle.close()

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_junk(rel: str) -> bool:
    return any(p.startswith(".") or p in JUNK_DIRS for p in rel.split("/"))


def _open_source(source: Path) -> _Source:
    if not source.exists():
        parts = source.absolute().parts
        if any(parts[i : i + 2] == ("data", "raw") for i in range(len(parts) - 1)):
            raise PipelineError(f"{source}: not found; run `dvc pull` to fetch it")
        raise PipelineError(f"{source}: not found; check the --source path")
    return _Source(source)


# --------------------------------------------------------------------------- selection


def _subset(n: int, k: int | None, seed: int, split: str, cls: str) -> list[int]:
    """Indices (ascending) of a seeded random sample of min(n, k) out of n.

    The generator is keyed by split and class name, so adding or removing another class
    does not change which pictures this one keeps.
    """
    if k is None or n <= k:
        return list(range(n))
    rng = np.random.default_rng([seed, zlib.crc32(f"{split}/{cls}".encode())])
    return sorted(int(i) for i in rng.permutation(n)[:k])


def _check_class_name(where: str, name: str) -> None:
    """A class name must be usable as a word downstream: the predictions file and the
    word2vec text format refuse whitespace, and outputs are UTF-8 text."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PipelineError(
            f"{where}: class name {name!r} is not valid UTF-8 text; rename it"
        ) from None
    if not name or any(ch.isspace() for ch in name):
        fixed = "_".join(name.split()) or "a name"
        raise PipelineError(
            f"{where}: class name {name!r} is empty or contains whitespace, which the later "
            f"stages refuse (class names are words); rename it, e.g. to {fixed!r}"
        )


def _check_classes(where: str, per_split: dict[str, dict[str, int]]) -> None:
    """Both splits must have the same classes, each non-empty, and at least two of them."""
    for cls in sorted(set(per_split["train"]) | set(per_split["test"])):
        _check_class_name(where, cls)
    for split in SPLITS:
        for cls, n in per_split[split].items():
            if n == 0:
                raise PipelineError(
                    f"{where}: {split}/{cls} is an empty class; add pictures or remove it"
                )
    train, test = set(per_split["train"]), set(per_split["test"])
    for cls in sorted(train ^ test):
        has, lacks = ("train", "test") if cls in train else ("test", "train")
        raise PipelineError(
            f"{where}: class '{cls}' has pictures in {has} but none in {lacks}; "
            f"add {lacks} pictures or remove the class"
        )
    if len(train) < 2:
        raise PipelineError(
            f"{where}: found {len(train)} class(es) {sorted(train)}; a classifier needs at "
            "least two"
        )


# --------------------------------------------------------------------------- decoding


def decode_image(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """Decode one picture to uint8 RGB [H, W, 3], resized when image_size is set."""
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise PipelineError(
                    f"{where}: image claims {w}x{h} pixels, above the limit of {MAX_PIXELS} "
                    "(possible decompression bomb); remove it or shrink it"
                )
            img.load()  # force the full decode, so that truncated files fail here
            if img.mode != "RGB":
                if img.mode == "P" and "transparency" in img.info:
                    img = img.convert("RGBA")
                img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except PipelineError:
        raise
    except UnidentifiedImageError:
        raise PipelineError(
            f"{where}: not a readable image (no {', '.join(PIL_FORMATS)} data); "
            "replace or delete the file"
        ) from None
    except Image.DecompressionBombError as exc:
        raise PipelineError(
            f"{where}: image too large ({exc}); possible decompression bomb, remove it"
        ) from None
    except Exception as exc:  # any decoder failure means a bad file the user must replace
        detail = (str(exc).splitlines() or [""])[0]
        raise PipelineError(
            f"{where}: not a readable image ({type(exc).__name__}: {detail}); "
            "replace or delete the file"
        ) from None


# --------------------------------------------------------------------------- image folder


@dataclass(frozen=True)
class _Picture:
    rel: str  # path inside the source (what is read)
    order: int  # storage position, to read archives front to back


def _image_folder_layout(src: _Source) -> dict[str, dict[str, list[_Picture]]]:
    """{split: {class: pictures sorted by file name}}, classes sorted, after all checks."""
    files = [r for r in src.files if not _is_junk(r)]
    dirs = [d for d in src.dirs if not _is_junk(d)]
    order = {rel: i for i, rel in enumerate(src.files)}
    strip = ""
    tops = {p.split("/", 1)[0] for p in files + dirs}
    if len(tops) == 1 and not tops & set(SPLITS):
        strip = tops.pop() + "/"
        if any(not f.startswith(strip) for f in files):
            strip = ""  # a lone top-level file, not a wrapper folder

    def inner(p: str) -> str:
        if strip and (p + "/").startswith(strip):
            return p[len(strip) :]
        return p

    for f in files:
        if inner(f).count("/") != 2:
            raise PipelineError(
                f"{src.path}: {f} is not at <split>/<class>/<image>; move or remove it"
            )
    found_splits = {inner(p).split("/", 1)[0] for p in files + dirs if inner(p)}
    if found_splits != set(SPLITS):
        raise PipelineError(
            f"{src.path}: expected exactly the splits train/ and test/ "
            f"(<split>/<class>/<image>), found {sorted(found_splits) or 'nothing'}"
        )
    layout: dict[str, dict[str, list[_Picture]]] = {s: {} for s in SPLITS}
    for d in dirs:
        parts = inner(d).split("/")
        if len(parts) == 2:
            layout[parts[0]].setdefault(parts[1], [])
        elif len(parts) > 2:
            raise PipelineError(
                f"{src.path}: {d}/ is a folder inside a class folder; "
                "expected <split>/<class>/<image>"
            )
    for f in files:
        parts = inner(f).split("/")
        if PurePosixPath(f).suffix.lower() not in IMAGE_EXTS:
            raise PipelineError(
                f"{src.path}: {f} is not a picture (expected one of "
                f"{', '.join(IMAGE_EXTS)}); remove it"
            )
        layout[parts[0]].setdefault(parts[1], []).append(_Picture(f, order[f]))
    _check_classes(str(src.path), {s: {c: len(v) for c, v in layout[s].items()} for s in SPLITS})
    return {
        s: {c: sorted(layout[s][c], key=lambda p: p.rel) for c in sorted(layout[s])}
        for s in SPLITS
    }


def _read_image_folder(
    src: _Source, params: dict[str, Any], tmp: Path
) -> tuple[list[str], dict[str, np.ndarray], tuple[int, int, int]]:
    """Decode the selected pictures straight into memory-mapped .npy files under tmp."""
    layout = _image_folder_layout(src)
    classes = list(layout["train"])
    rows: dict[str, list[_Picture]] = {}
    labels: dict[str, np.ndarray] = {}
    for split in SPLITS:
        rows[split], lab = [], []
        for ci, cls in enumerate(classes):
            pics = layout[split][cls]
            keep = _subset(len(pics), params["max_per_class"], params["seed"], split, cls)
            rows[split] += [pics[i] for i in keep]
            lab += [ci] * len(keep)
        labels[split] = np.asarray(lab, dtype=np.int32)

    jobs = sorted(
        ((pic.order, split, row) for split in SPLITS for row, pic in enumerate(rows[split])),
    )
    arrays: dict[str, np.ndarray] = {}
    first: tuple[str, tuple[int, ...]] | None = None
    bar = tqdm(total=len(jobs), desc="prepare: decode", unit="img", file=sys.stderr,
               disable=None, mininterval=1.0)
    try:
        for _, split, row in jobs:
            rel = rows[split][row].rel
            where = f"{src.path}: {rel}"
            img = decode_image(src.read(rel), where, params["image_size"])
            if first is None:
                first = (rel, img.shape)
                for s in SPLITS:
                    arrays[s] = np.lib.format.open_memmap(
                        tmp / f"{s}_images.npy", mode="w+", dtype=np.uint8,
                        shape=(len(rows[s]), *img.shape),
                    )
            elif img.shape != first[1]:
                (h0, w0, _), (h, w, _) = first[1], img.shape
                raise PipelineError(
                    f"{where}: picture is {w}x{h} but {first[0]} is {w0}x{h0}; set "
                    "prepare.image_size in params.yaml to resize all pictures to one size"
                )
            arrays[split][row] = img
            bar.update()
    finally:
        bar.close()
    for arr in arrays.values():
        arr.flush()  # type: ignore[attr-defined]
    assert first is not None
    shape = first[1]
    return classes, labels, (shape[0], shape[1], shape[2])


# --------------------------------------------------------------------------- CIFAR python


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the plain containers and numpy arrays that the CIFAR files hold.

    A pickle can name any importable callable (os.system, subprocess...) and have it
    called while loading; find_class is where such names come in, so it is a whitelist.
    """

    _reconstruct = np.empty(0).__reduce__()[0]  # numpy's array rebuild function
    _BUILTINS = {"set": set, "frozenset": frozenset, "bytearray": bytearray,
                 "complex": complex, "slice": slice}

    def __init__(self, data: bytes, member: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.member = member

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }:
            return self._reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode  # how protocol-2 pickles written by Python 3 store bytes
        if module in ("builtins", "__builtin__") and name in self._BUILTINS:
            return self._BUILTINS[name]
        raise PipelineError(
            f"{self.member}: refusing to unpickle {module}.{name} (not part of a CIFAR "
            "python file); this file is not the official dataset, do not use it"
        )


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"unexpected _codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def _load_pickle(src: _Source, rel: str) -> dict[Any, Any]:
    where = f"{src.path}: {rel}"
    try:
        obj = _RestrictedUnpickler(src.read(rel), where).load()
    except PipelineError:
        raise
    except Exception as exc:
        detail = (str(exc).splitlines() or [""])[0]
        raise PipelineError(
            f"{where}: not a readable pickle ({type(exc).__name__}: {detail}); "
            "fetch the official tarball again"
        ) from None
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: expected a dict, found {type(obj).__name__}")
    return obj


def _field(d: dict[Any, Any], key: str, where: str) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise PipelineError(f"{where}: missing key '{key}'; is this the official CIFAR tarball?")


def _names(d: dict[Any, Any], key: str, where: str) -> list[str]:
    raw = _field(d, key, where)
    if not isinstance(raw, list) or not all(isinstance(n, (bytes, str)) for n in raw):
        raise PipelineError(f"{where}: '{key}' must be a list of names")
    try:
        names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in raw]
    except UnicodeDecodeError:
        raise PipelineError(f"{where}: '{key}' holds a name that is not UTF-8 text") from None
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise PipelineError(f"{where}: '{key}' lists {twice!r} twice; names must be unique")
    return names


def _labels(d: dict[Any, Any], key: str, where: str, n_rows: int, n_classes: int) -> np.ndarray:
    try:
        raw = np.asarray(_field(d, key, where))
    except (ValueError, TypeError, OverflowError):  # e.g. a ragged list of lists
        raise PipelineError(f"{where}: '{key}' must be {n_rows} integers") from None
    if raw.shape != (n_rows,) or raw.dtype.kind not in "iu":
        raise PipelineError(f"{where}: '{key}' must be {n_rows} integers, found {raw.shape}")
    if n_rows and (raw.min() < 0 or raw.max() >= n_classes):
        raise PipelineError(f"{where}: '{key}' holds labels outside [0, {n_classes})")
    return raw.astype(np.int64)


def _pixels(d: dict[Any, Any], where: str) -> np.ndarray:
    raw = _field(d, "data", where)
    side = CIFAR_SIDE
    if (not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 2
            or raw.shape[1] != 3 * side * side):
        desc = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
        raise PipelineError(f"{where}: 'data' must be uint8 [N, {3 * side * side}], found {desc}")
    return raw.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # CHW rows -> NHWC


def _read_cifar(
    src: _Source, fmt: str, prefix: str
) -> tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]], dict[str, list[str]] | None]:
    """Classes, {split: (NHWC pixels, labels)} in file order, and CIFAR-100's groups."""
    def member(name: str) -> str:
        rel = prefix + name
        if rel not in src.files:
            raise PipelineError(
                f"{src.path}: member '{rel}' is missing; the {fmt} tarball is incomplete, "
                "fetch it again"
            )
        return rel

    if fmt == "cifar-10-python":
        meta_rel = member("batches.meta")
        classes = _names(_load_pickle(src, meta_rel), "label_names", f"{src.path}: {meta_rel}")
        members = {"train": [member(f"data_batch_{i}") for i in range(1, 6)],
                   "test": [member("test_batch")]}
        label_key, groups = "labels", None
    else:
        meta_rel = member("meta")
        meta = _load_pickle(src, meta_rel)
        classes = _names(meta, "fine_label_names", f"{src.path}: {meta_rel}")
        coarse = _names(meta, "coarse_label_names", f"{src.path}: {meta_rel}")
        members = {"train": [member("train")], "test": [member("test")]}
        label_key, groups = "fine_labels", {}
        fine_to_coarse: dict[int, int] = {}

    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        pix, lab = [], []
        for rel in members[split]:
            where = f"{src.path}: {rel}"
            d = _load_pickle(src, rel)
            p = _pixels(d, where)
            y = _labels(d, label_key, where, len(p), len(classes))
            if groups is not None:
                yc = _labels(d, "coarse_labels", where, len(p), len(coarse))
                for f, c in sorted(set(zip(y.tolist(), yc.tolist(), strict=True))):
                    if fine_to_coarse.setdefault(f, c) != c:
                        raise PipelineError(
                            f"{where}: class '{classes[f]}' belongs to two coarse groups "
                            f"('{coarse[fine_to_coarse[f]]}', '{coarse[c]}')"
                        )
            pix.append(p)
            lab.append(y)
        data[split] = (np.concatenate(pix), np.concatenate(lab))
    if groups is not None:
        groups = {
            name: [classes[f] for f in sorted(fine_to_coarse) if fine_to_coarse[f] == c]
            for c, name in enumerate(coarse)
        }
    return classes, data, groups


def _write_cifar(
    src: _Source, fmt: str, prefix: str, params: dict[str, Any], tmp: Path
) -> tuple[list[str], dict[str, np.ndarray], tuple[int, int, int], dict[str, list[str]] | None]:
    classes, data, groups = _read_cifar(src, fmt, prefix)
    counts = {s: {c: int((data[s][1] == i).sum()) for i, c in enumerate(classes)} for s in SPLITS}
    _check_classes(str(src.path), counts)
    size = params["image_size"]
    labels: dict[str, np.ndarray] = {}
    shape = (size or CIFAR_SIDE, size or CIFAR_SIDE, 3)
    for split in SPLITS:
        pix, lab = data[split]
        rows: list[int] = []
        for ci, cls in enumerate(classes):
            idx = np.flatnonzero(lab == ci)  # file order within the class
            keep = _subset(len(idx), params["max_per_class"], params["seed"], split, cls)
            rows += idx[keep].tolist()
        out = np.lib.format.open_memmap(
            tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=(len(rows), *shape)
        )
        if size is None or size == CIFAR_SIDE:
            out[:] = pix[rows]
        else:
            for j, r in enumerate(tqdm(rows, desc=f"prepare: resize {split}", unit="img",
                                       file=sys.stderr, disable=None, mininterval=1.0)):
                img = Image.fromarray(np.ascontiguousarray(pix[r]))
                out[j] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
        out.flush()
        labels[split] = lab[rows].astype(np.int32)
    return classes, labels, shape, groups


# --------------------------------------------------------------------------- the stage


def _detect(src: _Source) -> tuple[str, str]:
    """(format, member prefix) from the member names; never from the file name."""
    for rel in src.files:
        parts = rel.split("/")
        if len(parts) >= 2 and not _is_junk(rel):
            if parts[-2:] == ["cifar-10-batches-py", "batches.meta"]:
                return "cifar-10-python", "/".join(parts[:-1]) + "/"
            if parts[-2:] == ["cifar-100-python", "meta"]:
                return "cifar-100-python", "/".join(parts[:-1]) + "/"
    return "image-folder", ""


def prepare(source: Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Read `source`, write the arrays and meta.json to `out_dir` atomically; return metrics."""
    start = time.perf_counter()
    params = validate_section("prepare", params, SCHEMA)
    source, out_dir = Path(source), Path(out_dir)
    with _open_source(source) as src, atomic_dir(out_dir) as tmp:
        fmt, prefix = _detect(src)
        groups = None
        if fmt == "image-folder":
            classes, labels, shape = _read_image_folder(src, params, tmp)
        else:
            classes, labels, shape, groups = _write_cifar(src, fmt, prefix, params, tmp)
        for split in SPLITS:
            np.save(tmp / f"{split}_labels.npy", labels[split])
        counts = {s: int(len(labels[s])) for s in SPLITS}
        write_json(tmp / "meta.json", {
            "source_format": fmt,
            "classes": classes,
            "splits": counts,
            "image_shape": list(shape),
            "groups": groups,
        })
    seconds = time.perf_counter() - start
    per_class = {
        s: {c: int((labels[s] == i).sum()) for i, c in enumerate(classes)} for s in SPLITS
    }
    print(
        f"prepare: {fmt}, {len(classes)} classes, {counts['train']} train + {counts['test']} "
        f"test pictures of {shape[0]}x{shape[1]} in {seconds:.1f} s -> {out_dir}"
    )
    return {
        "format": fmt,
        "num_classes": len(classes),
        "image_shape": list(shape),
        "pictures": counts,
        "per_class": per_class,
        "seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True, help="folder or archive to read")
    ap.add_argument("--out", type=Path, required=True, help="output folder (replaced)")
    ap.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args(argv)
    params = load_params("prepare", SCHEMA, args.params)
    metrics = prepare(args.source, args.out, params)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run_main(main)
