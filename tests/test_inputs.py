"""Bad inputs that tests/test_prepare.py does not cover yet.

CIFAR tarballs with odd class names or labels, a cut gzip header, class names that the
later stages would refuse, stage inputs that disagree with each other, and what `dvc`
itself says when the raw data or its remote is missing. Damaged predictions files are in
tests/test_predictions.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.data import prepare as prep
from stages import evaluate as evaluate_stage
from stages import predict as predict_stage

from dvc_repo import make_repo, run
from helpers import (
    cifar_pickle_tar,
    cli_env,
    make_dataset,
    make_prepared,
    save_tiny_model,
    scratch_project,
    stage_argv,
    stage_options,
)
from synthetic import CIFAR10, make_synthetic_predictions, write_predictions

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- prepare


def prepare_refuses(source: Path, out: Path, *fragments: str) -> str:
    with pytest.raises(PipelineError) as exc:
        prep.prepare(source, out, {})
    msg = str(exc.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    assert not out.exists()
    return msg


@pytest.mark.parametrize(
    "names, fragments",
    [
        ([b"\xff\xfe", b"b"], ["'label_names' holds a name that is not UTF-8 text"]),
        ([b"a", b"a"], ["'label_names' lists 'a' twice"]),
        ([b"sea lion", b"b"], ["class name 'sea lion'", "whitespace", "'sea_lion'"]),
    ],
)
def test_cifar_class_names(tmp_path, names, fragments):
    source = cifar_pickle_tar(tmp_path / "c.tar", {b"label_names": names})
    prepare_refuses(source, tmp_path / "out", *fragments)


def test_cifar_ragged_labels(tmp_path):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [[0], [1, 1]]}
    source = cifar_pickle_tar(tmp_path / "c.tar", {b"label_names": [b"a", b"b"]}, batch)
    prepare_refuses(source, tmp_path / "out", "'labels' must be 2 integers")


def test_image_folder_class_with_whitespace(tmp_path):
    source = make_dataset(tmp_path / "src", ["sea lion", "seal"], train=1, test=1, size=(4, 4))
    prepare_refuses(source, tmp_path / "out", "class name 'sea lion'", "whitespace", "'sea_lion'")


@pytest.mark.parametrize("keep", [2, 5, 9])
def test_gzip_cut_inside_its_header(tmp_path, keep):
    source = make_dataset(tmp_path / "src", ["a", "b"], train=1, test=1, size=(4, 4))
    archive = tmp_path / "cut.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "train", arcname="train")
    archive.write_bytes(archive.read_bytes()[:keep])
    prepare_refuses(archive, tmp_path / "out", "cut.tar.gz", "fetch it again")


# --------------------------------------------------------------------------- stage inputs


@pytest.mark.parametrize(
    "embed_from, pairs_from",
    [
        ("four", "ten"),  # other classes
        ("ten-two", "ten"),  # the same classes, fewer classifiers (a seed added since)
    ],
)
def test_evaluate_embed_and_pairs_disagree(embed_from, pairs_from, tmp_path, monkeypatch, capsys):
    """The embed folder was made from other pairs (other classes, or other classifiers):
    evaluate refuses and writes nothing."""
    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["embed"]["seeds"] = [0]
    Path("params.yaml").write_text(yaml.safe_dump(params))
    from stages import embed as embed_stage
    from stages import pairs as pairs_stage

    seeds = [int(s) for s in stage_options("pairs", params)["--seeds"].split()]
    runs = {
        "ten": (CIFAR10, seeds),
        "four": (["w", "x", "y", "z"], seeds),
        "ten-two": (CIFAR10, seeds[:-1]),
    }
    for name in (embed_from, pairs_from):
        classes, which = runs[name]
        Path(f"pred-{name}").mkdir()
        for s in seeds:
            write_predictions(
                Path(f"pred-{name}") / f"seed_{s}.npz",
                make_synthetic_predictions(20, classes, None, 1.0, seed=s),
            )
        args = stage_argv(
            "pairs",
            params,
            predictions=f"pred-{name}/seed_{{seed}}.npz",
            out=f"pairs-{name}",
            metrics=f"{name}.json",
        )
        i = args.index("--seeds")
        args[i + 1 : i + 1 + len(seeds)] = map(str, which)
        monkeypatch.setattr(sys, "argv", ["pairs", *args])
        pairs_stage.main()
    monkeypatch.setattr(
        sys,
        "argv",
        ["embed", *stage_argv("embed", pairs=f"pairs-{embed_from}", out=f"embed-{embed_from}")],
    )
    embed_stage.main()
    outputs = {
        flag[2:]: f"out-{flag[2:]}"
        for flag in stage_options("evaluate")
        if flag not in ("--pairs", "--embed")
    }
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "evaluate",
            *stage_argv(
                "evaluate", pairs=f"pairs-{pairs_from}", embed=f"embed-{embed_from}", **outputs
            ),
        ],
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(evaluate_stage.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"embed-{embed_from}: its classes or classifiers differ from those of pairs-{pairs_from}"
        in err
    )
    assert "rerun embed" in err and err.count("\n") == 1
    assert not any(Path(p).exists() for p in outputs.values())


def test_predict_model_and_data_disagree(tmp_path, monkeypatch, capsys):
    """A model trained on 3 classes, prepared data with 4: predict refuses, writes nothing."""
    scratch_project(tmp_path, {"predict": {"batch_size": 4}})
    monkeypatch.chdir(tmp_path)
    options = stage_options("predict")
    make_prepared(tmp_path / options["--prepared"], num_classes=4, train=2, test=2)
    save_tiny_model(tmp_path / options["--model"], num_classes=3)
    monkeypatch.setattr(sys, "argv", ["predict", *stage_argv("predict")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(predict_stage.main)
    assert exc.value.code == 2
    assert (
        f"{options['--model']} predicts 3 classes but {options['--prepared']} has 4; "
        "rerun `dvc repro train`"
    ) in capsys.readouterr().err
    assert not Path(options["--out"]).exists() and not Path(options["--timings"]).exists()


# --------------------------------------------------------------------------- dvc level


@pytest.mark.slow
def test_missing_raw_data_and_missing_remote(tmp_path):
    """What a user sees when data/raw is not there and cannot be pulled: `dvc repro` stops
    before running prepare, naming the file; `dvc pull` names the missing remote / files."""
    repo = make_repo(tmp_path)
    source = stage_options("prepare")["--source"]  # data/raw/cifar10-jpeg.tar.gz
    (repo / ".gitignore").write_text("__pycache__/\n/.cache/\n")  # track data/raw as in the project
    run(repo, "dvc", "add", "-q", source)
    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / source).unlink()

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["dvc", *args], cwd=repo, env=cli_env(), capture_output=True, text=True
        )

    repro = dvc("repro")
    assert repro.returncode != 0
    assert f"missing data 'source': {source}" in repro.stderr
    assert not (repo / "data" / "prepared").exists() and not (repo / "metrics").exists()

    pull = dvc("pull")  # no remote configured at all
    assert pull.returncode != 0 and "No remote provided and no default remote set" in pull.stderr

    run(repo, "dvc", "remote", "add", "-d", "storage", str(tmp_path / "no-such-storage"))
    pull = dvc("pull")  # a remote whose folder does not exist (e.g. not mounted)
    assert pull.returncode != 0
    assert "do not exist neither locally nor on remote" in pull.stderr
    assert source in pull.stderr

    # The stage itself, run by hand, points at `dvc pull`.
    proc = subprocess.run(
        [sys.executable, "-m", "stages.prepare", *stage_argv("prepare")],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {source}: not found; run `dvc pull` to fetch it\n"
