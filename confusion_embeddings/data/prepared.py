"""Read what the prepare stage wrote (`data/prepared/`), for train and predict.

Layout: `<split>_images.npy` uint8 [N, H, W, 3], `<split>_labels.npy` int32 [N], and
`meta.json` with `classes`, `splits`, `image_shape` and optional `groups`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from confusion_embeddings.core.errors import PipelineError


@dataclass
class Split:
    images: np.ndarray  # uint8 [N, H, W, 3], memory-mapped
    labels: np.ndarray  # int32 [N]


@dataclass
class Prepared:
    classes: list[str]
    splits: dict[str, Split]
    groups: dict[str, list[str]] | None

    @property
    def image_hw(self) -> tuple[int, int]:
        first = next(iter(self.splits.values()))
        return first.images.shape[1], first.images.shape[2]


def load_prepared(path: str | Path, splits: list[str] | None = None) -> Prepared:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise PipelineError(
            f"{meta_file} not found; run the prepare stage first (`dvc repro prepare`)"
        )
    meta = json.loads(meta_file.read_text())
    out: dict[str, Split] = {}
    for name in splits or list(meta["splits"]):
        if name not in meta["splits"]:
            raise PipelineError(f"{path}: no split '{name}' (it has {', '.join(meta['splits'])})")
        images = np.load(path / f"{name}_images.npy", mmap_mode="r")
        labels = np.load(path / f"{name}_labels.npy")
        if images.ndim != 4 or images.shape[0] != labels.shape[0] or images.dtype != np.uint8:
            raise PipelineError(
                f"{path}: {name} images {images.shape} {images.dtype} do not match "
                f"labels {labels.shape}; rerun `dvc repro prepare`"
            )
        out[name] = Split(images, labels.astype(np.int32))
    return Prepared(list(meta["classes"]), out, meta.get("groups"))
