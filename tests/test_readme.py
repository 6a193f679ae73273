"""The README and the docs pages it leads to, run and checked as written.

* The bring-your-own-model walkthrough (docs/own-model.md): the code blocks between
  `<!-- walkthrough: start -->` and `<!-- walkthrough: end -->` are extracted from the page
  itself, so the two cannot drift: a Python block is saved under the file name of its first
  line's comment, a bash block runs line by line (comments dropped, `source
  .venv/bin/activate` and `pip install` replaced by this test's environment). They run in a
  scratch copy of the project, from its root, as a user would; then the study must behave
  as the page promises.
* The Python API example (the same page) and the class-vector example (docs/results.md),
  run as a notebook cell would run them.
* The README is a front door: short, the set-up steps in the order they can run, the
  readable view of the experiments named, and every page it leads to there; every `make`
  target, `python -m` module and file of the project that it and the docs pages name exists
  (the commands that need the whole CIFAR-10 run are run by none of these tests).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import confusion_embeddings as ce

from helpers import cli_env, copy_code, metric_keys
from synthetic import CIFAR10, CIFAR10_GROUPS, make_synthetic_predictions

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)
README = ROOT / "README.md"
OWN_MODEL = ROOT / "docs" / "own-model.md"  # the walkthrough and the API example
RESULTS = ROOT / "docs" / "results.md"  # the class vectors' example
# Every page of the docs a reader reaches from the README, and the README itself.
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def marked(path: Path, name: str) -> list[tuple[str, str]]:
    """The (kind, code) blocks between `<!-- name: start -->` and `<!-- name: end -->`."""
    text = path.read_text()
    start = text.index(f"<!-- {name}: start -->")
    end = text.index(f"<!-- {name}: end -->", start)
    return BLOCK.findall(text[start:end])


def walkthrough() -> list[tuple[str, str]]:
    return marked(OWN_MODEL, "walkthrough")


def _project(tmp: Path) -> Path:
    project = tmp / "project"
    project.mkdir()
    copy_code(project)
    shutil.copy(ROOT / "dvc.yaml", project)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    return project


def test_the_walkthrough_is_where_the_readme_leads():
    kinds = [kind for kind, _ in walkthrough()]
    assert kinds == ["bash", "python", "bash"]
    assert "docs/own-model.md" in README.read_text()


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path):
    project = _project(tmp_path)
    cwd, outputs = project, {}
    for kind, code in walkthrough():
        if kind == "python":
            name = code.splitlines()[0].removeprefix("# ").strip()
            (cwd / name).write_text(code)
            continue
        for line in code.splitlines():
            command = line.split("  #", 1)[0].strip()
            if not command or command.startswith(("source ", "pip install")):
                continue  # this test runs inside the environment those lines set up
            if command.startswith("mkdir -p ") and " && cd " in command:
                folder = command.split(" && cd ", 1)[1]
                (cwd / folder).mkdir(parents=True, exist_ok=True)
                cwd = (cwd / folder).resolve()
                continue
            if command.startswith("cd "):
                cwd = (cwd / command[3:]).resolve()
                continue
            # python -m confusion_embeddings.study must find this copy's code, not an
            # installed checkout elsewhere.
            env = cli_env(PYTHONPATH=str(project), COLUMNS="80")
            proc = subprocess.run(
                command, shell=True, cwd=cwd, env=env, capture_output=True, text=True
            )
            assert proc.returncode == 0, f"{command}:\n{proc.stdout}\n{proc.stderr}"
            outputs[command] = proc.stdout + proc.stderr

    study = project / "studies" / "digits"
    assert cwd == study
    # The predictions file is DVC's, never git's.
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=study, capture_output=True, text=True
    ).stdout.split()
    assert "inputs/predictions.npz.dvc" in tracked and "inputs/predictions.npz" not in tracked
    # Untargeted `dvc repro` had nothing to do after the baseline; the queued experiments ran
    # from the baseline: dim10 reran embed and evaluate, top1 pairs too, and top1 kept
    # embed.dim 5 (not stacked on dim10).
    assert "Data and pipelines are up to date" in outputs["dvc repro"]
    ran = outputs["dvc exp run --run-all"]
    assert "dim10" in ran and "top1" in ran
    # The 80-column view (COLUMNS=80 in cli_env): every experiment's name, changed params and
    # table_reliability in full, no line wider than the terminal, nothing cut to "…".
    lines = outputs["python -m confusion_embeddings.experiments"].splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in "".join(lines)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert {"workspace", "main", "dim10", "top1"} <= set(rows)
    assert "top_k=3 dim=5" in rows["workspace"]  # the queue left the workspace alone
    assert "top_k=1 dim=5" in rows["top1"] and "top_k=3 dim=10" in rows["dim10"]
    baseline = json.loads(
        subprocess.run(
            ["git", "show", "main:metrics/similarity.json"],
            cwd=study,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert f" {baseline['table_reliability']} " in rows["main"] + " "
    # exp show: the study's params and metrics only, every metric with a value.
    rows = list(csv.DictReader(io.StringIO(outputs["dvc exp show --csv"])))
    columns = set(rows[0])
    assert not {c for c in columns if c.startswith(("train.", "prepare.", "predict."))}
    assert not {c for c in columns if "cifar" in c.lower()}
    metric_columns = [c for c in columns if c.split(":")[-1] in metric_keys(study)]
    assert len(metric_columns) >= len(metric_keys(study)) - 2  # keys shared by two files
    for row in rows:
        for column in metric_columns:
            if column.split(":")[-1] == "secondary_vs_confusion" and row["pairs.top_k"] == "1":
                continue  # top-1 pairs have no lower guesses to read
            assert row[column] != "", (row["rev"], column)
    assert "embed.dim" in outputs["dvc params diff main dim10"]
    assert "metrics/similarity.json" in outputs["dvc metrics diff main dim10"]
    assert (study / "dvc_plots" / "index.html").exists()
    # dvc_plots/ stays out of git; the plots stay small (counts, not one row per picture).
    assert (
        "dvc_plots"
        not in subprocess.run(
            ["git", "status", "--short"], cwd=study, capture_output=True, text=True
        ).stdout
    )
    assert "beyond noise" in outputs["python -m confusion_embeddings.compare main dim10"]
    # The class map's distortion is written in the report.
    report = (study / "reports" / "similarity.md").read_text()
    assert re.search(r"The class map .* has stress 0\.\d{3}", report)


def test_the_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/own-model.md's 'From Python' block, executed as a notebook cell would be."""
    ((kind, code),) = marked(OWN_MODEL, "api")
    assert kind == "python" and len(code.splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    result = namespace["result"]
    assert float(printed[0]) == result.metrics["table_reliability"] > 0.8
    assert printed[1].startswith(("[Neighbour('9', cosine=", "[Neighbour('2', cosine="))
    assert len(namespace["frame"]) == 90 and list(tmp_path.iterdir()) == []


def test_the_class_vectors_example_runs_on_what_save_writes(tmp_path, monkeypatch, capsys):
    """docs/results.md's gensim example reads data/class_vectors/vectors.kv, which the
    evaluate stage writes and so does `Result.save()`, under the same path."""
    ((kind, code),) = marked(RESULTS, "vectors")
    assert kind == "python"
    arrays = make_synthetic_predictions(60, CIFAR10, CIFAR10_GROUPS, 1.5, seed=0)
    ce.embed_predictions(arrays["labels"], CIFAR10, probs=arrays["probs"], bootstrap=10).save(
        tmp_path
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/results.md", "exec"), {})
    (printed,) = capsys.readouterr().out.splitlines()
    neighbours = re.findall(r"\('(\w+)', ", printed)
    assert len(neighbours) == 3 and set(neighbours) <= set(CIFAR10) - {"cat"}


# --------------------------------------------------------------------------- the front door


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_readme_is_a_front_door():
    """Read in five minutes: what it does, the two commands, the set-up steps in the order
    they can run (dvc exists only after `make setup`), one results table, the readable view
    of the experiments, and where to go next."""
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    run = _section(text, "Run it")
    assert "make pipeline   # " in run and "make test       # " in run  # CI and users use them
    steps = [line.split("#")[0].strip() for line in BLOCK.findall(run)[1][1].splitlines()]
    order = [
        "make setup",
        "source .venv/bin/activate",
        "dvc remote add --local -d",
        "make pipeline",
    ]
    at = [next(i for i, step in enumerate(steps) if step.startswith(o)) for o in order]
    assert at == sorted(at), steps
    tables = re.findall(r"(?m)^\| figure .*\|$", text)  # the results table's header
    assert len(tables) == 1 and "## Results on CIFAR-10" in text
    assert "python -m confusion_embeddings.experiments" in _section(
        text, "Experiments, and reading them"
    )
    going = _section(text, "Where to go next")
    named = set(re.findall(r"docs/[\w/.-]+", going))
    for page in ("experiments", "results", "own-model", "unseen", "sharing", "hosts"):
        assert f"docs/{page}.md" in named, page
    assert all((ROOT / n).exists() for n in named), named


OUR_PACKAGES = ("confusion_embeddings", "stages", "benchmarks", "method_studies")


def test_every_command_and_file_the_pages_name_exists():
    """What a reader types from the README and the docs: `make <target>` is a target of the
    Makefile, `python -m <module>` a module of the project, and every path under docs/ or
    one of OUR_PACKAGES a file or folder (tests/ paths: test_reliability_doc.py)."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"(?m)^([\w-]+):", makefile))
    for page in PAGES:
        text = page.read_text()
        # What is typed: fenced blocks and inline code spans.
        code = "\n".join(
            re.findall(r"```\w*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
        )
        for target in re.findall(r"(?m)(?:^|\s)make ([a-z][\w-]*)", code):
            assert target in targets, (page.name, f"make {target}")
        for module in {m.rstrip(".") for m in re.findall(r"python -m ([\w.]+)", code)}:
            found = module.split(".")[0] in OUR_PACKAGES
            assert not found or importlib.util.find_spec(module), (page.name, module)
        for path in set(re.findall(rf"\b((?:docs|{'|'.join(OUR_PACKAGES)})/[\w/.-]*\w)", text)):
            assert (ROOT / path).exists() or "<" in path, (page.name, path)
