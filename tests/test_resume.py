"""confusion_embeddings/cnn/resume.py: the resume checkpoint's fingerprint, save and load,
removal, and a train stage killed and resumed."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cnn_helpers import (
    OPTIONS,
    tiny_run,
    train_cmd,
    train_env,
    train_metrics,
    train_project,
)
from helpers import make_prepared


def test_resume_fingerprint_covers_the_content_of_every_dependency(tmp_path, monkeypatch):
    """The resume checkpoint's name: any change to the params, the seed, the convolution or
    the content of a dependency (dvc.yaml's list) names another checkpoint."""
    from confusion_embeddings.cnn.resume import fingerprint

    monkeypatch.chdir(tmp_path)
    code = tmp_path / "code"
    (code / "__pycache__").mkdir(parents=True)
    (code / "a.py").write_text("x = 1\n")
    data = make_prepared(tmp_path / "prepared")
    deps = [Path("code"), Path("prepared"), Path("kernel.cc")]  # the last one missing
    run = tiny_run(4, "xla")
    base = fingerprint(run, deps)
    assert fingerprint(run, list(reversed(deps))) == base  # order-free
    assert fingerprint(tiny_run(4, "xla", lr=0.02), deps) != base
    assert fingerprint(tiny_run(4, "xla", seed=1), deps) != base
    assert fingerprint(tiny_run(4, "matmul"), deps) != base
    assert fingerprint(tiny_run(4, "xla", "bf16"), deps) != base
    assert fingerprint(tiny_run(5, "xla"), deps) != base
    (code / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")  # changes on every import
    assert fingerprint(run, deps) == base
    (code / "a.py").write_text("x = 2\n")
    assert fingerprint(run, deps) != base
    (code / "a.py").write_text("x = 1\n")
    assert fingerprint(run, deps) == base
    labels = np.load(data / "train_labels.npy")
    np.save(data / "train_labels.npy", labels[::-1])  # same size, other content
    assert fingerprint(run, deps) != base
    np.save(data / "train_labels.npy", labels)
    (tmp_path / "kernel.cc").write_text("")  # a missing dep differs from an empty one
    assert fingerprint(run, deps) != base


def test_resume_checkpoint_round_trip(tmp_path):
    from confusion_embeddings.cnn.resume import HISTORY_KEYS, Resume
    from confusion_embeddings.cnn.training import create_train_state

    _, state, _ = create_train_state(tiny_run(), total_steps=10)
    resume = Resume(tmp_path / "ckpt", "abc123")
    assert not resume.exists() and resume.path == tmp_path / "ckpt" / "abc123.msgpack"
    history = [dict(zip(HISTORY_KEYS, (e, 1.0 / e, 0.5, 0.25), strict=True)) for e in (1, 2)]
    resume.save(state, history, 12.5)
    assert resume.exists()
    _, template, _ = create_train_state(tiny_run(seed=1), total_steps=10)  # other weights
    loaded, hist, seconds = resume.load(template)
    assert hist == history and [list(h) for h in hist] == [list(HISTORY_KEYS)] * 2
    assert seconds == 12.5
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    resume.remove()
    assert not resume.exists()
    resume.remove()  # removing twice is fine (the stage removes it after every success)


def test_resume_remove_clears_the_classifiers_folder(tmp_path):
    """The folder is one classifier's (.cache/train/seed_<s>): a finished run removes every
    checkpoint in it (an earlier computation's is stale), and nothing else, nor another
    classifier's folder."""
    from confusion_embeddings.cnn.resume import Resume

    mine, other = tmp_path / "seed_0", tmp_path / "seed_1"
    for folder in (mine, other):
        folder.mkdir()
        for name in ("old1.msgpack", "old2.msgpack"):
            (folder / name).write_bytes(b"stale")
    (mine / "notes.txt").write_text("kept")
    resume = Resume(mine, "current")
    resume.path.write_bytes(b"now")
    resume.remove()
    assert sorted(f.name for f in mine.iterdir()) == ["notes.txt"]
    assert sorted(f.name for f in other.iterdir()) == ["old1.msgpack", "old2.msgpack"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    # Enough pictures that an epoch lasts a good fraction of a second: the kill must land
    # between the first checkpoint and the end of the run.
    train_project(tmp_path, train=512, test=8, epochs=3)
    env = train_env(1, tmp_path)
    subprocess.run(train_cmd("full"), cwd=tmp_path, env=env, check=True, capture_output=True)
    # Kill the second run with SIGKILL as soon as its first epoch's checkpoint exists.
    proc = subprocess.Popen(
        train_cmd("killed"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume = tmp_path / OPTIONS["--checkpoints"]
    deadline = time.time() + 300
    while not list(resume.glob("*.msgpack")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(resume.glob("*.msgpack")), "no checkpoint was written before the kill"
    assert not (tmp_path / "model-killed").exists()  # nothing the next stage would read
    out = subprocess.run(
        train_cmd("killed"), cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    assert "resuming from" in out.stdout
    assert train_metrics(tmp_path, "killed") == train_metrics(tmp_path, "full")
    live = tmp_path / "live-killed" / "plots" / "metrics" / "test" / "accuracy.tsv"
    assert len(live.read_text().strip().splitlines()) == 1 + 3  # header + every epoch
