"""The tables of docs/reliability.md's "Bad inputs": every bad input run through the real code.

tests/test_reliability_doc.py runs this script in a process of its own (it changes the
working folder, the environment and a module attribute as it goes) and fails when the
doc's tables differ from what it prints; with RELIABILITY_DOC=write it rewrites them:

    RELIABILITY_DOC=write .venv/bin/python -m pytest tests/test_reliability_doc.py

By hand, from the project root: `.venv/bin/python tests/reliability_table.py` prints them.
Each row is an input that was just tried, the message the code gave for it (the path of the
scratch folder removed, long messages shortened in the middle), and the test proving it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # this checkout's packages, after tests/ (the script's folder)
os.environ["JAX_PLATFORMS"] = "cpu"
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError

from dvc_repo import make_repo, run
from helpers import (
    cifar_pickle_tar,
    cli_env,
    make_cifar_tarball,
    make_dataset,
    make_prepared,
    make_tar_gz,
    png_bomb,
    save_tiny_model,
    scratch_project,
    stage_argv,
    stage_options,
    tar_with,
    with_unknown_compression,
    without_fallback_warnings,
)
from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions, write_predictions

TMP = Path(tempfile.mkdtemp(prefix="reldoc-"))
ROWS: list[tuple[str, str, str, str]] = []  # (section, input, message, test)
MAXLEN = 160
BUILDING = "building the oneDNN convolution kernel"


def abbreviate(msg: str) -> str:
    msg = msg.strip().replace(str(TMP) + "/", "").replace(str(TMP), "")
    msg = msg.replace(str(ROOT) + "/", "")
    msg = " / ".join(line for line in msg.splitlines() if line.strip())  # one table row
    msg = msg.replace("|", "\\|")
    if len(msg) > MAXLEN:
        msg = msg[: MAXLEN - 40] + " … " + msg[-35:]
    return msg


def stage_main(stage: str, argv: list[str], params: dict | str, cwd: Path) -> str:
    import importlib

    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "params.yaml").write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    mod = importlib.import_module(f"stages.{stage}")
    old = os.getcwd()
    os.chdir(cwd)
    sys.argv = [stage, *argv]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            run_main(mod.main)
        raise AssertionError(f"{stage} did not fail")
    except SystemExit as exc:
        assert exc.code == 2, (exc.code, err.getvalue())
    finally:
        os.chdir(old)
    # Without what depends on the machine: the line the first use of the oneDNN kernel
    # prints, and the warnings of a CPU without bf16 instructions or without the kernel.
    lines = without_fallback_warnings(err.getvalue()).splitlines(keepends=True)
    return "".join(ln for ln in lines if not ln.startswith(BUILDING)).removeprefix("error: ")


def raises(fn, *args, **kw) -> str:
    try:
        fn(*args, **kw)
    except PipelineError as exc:
        return str(exc)
    raise AssertionError(f"{fn} did not raise")


def row(section, what, msg, test):
    ROWS.append((section, what, abbreviate(msg), test))


DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def params_with(section, key, value, drop=False):
    p = json.loads(json.dumps(DEFAULT))
    if drop:
        del p[section][key]
    else:
        p[section][key] = value
    return p


# The command line of each stage, as dvc.yaml gives it.
STAGES = ("prepare", "train", "predict", "pairs", "embed", "evaluate")
ARGS = {stage: stage_argv(stage) for stage in STAGES}
TP = "tests/test_params.py::"
n = 0


def p_case(stage, key, value, test, what=None, drop=False, cwd=None):
    global n
    n += 1
    msg = stage_main(stage, ARGS[stage], params_with(stage, key, value, drop), cwd or TMP / f"p{n}")
    row("Parameters", what or f"`{stage}.{key}: {json.dumps(value)}`", msg, TP + test)


# ---- parameters
p_case(
    "embed",
    "epocs",
    3,
    "test_every_key_misspelt_is_refused_with_a_suggestion",
    "`embed.epocs: 3` (unknown key)",
)
p_case("train", "epochs", True, "test_named_bad_values", "`train.epochs: true` (wrong type)")
p_case("train", "epochs", 0, "test_named_bad_values")
p_case("train", "conv_impl", "cuda", "test_named_bad_values")
p_case("embed", "dim", 0, "test_named_bad_values")
p_case("embed", "seeds", [], "test_named_bad_values")
p_case("embed", "seeds", [1, 1], "test_named_bad_values")
p_case("pairs", "top_k", 0, "test_named_bad_values")
p_case("prepare", "image_size", 5000, "test_named_bad_values")
p_case("evaluate", "groups", ["animals"], "test_named_bad_values")
p_case("evaluate", "collapse_threshold", 1.5, "test_named_bad_values")
p_case("predict", "splits", ["test", "test"], "test_named_bad_values")
p_case("train", "crossfit_folds", 1, "test_named_bad_values")
p_case(
    "train",
    "seed",
    0,
    "test_named_bad_values",
    "`train.seed: 0` (a key that is gone: `classifiers.seeds`)",
)
for seed in (-1, 2**70):
    n += 1
    seeds = params_with("classifiers", "seeds", [seed])
    row(
        "Parameters",
        f"`classifiers.seeds: [{seed}]` (train's `--seed {seed}`)",
        stage_main("train", stage_argv("train", seeds), seeds, TMP / f"p{n}"),
        TP + "test_train_seed_out_of_range",
    )
n += 1
row(
    "Parameters",
    "params.yaml not valid YAML",
    stage_main("embed", ARGS["embed"], "embed: [1, 2\n", TMP / f"p{n}"),
    TP + "test_broken_params_file",
)
n += 1
row(
    "Parameters",
    "params.yaml section not a mapping (`embed: 5`)",
    stage_main("embed", ARGS["embed"], "embed: 5\n", TMP / f"p{n}"),
    TP + "test_broken_params_file",
)

# cross-field
from confusion_embeddings.pairs import predictions_files

proj = TMP / "cross"
SEEDS = [int(s) for s in stage_options("pairs")["--seeds"].split()]
# One predictions file per classifier, where predict@<seed> writes it.
for s, (_, path) in enumerate(
    predictions_files(proj / stage_options("pairs")["--predictions"], SEEDS)
):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(path, make_synthetic_predictions(30, CIFAR10, CIFAR10_GROUPS, 2.0, seed=s))
row(
    "Parameters",
    "`pairs.top_k: 10` with 10 classes",
    stage_main("pairs", ARGS["pairs"], params_with("pairs", "top_k", 10), proj),
    TP + "test_top_k_not_below_the_number_of_classes",
)
good = params_with("embed", "seeds", [0, 1])
(proj / "params.yaml").write_text(yaml.safe_dump(good))
import importlib

old = os.getcwd()
os.chdir(proj)
with contextlib.redirect_stdout(io.StringIO()):
    for st in ("pairs", "embed"):
        sys.argv = [st, *ARGS[st]]
        importlib.import_module(f"stages.{st}").main()
os.chdir(old)
for groups, what in [
    (
        {"animals": ["cat", "dgo"], "vehicles": ["ship"]},
        "`evaluate.groups` names an unknown class (`dgo`)",
    ),
    ({"a": ["cat"], "b": ["cat"]}, "`evaluate.groups`: a class in two groups"),
    ({"animals": []}, "`evaluate.groups`: an empty group"),
    ({"animals": "cat"}, "`evaluate.groups`: a group that is not a list"),
]:
    row(
        "Parameters",
        what,
        stage_main("evaluate", ARGS["evaluate"], params_with("evaluate", "groups", groups), proj),
        TP + "test_groups_must_name_known_classes",
    )
prep_proj = TMP / "prep"
scratch_project(prep_proj)  # dvc.yaml: the train stage reads its dependencies from it
make_prepared(prep_proj / stage_options("train")["--prepared"], num_classes=4, train=2, test=2)
# predict reads the model's settings first: a (tiny, untrained) model is there.
save_tiny_model(prep_proj / stage_options("predict")["--model"], num_classes=4)
row(
    "Parameters",
    "`train.batch_size: 16` with 8 training pictures",
    stage_main("train", ARGS["train"], params_with("train", "batch_size", 16), prep_proj),
    TP + "test_batch_size_above_the_training_pictures",
)
row(
    "Parameters",
    "`predict.splits: [train, val]`, data without `val`",
    stage_main(
        "predict", ARGS["predict"], params_with("predict", "splits", ["train", "val"]), prep_proj
    ),
    TP + "test_predict_split_the_data_lacks",
)

# ---- predictions file
from confusion_embeddings.pairs import build_pairs
from confusion_embeddings.predictions import load_predictions

P = "tests/test_predictions.py::test_predictions_validation"
CLASSES = np.array(["a", "b", "c", "d"])
PROBS = np.array(
    [
        [0.70, 0.20, 0.06, 0.04],
        [0.10, 0.30, 0.50, 0.10],
        [0.05, 0.15, 0.20, 0.60],
        [0.40, 0.35, 0.15, 0.10],
    ],
    np.float32,
)
LABELS = np.array([0, 1, 2, 3])


def pred_case(what, test=P, **over):
    arrays = {"labels": LABELS, "classes": CLASSES, "probs": PROBS}
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = TMP / "pred.npz"
    np.savez(path, **arrays)
    row("Predictions file", what, raises(load_predictions, path), test)


nan = PROBS.copy()
nan[1, 1] = np.nan
neg = PROBS.copy()
neg[3] = [0.7, -0.1, 0.3, 0.1]
half = PROBS.copy()
half[2] *= 0.5
pred_case("`probs` of the wrong shape (4x3 for 4 classes)", probs=PROBS[:, :3])
pred_case("`probs` as integers", probs=PROBS.astype(np.int32))
pred_case("label out of range (4 with 4 classes)", labels=np.array([0, 1, 2, 4]))
pred_case("negative label", labels=np.array([0, -1, 2, 3]))
pred_case("`labels` as floats", labels=np.array([0.0, 1.0, 2.0, 3.0]))
pred_case("NaN probability", probs=nan)
pred_case("negative probability", probs=neg)
pred_case("row not summing to one", probs=half)
pred_case("both `probs` and `logits`", logits=PROBS)
pred_case("no scores at all", probs=None)
pred_case("`topk` index out of range", probs=None, topk=np.array([[0, 1], [1, 4], [0, 1], [0, 1]]))
pred_case(
    "`topk` row naming a class twice", probs=None, topk=np.array([[0, 1], [1, 2], [3, 3], [0, 1]])
)
pred_case("class name given twice", classes=np.array(["a", "b", "a", "d"]))
pred_case("class name with a space", classes=np.array(["a", "b c", "c", "d"]))
pred_case("class names as bytes", classes=np.array([b"a", b"b", b"c", b"d"]))
pred_case("`groups` naming an unknown class", groups=np.array(json.dumps({"g": ["a", "x"]})))
pred_case(
    "`split` index out of range", split=np.array([0, 1, 2, 1]), splits=np.array(["train", "test"])
)
pred_case(
    "`classes` as a pickled object array",
    test="tests/test_predictions.py::test_object_arrays_are_refused_not_unpickled",
    classes=np.array(["a", "b", "c", "d"], dtype=object),
)
pred_case(
    "`groups` JSON nested 100 000 deep",
    test="tests/test_predictions.py::test_groups_nested_too_deeply",
    groups=np.array("[" * 100000 + "]" * 100000),
)
row(
    "Predictions file",
    "file missing",
    raises(load_predictions, TMP / "nope.npz"),
    "tests/test_predictions.py::test_missing_file_names_the_param",
)
one_missing = TMP / "one-missing"
for s in SEEDS[:-1]:  # the last classifier's file is missing
    (one_missing / "data" / "predictions").mkdir(parents=True, exist_ok=True)
    write_predictions(
        one_missing / "data" / "predictions" / f"seed_{s}.npz",
        make_synthetic_predictions(5, CIFAR10, None, 2.0, seed=s),
    )
row(
    "Predictions file",
    f"a classifier's file missing (`--seeds {' '.join(map(str, SEEDS))}`, no seed_{SEEDS[-1]}.npz)",
    stage_main(
        "pairs",
        stage_argv("pairs", predictions=one_missing / stage_options("pairs")["--predictions"]),
        DEFAULT,
        one_missing,
    ),
    "tests/test_pairs.py::test_a_missing_seed_file_is_one_line_naming_it",
)
(TMP / "x.npz").write_text("hello")
row(
    "Predictions file",
    "not a zip at all",
    raises(load_predictions, TMP / "x.npz"),
    "tests/test_predictions.py::test_not_an_npz",
)


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


VALID = {
    "labels": np.array([0, 1, 1]),
    "classes": np.array(["a", "b"]),
    "probs": np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], np.float32),
}
path = TMP / "crc.npz"
with zipfile.ZipFile(path, "w") as zf:
    for k, v in VALID.items():
        zf.writestr(f"{k}.npy", npy(v))
raw = bytearray(path.read_bytes())
at = raw.find(b"\x93NUMPY", raw.find(b"probs.npy"))
raw[at + 130] ^= 0xFF
path.write_bytes(bytes(raw))
row(
    "Predictions file",
    "a damaged byte in `probs` (bad CRC, found while streaming)",
    raises(lambda: build_pairs(load_predictions(path, check_values=False), 1, 2)),
    "tests/test_predictions.py::test_bad_crc_in_the_scores_is_found_while_streaming",
)
path = TMP / "bz.npz"
with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as zf:
    for k, v in VALID.items():
        zf.writestr(f"{k}.npy", npy(v))
with_unknown_compression(path)
row(
    "Predictions file",
    "a compression method zipfile cannot read",
    raises(load_predictions, path),
    "tests/test_predictions.py::test_unknown_compression_method",
)
path = TMP / "garb.npz"
with zipfile.ZipFile(path, "w") as zf:
    for k, v in VALID.items():
        zf.writestr(f"{k}.npy", b"these are not .npy bytes" if k == "labels" else npy(v))
row(
    "Predictions file",
    "a member that is not .npy data",
    raises(load_predictions, path),
    "tests/test_predictions.py::test_member_that_is_not_npy_data",
)

# ---- raw data / prepare
from confusion_embeddings.data import prepare as prep


def prep_case(what, source, test, section="Raw data (prepare)"):
    row(section, what, raises(prep.prepare, source, TMP / "out", {}), test)


old = os.getcwd()
os.chdir(TMP)
SOURCE = stage_options("prepare")["--source"]  # data/raw/cifar10-jpeg.tar.gz
row(
    "Raw data (prepare)",
    "`data/raw/…` archive missing (stage run by hand)",
    raises(prep.prepare, Path(SOURCE), TMP / "out", {}),
    "tests/test_prepare.py::test_missing_and_unknown_sources",
)
os.chdir(old)
src = make_dataset(TMP / "src", ["ant", "bee"], train=2, test=1, size=(8, 8))
make_tar_gz(src, TMP / "cut.tar.gz")
data = (TMP / "cut.tar.gz").read_bytes()
(TMP / "cut.tar.gz").write_bytes(data[: len(data) // 2])
prep_case(
    "archive cut in half",
    TMP / "cut.tar.gz",
    "tests/test_prepare.py::test_missing_and_unknown_sources",
)
(TMP / "cut5.tar.gz").write_bytes(data[:5])
prep_case(
    "gzip cut inside its header (5 bytes left)",
    TMP / "cut5.tar.gz",
    "tests/test_inputs.py::test_gzip_cut_inside_its_header",
)
(TMP / "notes.txt").write_text("hi")
prep_case(
    "a text file as the source",
    TMP / "notes.txt",
    "tests/test_prepare.py::test_missing_and_unknown_sources",
)
sl = make_dataset(TMP / "sl", ["sea lion", "seal"], train=1, test=1, size=(4, 4))
prep_case(
    "a class folder named `sea lion`",
    sl,
    "tests/test_inputs.py::test_image_folder_class_with_whitespace",
)


prep_case(
    "CIFAR class name not UTF-8",
    cifar_pickle_tar(TMP / "u.tar", {b"label_names": [b"\xff\xfe", b"b"]}),
    "tests/test_inputs.py::test_cifar_class_names",
)
prep_case(
    "CIFAR class name given twice",
    cifar_pickle_tar(TMP / "d.tar", {b"label_names": [b"a", b"a"]}),
    "tests/test_inputs.py::test_cifar_class_names",
)
prep_case(
    "CIFAR labels a ragged list",
    cifar_pickle_tar(
        TMP / "r.tar",
        {b"label_names": [b"a", b"b"]},
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [1, 1]]},
    ),
    "tests/test_inputs.py::test_cifar_ragged_labels",
)
info = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
blob = b"not a pickle"
with tarfile.open(TMP / "np.tar", "w") as tar:
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))
prep_case(
    "CIFAR member that is not a pickle",
    TMP / "np.tar",
    "tests/test_prepare.py::test_cifar_incomplete_and_not_a_pickle",
)
(src / "train" / "bee" / "0001.png").write_bytes(b"garbage")
prep_case("a picture that is not an image", src, "tests/test_prepare.py::test_bad_pictures")
(src / "train" / "bee" / "0001.png").unlink()


# ---- security
class Gadget:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


marker = TMP / "pwned"
make_cifar_tarball(TMP / "good.tar.gz", "cifar-10", train_per_class=1, test_per_class=1)
evil = pickle.dumps(
    {b"label_names": Gadget(os.system, f"touch {marker}"), b"data": 0, b"labels": [0]}, protocol=2
)
with tarfile.open(TMP / "good.tar.gz") as s_, tarfile.open(TMP / "evil.tar", "w") as d_:
    for m in s_.getmembers():
        b = evil if m.name.endswith("data_batch_3") else s_.extractfile(m).read()
        m.size = len(b)
        d_.addfile(m, io.BytesIO(b))
prep_case(
    "pickle calling `os.system` (marker file never appears)",
    TMP / "evil.tar",
    "tests/test_security.py::test_pickle_payload_never_runs",
    "Hostile input",
)
assert not marker.exists()


def png():
    b = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(b, format="PNG")
    return b.getvalue()


inf = tarfile.TarInfo("../../x")
prep_case(
    "tar member `../../x`",
    tar_with(TMP / "t1.tar", src, [(inf, png())]),
    "tests/test_security.py::test_tar_path_traversal",
    "Hostile input",
)
inf = tarfile.TarInfo("/tmp/x.png")
prep_case(
    "tar member `/tmp/x.png`",
    tar_with(TMP / "t2.tar", src, [(inf, png())]),
    "tests/test_security.py::test_tar_path_traversal",
    "Hostile input",
)
inf = tarfile.TarInfo("train/ant/p.png")
inf.type = tarfile.SYMTYPE
inf.linkname = "/etc/passwd"
prep_case(
    "tar symlink member → `/etc/passwd`",
    tar_with(TMP / "t3.tar", src, [(inf, b"")]),
    "tests/test_security.py::test_tar_links_to_etc_passwd",
    "Hostile input",
)
with zipfile.ZipFile(TMP / "z.zip", "w") as zf:
    link = zipfile.ZipInfo("train/ant/passwd.png")
    link.external_attr = 0o120777 << 16
    zf.writestr(link, "/etc/passwd")
prep_case(
    "zip symlink member → `/etc/passwd`",
    TMP / "z.zip",
    "tests/test_security.py::test_zip_symlink_to_etc_passwd",
    "Hostile input",
)
(src / "train" / "ant" / "zz.png").symlink_to("/etc/passwd")
prep_case(
    "folder symlink → `/etc/passwd`",
    src,
    "tests/test_security.py::test_folder_symlinks_out_of_the_source",
    "Hostile input",
)
(src / "train" / "ant" / "zz.png").unlink()

inf = tarfile.TarInfo("train/ant/bomb.png")
prep_case(
    "5000×5000 PNG of a few KB (under PIL's limit)",
    tar_with(TMP / "b1.tar.gz", src, [(inf, png_bomb(5000, 5000))], "w:gz"),
    "tests/test_security.py::test_decompression_bomb_pictures",
    "Hostile input",
)
inf = tarfile.TarInfo("train/ant/bomb.png")
prep_case(
    "20000×20000 PNG of a few KB (over PIL's limit)",
    tar_with(TMP / "b2.tar.gz", src, [(inf, png_bomb(20000, 20000))], "w:gz"),
    "tests/test_security.py::test_decompression_bomb_pictures",
    "Hostile input",
)

# ---- dvc itself: missing raw data, missing remote
import shutil
import subprocess

(TMP / "dvc").mkdir()
repo = make_repo(TMP / "dvc")
(repo / ".gitignore").write_text("__pycache__/\n/.cache/\n")
run(repo, "dvc", "add", "-q", SOURCE)
shutil.rmtree(repo / ".dvc" / "cache")
(repo / SOURCE).unlink()


def dvc_error(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=cli_env(), capture_output=True, text=True)
    assert proc.returncode != 0, proc
    lines = [
        ln
        for ln in proc.stderr.splitlines()
        if ln.startswith(("ERROR", "WARNING: Some")) or "No remote" in ln
    ]
    return " / ".join(lines)


T = "tests/test_inputs.py::test_missing_raw_data_and_missing_remote"
row("DVC", f"`dvc repro` with `{SOURCE}` absent", dvc_error("repro"), T)
row("DVC", "`dvc pull` with no remote configured", dvc_error("pull"), T)
run(repo, "dvc", "remote", "add", "-d", "storage", str(TMP / "no-such-storage"))
row("DVC", "`dvc pull` with the remote's folder missing", dvc_error("pull"), T)

# ---- the CPU convolution kernel (confusion_embeddings/cnn/onednn.py), built on first use
from confusion_embeddings.cnn import onednn

os.environ["ONEDNN_CONV_CACHE"] = str(TMP / "onednn")
T = "tests/test_onednn.py::"
os.environ["CXX"] = "no-such-compiler"
row(
    "CPU convolution kernel (train, predict)",
    "no C++ compiler (`CXX=no-such-compiler`)",
    raises(onednn.library_path),
    T + "test_build_failure_names_the_compiler_and_leaves_nothing",
)
del os.environ["CXX"]
real_dirs = onednn._prefix_dirs
onednn._prefix_dirs = lambda: (TMP / "include", TMP / "lib")
row(
    "CPU convolution kernel (train, predict)",
    "oneDNN's wheels missing from the environment",
    raises(onednn.library_path),
    T + "test_missing_onednn_says_how_to_get_it",
)
onednn._prefix_dirs = real_dirs

# ---- print
section = None
for sec, what, msg, test in ROWS:
    if sec != section:
        header = "| bad input | what the user sees (`error: …`, abbreviated) | test |"
        print(f"\n### {sec}\n\n{header}\n|---|---|---|")
        section = sec
    print(f"| {what} | {msg} | `{test}` |")
