"""Every stage validates its params.yaml section first: a bad value stops it with exit code 2
and one line naming `section.key`, the value and what is allowed, before any input is read
and before any output is touched.

Each case runs the stage's real entry point (`run_main(stage.main)` with the command line
dvc.yaml gives it) in a scratch project folder holding a bad params.yaml, then checks the
exit code, the message, and that the folder is exactly as it was (no output, no temporary
sibling). The schema-level cases run with the stage's inputs missing: that the params error
still comes out proves it is checked first. Cross-field checks that need the data (top_k
against the number of classes, groups against the class names, batch size against the
number of pictures) run against real inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import Param, validate_section

from helpers import (
    SCHEMA_MODULES,
    STAGES,
    make_prepared,
    save_tiny_model,
    scratch_project,
    stage_argv,
    stage_options,
    without_fallback_warnings,
)
from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions, write_predictions

ROOT = Path(__file__).resolve().parents[1]


# Where each stage's section is validated: the stage itself, or the library function it
# calls (train and predict: cnn/run.py), under the name it imports the schema as.
VALIDATED_IN = {
    "train": ("confusion_embeddings.cnn.run", "SCHEMA"),
    "predict": ("confusion_embeddings.cnn.run", "PREDICT_SCHEMA"),
}


def schema(stage: str) -> dict[str, Param]:
    module = importlib.import_module(SCHEMA_MODULES[stage])
    # The code that validates the stage's section uses this very schema (or its config).
    configs = [v for v in vars(module).values() if getattr(v, "SECTION", None) == stage]
    for config in configs:
        assert config.schema() == module.SCHEMA
    stage_module = importlib.import_module(f"stages.{stage}")
    if configs and getattr(stage_module, configs[0].__name__, None) is configs[0]:
        return module.SCHEMA  # the stage builds the typed config itself
    reader, name = VALIDATED_IN.get(stage, (f"stages.{stage}", "SCHEMA"))
    assert getattr(importlib.import_module(reader), name) is module.SCHEMA
    return module.SCHEMA


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def snapshot(folder: Path) -> dict[str, int]:
    """Every path under folder (hidden ones too) with its size; folders count as -1."""
    return {
        str(p.relative_to(folder)): (-1 if p.is_dir() else p.stat().st_size)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project folder (the stages' inputs absent) as the working directory."""
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def run_stage(stage: str, params: dict | str, monkeypatch, capsys) -> tuple[int, str]:
    """Write params.yaml, run the stage's main like `python -m stages.<stage>` with the
    command line dvc.yaml gives it under these params (train: its first seed), return
    (exit code, stderr). The working directory is the project folder."""
    Path("params.yaml").write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    module = importlib.import_module(f"stages.{stage}")
    args = stage_argv(stage, params if isinstance(params, dict) else None)
    monkeypatch.setattr(sys, "argv", [f"stages.{stage}", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(module.main)
    return exc.value.code, capsys.readouterr().err


def assert_refused(
    stage: str, params: dict | str, fragments: list[str], monkeypatch, capsys, folder: Path
) -> str:
    """Exit code 2, one line `error: ...` holding every fragment, the folder unchanged."""
    Path("params.yaml").write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    before = snapshot(folder)
    code, err = run_stage(stage, params, monkeypatch, capsys)
    assert code == 2, err
    err = without_fallback_warnings(err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert snapshot(folder) == before, "the stage touched the project folder"
    return err


def with_value(stage: str, key: str, value) -> dict:
    params = default_params()
    params[stage][key] = value
    return params


# --------------------------------------------------------------------------- schema level


def _all_keys() -> list[tuple[str, str]]:
    return [(stage, key) for stage in STAGES for key in schema(stage)]


def _wrong_type_value(spec: Param):
    """A value whose type the key does not accept."""
    types = spec.types if isinstance(spec.types, tuple) else (spec.types,)
    return ["not", "a", "dict"] if dict in types else {"not": "valid"}


@pytest.mark.parametrize("stage, key", _all_keys())
def test_every_key_refuses_a_wrong_type(stage, key, project, monkeypatch, capsys):
    value = _wrong_type_value(schema(stage)[key])
    assert_refused(
        stage,
        with_value(stage, key, value),
        [f"'{stage}.{key}' = {value!r} has the wrong type; expected "],
        monkeypatch,
        capsys,
        project,
    )


@pytest.mark.parametrize("stage, key", _all_keys())
def test_every_key_misspelt_is_refused_with_a_suggestion(stage, key, project, monkeypatch, capsys):
    params = default_params()
    typo = key[:-1] if key.endswith("s") else key + "s"  # epochs -> epoch, lr -> lrs
    params[stage][typo] = params[stage].pop(key, 1)
    assert_refused(
        stage,
        params,
        [f"unknown key '{stage}.{typo}'", f"did you mean '{key}'?"],
        monkeypatch,
        capsys,
        project,
    )


# Values of the right type but outside what each checked key allows, tried in this order.
_OUT_OF_RANGE_CANDIDATES = {
    int: [-1, 0, 10**9],
    float: [-1.0, 0.0, 2.0, -2.0, 1e9],
    str: ["no-such-choice"],
    list: [[], [0, 0], [-1], [True], ["x", "x"], [1]],
}


def _checked_keys() -> list[tuple[str, str, object]]:
    cases = []
    for stage in STAGES:
        for key, spec in schema(stage).items():
            if spec.check is None:
                continue
            types = spec.types if isinstance(spec.types, tuple) else (spec.types,)
            bad = [v for t in types for v in _OUT_OF_RANGE_CANDIDATES.get(t, []) if spec.check(v)]
            cases.append((stage, key, bad[0] if bad else None))
    return cases


@pytest.mark.parametrize("stage, key, value", _checked_keys())
def test_every_checked_key_refuses_out_of_range(stage, key, value, project, monkeypatch, capsys):
    assert value is not None, f"no out-of-range candidate found for {stage}.{key}; add one"
    allowed = schema(stage)[key].check(value)
    assert_refused(
        stage,
        with_value(stage, key, value),
        [f"'{stage}.{key}' = {value!r} is out of range; expected {allowed}"],
        monkeypatch,
        capsys,
        project,
    )


@pytest.mark.parametrize(
    "stage, key, value, fragments",
    [
        # The values the issue names, with the exact text a user sees.
        ("train", "epochs", 0, ["'train.epochs' = 0 is out of range; expected a number >= 1"]),
        ("train", "epochs", True, ["'train.epochs' = True has the wrong type; expected float"]),
        (
            "train",
            "conv_impl",
            "cuda",
            ["'train.conv_impl' = 'cuda'", "one of ['auto', 'onednn', 'matmul', 'xla']"],
        ),
        (
            "train",
            "widths",
            [64, 0],
            ["'train.widths' = [64, 0]", "a non-empty list of positive ints"],
        ),
        ("embed", "dim", 0, ["'embed.dim' = 0 is out of range; expected a number >= 1"]),
        ("embed", "seeds", [], ["'embed.seeds' = [] is out of range", "non-empty list"]),
        ("embed", "seeds", [1, 1], ["'embed.seeds' = [1, 1]", "distinct"]),
        ("pairs", "top_k", 0, ["'pairs.top_k' = 0 is out of range; expected a number >= 1"]),
        # The classifier's seed was train.seed before `classifiers.seeds`: a params.yaml
        # that still holds it is refused by name, not silently ignored.
        (
            "train",
            "seed",
            0,
            ["unknown key 'train.seed'", "valid keys: alternate_flip, batch_size"],
        ),
        (
            "train",
            "crossfit_folds",
            1,
            ["'train.crossfit_folds' = 1 is out of range; expected 0 or an int >= 2"],
        ),
        ("predict", "splits", ["test", "test"], ["'predict.splits'", "distinct split names"]),
        ("prepare", "image_size", 5000, ["'prepare.image_size' = 5000", "in [1, 4096]"]),
        (
            "evaluate",
            "groups",
            ["animals"],
            ["'evaluate.groups' = ['animals'] has the wrong type; expected dict or null"],
        ),
        (
            "evaluate",
            "collapse_threshold",
            1.5,
            ["'evaluate.collapse_threshold' = 1.5", "in [-1.0, 1.0]"],
        ),
    ],
)
def test_named_bad_values(stage, key, value, fragments, project, monkeypatch, capsys):
    assert_refused(stage, with_value(stage, key, value), fragments, monkeypatch, capsys, project)


def test_missing_required_key():
    """No stage's section has a required key any more (pairs.predictions, the one there
    was, is optional: the pipeline's pairs stage reads the classifiers' folder dvc.yaml
    names; the train stage's seed is its required --seed, tests/test_dvc_yaml.py): every
    key left out takes its default. The mechanism stays for a schema that needs one."""
    for stage in STAGES:
        assert not [key for key, spec in schema(stage).items() if spec.required], stage
        assert validate_section(stage, {}, schema(stage)) == validate_section(
            stage, None, schema(stage)
        )
    needs = {"path": Param(str, required=True), "k": Param(int, 3)}
    with pytest.raises(PipelineError, match=r"^params.yaml: 'mine.path' is required$"):
        validate_section("mine", {"k": 4}, needs)
    assert validate_section("mine", {"path": "x"}, needs) == {"path": "x", "k": 3}


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("embed: [1, 2\n", ["params.yaml: not valid YAML"]),
        ("- just\n- a list\n", ["params.yaml: expected a mapping of sections"]),
        ("embed: 5\n", ["params.yaml: section 'embed' must be a mapping"]),
    ],
)
def test_broken_params_file(text, fragments, project, monkeypatch, capsys):
    assert_refused("embed", text, fragments, monkeypatch, capsys, project)


def test_missing_params_file(project, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["stages.pairs", *stage_argv("pairs")])
    pairs = importlib.import_module("stages.pairs")
    with pytest.raises(SystemExit) as exc:
        run_main(pairs.main)
    assert exc.value.code == 2
    assert (
        "params.yaml: params file not found; run from the project root" in capsys.readouterr().err
    )
    assert snapshot(project) == {}


# --------------------------------------------------------------------------- cross-field


@pytest.fixture
def with_predictions(project) -> Path:
    """The project with a 10-class CIFAR-like predictions file per classifier seed in
    pairs' --predictions folder (data/predictions/seed_<s>.npz, as predict@<s> writes)."""
    from confusion_embeddings.pairs import predictions_files

    options = stage_options("pairs")
    seeds = [int(s) for s in options["--seeds"].split()]
    for s, (_, path) in enumerate(predictions_files(project / options["--predictions"], seeds)):
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = make_synthetic_predictions(30, CIFAR10, CIFAR10_GROUPS, 2.0, seed=s)
        write_predictions(path, arrays)
    return project


@pytest.mark.parametrize("top_k", [10, 11])
def test_top_k_not_below_the_number_of_classes(top_k, with_predictions, monkeypatch, capsys):
    assert_refused(
        "pairs",
        with_value("pairs", "top_k", top_k),
        [f"'pairs.top_k' = {top_k} must be smaller than the number of classes C = 10"],
        monkeypatch,
        capsys,
        with_predictions,
    )


@pytest.fixture
def with_pairs_and_embed(with_predictions, monkeypatch, capsys) -> Path:
    """The project after pairs and embed ran (2 seeds), ready for evaluate."""
    params = default_params()
    params["embed"]["seeds"] = [0, 1]
    Path("params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("pairs", "embed"):
        monkeypatch.setattr(sys, "argv", [f"stages.{stage}", *stage_argv(stage, params)])
        importlib.import_module(f"stages.{stage}").main()
    assert (with_predictions / stage_options("embed", params)["--out"]).is_dir()
    return with_predictions


@pytest.mark.parametrize(
    "groups, fragments",
    [
        (
            {"animals": ["cat", "dgo"], "vehicles": ["ship"]},
            [
                "'evaluate.groups'",
                "group 'animals' names unknown class 'dgo' (did you mean 'dog'?)",
                "valid classes: airplane, automobile",
            ],
        ),
        (
            {"animals": "cat"},
            ["'evaluate.groups'", "group 'animals' must be a list of class names"],
        ),
        ({"animals": []}, ["'evaluate.groups'", "group 'animals' is empty"]),
        (
            {"a": ["cat"], "b": ["cat"]},
            ["'evaluate.groups'", "class 'cat' is in both group 'a' and group 'b'"],
        ),
    ],
)
def test_groups_must_name_known_classes(
    groups, fragments, with_pairs_and_embed, monkeypatch, capsys
):
    assert_refused(
        "evaluate",
        with_value("evaluate", "groups", groups),
        fragments,
        monkeypatch,
        capsys,
        with_pairs_and_embed,
    )


@pytest.fixture
def with_prepared(project) -> Path:
    """The project with a 4-class prepared dataset of 8 training pictures, and dvc.yaml
    (the train stage reads its dependencies from it)."""
    scratch_project(project)
    make_prepared(project / stage_options("train")["--prepared"], num_classes=4, train=2, test=2)
    return project


def test_batch_size_above_the_training_pictures(with_prepared, monkeypatch, capsys):
    assert_refused(
        "train",
        with_value("train", "batch_size", 16),
        ["'train.batch_size' = 16 exceeds the 8 training pictures"],
        monkeypatch,
        capsys,
        with_prepared,
    )


def test_predict_split_the_data_lacks(with_prepared, monkeypatch, capsys):
    # predict reads the model's settings first (they decide the host setup): a model is there.
    save_tiny_model(with_prepared / stage_options("predict")["--model"], num_classes=4)
    assert_refused(
        "predict",
        with_value("predict", "splits", ["train", "val"]),
        ["no split 'val'"],
        monkeypatch,
        capsys,
        with_prepared,
    )


# --------------------------------------------------------------------------- subprocess


@pytest.mark.parametrize("stage, key, value", [("train", "epochs", 0), ("evaluate", "top_n", -3)])
def test_exit_code_2_from_python_m(stage, key, value, tmp_path):
    """The real `python -m stages.<name>` run: exit code 2, one line on stderr, nothing written."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value(stage, key, value)))
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *stage_argv(stage)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: params.yaml: '{stage}.{key}' = {value} is out of range")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert snapshot(tmp_path) == before


def test_validate_section_raises_pipeline_error_only():
    """The schema helpers themselves: a PipelineError, never a TypeError, for odd values."""
    for stage in STAGES:
        for key in schema(stage):
            for odd in (None, [None], {"a": None}, float("nan"), 10**30, -(10**30), "", []):
                with contextlib.suppress(PipelineError):
                    validate_section(stage, {key: odd}, schema(stage))


# --------------------------------------------------------------------------- known gaps


# The classifier's seed (train's --seed, one of params `classifiers.seeds`) is range-checked
# and train.stem_patch / train.widths are checked against the picture size, before anything
# is written (numpy's default_rng refuses a negative seed, jax.random.key a seed over 64
# bits, the stem's space-to-depth and the blocks' 2x2 pooling a side they cannot divide).
@pytest.mark.parametrize("seed", [-1, 2**32, 2**70])
def test_train_seed_out_of_range(seed, project, monkeypatch, capsys):
    params = with_value("classifiers", "seeds", [seed])
    assert stage_options("train", params)["--seed"] == str(seed)  # as dvc.yaml passes it
    assert_refused(
        "train",
        params,
        [f"'classifiers.seeds' holds {seed}; seeds must be in [0, {2**32 - 1}]"],
        monkeypatch,
        capsys,
        project,
    )


@pytest.mark.parametrize(
    "seeds, fragment",
    [([0, 0], "[0, 0] is out of range"), ([1, -2], "[1, -2] is out of range")],
)
def test_classifiers_seeds_are_checked_by_pairs(seeds, fragment, project, monkeypatch, capsys):
    """The `classifiers` section has its schema (pairs.CLASSIFIERS), checked by the stage that
    reads every classifier's predictions, before it reads any."""
    params = with_value("classifiers", "seeds", seeds)
    expected = "expected a non-empty list of distinct seeds >= 0"
    assert_refused(
        "pairs",
        params,
        [f"'classifiers.seeds' = {fragment}", expected],
        monkeypatch,
        capsys,
        project,
    )


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_train_seed_range_ends_are_accepted(seed, project, monkeypatch, capsys):
    """The ends of the range pass the seed check: the stage goes on to its (missing) data."""
    code, err = run_stage("train", with_value("classifiers", "seeds", [seed]), monkeypatch, capsys)
    assert code == 2 and "classifiers.seeds" not in err and "prepared" in err, err


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("stem_patch", 3, "'train.stem_patch' = 3 does not divide the 16x16 pictures"),
        ("widths", [4, 4, 4, 4], "'train.widths' = [4, 4, 4, 4] has 4 blocks"),
    ],
)
def test_train_geometry_against_the_pictures(
    key, value, fragment, with_prepared, monkeypatch, capsys
):
    params = with_value("train", key, value)
    params["train"].update(batch_size=4, eval_batch_size=4)
    assert_refused("train", params, [fragment], monkeypatch, capsys, with_prepared)
