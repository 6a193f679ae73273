"""dvc.yaml against the code it runs: DVC reruns a stage exactly when something it reads
changes, and every path a stage touches is named in its entry.

* every module a stage imports (at import time, and lazily inside its functions) is among
  the stage's deps, and so is the oneDNN kernel's C++ source for the stages that run the CNN;
* every path on a stage's command line is one of the stage's deps, outs, metrics or plots
  (or the folder of some: train's --live), train's --checkpoints aside (a cache, not an
  output), and no command passes --params;
* the `foreach` stages (train@<seed>, predict@<seed>, one per seed of params
  `classifiers.seeds`) are checked item by item: each writes its own paths, and the pairs
  stage reads exactly the predict@<seed> outputs through its folder dep and `--seeds`;
* params.yaml spells out the schema defaults, so that every default lives in one place;
* params.yaml and the raw data's .dvc file are written as DVC writes them, so that an
  experiment (`dvc exp run -S`) changes only the lines of the values it sets;
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
import yaml

from confusion_embeddings.config.hosts import HOSTS
from confusion_embeddings.config.pairs import CLASSIFIERS
from confusion_embeddings.core.params import defaults

from helpers import (
    SCHEMA_MODULES,
    STAGES,
    changed_lines,
    default_params,
    dvc_set_params,
    dvc_stages,
    fill_placeholders,
    stage_argv,
    stage_entry,
    stage_options,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "confusion_embeddings")
KERNEL_SOURCE = "confusion_embeddings/cnn/onednn_conv.cc"
# The stages that run the network, and so compile and call the oneDNN kernel.
CNN_STAGES = ("train", "predict")
# Command-line paths that are no part of the stage's outputs.
NOT_OUTPUTS = {
    ("train", "--checkpoints"),  # the resume checkpoint: removed when train ends
    # Wall times: DVC would hash them, and a rerun with byte-identical results would
    # change dvc.lock (tests/test_dvc_pipeline.py checks that it does not).
    *((stage, "--timings") for stage in ("prepare", "train", "predict")),
}
# Command-line options that are no paths: the classifier's seed (train@<seed>) and the seeds
# whose predictions the pairs stage reads (DVC unpacks params `classifiers` to `--seeds ...`).
NOT_PATHS = {("train", "--seed"), ("pairs", "--seeds")}
# Options a stage may go without: pairs reads one predictions file without --seeds.
OPTIONAL = {("pairs", "--seeds")}
# params.yaml values that are the project's data, not a default: evaluate.groups are
# CIFAR-10's two groups (the schema's default, null, takes the groups the data carries).
PROJECT_VALUES = {("evaluate", "groups")}


def expanded_stages() -> list[str]:
    """Every stage as DVC runs it, in dvc.yaml's order: a `foreach` stage once per item
    (train@0, train@1, ...), the others by their name."""
    names = []
    for name, entry in dvc_stages().items():
        if "foreach" in entry:
            items = yaml.safe_load(fill_placeholders(entry["foreach"]))
            names += [f"{name}@{item}" for item in items]
        else:
            names.append(name)
    return names


def _names(entries: list, item=None) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (items are strings or {path: options})."""
    out = []
    for entry in entries or []:
        out += [entry] if isinstance(entry, str) else list(entry)
    return [fill_placeholders(p, item=item) for p in out]


def deps(stage: str) -> list[str]:
    """The deps of `stage` ("train@1"; a plain foreach name means its first item)."""
    entry, item = stage_entry(stage)
    return _names(entry.get("deps"), item)


def outputs(stage: str) -> list[str]:
    entry, item = stage_entry(stage)
    return [p for key in ("outs", "metrics", "plots") for p in _names(entry.get(key), item)]


def module(stage: str) -> str:
    """The stage's module name: "train@1" runs stages/train.py."""
    return stage.partition("@")[0]


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
    expanded = [s for s in expanded_stages() if module(s) == stage]
    assert expanded, stage
    for each in expanded:  # train@0, train@1, ...: every item lists them
        stage_deps = deps(each)
        missing = sorted(f for f in files if not covered(f, stage_deps))
        assert not missing, f"dvc.yaml: stage {each} reads {missing} but lists none in deps"


def test_the_kernel_source_is_a_dependency_of_the_stages_that_run_the_network():
    assert (ROOT / KERNEL_SOURCE).is_file()
    for stage in expanded_stages():
        if module(stage) in CNN_STAGES:
            assert covered(KERNEL_SOURCE, deps(stage)), stage


def test_every_dependency_exists_or_is_made_by_an_earlier_stage():
    """A dep is a path in the repo (code; raw data, or its .dvc file where the data itself
    is not checked out, as in a fresh clone or a git worktree) or an output of a stage
    before it (or a folder holding some: pairs' data/predictions holds predict@*'s files):
    a dep renamed in the code but not in dvc.yaml would otherwise be silently stale."""
    made: list[str] = []
    for stage in expanded_stages():
        for dep in deps(stage):
            tracked = (ROOT / f"{dep}.dvc").is_file()
            holds_outputs = any(PurePosixPath(dep) in PurePosixPath(m).parents for m in made)
            assert (ROOT / dep).exists() or tracked or covered(dep, made) or holds_outputs, (
                stage,
                dep,
            )
        made += outputs(stage)


def test_the_foreach_stages_run_once_per_classifier_seed():
    seeds = default_params()["classifiers"]["seeds"]
    names = expanded_stages()
    for stage in ("train", "predict"):
        assert [n for n in names if module(n) == stage] == [f"{stage}@{s}" for s in seeds]
    # In order: every predict@<seed> after its train@<seed>, pairs after every predict.
    for s in seeds:
        assert names.index(f"train@{s}") < names.index(f"predict@{s}") < names.index("pairs")


def test_the_committed_lock_holds_exactly_the_stages_of_dvc_yaml():
    """DVC keeps a lock entry of a stage that dvc.yaml no longer has; a stale one (the
    single `train` before `train@<seed>`) misleads whoever reads the lock for outputs."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(expanded_stages())


def test_every_classifier_has_its_own_paths():
    """No two stages share an output, and each seed's train and predict write (and train
    checkpoints) under paths of their own: adding a seed leaves the others' files alone."""
    everything = [out for stage in expanded_stages() for out in outputs(stage)]
    assert len(everything) == len(set(everything)), everything
    seeds = [0, 1, 7]  # any seeds: the entries are the same template
    for stage in ("train", "predict"):
        written = {s: [*outputs(f"{stage}@{s}"), *stage_argv(f"{stage}@{s}")[1::2]] for s in seeds}
        for s in seeds:
            mine = outputs(f"{stage}@{s}") + [
                value
                for flag, value in stage_options(f"{stage}@{s}").items()
                if (stage, flag) in NOT_OUTPUTS
            ]
            others = [p for t in seeds if t != s for p in written[t]]
            clash = [p for p in mine if covered(p, others) or any(covered(o, [p]) for o in others)]
            assert not clash, (f"{stage}@{s}", clash)
            assert all(f"seed_{s}" in path for path in mine), (f"{stage}@{s}", mine)


def test_pairs_reads_exactly_the_predictions_of_the_classifier_seeds():
    """pairs' folder dep data/predictions holds the predict@<seed> files, `--seeds` (DVC's
    unpacking of params `classifiers`) names exactly params' seeds, and the files the stage
    then reads are those predict@<seed> outputs: a seed added reruns pairs (the folder
    changes) and a seed removed drops its file from the tables."""
    from confusion_embeddings.pairs import predictions_files

    seeds = default_params()["classifiers"]["seeds"]
    options = stage_options("pairs")
    pattern = options["--predictions"]  # the file of each seed, {seed} standing for it
    folder = PurePosixPath(pattern).parent.as_posix()
    assert folder in deps("pairs")
    assert options["--seeds"] == " ".join(map(str, seeds))
    read = [
        PurePosixPath(path).as_posix()
        for _, path in predictions_files(pattern, [int(s) for s in options["--seeds"].split()])
    ]
    assert read == [stage_options(f"predict@{s}")["--out"] for s in seeds]
    for s, path in zip(seeds, read, strict=True):
        assert path in outputs(f"predict@{s}")
    # Nothing but the predict stages writes into the folder pairs depends on as a whole.
    for stage in expanded_stages():
        inside = [o for o in outputs(stage) if covered(o, [folder])]
        assert not inside or module(stage) == "predict", (stage, inside)


# --------------------------------------------------------------------------- (b) cmd paths


def test_every_stage_of_dvc_yaml_is_known_to_the_tests():
    assert list(dvc_stages()) == STAGES


@pytest.mark.parametrize("stage", expanded_stages())
def test_every_path_on_the_command_line_is_named_in_the_stage(stage):
    options = stage_options(stage)
    assert "--params" not in options, "the stages read params.yaml, the file dvc tracks"
    named = deps(stage) + outputs(stage)
    values = []
    for flag, value in options.items():
        if (module(stage), flag) in NOT_PATHS:
            continue
        assert value and " " not in value, f"dvc.yaml: stage {stage}: {flag} takes one path"
        values.append(value)
        if (module(stage), flag) in NOT_OUTPUTS:
            assert value not in named and not covered(value, outputs(stage)), (flag, value)
            continue
        # A folder the stage writes several outputs into (train's --live: dvclive's summary
        # and its plots) counts as named through them.
        holds_outputs = any(
            PurePosixPath(value) in PurePosixPath(o).parents for o in outputs(stage)
        )
        # A pattern of files ({seed}: pairs' --predictions) counts as named through the
        # folder dep that holds them.
        in_dep = "{" in value and covered(value, deps(stage))
        assert value in named or holds_outputs or in_dep, (
            f"dvc.yaml: stage {stage} passes {flag} {value}, not in its entry"
        )
    # ... and the other way round: every output is written where the command line says.
    for out in outputs(stage):
        assert covered(out, values), f"dvc.yaml: stage {stage}'s output {out} is on no option"


def test_the_options_that_are_no_paths():
    """train@<seed> passes its own seed; pairs passes params' seeds (and nothing else is a
    non-path option)."""
    seeds = default_params()["classifiers"]["seeds"]
    for s in seeds:
        assert stage_options(f"train@{s}")["--seed"] == str(s)
    assert stage_options("pairs")["--seeds"] == " ".join(map(str, seeds))
    found = {
        (module(stage), flag)
        for stage in expanded_stages()
        for flag, value in stage_options(stage).items()
        if all(v.isdigit() for v in value.split())
    }
    assert found == NOT_PATHS


def test_the_resume_checkpoints_are_no_output():
    """train's --checkpoints is a cache folder that the stage removes when it ends (an
    output there would make DVC cache a folder that should not outlive the run); each
    classifier has its own (Resume.remove clears the whole folder)."""
    flag = "--checkpoints"
    seeds = default_params()["classifiers"]["seeds"]
    values = [stage_options(f"train@{s}")[flag] for s in seeds]
    assert all(v.startswith(".cache/") for v in values)
    assert len(set(values)) == len(seeds)
    for a in values:
        for b in values:
            assert a == b or not covered(a, [b]), (a, b)


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


def test_no_params_key_is_required():
    """Every key has a default (pairs.predictions, once the one required key, is optional:
    the pipeline's pairs stage reads the classifiers' files through --predictions and
    `classifiers.seeds`)."""
    req = {
        (stage, k)
        for stage in STAGES
        for k, spec in importlib.import_module(SCHEMA_MODULES[stage]).SCHEMA.items()
        if spec.required
    }
    assert req == set()


def test_classifiers_params_are_spelt_out():
    assert default_params()["classifiers"] == defaults(CLASSIFIERS)


def test_hosts_params_are_spelt_out_and_no_stage_depends_on_them():
    """`hosts` (how long a multi-process job waits for a peer) changes no result: a change
    must not make DVC retrain, so no stage lists it among its params."""
    assert default_params()["hosts"] == defaults(HOSTS)
    for name, entry in dvc_stages().items():
        params = entry.get("do", entry).get("params", [])
        assert "hosts" not in params, f"dvc.yaml: stage {name} depends on params hosts"


def test_params_yaml_holds_a_section_per_stage_and_the_classifiers():
    params = default_params()
    assert set(params) == {*STAGES, "classifiers", "hosts"}
    seeds = params["classifiers"]["seeds"]
    assert list(params["classifiers"]) == ["seeds"]  # `${classifiers}` unpacks to --seeds
    assert seeds and len(set(seeds)) == len(seeds)
    assert all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)


# --------------------------------------------------------------------------- (c) DVC's form


def test_params_yaml_is_as_dvc_writes_it(tmp_path):
    """`dvc exp run -S` parses params.yaml and writes it whole again with DVC's own dumper
    (block lists, null left blank, a comment kept where that dumper keeps it): setting a value
    to what it already is leaves the file as it was, byte for byte."""
    before = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(before)
    dvc_set_params(path, "embed.dim=5")
    assert path.read_text() == before, changed_lines(before, path.read_text())


@pytest.mark.parametrize(
    "override, lines",
    [
        ("embed.dim=10", ["-  dim: 5 ", "+  dim: 10 "]),
        ("pairs.top_k=1", ["-  top_k: 3 ", "+  top_k: 1 "]),
        ("prepare.max_per_class=100", ["-  max_per_class: ", "+  max_per_class: 100 "]),
        ("train.unseen=[truck]", ["-  unseen: [] ", "+  unseen: ", "+  - truck"]),
        ("classifiers.seeds=[0]", ["-  - 1", "-  - 2"]),
    ],
)
def test_an_experiment_changes_only_the_lines_of_its_values(override, lines, tmp_path):
    """What the README's and docs' experiments set: the diff is those values' lines alone."""
    before = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(before)
    dvc_set_params(path, override)
    changed = changed_lines(before, path.read_text())
    assert len(changed) == len(lines), changed
    assert all(c.startswith(line) for c, line in zip(changed, lines, strict=True)), changed


def test_the_raw_data_dvc_file_is_as_dvc_writes_it(tmp_path):
    """DVC writes a .dvc file again when an experiment runs: the file must be what DVC's
    writer gives back (its long texts folded at DVC's width), so that it stays unchanged."""
    from dvc.repo import Repo

    name = "data/raw/cifar10-jpeg.tar.gz.dvc"
    text = (ROOT / name).read_text()
    repo = Repo.init(tmp_path, no_scm=True)
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(text)
    (stage,) = repo.stage.collect(str(tmp_path / name))
    stage.dump()
    assert (tmp_path / name).read_text() == text


# --------------------------------------------------------------------------- (d) required


def _without(args: list[str], flag: str) -> list[str]:
    """args less `flag` and its value(s)."""
    i = args.index(flag)
    j = i + 1
    while j < len(args) and not args[j].startswith("--"):
        j += 1
    return args[:i] + args[j:]


@pytest.mark.parametrize(
    "stage, flag",
    [(s, f) for s in STAGES for f in stage_options(s) if (s, f) not in OPTIONAL],
)
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
    for flag in stage_options(stage):
        assert flag in err, (flag, err)
