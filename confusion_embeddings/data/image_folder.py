"""The image-folder layout: `train/<class>/<image>` + `test/<class>/<image>`.

Reads: a Source (data/archive.py) in that layout, optionally wrapped in one top-level
folder. Writes: the selected pictures, decoded, straight into memory-mapped .npy files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from confusion_embeddings.core.cli import progress
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data.archive import Source, is_junk
from confusion_embeddings.data.images import IMAGE_EXTS, decode_image
from confusion_embeddings.data.selection import SPLITS, check_classes, subset


@dataclass(frozen=True)
class _Picture:
    rel: str  # path inside the source (what is read)
    order: int  # storage position, to read archives front to back


def _image_folder_layout(src: Source) -> dict[str, dict[str, list[_Picture]]]:
    """{split: {class: pictures sorted by file name}}, classes sorted, after all checks."""
    files = [r for r in src.files if not is_junk(r)]
    dirs = [d for d in src.dirs if not is_junk(d)]
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
    check_classes(str(src.path), {s: {c: len(v) for c, v in layout[s].items()} for s in SPLITS})
    return {
        s: {c: sorted(layout[s][c], key=lambda p: p.rel) for c in sorted(layout[s])} for s in SPLITS
    }


def read_image_folder(
    src: Source, params: dict[str, Any], tmp: Path
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
            keep = subset(len(pics), params["max_per_class"], params["seed"], split, cls)
            rows[split] += [pics[i] for i in keep]
            lab += [ci] * len(keep)
        labels[split] = np.asarray(lab, dtype=np.int32)

    jobs = sorted(
        ((pic.order, split, row) for split in SPLITS for row, pic in enumerate(rows[split])),
    )
    arrays: dict[str, np.ndarray] = {}
    first: tuple[str, tuple[int, ...]] | None = None
    for _, split, row in progress(jobs, "prepare: decode", unit="img"):
        rel = rows[split][row].rel
        where = f"{src.path}: {rel}"
        img = decode_image(src.read(rel), where, params["image_size"])
        if first is None:
            first = (rel, img.shape)
            for s in SPLITS:
                arrays[s] = np.lib.format.open_memmap(
                    tmp / f"{s}_images.npy",
                    mode="w+",
                    dtype=np.uint8,
                    shape=(len(rows[s]), *img.shape),
                )
        elif img.shape != first[1]:
            (h0, w0, _), (h, w, _) = first[1], img.shape
            raise PipelineError(
                f"{where}: picture is {w}x{h} but {first[0]} is {w0}x{h0}; set "
                "prepare.image_size in params.yaml to resize all pictures to one size"
            )
        arrays[split][row] = img
    for arr in arrays.values():
        arr.flush()  # type: ignore[attr-defined]
    assert first is not None
    shape = first[1]
    return classes, labels, (shape[0], shape[1], shape[2])
