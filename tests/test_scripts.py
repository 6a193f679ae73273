"""pyproject.toml's console scripts: each names a module's `cli`, which the installed script
runs (errors as one `error:` line and exit code 2, as `python -m` gives them)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_command_line_tool_is_a_console_script():
    targets = {v.split(":")[0] for v in SCRIPTS.values()}
    assert targets == {f"confusion_embeddings.{m}" for m in ("study", "compare", "experiments")}
    for target in SCRIPTS.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_script_runs(name, tmp_path):
    script = Path(sys.executable).parent / name
    assert script.exists(), f"{script}: reinstall the project (make setup)"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("usage:"), shown
    # An error is one line on stderr and exit code 2 (here: a folder with no experiments,
    # two tables that do not exist, a predictions file that does not exist).
    args = {"confusion-experiments": [], "confusion-compare": ["a", "b"]}.get(
        name, ["study", "--predictions", "missing.npz"]
    )
    failed = subprocess.run([script, *args], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 2, failed
    assert failed.stderr.startswith("error: ") and failed.stderr.count("\n") == 1, failed.stderr
