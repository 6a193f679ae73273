"""The train stage: a smoke run, compile-once, multi-device agreement, resume after a kill,
test-time augmentation, and the split of the CPU into one device per core."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import make_prepared, xla_conv

from stages import parallel
from stages.common import PipelineError, validate_section
from stages.model import (
    CNN,
    ModelConfig,
    conv_dense,
    conv_matmul_grad,
    load_model,
    make_inference_fn,
    saved_conv_impl,
)
from stages.train import SCHEMA, augment, make_optimizer, make_train_step, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"epochs": 2, "batch_size": 16, "eval_batch_size": 16, "stem_width": 8,
        "widths": [8, 16], "lr": 0.01, "warmup_fraction": 0.5}


def tiny_params(**over) -> dict:
    return validate_section("train", {**TINY, **over}, SCHEMA)


@pytest.mark.parametrize(
    "conv, hw, kernel",
    [(conv_matmul_grad, (8, 8), 3), (conv_matmul_grad, (5, 7), 3),
     (conv_dense, (2, 2), 3), (conv_dense, (1, 1), 3), (conv_dense, (2, 3), 3),
     (conv_dense, (3, 4), 5)],
)
def test_custom_convolutions_match_xla_autodiff(conv, hw, kernel):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, *hw, 5))
    w = jax.random.normal(kw, (kernel, kernel, 5, 7))
    np.testing.assert_allclose(conv(x, w), xla_conv(x, w), rtol=1e-4, atol=1e-4)
    g = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(xla_conv(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_onednn_and_matmul_networks_match_xla_network(monkeypatch):
    """The whole CNN, conv_impl onednn and matmul (2x2 layers dense) vs plain XLA autodiff."""
    from stages import model as model_module

    dense_shapes = []

    def spy(x, w):
        dense_shapes.append(x.shape[1:3])
        return conv_dense(x, w)

    monkeypatch.setattr(model_module, "conv_dense", spy)
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    out = {}
    for impl in ("onednn", "matmul", "xla"):
        cfg = ModelConfig(5, 8, (8, 16, 16), conv_impl=impl, stem_patch=2)  # blocks at 8, 4, 2 px
        graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

        def loss(variables, graphdef=graphdef):
            # Batch statistics are differentiated too, as in the train step: NNX refuses to
            # update variables created outside the trace.
            logits = nnx.merge(graphdef, *variables)(x)
            return jnp.sum(jnp.sin(logits)), logits

        (grads, _), logits = jax.grad(loss, has_aux=True)((params, rest))
        out[impl] = (grads, logits)
    # Each block's first conv runs before its pool: 8x8 -> 4x4 | 4x4 -> 2x2 | 2x2 -> 1x1.
    assert dense_shapes == [(2, 2), (2, 2), (1, 1)] * 2
    for impl in ("onednn", "matmul"):
        for a, b in zip(jax.tree.leaves(out[impl]), jax.tree.leaves(out["xla"])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_augment_keeps_pixels_and_shape():
    imgs = jnp.asarray(np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3)), jnp.uint8)
    out = augment(imgs, jax.random.key(1), translate=2, flip=True)
    assert out.shape == imgs.shape
    # A shift with reflect padding and a flip only move pixels: the set of values in the
    # central 4x4 of the output comes from the input picture.
    assert set(np.unique(np.asarray(out[0]))) <= set(np.unique(np.asarray(imgs[0])))
    same = augment(imgs, jax.random.key(1), translate=2, flip=True)
    np.testing.assert_array_equal(out, same)
    np.testing.assert_array_equal(augment(imgs, jax.random.key(1), 0, False), imgs)


def _tiny_model(num_classes: int = 4):
    cfg = ModelConfig(num_classes, 8, (8, 16), stem_patch=2)
    return nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)


def test_tta_translate_averages_the_shifted_views_with_airbench_weights():
    graphdef, params, rest = _tiny_model()
    norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    imgs = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3)).astype(np.uint8)
    plain = make_inference_fn(graphdef, norm)
    tta = make_inference_fn(graphdef, norm, tta_translate=1)(params, rest, imgs)
    # The same views built by hand with numpy: shifted by one pixel down-right and up-left.
    padded = np.pad(imgs, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    want = (0.5 * plain(params, rest, imgs) + 0.25 * plain(params, rest, padded[:, :16, :16])
            + 0.25 * plain(params, rest, padded[:, 2:, 2:]))
    np.testing.assert_allclose(tta, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, plain(params, rest, imgs), atol=1e-4)  # the views differ
    # With flips on, each of the three views is averaged with its mirror image.
    both = make_inference_fn(graphdef, norm, tta_flip=True, tta_translate=1)

    def mirror(v):
        return 0.5 * (plain(params, rest, v) + plain(params, rest, v[:, :, ::-1]))

    want = (0.5 * mirror(imgs) + 0.25 * mirror(padded[:, :16, :16])
            + 0.25 * mirror(padded[:, 2:, 2:]))
    np.testing.assert_allclose(both(params, rest, imgs), want, rtol=1e-5, atol=1e-6)


def test_tta_leaves_a_uniform_picture_alone():
    graphdef, params, rest = _tiny_model()
    norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    imgs = np.full((2, 16, 16, 3), 77, np.uint8)  # every flip and shift gives it back
    plain = make_inference_fn(graphdef, norm)(params, rest, imgs)
    tta = make_inference_fn(graphdef, norm, tta_flip=True, tta_translate=2)(params, rest, imgs)
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cores, batch_sizes, want", [
    (2, [512, 1000], 2), (4, [512, 1000], 4), (16, [512, 1000], 8), (2, [7], 1),
    (3, [512, 1000], 2), (1, [512], 1), (0, [512], 1), (6, [36, 24], 6), (5, [36, 24], 4),
])
def test_auto_cpu_devices_divides_every_batch(cores, batch_sizes, want):
    n = parallel.auto_cpu_devices(cores, batch_sizes)
    assert n == want and all(b % n == 0 for b in batch_sizes)


def _run_python(script: str, *args: str) -> list[str]:
    """Run `script` in a fresh interpreter (JAX not started yet); its stdout's words."""
    return subprocess.run([sys.executable, "-c", script, *args], check=True,
                          capture_output=True, text=True, cwd=ROOT).stdout.split()


# Runs a jitted function whose 64 MB output is allocated afresh on every call, with or
# without reuse_host_memory, and prints the minor page faults per call.
_FAULTS_PER_CALL = """
import resource, sys
from stages import parallel
applied = parallel.reuse_host_memory() if sys.argv[1] == "reuse" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: x + 1)
x = jnp.zeros(16 * 2**20, jnp.float32)
for _ in range(8):  # until the heap holds every buffer a call needs
    f(x).block_until_ready().delete()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    f(x).block_until_ready().delete()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 16)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings: Linux only")
def test_reuse_host_memory_stops_page_faulting_every_call():
    def faults(mode: str) -> tuple[str, float]:
        out = _run_python(_FAULTS_PER_CALL, mode)
        return out[0], float(out[1])

    (applied_default, default), (applied, reused) = faults("default"), faults("reuse")
    assert applied_default == "False" and applied == "True"
    # 64 MB in 4 KiB pages is 16,384 faults per call. Reused pages fault once; the heap
    # may still grow by a buffer now and then (an aligned request that no freed chunk
    # fits), far from a fresh buffer on every call.
    assert default > 10_000 and reused < default / 3


def test_reuse_host_memory_leaves_a_running_jax_alone():
    jax.devices()  # the backends are up, as in any test process
    assert parallel.reuse_host_memory() is False


_PREPARE_HOST = """
import os
os.environ.pop("XLA_FLAGS", None)  # a forced device count would win over the setting
from stages import parallel
host = parallel.prepare_host(2, [8, 4])
import jax
print(host.memory_reused, host.cpu_devices, len(jax.devices("cpu")))
"""


def test_prepare_host_before_jax_starts_and_after():
    out = _run_python(_PREPARE_HOST)
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert out == [str(glibc), "2", "2"]
    # In this process JAX is already running: both settings are left alone.
    assert parallel.prepare_host(2, [8]) == parallel.HostSetup(False, None)


def test_data_mesh_over_the_first_devices():
    assert parallel.data_mesh().devices.size == jax.device_count()
    assert parallel.data_mesh(1).devices.tolist() == [jax.devices()[0]]


def test_train_step_compiles_once():
    p = tiny_params()
    cfg = ModelConfig(4, p["stem_width"], tuple(p["widths"]), stem_patch=2)
    graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = make_optimizer(p, 10)
    state = {"params": params, "rest": rest, "opt": tx.init(params),
             "step": jnp.zeros((), jnp.int32), "key": jax.random.key_data(jax.random.key(0))}
    step = make_train_step(graphdef, tx, (jnp.zeros(3), jnp.ones(3)), p)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.integers(0, 255, (16, 16, 16, 3)).astype(np.uint8)
        y = rng.integers(0, 4, 16).astype(np.int32)
        state, loss, _ = step(state, x, y)
    assert step._cache_size() == 1
    assert int(state["step"]) == 4 and np.isfinite(float(loss))


def test_smoke_one_epoch(tmp_path):
    prepared = make_prepared(tmp_path / "prepared")
    m = train(prepared, tmp_path / "model", tmp_path / "train.json", tmp_path / "live",
              tiny_params(epochs=1), resume_dir=tmp_path / "resume", progress=False)
    assert json.loads((tmp_path / "train.json").read_text()) == m
    assert m["epochs"] == 1 and 0.0 <= m["test_accuracy"] <= 1.0
    assert 0.0 <= m["test_accuracy_no_tta"] <= 1.0 and m["tta_translate"] == 1
    assert m["backend"] == jax.default_backend() and m["device_count"] == jax.device_count()
    graphdef, params, rest, cfg, norm = load_model(tmp_path / "model")
    assert cfg.num_classes == 4 and cfg.widths == (8, 16)
    assert (tmp_path / "live" / "plots" / "metrics" / "test" / "accuracy.tsv").exists()
    assert not list((tmp_path / "resume").glob("*.msgpack"))  # removed after success


def test_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    m = train(prepared, tmp_path / "model", tmp_path / "train.json", tmp_path / "live",
              tiny_params(epochs=4), resume_dir=tmp_path / "resume", progress=False)
    assert m["test_accuracy"] >= 0.9, m


def test_bad_batch_size_is_refused_before_any_output(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=2, test=2)
    with pytest.raises(PipelineError, match="train.batch_size"):
        train(prepared, tmp_path / "model", tmp_path / "train.json", tmp_path / "live",
              tiny_params(batch_size=64), resume_dir=tmp_path / "resume", progress=False)
    assert not (tmp_path / "model").exists() and not (tmp_path / "train.json").exists()


def test_git_repo_without_commits_gives_a_clear_error(tmp_path, monkeypatch):
    prepared = make_prepared(tmp_path / "prepared", train=2, test=2)
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    monkeypatch.chdir(tmp_path / "repo")
    with pytest.raises(PipelineError, match="commit once"):
        train(prepared, tmp_path / "model", tmp_path / "train.json", tmp_path / "live",
              tiny_params(epochs=1, batch_size=2), resume_dir=tmp_path / "resume",
              progress=False)
    assert not (tmp_path / "model").exists() and not (tmp_path / "train.json").exists()


# --------------------------------------------------------------------------- subprocess runs


def _write_params(path: Path, **over) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"train": {**TINY, **over}}))
    return path


def _cmd(tmp: Path, params: Path, tag: str) -> list[str]:
    return [sys.executable, "-m", "stages.train", "--prepared", str(tmp / "prepared"),
            "--model", str(tmp / f"model-{tag}"), "--metrics", str(tmp / f"train-{tag}.json"),
            "--live", str(tmp / f"live-{tag}"), "--params", str(params)]


def _env(devices: int, tmp: Path) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return env


def _metrics(tmp: Path, tag: str) -> dict:
    m = json.loads((tmp / f"train-{tag}.json").read_text())
    return {k: m[k] for k in ("test_accuracy", "train_accuracy", "train_loss")}


@pytest.mark.slow
def test_two_fake_devices_agree_with_one(tmp_path):
    make_prepared(tmp_path / "prepared", train=32, test=8)
    params = _write_params(tmp_path / "params.yaml")
    for n in (1, 2):
        subprocess.run(_cmd(tmp_path, params, f"d{n}"), cwd=tmp_path, env=_env(n, tmp_path),
                       check=True, capture_output=True)
    one, two = _metrics(tmp_path, "d1"), _metrics(tmp_path, "d2")
    m1, m2 = (json.loads((tmp_path / f"train-d{n}.json").read_text()) for n in (1, 2))
    assert m1["device_count"] == 1 and m2["device_count"] == 2  # XLA_FLAGS is obeyed
    # The sharded batch sums in a different order: equal up to float rounding.
    assert one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=1 / 32)
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("setting, conv_impl, batches, want", [
    ("auto", "onednn", (16, 16), 1),  # oneDNN spreads each convolution over every core
    ("auto", "matmul", (16, 16), None), ("auto", "matmul", (15, 5), None),
    (1, "matmul", (16, 16), 1), (3, "onednn", (18, 18), 3),
])
def test_cli_splits_the_cpu_into_devices(tmp_path, setting, conv_impl, batches, want):
    """Without XLA_FLAGS the CLI makes `cpu_devices` JAX devices (auto: one device with
    oneDNN's convolutions, else one per core that divides the batch sizes), and trains
    with them."""
    make_prepared(tmp_path / "prepared", train=36, test=8)
    params = _write_params(tmp_path / "params.yaml", cpu_devices=setting, epochs=1,
                           batch_size=batches[0], eval_batch_size=batches[1],
                           conv_impl=conv_impl)
    env = {k: v for k, v in _env(1, tmp_path).items() if k != "XLA_FLAGS"}
    subprocess.run(_cmd(tmp_path, params, "cli"), cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    m = json.loads((tmp_path / "train-cli.json").read_text())
    if want is None:
        want = parallel.auto_cpu_devices(parallel.cpu_cores(), batches)
    assert m["device_count"] == want


def test_saved_conv_impl_is_read_without_jax(tmp_path):
    """predict learns the model's convolutions (for `cpu_devices: auto`) before JAX starts;
    a missing or broken config gives the default and load_model reports it."""
    assert saved_conv_impl(tmp_path / "none") == ModelConfig.conv_impl
    (tmp_path / "config.json").write_text("{not json")
    assert saved_conv_impl(tmp_path) == ModelConfig.conv_impl
    (tmp_path / "config.json").write_text(json.dumps({"model": {"conv_impl": "matmul"}}))
    assert saved_conv_impl(tmp_path) == "matmul"


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    # Enough pictures that an epoch lasts a good fraction of a second: the kill must land
    # between the first checkpoint and the end of the run.
    make_prepared(tmp_path / "prepared", train=512, test=8)
    params = _write_params(tmp_path / "params.yaml", epochs=3)
    env = _env(1, tmp_path)
    subprocess.run(_cmd(tmp_path, params, "full"), cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    # Kill the second run with SIGKILL as soon as its first epoch's checkpoint exists.
    proc = subprocess.Popen(_cmd(tmp_path, params, "killed"), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = tmp_path / ".cache" / "train"
    deadline = time.time() + 300
    while not list(resume.glob("*.msgpack")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(resume.glob("*.msgpack")), "no checkpoint was written before the kill"
    assert not (tmp_path / "model-killed").exists()  # nothing the next stage would read
    out = subprocess.run(_cmd(tmp_path, params, "killed"), cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True)
    assert "resuming from" in out.stdout
    assert _metrics(tmp_path, "killed") == _metrics(tmp_path, "full")
    live = (tmp_path / "live-killed" / "plots" / "metrics" / "test" / "accuracy.tsv")
    assert len(live.read_text().strip().splitlines()) == 1 + 3  # header + every epoch
