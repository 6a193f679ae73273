"""The README's bring-your-own-model walkthrough, run exactly as written.

The code blocks between `<!-- walkthrough: start -->` and `<!-- walkthrough: end -->` are
extracted from README.md itself, so the two cannot drift: a Python block is saved under the
file name of its first line's comment, a bash block runs line by line (comments dropped,
`source .venv/bin/activate` and `pip install` replaced by this test's environment). They run
in a scratch copy of the project, from its root, as a user would; then the study must
behave as the README promises.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import cli_env, copy_code, metric_keys

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def walkthrough() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- walkthrough: start -->")
    end = text.index("<!-- walkthrough: end -->", start)
    return BLOCK.findall(text[start:end])


def _project(tmp: Path) -> Path:
    project = tmp / "project"
    project.mkdir()
    copy_code(project)
    shutil.copy(ROOT / "dvc.yaml", project)
    shutil.copytree(ROOT / ".dvc" / "plots", project / ".dvc" / "plots")
    return project


def test_the_walkthrough_is_in_the_readme():
    kinds = [kind for kind, _ in walkthrough()]
    assert kinds == ["bash", "python", "bash"]


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


def test_the_readme_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The 'Use it from Python' block, executed as a notebook cell would be."""
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- api: start -->")
    ((kind, code),) = BLOCK.findall(text[start : text.index("<!-- api: end -->", start)])
    assert kind == "python" and len(code.splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    result = namespace["result"]
    assert float(printed[0]) == result.metrics["table_reliability"] > 0.8
    assert printed[1].startswith(("[Neighbour('9', cosine=", "[Neighbour('2', cosine="))
    assert len(namespace["frame"]) == 90 and list(tmp_path.iterdir()) == []
