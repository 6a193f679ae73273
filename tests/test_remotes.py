"""The project's DVC remotes (.dvc/config): the read-only CIFAR-10 store is pulled by name and
is nobody's default, so `dvc push` without a remote of one's own says what to do instead of
trying to write into it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]


def test_the_cifar10_remote_is_named_and_not_the_default():
    config = (ROOT / ".dvc" / "config").read_text()
    assert "['remote \"cifar10\"']" in config
    assert "remote =" not in config.split("['remote")[0]  # no core.remote: no default


def test_push_without_a_remote_of_ones_own_says_how_to_add_one(tmp_path):
    repo = tmp_path / "clone"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "data.txt").write_text("x\n")
    env = cli_env()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "add", "-q", "data.txt"], cwd=repo, env=env, check=True)
    push = subprocess.run([*dvc, "push"], cwd=repo, env=env, capture_output=True, text=True)
    assert push.returncode != 0
    assert "no remote specified" in push.stderr and "dvc remote default" in push.stderr


def test_the_archive_says_where_it_comes_from():
    doc = yaml.safe_load((ROOT / "data" / "raw" / "cifar10-jpeg.tar.gz.dvc").read_text())
    (out,) = doc["outs"]
    assert out["md5"] == "e50bbe6a3df0b8b33fdc046eaa13ffae"
    assert "cs.toronto.edu/~kriz/cifar.html" in out["meta"]["origin"]
    assert "c58f30108f718f92721af3b95e74349a" in out["meta"]["made_from"]
