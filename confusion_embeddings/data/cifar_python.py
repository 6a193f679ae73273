"""The official CIFAR-10 / CIFAR-100 python tarballs, unpickled with a whitelist.

Reads: `cifar-10-batches-py/...` or `cifar-100-python/...` members of a Source. Writes the
selected pictures as memory-mapped .npy files; CIFAR-100's coarse classes become `groups`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from confusion_embeddings.core.cli import progress
from confusion_embeddings.core.errors import PipelineError, first_line
from confusion_embeddings.data.archive import Source
from confusion_embeddings.data.selection import SPLITS, check_classes, subset

CIFAR_SIDE = 32


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the plain containers and numpy arrays that the CIFAR files hold.

    A pickle can name any importable callable (os.system, subprocess...) and have it
    called while loading; find_class is where such names come in, so it is a whitelist.
    """

    _reconstruct = np.empty(0).__reduce__()[0]  # numpy's array rebuild function
    _BUILTINS = {
        "set": set,
        "frozenset": frozenset,
        "bytearray": bytearray,
        "complex": complex,
        "slice": slice,
    }

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


def _load_pickle(src: Source, rel: str) -> dict[Any, Any]:
    where = f"{src.path}: {rel}"
    try:
        obj = _RestrictedUnpickler(src.read(rel), where).load()
    except PipelineError:
        raise
    except Exception as exc:
        detail = first_line(exc)
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
    field = _field(d, key, where)  # its own message where the key is missing
    try:
        raw = np.asarray(field)
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
    if (
        not isinstance(raw, np.ndarray)
        or raw.dtype != np.uint8
        or raw.ndim != 2
        or raw.shape[1] != 3 * side * side
    ):
        desc = f"{raw.dtype} {raw.shape}" if isinstance(raw, np.ndarray) else type(raw).__name__
        raise PipelineError(f"{where}: 'data' must be uint8 [N, {3 * side * side}], found {desc}")
    return raw.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # CHW rows -> NHWC


def _read_cifar(
    src: Source, fmt: str, prefix: str
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
        members = {
            "train": [member(f"data_batch_{i}") for i in range(1, 6)],
            "test": [member("test_batch")],
        }
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


def write_cifar(
    src: Source, fmt: str, prefix: str, params: dict[str, Any], tmp: Path
) -> tuple[list[str], dict[str, np.ndarray], tuple[int, int, int], dict[str, list[str]] | None]:
    classes, data, groups = _read_cifar(src, fmt, prefix)
    counts = {s: {c: int((data[s][1] == i).sum()) for i, c in enumerate(classes)} for s in SPLITS}
    check_classes(str(src.path), counts)
    size = params["image_size"]
    labels: dict[str, np.ndarray] = {}
    shape = (size or CIFAR_SIDE, size or CIFAR_SIDE, 3)
    for split in SPLITS:
        pix, lab = data[split]
        rows: list[int] = []
        for ci, cls in enumerate(classes):
            idx = np.flatnonzero(lab == ci)  # file order within the class
            keep = subset(len(idx), params["max_per_class"], params["seed"], split, cls)
            rows += idx[keep].tolist()
        out = np.lib.format.open_memmap(
            tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=(len(rows), *shape)
        )
        if size is None or size == CIFAR_SIDE:
            out[:] = pix[rows]
        else:
            for j, r in enumerate(progress(rows, f"prepare: resize {split}", unit="img")):
                img = Image.fromarray(np.ascontiguousarray(pix[r]))
                out[j] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
        out.flush()
        labels[split] = lab[rows].astype(np.int32)
    return classes, labels, shape, groups
