"""The pipeline where the fast path is missing, and on more than one host.

- conv_impl auto: where the oneDNN kernel cannot be built (no compiler, no wheels, another
  platform) training falls back to XLA's convolutions with one warning line and records it;
  an explicit `onednn` stops with a clear error instead.
- Resume: a killed run continues only onto the same computation.
- Several hosts: the start-up logic reads the environment a cluster manager sets.
- Outputs: a temporary file of another host is never swept.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from confusion_embeddings import host
from confusion_embeddings.cnn import conv, onednn
from confusion_embeddings.cnn.checkpoint import read_config
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.files import _host, atomic_file

from helpers import (
    TINY_TRAIN,
    copy_code,
    default_params,
    make_prepared,
    scratch_project,
    stage_argv,
)

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp: Path, train: int = 32, **train_over) -> Path:
    """A copy of the code, dvc.yaml, tiny params and a prepared dataset under tmp/project."""
    project = tmp / "project"
    params = default_params()
    params["train"].update({**TINY_TRAIN, **train_over})
    params["predict"]["batch_size"] = 16
    scratch_project(project, params)
    copy_code(project)
    prepared = stage_argv_option(project, "train", "--prepared")
    make_prepared(project / prepared, num_classes=4, train=train, test=8)
    return project


def stage_argv_option(project: Path, stage: str, flag: str) -> str:
    args = stage_argv(stage, yaml.safe_load((project / "params.yaml").read_text()))
    return args[args.index(flag) + 1]


def _run(project: Path, stage: str, env: dict, check: bool = True):
    params = yaml.safe_load((project / "params.yaml").read_text())
    cmd = [sys.executable, "-m", f"stages.{stage}", *stage_argv(stage, params)]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        pytest.fail(f"{stage} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


# --------------------------------------------------------------------------- conv_impl auto


def test_resolve_keeps_an_explicit_xla_convolution():
    assert conv.resolve("matmul", "f32") == conv.ConvChoice("matmul", "f32")
    assert conv.resolve("xla", "f32") == conv.ConvChoice("xla", "f32")


def test_resolve_auto_falls_back_off_the_kernels_platform(monkeypatch):
    monkeypatch.setattr(onednn, "platform_supported", lambda: False)
    choice = conv.resolve("auto", "f32")
    assert choice.impl == "matmul"
    assert choice.warning.startswith("warning: oneDNN convolutions unavailable (no oneDNN wheels")
    assert "\n" not in choice.warning and "make setup" in choice.warning
    with pytest.raises(onednn.KernelUnavailable, match="x86-64 Linux only.*conv_impl: auto"):
        conv.resolve("onednn", "f32")


def test_resolve_auto_falls_back_when_the_kernel_cannot_be_built(monkeypatch):
    def no_kernel():
        raise onednn.KernelUnavailable("long message", reason="no C++ compiler ('cc' not found)")

    monkeypatch.setattr(onednn, "platform_supported", lambda: True)
    monkeypatch.setattr(onednn, "load", no_kernel)
    choice = conv.resolve("auto", "f32")
    assert choice.impl == "matmul"
    assert "(no C++ compiler ('cc' not found))" in choice.warning
    with pytest.raises(onednn.KernelUnavailable, match="long message"):
        conv.resolve("onednn", "f32")


@pytest.mark.slow
def test_training_without_a_compiler_falls_back_and_records_it(tmp_path):
    """No compiler and an empty kernel cache: the default params still train and predict,
    on XLA's convolutions, with one warning line each, and the choice is recorded."""
    project = _project(tmp_path)
    env = _env(CXX=str(tmp_path / "no-such-compiler"), ONEDNN_CONV_CACHE=str(tmp_path / "k"))
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["conv_impl"] == "auto"
    trained = _run(project, "train", env)
    warnings = [line for line in trained.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: oneDNN convolutions unavailable (no C++ compiler "
        f"({str(tmp_path / 'no-such-compiler')!r} not found)); using XLA's (conv_impl matmul), "
        f"slower on CPU; {onednn.FAST_PATH_HINT}"
        + (
            # The default precision is bf16, which needs oneDNN's convolutions: one line.
            "; precision bf16 unavailable (it needs oneDNN's convolutions, and conv_impl "
            "matmul runs here); using f32"
            if default_params()["train"]["precision"] == "bf16"
            else ""
        )
    ]
    metrics = json.loads((project / stage_argv_option(project, "train", "--metrics")).read_text())
    assert metrics["conv_impl_used"] == "matmul"
    model = project / stage_argv_option(project, "train", "--model")
    assert read_config(model).conv_impl == "matmul"
    assert not list((tmp_path / "k").rglob("*.so"))  # nothing half-built left behind
    predicted = _run(project, "predict", env)
    assert sum(line.startswith("warning:") for line in predicted.stderr.splitlines()) == 0
    assert (project / stage_argv_option(project, "predict", "--out")).exists()


@pytest.mark.slow
def test_explicit_onednn_without_a_compiler_stops_with_a_clear_error(tmp_path):
    project = _project(tmp_path, conv_impl="onednn")
    env = _env(CXX=str(tmp_path / "no-such-compiler"), ONEDNN_CONV_CACHE=str(tmp_path / "k"))
    proc = _run(project, "train", env, check=False)
    assert proc.returncode == 2
    assert "\nerror: compiling " in "\n" + proc.stderr
    assert "conv_impl: auto" in proc.stderr
    assert not (project / stage_argv_option(project, "train", "--model")).exists()


# --------------------------------------------------------------------------- resume


def _kill_after_first_checkpoint(project: Path, env: dict) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    cmd = [sys.executable, "-m", "stages.train", *stage_argv("train", params)]
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoints = project / stage_argv_option(project, "train", "--checkpoints")
    deadline = time.time() + 300
    while not list(checkpoints.rglob("*.msgpack")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.rglob("*.msgpack")), "the run ended before its first checkpoint"


def _change_a_pixel(project: Path) -> None:
    prepared = project / stage_argv_option(project, "train", "--prepared")
    images = np.load(prepared / "train_images.npy", mmap_mode="r+")
    images[0, 0, 0, 0] ^= 1
    images.flush()


def _change_the_kernel_source(project: Path) -> None:
    with open(project / "confusion_embeddings" / "cnn" / "onednn_conv.cc", "a") as fh:
        fh.write("// one more byte of source\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, resumes",
    [(None, True), (_change_a_pixel, False), (_change_the_kernel_source, False)],
    ids=["nothing", "a-pixel", "the-kernel-source"],
)
def test_a_killed_run_resumes_only_onto_the_same_computation(tmp_path, change, resumes):
    project = _project(tmp_path, train=512, epochs=3)
    env = _env(ONEDNN_CONV_CACHE=str(tmp_path / "kernels"))
    _kill_after_first_checkpoint(project, env)
    if change is not None:
        change(project)
    out = _run(project, "train", env).stdout
    assert ("resuming from" in out) == resumes, out
    assert ("epoch 1/3:" in out) != resumes, out
    checkpoints = project / stage_argv_option(project, "train", "--checkpoints")
    assert not list(checkpoints.rglob("*.msgpack")), "a finished run leaves no checkpoint"


# --------------------------------------------------------------------------- several hosts


@pytest.fixture
def clean_env(monkeypatch):
    for name in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "SLURM_NTASKS",
        "OMPI_MCA_orte_hnp_uri",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_by_default(clean_env):
    assert host.distributed_request() is None


def test_explicit_job_size_is_passed_on(clean_env):
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "host0:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "4")
    clean_env.setenv("JAX_PROCESS_ID", "3")
    assert host.distributed_request() == {"num_processes": 4, "process_id": 3}


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_NTASKS": "4"},
        {"OMPI_MCA_orte_hnp_uri": "1;tcp://10.0.0.1:1234"},
        {"JAX_COORDINATOR_ADDRESS": "host0:1234"},
    ],
    ids=["slurm", "open-mpi", "coordinator-only"],
)
def test_a_cluster_is_left_to_jax_detection(clean_env, env):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert host.distributed_request() == {}


def test_a_single_slurm_task_is_one_process(clean_env):
    clean_env.setenv("SLURM_NTASKS", "1")
    assert host.distributed_request() is None


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "go together"),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS is not"),
        ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "'two' is not an integer"),
    ],
)
def test_an_incomplete_job_description_is_refused(clean_env, env, message):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(PipelineError, match=message):
        host.distributed_request()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_JOIN = """
import jax
from confusion_embeddings import host
host.init_distributed()
print(jax.distributed.is_initialized(), jax.process_count(), jax.process_index(),
      host.is_primary())
"""


def test_a_one_process_job_starts_from_the_environment(tmp_path):
    """The real start-up, as a cluster launches it, with a job of one process."""
    env = _env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
        JAX_NUM_PROCESSES="1",
        JAX_PROCESS_ID="0",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _JOIN],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "1", "0", "True"]


def test_a_coordinator_without_a_job_size_is_a_clear_error(tmp_path):
    env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", PYTHONPATH=str(ROOT))
    code = (
        "from confusion_embeddings.core.cli import run_main\n"
        + "from confusion_embeddings import host\nrun_main(host.init_distributed)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: environment: JAX_COORDINATOR_ADDRESS is set but")
    assert "JAX_NUM_PROCESSES" in proc.stderr and proc.stderr.count("\n") == 1


# --------------------------------------------------------------------------- outputs


def test_the_sweep_removes_only_this_hosts_dead_temporaries(tmp_path):
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    mine = tmp_path / f".out.json.tmp-{_host()}-{dead}-abc"
    other = tmp_path / f".out.json.tmp-{_host()}x-{dead}-abc"  # another host's live file
    for path in (mine, other):
        path.write_text("partial")
    with atomic_file(tmp_path / "out.json") as tmp:
        tmp.write_text("{}")
    assert not mine.exists()
    assert other.exists()
    assert (tmp_path / "out.json").read_text() == "{}"
