"""Tiny synthetic datasets for tests: image-folder trees and their archives.

Plain functions (not fixtures) so that any test module can import them:
`from helpers import make_image_folder, make_dataset, make_tar_gz`.
The pictures are class-dependent (own colour and stripe direction per class, plus noise),
so a small CNN can learn them in a few steps.
"""

from __future__ import annotations

import colorsys
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def class_picture(
    class_index: int, num_classes: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """One uint8 [H, W, 3] picture: the class's colour and stripe angle, plus noise."""
    h, w = size
    colour = np.array(colorsys.hsv_to_rgb(class_index / max(num_classes, 1), 0.8, 0.9)) * 255
    angle = np.pi * class_index / max(num_classes, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 6)
    img = 0.7 * colour + 50 * stripes[..., None] + rng.normal(0, 15, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    classes: list[str],
    per_class: dict[str, int] | int,
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
    ext: str = "png",
) -> Path:
    """Write `root/<class>/NNNN.<ext>` (one split) and return root.

    per_class: pictures per class, or a {class: count} dict (0 makes an empty folder).
    size: (height, width). Call it for root/"train" and root/"test" (or use make_dataset).
    """
    root = Path(root)
    for ci, cls in enumerate(classes):
        n = per_class if isinstance(per_class, int) else per_class[cls]
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, ci])
        for i in range(n):
            pixels = class_picture(ci, len(classes), size, rng)
            Image.fromarray(pixels).save(folder / f"{i:04d}.{ext}")
    return root


def make_dataset(
    root: Path,
    classes: list[str],
    train: dict[str, int] | int = 4,
    test: dict[str, int] | int = 2,
    **kwargs,
) -> Path:
    """Write `root/train/<class>/...` and `root/test/<class>/...`; return root."""
    seed = kwargs.pop("seed", 0)
    make_image_folder(Path(root) / "train", classes, train, seed=seed, **kwargs)
    make_image_folder(Path(root) / "test", classes, test, seed=seed + 1000, **kwargs)
    return Path(root)


def make_tar_gz(src_dir: Path, dst: Path) -> Path:
    """Pack the contents of src_dir (not the folder itself) as a .tar.gz at dst."""
    src_dir, dst = Path(src_dir), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w:gz") as tar:
        for child in sorted(src_dir.iterdir()):
            tar.add(child, arcname=child.name)
    return dst


def make_cifar_tarball(
    dst: Path,
    kind: str = "cifar-10",
    classes: list[str] | None = None,
    coarse: dict[str, list[str]] | None = None,
    train_per_class: int = 5,
    test_per_class: int = 2,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a small fake of the official CIFAR-10/100 python tarball at dst.

    Same member names and pickle layout as the real files (dicts with bytes keys, uint8
    [N, 3072] CHW rows, protocol 2), so numpy's array reconstruction is exercised.
    Returns {split: (data [N, 3072], fine labels [N])} in file order.
    kind="cifar-100" needs `coarse` = {coarse name: [fine names]}; classes then default to
    the fine names in the order given.
    """
    import io
    import pickle

    if kind == "cifar-100":
        assert coarse is not None
        classes = classes or [f for group in coarse.values() for f in group]
        coarse_names = list(coarse)
        coarse_of = {f: coarse_names.index(g) for g, fs in coarse.items() for f in fs}
    classes = classes or ["zebra", "apple", "mango"]
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(len(classes)), per))
        data = np.stack([
            class_picture(int(y), len(classes), (32, 32), rng).transpose(2, 0, 1).reshape(-1)
            for y in labels
        ])
        out[split] = (data, labels)

    members: dict[str, object] = {}
    if kind == "cifar-10":
        base = "cifar-10-batches-py/"
        members[base + "batches.meta"] = {
            b"label_names": [c.encode() for c in classes], b"num_vis": 3072,
        }
        data, labels = out["train"]
        for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
            members[base + f"data_batch_{i}"] = {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": labels[part].tolist(),
                b"data": data[part],
                b"filenames": [f"{j}.png".encode() for j in part],
            }
        data, labels = out["test"]
        members[base + "test_batch"] = {
            b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(), b"data": data,
        }
    else:
        base = "cifar-100-python/"
        members[base + "meta"] = {
            b"fine_label_names": [c.encode() for c in classes],
            b"coarse_label_names": [c.encode() for c in coarse_names],
        }
        for split in ("train", "test"):
            data, labels = out[split]
            members[base + split] = {
                b"fine_labels": labels.tolist(),
                b"coarse_labels": [coarse_of[classes[y]] for y in labels],
                b"data": data,
            }
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dst, "w:gz") as tar:
        for name, obj in members.items():
            blob = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return out


def make_prepared(
    out: Path, num_classes: int = 4, train: int = 32, test: int = 8,
    size: tuple[int, int] = (16, 16), seed: int = 0,
) -> Path:
    """Write a tiny `data/prepared/` directly (what the prepare stage would write)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes = [f"class{i}" for i in range(num_classes)]
    for split, per_class in (("train", train), ("test", test)):
        rng = np.random.default_rng([seed, len(split)])
        labels = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
        images = np.stack([class_picture(int(c), num_classes, size, rng) for c in labels])
        np.save(out / f"{split}_images.npy", images)
        np.save(out / f"{split}_labels.npy", labels)
    meta = {"source_format": "image-folder", "classes": classes,
            "splits": {"train": train * num_classes, "test": test * num_classes},
            "image_shape": [*size, 3], "groups": None}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def tar_with(dst: Path, src: Path | None, extra: list[tuple[tarfile.TarInfo, bytes]],
             mode: str = "w") -> Path:
    """A tar of src's contents plus hand-made (possibly hostile) members; `mode` "w:gz"
    compresses it."""
    with tarfile.open(dst, mode) as tar:
        if src is not None:
            for child in sorted(src.iterdir()):
                tar.add(child, arcname=child.name)
        for info, blob in extra:
            info.size = len(blob) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(blob) if info.isreg() else None)
    return dst


def xla_conv(x, w):
    """'SAME' stride-1 convolution (NHWC input, HWIO kernel) written straight against XLA:
    the reference the project's own convolutions (stages/model.py, stages/onednn.py) are
    tested against."""
    from jax import lax

    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
