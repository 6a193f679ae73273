"""dvc.yaml against the code it runs: DVC reruns a stage exactly when something it reads
changes, and every path a stage touches is named in its entry.

* every module a stage imports (at import time, and lazily inside its functions) is among
  the stage's deps, and so is the oneDNN kernel's C++ source for the stages that run the CNN;
* every path on a stage's command line is one of the stage's deps, outs, metrics or plots
  (or the folder of some: train's --live), train's --checkpoints aside (a cache, not an
  output), and no command passes --params;
* params.yaml spells out the schema defaults, so that every default lives in one place;
* every path argument of every stage is required: no stage falls back on a path of its own.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from confusion_embeddings.core.params import defaults

from helpers import STAGES, default_params, dvc_stages, fill_placeholders, stage_argv

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "confusion_embeddings")
KERNEL_SOURCE = "confusion_embeddings/cnn/onednn_conv.cc"
# The stages that run the network, and so compile and call the oneDNN kernel.
CNN_STAGES = ("train", "predict")
# Command-line paths that are no part of the stage's outputs.
NOT_OUTPUTS = {("train", "--checkpoints")}  # the resume checkpoint: removed when train ends
# Where each stage's params schema lives.
SCHEMA_MODULES = {
    "prepare": "confusion_embeddings.data.prepare",
    "train": "confusion_embeddings.cnn.training",
    "predict": "confusion_embeddings.cnn.inference",
    "pairs": "confusion_embeddings.pairs",
    "embed": "confusion_embeddings.embedding.engines",
    "evaluate": "confusion_embeddings.evaluation.scores",
}
# params.yaml values that are the project's data, not a default: evaluate.groups are
# CIFAR-10's two groups (the schema's default, null, takes the groups the data carries).
PROJECT_VALUES = {("evaluate", "groups")}


def _names(entries: list) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (items are strings or {path: options})."""
    out = []
    for item in entries or []:
        out += [item] if isinstance(item, str) else list(item)
    return [fill_placeholders(p) for p in out]


def deps(stage: str) -> list[str]:
    return _names(dvc_stages()[stage].get("deps"))


def outputs(stage: str) -> list[str]:
    entry = dvc_stages()[stage]
    return [p for key in ("outs", "metrics", "plots") for p in _names(entry.get(key))]


def covered(path: str, by: list[str]) -> bool:
    """Whether `path` (relative, posix) is one of `by` or inside a folder of `by`."""
    p = PurePosixPath(path)
    return any(p == PurePosixPath(d) or PurePosixPath(d) in p.parents for d in by)


# --------------------------------------------------------------------------- (a) code deps

_IMPORTED = """
import json, sys
import stages.{stage}
files = {{getattr(m, "__file__", None) or "" for m in list(sys.modules.values())}}
print(json.dumps(sorted(files)))
"""


def imported_files(stage: str) -> set[str]:
    """Repo files (relative) of every module `import stages.<stage>` loads, in a fresh
    interpreter run from the project root as dvc runs the stage."""
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORTED.format(stage=stage)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    files = set()
    for name in json.loads(proc.stdout):
        if not name:
            continue
        path = Path(name).resolve()
        if path.is_relative_to(ROOT):
            rel = path.relative_to(ROOT)
            if rel.parts[0] in PACKAGES:
                files.add(rel.as_posix())
    return files


def _module_file(name: str) -> str | None:
    """The repo file of module `name` (a package's __init__.py), if it is one of ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None


def lazily_imported(files: set[str]) -> set[str]:
    """Our modules that `files` import anywhere (inside functions too), transitively, and
    the packages above them: what the stage may load after its import-time imports."""
    todo, seen = list(files), set(files)
    while todo:
        tree = ast.parse((ROOT / todo.pop()).read_text())
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
                names += [f"{node.module}.{a.name}" for a in node.names]  # submodules
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:i]))
                if found and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_dependency(stage):
    files = imported_files(stage)
    assert f"stages/{stage}.py" in files  # the probe saw the stage itself
    assert any(f.startswith("confusion_embeddings/") for f in files)
    files = lazily_imported(files)
    if stage in CNN_STAGES:
        files.add(KERNEL_SOURCE)
    stage_deps = deps(stage)
    missing = sorted(f for f in files if not covered(f, stage_deps))
    assert not missing, f"dvc.yaml: stage {stage} reads {missing} but lists none of them in deps"


def test_the_kernel_source_is_a_dependency_of_the_stages_that_run_the_network():
    assert (ROOT / KERNEL_SOURCE).is_file()
    for stage in CNN_STAGES:
        assert covered(KERNEL_SOURCE, deps(stage)), stage


def test_every_dependency_exists_or_is_made_by_an_earlier_stage():
    """A dep is a path in the repo (code, raw data) or an output of a stage before it: a
    dep renamed in the code but not in dvc.yaml would otherwise be silently stale."""
    made: list[str] = []
    for stage in dvc_stages():
        for dep in deps(stage):
            assert (ROOT / dep).exists() or covered(dep, made), (stage, dep)
        made += outputs(stage)


# --------------------------------------------------------------------------- (b) cmd paths


def test_every_stage_of_dvc_yaml_is_known_to_the_tests():
    assert list(dvc_stages()) == STAGES


@pytest.mark.parametrize("stage", STAGES)
def test_every_path_on_the_command_line_is_named_in_the_stage(stage):
    args = stage_argv(stage)
    flags, values = args[0::2], args[1::2]
    assert len(flags) == len(values) and all(f.startswith("--") for f in flags), args
    assert "--params" not in flags, "the stages read params.yaml, the file dvc tracks"
    named = deps(stage) + outputs(stage)
    for flag, value in zip(flags, values, strict=True):
        if (stage, flag) in NOT_OUTPUTS:
            assert value not in named and not covered(value, outputs(stage)), (flag, value)
            continue
        # A folder the stage writes several outputs into (train's --live: dvclive's summary
        # and its plots) counts as named through them.
        holds_outputs = any(
            PurePosixPath(value) in PurePosixPath(o).parents for o in outputs(stage)
        )
        assert value in named or holds_outputs, (
            f"dvc.yaml: stage {stage} passes {flag} {value}, not in its entry"
        )
    # ... and the other way round: every output is written where the command line says.
    for out in outputs(stage):
        assert covered(out, values), f"dvc.yaml: stage {stage}'s output {out} is on no option"


def test_the_resume_checkpoints_are_no_output():
    """train's --checkpoints is a cache folder that the stage removes when it ends (an
    output there would make DVC cache a folder that should not outlive the run)."""
    (flag,) = [f for s, f in NOT_OUTPUTS if s == "train"]
    value = stage_argv("train")[stage_argv("train").index(flag) + 1]
    assert value.startswith(".cache/")


# --------------------------------------------------------------------------- (c) params


@pytest.mark.parametrize("stage", STAGES)
def test_params_yaml_spells_out_the_schema_defaults(stage):
    schema = importlib.import_module(SCHEMA_MODULES[stage]).SCHEMA
    section = default_params()[stage]
    required = {k for k, spec in schema.items() if spec.required}
    assert set(section) == set(schema), "params.yaml must name every key of the section"
    want = defaults(schema)
    for key in sorted(set(schema) - required):
        if (stage, key) in PROJECT_VALUES:
            assert section[key] != want[key], f"{stage}.{key} is the default now: drop it here"
            continue
        assert section[key] == want[key], (
            f"params.yaml: {stage}.{key} = {section[key]!r}, but the schema's default is "
            f"{want[key]!r}; change the default in {SCHEMA_MODULES[stage]}"
        )
        assert type(section[key]) is type(want[key]), (stage, key)


def test_only_pairs_predictions_is_required():
    req = {
        (stage, k)
        for stage in STAGES
        for k, spec in importlib.import_module(SCHEMA_MODULES[stage]).SCHEMA.items()
        if spec.required
    }
    assert req == {("pairs", "predictions")}


# --------------------------------------------------------------------------- (d) required


def _without(args: list[str], flag: str) -> list[str]:
    i = args.index(flag)
    return args[:i] + args[i + 2 :]


@pytest.mark.parametrize("stage, flag", [(s, f) for s in STAGES for f in stage_argv(s)[0::2]])
def test_every_path_argument_is_required(stage, flag, tmp_path, monkeypatch, capsys):
    """Leaving any path out stops the stage in argparse (exit code 2), before it reads or
    writes anything: no stage has a path of its own to fall back on."""
    monkeypatch.chdir(tmp_path)  # an empty folder: a stage that went on would fail there
    module = importlib.import_module(f"stages.{stage}")
    monkeypatch.setattr(sys, "argv", [f"stages.{stage}", *_without(stage_argv(stage), flag)])
    with pytest.raises(SystemExit) as exc:
        module.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required" in err and flag in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("stage", STAGES)
def test_no_arguments_at_all(stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"stages.{stage}"])
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"stages.{stage}").main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for flag in stage_argv(stage)[0::2]:
        assert flag in err, (flag, err)
