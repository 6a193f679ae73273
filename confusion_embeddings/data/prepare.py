"""From a raw picture collection to the prepared arrays every later stage loads.

Reads: a folder or archive (data/archive.py) in the image-folder layout
(data/image_folder.py) or an official CIFAR-10/100 python tarball (data/cifar_python.py);
the format is detected from the member names, never from the file name.
Writes: a directory, replaced atomically (layout: data/prepared.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from confusion_embeddings.config.prepare import SCHEMA
from confusion_embeddings.core.files import atomic_dir, write_json
from confusion_embeddings.core.params import validate_section
from confusion_embeddings.data.archive import Source, is_junk, open_source
from confusion_embeddings.data.cifar_python import write_cifar
from confusion_embeddings.data.image_folder import read_image_folder
from confusion_embeddings.data.selection import SPLITS


def detect_format(src: Source) -> tuple[str, str]:
    """(format, member prefix) from the member names; never from the file name."""
    for rel in src.files:
        parts = rel.split("/")
        if len(parts) >= 2 and not is_junk(rel):
            if parts[-2:] == ["cifar-10-batches-py", "batches.meta"]:
                return "cifar-10-python", "/".join(parts[:-1]) + "/"
            if parts[-2:] == ["cifar-100-python", "meta"]:
                return "cifar-100-python", "/".join(parts[:-1]) + "/"
    return "image-folder", ""


def prepare(source: str | Path, out_dir: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """Read `source`, write the arrays and meta.json to `out_dir` atomically; return the
    headline figures (format, class count, image shape, pictures per split)."""
    params = validate_section("prepare", params, SCHEMA)
    source, out_dir = Path(source), Path(out_dir)
    with open_source(source) as src, atomic_dir(out_dir) as tmp:
        fmt, prefix = detect_format(src)
        groups = None
        if fmt == "image-folder":
            classes, labels, shape = read_image_folder(src, params, tmp)
        else:
            classes, labels, shape, groups = write_cifar(src, fmt, prefix, params, tmp)
        for split in SPLITS:
            np.save(tmp / f"{split}_labels.npy", labels[split])
        counts = {s: int(len(labels[s])) for s in SPLITS}
        per_class = {
            s: {c: int((labels[s] == i).sum()) for i, c in enumerate(classes)} for s in SPLITS
        }
        write_json(
            tmp / "meta.json",
            {
                "source_format": fmt,
                "classes": classes,
                "splits": counts,
                "image_shape": list(shape),
                "groups": groups,
                "per_class": per_class,
            },
        )
    return {"format": fmt, "classes": len(classes), "image_shape": list(shape), "pictures": counts}
