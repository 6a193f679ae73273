"""Several processes, for real: the train and predict stages under JAX's distributed runtime.

Two processes on localhost (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, as
docs/hosts.md launches them), each with one CPU device, talk through XLA's CPU
collectives (Gloo over TCP). They run the stages' own command lines (dvc.yaml) on a tiny
dataset, against one process with two CPU devices (`train.cpu_devices: 2`): the same global
device count, so the same computation.

* With XLA's convolutions the model, metrics and predictions are byte-identical.
* With oneDNN's they agree to ONEDNN_ATOL under SGD, not to the bit: each oneDNN call runs on
  cores // local devices threads (cnn/onednn.py), 1 in one process with two devices, 2 in
  each of two processes, and its weight gradient sums its partial results over its threads.
* Only process 0 writes: process 1 is given other output paths, which stay empty.
* A killed process: its peer exits within a bounded time with one line on stderr, and a
  rerun of both resumes from the last checkpoint onto the uninterrupted run's weights.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from flax import serialization

from confusion_embeddings.cnn import onednn
from confusion_embeddings.cnn.checkpoint import read_config

from helpers import (
    ROOT,
    TINY_TRAIN,
    cli_env,
    default_params,
    make_prepared,
    scratch_project,
    stage_argv,
    stage_options,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EPOCHS = 6  # long enough to kill a process between its first checkpoint and its end
PEER_TIMEOUT = 10  # params hosts.peer_timeout: the killed run's peer must stop within it...
EXIT_BOUND = 3 * PEER_TIMEOUT  # ... and, with the slack of a loaded machine, within this
ONEDNN_ATOL = 1e-6  # measured under SGD after 6 epochs of this network: 4.2e-7 at most
# Process 1's outputs go here: it must write none of them.
ELSEWHERE = "elsewhere"
OUTPUTS = ("model", "metrics", "timings", "live")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(folder: Path, conv_impl: str, **recipe) -> Path:
    """A tiny project on params.yaml's train recipe, with the train params in `recipe`."""
    params = default_params()
    params["train"].update(TINY_TRAIN, epochs=EPOCHS, conv_impl=conv_impl, precision="f32")
    params["train"].update(recipe)
    params["hosts"]["peer_timeout"] = PEER_TIMEOUT
    scratch_project(folder, params)
    make_prepared(folder / "data" / "prepared", num_classes=4, train=64, test=16)
    # dvclive (train) needs a git repository with a commit.
    for cmd in (
        ["git", "init", "-q"],
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
    ):
        subprocess.run(cmd, cwd=folder, check=True)
    return folder


def set_cpu_devices(folder: Path, n: int) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["train"]["cpu_devices"] = n
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def env(**extra: str) -> dict[str, str]:
    return cli_env(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)


def launch(folder: Path, stage: str, process: int | None, port: int = 0) -> subprocess.Popen:
    """The stage's dvc.yaml command in `folder`: alone (process None) or as one of two."""
    params = yaml.safe_load((folder / "params.yaml").read_text())
    paths = {}
    if process == 1:  # the same command, but with every output moved aside
        options = stage_options(stage, params)
        names = OUTPUTS if stage.startswith("train") else ("out", "timings")
        paths = {n: f"{ELSEWHERE}/{options['--' + n]}" for n in names}
    extra = {}
    if process is not None:
        extra = {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(process),
        }
    argv = [sys.executable, "-m", f"stages.{stage.partition('@')[0]}"]
    return subprocess.Popen(
        argv + stage_argv(stage, params, **paths),
        cwd=folder,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append((p.returncode, out, err))
    return results


def run_job(folder: Path, stage: str) -> list[tuple[int, str, str]]:
    port = free_port()
    return finish([launch(folder, stage, i, port) for i in (0, 1)])


def run_alone(folder: Path, stage: str) -> tuple[int, str, str]:
    return finish([launch(folder, stage, None)])[0]


def assert_ok(results) -> None:
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc}:\n{out[-2000:]}\n{err[-4000:]}"


def weights(folder: Path) -> list[np.ndarray]:
    import jax

    blob = (folder / "models" / "cnn" / "seed_0" / "model.msgpack").read_bytes()
    return jax.tree.leaves(serialization.msgpack_restore(blob))


def train_both(tmp: Path, conv_impl: str, **recipe) -> tuple[Path, Path, list]:
    """Train on the same tiny project twice: one process with two devices, two processes
    with one each; (the first's folder, the second's, the two processes' results)."""
    one = make_project(tmp / "one", conv_impl, **recipe)
    set_cpu_devices(one, 2)
    two = make_project(tmp / "two", conv_impl, **recipe)
    set_cpu_devices(two, 1)
    assert_ok([run_alone(one, "train@0")])
    results = run_job(two, "train@0")
    assert_ok(results)
    (_, out0, _), (_, out1, _) = results
    assert '"device_count": 2' in out0, out0[-1500:]  # the job saw both processes' devices
    assert "test accuracy" in out1  # process 1 trained too...
    assert not (two / ELSEWHERE).exists(), "process 1 wrote outputs"  # ... and wrote nothing
    assert read_config(two / "models/cnn/seed_0").train.cpu_devices == 1
    return one, two, results


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_both with XLA's convolutions, shared by the tests of this file."""
    return train_both(tmp_path_factory.mktemp("multiprocess"), "xla")


def test_two_processes_train_as_one_process_with_two_devices(trained):
    one, two, _ = trained
    for path in ("models/cnn/seed_0/model.msgpack", "metrics/train/seed_0.json"):
        assert (one / path).read_bytes() == (two / path).read_bytes(), path


@pytest.mark.skipif(not onednn.available(), reason="oneDNN runs on x86-64 Linux CPUs only")
def test_with_onednn_two_processes_train_as_one_within_its_rounding(tmp_path):
    # Under SGD, so that the kernel's rounding reaches the weights unmagnified: Muon (the
    # default) maps each filter gradient to its orthogonal factor, which scales the near-zero
    # singular directions of these tiny gradients up to unit size, and with them the rounding
    # (measured: 1.5e-2 apart after these 24 steps, against 4.2e-7 under SGD). Lookahead
    # off too: the model it keeps is the slow copy of step 20, not the last step's weights,
    # and ONEDNN_ATOL was measured on the last step's (with it on, one parameter came 1.3e-6 apart
    # on an AMD EPYC with AVX512-BF16). That the distributed run computes Muon's step and the
    # lookahead itself is the byte-identical XLA test's job, on the default recipe.
    one, two, _ = train_both(tmp_path, "onednn", optimizer="sgd", lookahead=False)
    a, b = weights(one), weights(two)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=ONEDNN_ATOL)


def test_predict_under_two_processes_writes_one_file(trained):
    one, two, _ = trained
    # The one-process model says cpu_devices 2 and the two-process one 1 (per process): the
    # same two devices in all, and the same weights (the test above).
    assert_ok([run_alone(one, "predict@0")])
    results = run_job(two, "predict@0")
    assert_ok(results)
    assert not (two / ELSEWHERE).exists(), "process 1 wrote outputs"
    out = "data/predictions/seed_0.npz"
    with np.load(one / out) as a, np.load(two / out) as b:
        assert sorted(a.files) == sorted(b.files)
        assert len(a["labels"]) == 4 * (64 + 16)  # every picture of both splits
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def interrupt_training(project: Path, sig: signal.Signals) -> tuple[str, str, float]:
    """Start both processes, send `sig` to process 1 once the first checkpoint is written;
    (process 0's stdout, its stderr, seconds it ran on after the signal)."""
    port = free_port()
    procs = [launch(project, "train@0", i, port) for i in (0, 1)]
    checkpoints = project / project_option(project, "train@0", "--checkpoints")
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*.msgpack")):
        assert procs[0].poll() is None, finish(procs)
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    procs[1].send_signal(sig)
    sent = time.monotonic()
    try:
        procs[0].wait(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"process 0 still ran {EXIT_BOUND} s after its peer got {sig.name}")
    finally:
        waited = time.monotonic() - sent
        for p in procs:
            if p.poll() is None:
                p.kill()
    (rc, out, err), _ = finish(procs)
    assert rc != 0, out[-1500:]
    assert f"epoch {EPOCHS}/{EPOCHS}" not in out, "the signal came after training"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: process 0 of 2: "), err[-3000:]
    assert "rerun every process" in errors[0]
    assert "Traceback" not in err and "Check failure" not in err, err[-3000:]
    return out, errors[0], waited


def test_a_killed_process_stops_its_peer_and_a_rerun_resumes(trained, tmp_path):
    one, _, _ = trained
    project = make_project(tmp_path / "killed", "xla")
    set_cpu_devices(project, 1)
    # A dead peer closes its sockets: the collective fails at once.
    _, error, _ = interrupt_training(project, signal.SIGKILL)
    assert "another process of this job stopped" in error

    resumed = run_job(project, "train@0")
    assert_ok(resumed)
    for _, out, _ in resumed:
        assert "resuming from" in out, out[-1500:]
    # Onto the same computation: the weights of the uninterrupted run (one process with
    # two devices, byte-identical to two processes by the test above).
    assert (project / "models/cnn/seed_0/model.msgpack").read_bytes() == (
        one / "models/cnn/seed_0/model.msgpack"
    ).read_bytes()
    checkpoints = project / project_option(project, "train@0", "--checkpoints")
    assert not list(checkpoints.glob("*.msgpack")), "the finished run left its checkpoint"


def test_a_hung_process_stops_its_peer_after_the_timeout(tmp_path):
    project = make_project(tmp_path / "hung", "xla")
    set_cpu_devices(project, 1)
    # A stopped peer keeps its sockets open: only the heartbeat notices (hosts.peer_timeout).
    _, error, waited = interrupt_training(project, signal.SIGSTOP)
    assert f"process 1 gave no sign of life for {PEER_TIMEOUT} s" in error
    assert "hosts.peer_timeout" in error
    assert PEER_TIMEOUT - 2 <= waited < EXIT_BOUND, waited


def project_option(folder: Path, stage: str, flag: str) -> str:
    """An option's value in the stage's command, with the project's own params."""
    return stage_options(stage, yaml.safe_load((folder / "params.yaml").read_text()))[flag]
