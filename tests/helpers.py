"""Tiny synthetic datasets for tests, and the stages' command lines as dvc.yaml gives them.

Plain functions (not fixtures) so that any test module can import them:
`from helpers import make_image_folder, make_dataset, make_tar_gz, stage_argv`.
The pictures are class-dependent (own colour and stripe direction per class, plus noise),
so a small CNN can learn them in a few steps.

Tests that run a stage take its command line from dvc.yaml (`stage_argv`), so that a path
renamed or an argument added there reaches every test; a scratch project for a stage run
in-process or as `python -m stages.<name>` is `scratch_project` (dvc.yaml + params.yaml).
"""

from __future__ import annotations

import colorsys
import contextlib
import difflib
import importlib
import io
import os
import pickle
import shlex
import shutil
import struct
import sys
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from confusion_embeddings.core.cli import _PLACEHOLDER, _lookup

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare", "train", "predict", "pairs", "embed", "resample", "evaluate"]
# Where each stage's params schema lives (the stage module imports it, or its config class,
# from there).
SCHEMA_MODULES = {
    "prepare": "confusion_embeddings.config.prepare",
    "train": "confusion_embeddings.config.train",
    "predict": "confusion_embeddings.config.predict",
    "pairs": "confusion_embeddings.config.pairs",
    "embed": "confusion_embeddings.config.embed",
    "resample": "confusion_embeddings.config.resample",
    "evaluate": "confusion_embeddings.config.evaluate",
}
# A network and a schedule small enough to train in seconds (train section overrides).
TINY_TRAIN = {
    "epochs": 2,
    "batch_size": 16,
    "eval_batch_size": 16,
    "stem_width": 8,
    "widths": [8, 16],
    "lr": 0.01,
}


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
        data = np.stack(
            [
                class_picture(int(y), len(classes), (32, 32), rng).transpose(2, 0, 1).reshape(-1)
                for y in labels
            ]
        )
        out[split] = (data, labels)

    members: dict[str, object] = {}
    if kind == "cifar-10":
        base = "cifar-10-batches-py/"
        members[base + "batches.meta"] = {
            b"label_names": [c.encode() for c in classes],
            b"num_vis": 3072,
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
            b"batch_label": b"testing batch 1 of 1",
            b"labels": labels.tolist(),
            b"data": data,
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
    out: Path,
    num_classes: int = 4,
    train: int = 32,
    test: int = 8,
    size: tuple[int, int] = (16, 16),
    seed: int = 0,
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
    meta = {
        "source_format": "image-folder",
        "classes": classes,
        "splits": {"train": train * num_classes, "test": test * num_classes},
        "image_shape": [*size, 3],
        "groups": None,
        "per_class": {
            split: dict.fromkeys(classes, per_class)
            for split, per_class in (("train", train), ("test", test))
        },
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def cifar_pickle_tar(path: Path, meta: dict, batch: dict | None = None) -> Path:
    """A CIFAR-10 python-version tar whose batches.meta is `meta` and whose six batches are
    all `batch` (two blank pictures, labels 0 and 1, unless given): for prepare's refusals
    of a malformed archive."""
    base = "cifar-10-batches-py/"
    batch = batch or {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    members = {
        base + "batches.meta": meta,
        **{base + f"data_batch_{i}": batch for i in range(1, 6)},
        base + "test_batch": batch,
    }
    extra = []
    for name, obj in members.items():
        extra.append((tarfile.TarInfo(name), pickle.dumps(obj, protocol=2)))
    return tar_with(path, None, extra)


def tar_with(
    dst: Path, src: Path | None, extra: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w"
) -> Path:
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


# --------------------------------------------------------------------------- dvc.yaml


def default_params() -> dict[str, Any]:
    """params.yaml of the project, as a fresh dict of sections."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def dvc_stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml's `stages:` mapping, as written (placeholders not filled in)."""
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _render(value: Any) -> str:
    """A value as DVC writes it into a command: a dict unpacks to `--key value ...` (a list
    value to its items, DVC's default `nargs`), anything else to its string."""
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            items = item if isinstance(item, list) else [item]
            parts.append(" ".join([f"--{key}", *map(str, items)]))
        return " ".join(parts)
    return str(value)


def fill_placeholders(text: str, params: Mapping[str, Any] | None = None, item: Any = None) -> str:
    """`${section.key}` / `${section}` replaced by its value in `params` (default: the
    project's params.yaml) as DVC renders it, `${item}` by `item` (a foreach stage's)."""
    values = {**(default_params() if params is None else params), "item": item}
    # The stages' own parsing of dvc.yaml's placeholders (core/cli.py: stage_deps), with
    # DVC's rendering of a dict on top.
    return _PLACEHOLDER.sub(lambda m: _render(_lookup(m.group(1), values)), text)


def stage_entry(stage: str, params: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """(dvc.yaml entry, foreach item) of `stage`: "train@3" is the foreach stage train's
    entry for item 3; plain "train" means its first item (params `classifiers.seeds`)."""
    name, _, wanted = stage.partition("@")
    entry = dvc_stages()[name]
    if "foreach" not in entry:
        return entry, None
    items = yaml.safe_load(fill_placeholders(entry["foreach"], params))
    item = type(items[0])(wanted) if wanted else items[0]
    return entry["do"], item


def stage_argv(stage: str, params: Mapping[str, Any] | None = None, **paths: str) -> list[str]:
    """The arguments dvc.yaml's `cmd` passes to `python -m stages.<stage>`.

    `${section.key}` placeholders are filled from `params` (a whole params doc; default: the
    project's params.yaml), `${item}` from the stage name ("train@1", or the first seed).
    Keyword arguments replace the value of an option the command already has
    (`model="m2"` replaces `--model`'s value); an option it lacks is an error, so a test
    cannot silently pass an argument dvc.yaml does not.
    """
    entry, item = stage_entry(stage, params)
    cmd = shlex.split(fill_placeholders(entry["cmd"], params, item))
    stage = stage.partition("@")[0]
    head = ["python", "-m", f"stages.{stage}"]
    assert cmd[:3] == head, f"dvc.yaml: stage {stage} does not run {' '.join(head)}: {cmd}"
    args = cmd[3:]
    for name, value in paths.items():
        flag = "--" + name.replace("_", "-")
        assert flag in args, f"dvc.yaml: stage {stage} passes no {flag} ({args})"
        args[args.index(flag) + 1] = str(value)
    return args


def stage_options(stage: str, params: Mapping[str, Any] | None = None) -> dict[str, str]:
    """{option: value} of the stage's dvc.yaml command (an option with several values, such
    as `--seeds 0 1 2`, maps to them joined by spaces)."""
    args = stage_argv(stage, params)
    options: dict[str, list[str]] = {}
    for arg in args:
        if arg.startswith("--"):
            options[arg] = []
        else:
            assert options, args
            options[list(options)[-1]].append(arg)
    return {flag: " ".join(values) for flag, values in options.items()}


def scratch_project(folder: Path, params: Mapping[str, Any] | str | None = None) -> Path:
    """`folder` made a project the stages can run in: dvc.yaml (the train stage reads its
    dependencies from it) and params.yaml (the project's, or `params`: a dict or text)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    if params is None:
        params = default_params()
    text = params if isinstance(params, str) else yaml.safe_dump(dict(params), sort_keys=False)
    (folder / "params.yaml").write_text(text)
    return folder


def copy_code(dst: Path) -> None:
    """The stages, the library they import and the reference table evaluate reads, as a
    DVC project needs them (no caches)."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("stages", "confusion_embeddings", "references"):
        shutil.copytree(ROOT / package, Path(dst) / package, ignore=ignore)


@contextlib.contextmanager
def argv(stage: str, args: list[str]) -> Iterator[None]:
    """sys.argv as `python -m stages.<stage> args` sees it, for the duration of the block."""
    old = sys.argv
    sys.argv = [f"stages.{stage}", *args]
    try:
        yield
    finally:
        sys.argv = old


def run_in_project(folder: Path, stage: str, **paths: str) -> None:
    """Run the stage's main() in this process as dvc would in the project `folder`: from
    that folder, with dvc.yaml's command line (placeholders from the folder's params.yaml,
    `paths` replacing option values as in `stage_argv`; "train@1" is train's seed 1)."""
    params = yaml.safe_load((Path(folder) / "params.yaml").read_text())
    with contextlib.chdir(folder):
        run_stage_main(stage.partition("@")[0], stage_argv(stage, params, **paths))


def run_stage_main(stage: str, args: list[str]) -> None:
    """Run the stage's main() in this process with `args`; errors propagate (PipelineError,
    SystemExit from argparse) instead of becoming an exit code."""
    module = importlib.import_module(f"stages.{stage}")
    with argv(stage, args):
        module.main()


def save_tiny_model(
    model_dir: Path,
    num_classes: int,
    conv_impl: str = "xla",
    stem_width: int = 4,
    widths: tuple[int, ...] = (4,),
    stem_patch: int = 2,
    tta_flip: bool = False,
    tta_translate: int = 0,
    cpu_devices: int | str = "auto",
) -> Path:
    """An untrained model folder as the train stage writes it (config.json, model.msgpack),
    for tests of the stages that read one."""
    from flax import nnx

    from confusion_embeddings.cnn.checkpoint import save_model
    from confusion_embeddings.cnn.config import RunConfig
    from confusion_embeddings.cnn.conv import ConvChoice
    from confusion_embeddings.cnn.network import CNN
    from confusion_embeddings.config.train import SCHEMA
    from confusion_embeddings.core.params import validate_section

    section = {
        "stem_width": stem_width,
        "widths": list(widths),
        "stem_patch": stem_patch,
        "tta_flip": tta_flip,
        "tta_translate": tta_translate,
        "cpu_devices": cpu_devices,
    }
    run = RunConfig.resolve(
        validate_section("train", section, SCHEMA), 0, num_classes, ConvChoice(conv_impl, "f32")
    )
    _, params, rest = nnx.split(CNN(run.model, rngs=nnx.Rngs(0)), nnx.Param, ...)
    save_model(model_dir, run, (np.zeros(3), np.ones(3)), params, rest)
    return Path(model_dir)


def run_embed_stage(folder: Path, pairs, **section: Any) -> Path:
    """The embed stage as dvc runs it, in a scratch project at `folder` holding `pairs` at
    its --pairs, with params.yaml's embed section updated by `section`; returns its --out."""
    from confusion_embeddings.pairs import write_pairs

    params = default_params()
    params["embed"].update(section)
    scratch_project(folder, params)
    options = stage_options("embed")
    (folder / options["--pairs"]).mkdir(parents=True)
    write_pairs(pairs, folder / options["--pairs"])
    run_in_project(folder, "embed")
    return folder / options["--out"]


def metric_files(folder: Path) -> dict[str, list[str]]:
    """Each metrics file under folder/metrics (by path) and its flattened keys, the way
    `dvc exp show` names its columns (nested keys joined by dots; lists, such as prepare's
    image_shape, get no column)."""

    def flat(node: Any, prefix: str = "") -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from flat(value, f"{prefix}{key}.")
        elif not isinstance(node, list):
            yield prefix[:-1]

    return {
        f.relative_to(folder).as_posix(): list(flat(yaml.safe_load(f.read_text())))
        for f in sorted((folder / "metrics").rglob("*.json"))
    }


def metric_keys(folder: Path) -> set[str]:
    """Every flattened metric key of folder's metrics files."""
    return {key for keys in metric_files(folder).values() for key in keys}


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of the dvc and python commands a test runs: this interpreter's bin
    folder first on PATH (the stages run as `python -m stages.<name>`, and dvc must be the
    venv's), JAX on the CPU, no DVC analytics; `extra` on top."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ["PATH"],
        "JAX_PLATFORMS": "cpu",
        "DVC_NO_ANALYTICS": "1",
        **extra,
    }


# What the train and predict stages print on a CPU without bfloat16 instructions or without
# oneDNN's kernel, before anything else: machine-dependent, so checks of a stage's own
# output set these lines aside.
FALLBACK_WARNINGS = (
    "warning: precision bf16 unavailable",
    "warning: oneDNN convolutions unavailable",
)


def without_fallback_warnings(err: str) -> str:
    """stderr less the lines of FALLBACK_WARNINGS."""
    return "".join(
        line for line in err.splitlines(keepends=True) if not line.startswith(FALLBACK_WARNINGS)
    )


def png_bomb(width: int, height: int, complete: bool = True) -> bytes:
    """A black 1-bit PNG of width x height: tiny on disk, huge once decoded. With
    complete=False only the header is real (for sizes too large to even compress)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if complete:
        rows = zlib.compressobj(9)
        row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
        idat = b"".join(rows.compress(row) for _ in range(height)) + rows.flush()
    else:
        idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_unknown_compression(path: Path) -> Path:
    """Rewrite every header of the zip at `path` to compression method 99 (AES, which
    zipfile cannot read): an npz whose members exist but cannot be decompressed."""
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        at = raw.find(sig)
        while at != -1:
            raw[at + off] = 99
            at = raw.find(sig, at + 1)
    path.write_bytes(bytes(raw))
    return path


def dvc_set_params(path: Path, *overrides: str) -> None:
    """Set values in a params file the way `dvc exp run -S key=value` does: with DVC's own
    code, which parses the file, applies the overrides and writes the whole file again."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, list(overrides))


def changed_lines(before: str, after: str) -> list[str]:
    """The lines a diff of two texts removes ("-...") and adds ("+..."), in order."""
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


# --------------------------------------------------------------------------- evaluate

# The headline figures, the only keys of the metrics file (the tables are plot data).
HEADLINE = [
    "table_reliability",
    "classifiers",
    "interval_halfwidth",
    "nearest_share_min",
    "picture_spread",
    "classifier_spread",
    "classifier_agreement",
    "seed_spread",
    "seed_reliability",
    "spearman_vs_confusion",
    "secondary_vs_confusion",
    "mean_offdiag_cosine",
    "collapsed",
    "noisy",
    "flat_guesses",
    "unstable_ranks",
    "consensus_vs_mean_table",
    "least_stable_dispersion",
    "group_separation",
    "group_nn_agreement",
    "group_ari",
]
# Figures that apply to several classifiers only: left out of the metrics of one.
SEVERAL_CLASSIFIERS = {"classifier_agreement", "classifier_spread"}
# Figures of several runs per classifier (gensim's seeds): the jax engine's table is one fit.
SEVERAL_RUNS = {"seed_spread", "seed_reliability"}
# Figures of the resampling: left out when evaluate was given no replicates.
RESAMPLED = {"table_reliability", "interval_halfwidth", "nearest_share_min", "picture_spread"}


def headline(m: dict, absent: set[str] = frozenset()) -> list[str]:
    """HEADLINE in its order, less the figures that do not apply (left out, never null)."""
    assert None not in m.values(), m
    return [key for key in HEADLINE if key not in absent]


def eval_params(**overrides):
    """The evaluate config: its defaults with `overrides`, validated as params.yaml is."""
    from confusion_embeddings.config.evaluate import EvaluateConfig

    return EvaluateConfig.from_params(overrides)


def resample_and_evaluate(pairs, embedding, bootstrap: int = 20, **overrides):
    """method.py's resample then evaluate, as the two stages run them: `bootstrap` redraws
    (seed 0), the evaluate config's defaults with `overrides`."""
    from confusion_embeddings.config.resample import ResampleConfig
    from confusion_embeddings.embedding.resampling import resample
    from confusion_embeddings.method import evaluate

    replicates = resample(pairs, embedding, ResampleConfig.from_params({"bootstrap": bootstrap}))
    return evaluate(pairs, embedding, replicates, eval_params(**overrides))
