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
import yaml
from flax import nnx

from confusion_embeddings import devices as parallel
from confusion_embeddings.cnn import conv as conv_module
from confusion_embeddings.cnn import onednn
from confusion_embeddings.cnn.checkpoint import load_model, read_config
from confusion_embeddings.cnn.conv import conv_dense, conv_matmul_grad, conv_xla
from confusion_embeddings.cnn.inference import make_inference_fn
from confusion_embeddings.cnn.network import CNN, ModelConfig
from confusion_embeddings.cnn.training import (
    SCHEMA,
    augment,
    make_optimizer,
    make_train_step,
    train_and_evaluate,
)
from confusion_embeddings.core.cli import run_main
from confusion_embeddings.core.errors import PipelineError
from confusion_embeddings.core.params import validate_section
from confusion_embeddings.data.prepared import load_prepared
from stages import train as train_stage

from helpers import (
    TINY_TRAIN,
    default_params,
    make_prepared,
    run_in_project,
    run_stage_main,
    save_tiny_model,
    scratch_project,
    stage_argv,
    stage_options,
    without_fallback_warnings,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = {**TINY_TRAIN, "warmup_fraction": 0.5}
OPTIONS = stage_options("train")  # --prepared, --model, ... as dvc.yaml names them


def tiny_params(**over) -> dict:
    return validate_section("train", {**TINY, **over}, SCHEMA)


def tiny_config(num_classes: int = 4, conv_impl: str | None = None, **over) -> ModelConfig:
    """The network of tiny_params(**over) as train builds it; its convolution resolved from
    train.conv_impl unless given."""
    p = tiny_params(**over)
    impl = conv_impl or conv_module.resolve(p["conv_impl"]).impl
    return ModelConfig.from_params(p, num_classes, impl)


@pytest.mark.parametrize(
    "conv, hw, kernel",
    [
        (conv_matmul_grad, (8, 8), 3),
        (conv_matmul_grad, (5, 7), 3),
        (conv_dense, (2, 2), 3),
        (conv_dense, (1, 1), 3),
        (conv_dense, (2, 3), 3),
        (conv_dense, (3, 4), 5),
    ],
)
def test_custom_convolutions_match_xla_autodiff(conv, hw, kernel):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, *hw, 5))
    w = jax.random.normal(kw, (kernel, kernel, 5, 7))
    np.testing.assert_allclose(conv(x, w), conv_xla(x, w), rtol=1e-4, atol=1e-4)
    g = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_xla(x, w))), argnums=(0, 1))(x, w)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw, kernel", [((2, 2), 3), ((1, 1), 3), ((2, 3), 3), ((3, 4), 5)])
def test_bf16_dense_convolution_matches_f32(hw, kernel):
    """The 2x2 layer under bf16 (conv_dense through matmul_bf16): a bf16 result and input
    gradient, a float32 kernel gradient, within bf16 rounding of XLA's f32 convolution."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (6, *hw, 5)).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (kernel, kernel, 5, 7))
    g = jax.random.normal(kg, (6, *hw, 7)).astype(jnp.bfloat16)
    y, vjp = jax.vjp(conv_dense, x, w)
    dx, dw = vjp(g)
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
    y_ref, vjp_ref = jax.vjp(conv_xla, x.astype(jnp.float32), w)
    for got, want in zip((y, dx, dw), (y_ref, *vjp_ref(g.astype(jnp.float32))), strict=True):
        got = np.asarray(got, np.float32)
        assert np.linalg.norm(got - want) <= 1e-2 * np.linalg.norm(want)


def test_onednn_and_matmul_networks_match_xla_network(monkeypatch):
    """The whole CNN, conv_impl onednn and matmul (2x2 layers dense) vs plain XLA autodiff."""
    dense_shapes = []

    def spy(x, w):
        dense_shapes.append(x.shape[1:3])
        return conv_dense(x, w)

    monkeypatch.setattr(conv_module, "conv_dense", spy)
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    out = {}
    for impl in ("onednn", "matmul", "xla"):
        cfg = tiny_config(5, impl, widths=[8, 16, 16], stem_patch=2)  # blocks at 8, 4, 2 px
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
        for a, b in zip(jax.tree.leaves(out[impl]), jax.tree.leaves(out["xla"]), strict=True):
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
    cfg = tiny_config(num_classes, stem_patch=2)
    return nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)


def test_tta_translate_averages_the_shifted_views_with_airbench_weights():
    graphdef, params, rest = _tiny_model()
    norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    imgs = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3)).astype(np.uint8)
    plain = make_inference_fn(graphdef, norm)
    tta = make_inference_fn(graphdef, norm, tta_translate=1)(params, rest, imgs)
    # The same views built by hand with numpy: shifted by one pixel down-right and up-left.
    padded = np.pad(imgs, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    want = (
        0.5 * plain(params, rest, imgs)
        + 0.25 * plain(params, rest, padded[:, :16, :16])
        + 0.25 * plain(params, rest, padded[:, 2:, 2:])
    )
    np.testing.assert_allclose(tta, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(tta, plain(params, rest, imgs), atol=1e-4)  # the views differ
    # With flips on, each of the three views is averaged with its mirror image.
    both = make_inference_fn(graphdef, norm, tta_flip=True, tta_translate=1)

    def mirror(v):
        return 0.5 * (plain(params, rest, v) + plain(params, rest, v[:, :, ::-1]))

    want = (
        0.5 * mirror(imgs) + 0.25 * mirror(padded[:, :16, :16]) + 0.25 * mirror(padded[:, 2:, 2:])
    )
    np.testing.assert_allclose(both(params, rest, imgs), want, rtol=1e-5, atol=1e-6)


def test_tta_leaves_a_uniform_picture_alone():
    graphdef, params, rest = _tiny_model()
    norm = (np.zeros(3, np.float32), np.ones(3, np.float32))
    imgs = np.full((2, 16, 16, 3), 77, np.uint8)  # every flip and shift gives it back
    plain = make_inference_fn(graphdef, norm)(params, rest, imgs)
    tta = make_inference_fn(graphdef, norm, tta_flip=True, tta_translate=2)(params, rest, imgs)
    np.testing.assert_allclose(tta, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "cores, batch_sizes, want",
    [
        (2, [512, 1000], 2),
        (4, [512, 1000], 4),
        (16, [512, 1000], 8),
        (2, [7], 1),
        (3, [512, 1000], 2),
        (1, [512], 1),
        (0, [512], 1),
        (6, [36, 24], 6),
        (5, [36, 24], 4),
    ],
)
def test_auto_cpu_devices_divides_every_batch(cores, batch_sizes, want):
    n = parallel.auto_cpu_devices(cores, batch_sizes)
    assert n == want and all(b % n == 0 for b in batch_sizes)


def _run_python(script: str, *args: str) -> list[str]:
    """Run `script` in a fresh interpreter (JAX not started yet); its stdout's words."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()


# Runs a jitted function whose 64 MB output is allocated afresh on every call, with or
# without reuse_host_memory, and prints the minor page faults per call.
_FAULTS_PER_CALL = """
import resource, sys
from confusion_embeddings import devices as parallel
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
from confusion_embeddings import devices as parallel
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
    cfg = tiny_config(4)
    graphdef, params, rest = nnx.split(CNN(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = make_optimizer(p, 10)
    state = {
        "params": params,
        "rest": rest,
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": jax.random.key_data(jax.random.key(0)),
    }
    step = make_train_step(graphdef, tx, (jnp.zeros(3), jnp.ones(3)), p)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.integers(0, 255, (16, 16, 16, 3)).astype(np.uint8)
        y = rng.integers(0, 4, 16).astype(np.int32)
        state, loss, _ = step(state, x, y)
    assert step._cache_size() == 1
    assert int(state["step"]) == 4 and np.isfinite(float(loss))


def train_project(
    folder: Path, train: int = 32, test: int = 8, num_classes: int = 4, **over
) -> Path:
    """A project for the train stage: dvc.yaml, params.yaml (train: TINY + over), and a
    prepared dataset at dvc.yaml's --prepared."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update({**TINY, **over})
    scratch_project(folder, params)
    make_prepared(folder / OPTIONS["--prepared"], num_classes=num_classes, train=train, test=test)
    return folder


def run_train_stage(folder: Path, monkeypatch, **paths) -> None:
    """The train stage's main() in this process, from `folder`, with dvc.yaml's command."""
    monkeypatch.chdir(folder)
    run_stage_main("train", stage_argv("train", **paths))


def test_smoke_one_epoch(tmp_path, monkeypatch):
    project = train_project(tmp_path, epochs=1)
    seed = default_params()["classifiers"]["seeds"][0]
    assert stage_argv("train")[stage_argv("train").index("--seed") + 1] == str(seed)
    assert f"seed_{seed}" in OPTIONS["--model"]  # the first classifier's paths
    run_train_stage(project, monkeypatch)
    m = json.loads((project / OPTIONS["--metrics"]).read_text())
    # Headline figures only; wall times and speed in --timings.
    assert list(m) == [
        "test_accuracy",
        "test_accuracy_no_tta",
        "train_accuracy",
        "train_loss",
        "conv_impl_used",
        "precision_used",
        "backend",
        "cpu",
    ]
    assert 0.0 <= m["test_accuracy"] <= 1.0 and 0.0 <= m["test_accuracy_no_tta"] <= 1.0
    assert 0.0 <= m["train_accuracy"] <= 1.0 and np.isfinite(m["train_loss"])
    assert m["conv_impl_used"] == conv_module.resolve(tiny_params()["conv_impl"]).impl
    # The default precision where this machine can run it (conv.resolve's fallback rule).
    assert (
        m["precision_used"]
        == conv_module.resolve(tiny_params()["conv_impl"], tiny_params()["precision"]).precision
    )
    assert m["backend"] == jax.default_backend() and m["cpu"] == parallel.cpu_isa()
    t = json.loads((project / OPTIONS["--timings"]).read_text())
    assert list(t) == [
        "train_seconds",
        "wall_seconds",
        "images_per_second",
        "gflops_per_image_train",
        "device_count",
    ]
    assert t["device_count"] == jax.device_count() and t["wall_seconds"] >= t["train_seconds"] > 0
    assert t["images_per_second"] > 0 and t["gflops_per_image_train"] > 0
    graphdef, params, rest, cfg, inference, norm = load_model(project / OPTIONS["--model"])
    assert cfg.num_classes == 4 and cfg.widths == (8, 16) and cfg.conv_impl == m["conv_impl_used"]
    assert cfg.precision == m["precision_used"]
    assert cfg.logit_scale == tiny_params()["logit_scale"]
    # What predict needs to run the network as train did, saved with it.
    assert inference == {
        "tta_flip": True,
        "tta_translate": 1,
        "cpu_devices": "auto",
        "holdout": None,  # train.crossfit_folds 0: every training picture (tests/test_crossfit.py)
    }
    assert norm[0].shape == norm[1].shape == (3,)
    live = project / OPTIONS["--live"]
    assert (live / "plots" / "metrics" / "test" / "accuracy.tsv").exists()
    assert json.loads((live / "metrics.json").read_text())["step"] == 0  # one epoch
    assert not list((project / OPTIONS["--checkpoints"]).glob("*.msgpack"))  # removed at the end


def test_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    p = tiny_params(epochs=4)
    seen = []
    trained = train_and_evaluate(
        load_prepared(prepared),
        p,
        0,
        conv_module.resolve(p["conv_impl"]).impl,
        on_epoch=seen.append,
        show_progress=False,
    )
    assert trained.test_accuracy >= 0.9, trained.history
    assert [rec["epoch"] for rec in seen] == [1, 2, 3, 4] and seen == trained.history


def test_bad_batch_size_is_refused_before_any_output(tmp_path, monkeypatch, capsys):
    project = train_project(tmp_path, train=2, test=2, batch_size=64)
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["stages.train", *stage_argv("train")])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    assert "train.batch_size" in capsys.readouterr().err
    for option in ("--model", "--metrics", "--timings", "--live", "--checkpoints"):
        assert not (project / OPTIONS[option]).exists(), option
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    # The library refuses it too, before training anything.
    with pytest.raises(PipelineError, match="train.batch_size"):
        train_and_evaluate(
            load_prepared(project / OPTIONS["--prepared"]),
            tiny_params(batch_size=64),
            0,
            "xla",
            show_progress=False,
        )


def test_git_repo_without_commits_gives_a_clear_error(tmp_path, monkeypatch, capsys):
    project = train_project(tmp_path / "repo", train=2, test=2, epochs=1, batch_size=2)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["stages.train", *stage_argv("train")])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    err = without_fallback_warnings(capsys.readouterr().err)
    assert err.startswith("error: dvclive could not read the git repository")
    assert "commit once" in err
    for option in ("--model", "--metrics", "--timings"):
        assert not (project / OPTIONS[option]).exists(), option


def test_train_stage_needs_its_dvc_yaml_entry(tmp_path, monkeypatch, capsys):
    """The stage reads its dependencies (the resume fingerprint's) from dvc.yaml: run from
    a folder without one, it says so and writes nothing."""
    project = train_project(tmp_path, epochs=1)
    (project / "dvc.yaml").unlink()
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["stages.train", *stage_argv("train")])
    with pytest.raises(SystemExit) as exc:
        run_main(train_stage.main)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "dvc.yaml: cannot read stage 'train'" in err and "project root" in err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


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
    p = tiny_params()
    base = fingerprint(p, 0, "xla", deps)
    assert fingerprint(p, 0, "xla", list(reversed(deps))) == base  # order-free
    assert fingerprint(tiny_params(lr=0.02), 0, "xla", deps) != base
    assert fingerprint(p, 1, "xla", deps) != base
    assert fingerprint(p, 0, "matmul", deps) != base
    assert fingerprint(p, 0, "xla", deps, precision="bf16") != base
    (code / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")  # changes on every import
    assert fingerprint(p, 0, "xla", deps) == base
    (code / "a.py").write_text("x = 2\n")
    assert fingerprint(p, 0, "xla", deps) != base
    (code / "a.py").write_text("x = 1\n")
    assert fingerprint(p, 0, "xla", deps) == base
    labels = np.load(data / "train_labels.npy")
    np.save(data / "train_labels.npy", labels[::-1])  # same size, other content
    assert fingerprint(p, 0, "xla", deps) != base
    np.save(data / "train_labels.npy", labels)
    (tmp_path / "kernel.cc").write_text("")  # a missing dep differs from an empty one
    assert fingerprint(p, 0, "xla", deps) != base


def test_resume_checkpoint_round_trip(tmp_path):
    from confusion_embeddings.cnn.resume import HISTORY_KEYS, Resume
    from confusion_embeddings.cnn.training import create_train_state

    p = tiny_params()
    _, state, _ = create_train_state(tiny_config(), p, 0, total_steps=10)
    resume = Resume(tmp_path / "ckpt", "abc123")
    assert not resume.exists() and resume.path == tmp_path / "ckpt" / "abc123.msgpack"
    history = [dict(zip(HISTORY_KEYS, (e, 1.0 / e, 0.5, 0.25), strict=True)) for e in (1, 2)]
    resume.save(state, history, 12.5)
    assert resume.exists()
    _, template, _ = create_train_state(tiny_config(), p, 1, total_steps=10)  # other weights
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


# --------------------------------------------------------------------------- precision

NO_BF16 = "x86_64 avx2 avx512f"  # an AVX-512 CPU without bfloat16 instructions
WITH_BF16 = "x86_64 avx2 avx512f avx512_bf16"
KERNEL = onednn.available() and conv_module.resolve("auto").impl == "onednn"


def _cpu(monkeypatch, isa: str) -> None:
    monkeypatch.setattr(parallel, "cpu_isa", lambda: isa)


@pytest.mark.parametrize(
    "isa, want", [(NO_BF16, False), (WITH_BF16, True), ("x86_64 avx2 amx_bf16", True)]
)
def test_native_bf16_reads_the_cpu_flags(monkeypatch, isa, want):
    _cpu(monkeypatch, isa)
    assert parallel.native_bf16() is want


@pytest.mark.skipif(not KERNEL, reason="needs the oneDNN kernel")
def test_bf16_runs_where_the_cpu_and_the_kernel_allow(monkeypatch):
    _cpu(monkeypatch, WITH_BF16)
    assert conv_module.resolve("auto", "bf16") == conv_module.ConvChoice("onednn", None, "bf16")
    assert conv_module.resolve("auto", "f32") == conv_module.ConvChoice("onednn", None, "f32")
    with pytest.raises(ValueError, match="precision must be one of"):
        conv_module.resolve("auto", "fp16")


@pytest.mark.skipif(not KERNEL, reason="needs the oneDNN kernel")
def test_bf16_falls_back_to_f32_without_native_bf16_or_without_onednn(monkeypatch):
    _cpu(monkeypatch, NO_BF16)
    choice = conv_module.resolve("auto", "bf16")
    assert (choice.impl, choice.precision) == ("onednn", "f32")
    assert "\n" not in choice.warning and "precision bf16 unavailable" in choice.warning
    assert "avx512_bf16" in choice.warning and NO_BF16 in choice.warning  # what it looked for
    _cpu(monkeypatch, WITH_BF16)
    choice = conv_module.resolve("matmul", "bf16")  # XLA's convolutions on CPU: f32
    assert (choice.impl, choice.precision) == ("matmul", "f32")
    assert "conv_impl matmul" in choice.warning and "\n" not in choice.warning


@pytest.mark.skipif(not onednn.platform_supported(), reason="oneDNN's wheels: x86-64 Linux")
def test_both_fallbacks_make_one_warning_line(monkeypatch):
    def unavailable():
        raise onednn.KernelUnavailable("no", reason="no C++ compiler ('g++' not found)")

    monkeypatch.setattr(onednn, "load", unavailable)
    monkeypatch.setattr(conv_module, "_cpu_only", lambda: True)
    choice = conv_module.resolve("auto", "bf16")
    assert (choice.impl, choice.precision) == ("matmul", "f32")
    assert choice.warning.count("warning") == 1 and "\n" not in choice.warning
    assert "g++" in choice.warning and "precision bf16 unavailable" in choice.warning


def test_bf16_on_gpu_means_xla_bf16(monkeypatch):
    monkeypatch.setattr(conv_module, "_cpu_only", lambda: False)
    _cpu(monkeypatch, NO_BF16)  # the host CPU does not matter there
    assert conv_module.resolve("auto", "bf16") == conv_module.ConvChoice("xla", None, "bf16")


@pytest.mark.skipif(
    not (KERNEL and parallel.native_bf16()), reason="needs the oneDNN kernel and a bf16 CPU"
)
def test_bf16_learns_the_synthetic_classes(tmp_path):
    prepared = make_prepared(tmp_path / "prepared", train=64, test=16)
    p = tiny_params(epochs=4)
    trained = train_and_evaluate(
        load_prepared(prepared), p, 0, "onednn", show_progress=False, precision="bf16"
    )
    assert trained.cfg.precision == "bf16"
    assert trained.test_accuracy >= 0.9, trained.history
    # The master weights and batch-norm statistics stay float32.
    assert {a.dtype for a in jax.tree.leaves(trained.state)} <= {
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.int32),
        jnp.dtype(jnp.uint32),
    }


def _bf16_project(folder: Path, **over) -> Path:
    project = train_project(folder, epochs=1, precision="bf16", **over)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["predict"]["batch_size"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning" in line]


@pytest.mark.skipif(not KERNEL, reason="needs the oneDNN kernel")
def test_bf16_falls_back_through_the_train_stage_with_one_warning(tmp_path, monkeypatch, capsys):
    """train.precision bf16 on a CPU without bf16 instructions (forced): one warning line,
    and f32 is what runs, is reported and is saved with the model."""
    _cpu(monkeypatch, NO_BF16)
    project = _bf16_project(tmp_path)
    capsys.readouterr()
    run_in_project(project, "train")
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "precision bf16 unavailable" in warnings[0], warnings
    assert json.loads((project / OPTIONS["--metrics"]).read_text())["precision_used"] == "f32"
    assert read_config(project / OPTIONS["--model"])["model"]["precision"] == "f32"


@pytest.mark.skipif(
    not (KERNEL and parallel.native_bf16()), reason="needs the oneDNN kernel and a bf16 CPU"
)
def test_bf16_train_and_predict_through_the_stages(tmp_path, monkeypatch, capsys):
    """A tiny bf16 run end to end: train records bf16 in its metrics and in the saved model,
    predict runs it in bf16 (no warning) and, on a CPU without bf16, in f32 with one."""
    project = _bf16_project(tmp_path)
    run_in_project(project, "train")
    m = json.loads((project / OPTIONS["--metrics"]).read_text())
    assert m["precision_used"] == "bf16" and m["conv_impl_used"] == "onednn"
    assert np.isfinite(m["train_loss"]) and 0 <= m["test_accuracy"] <= 1
    assert read_config(project / OPTIONS["--model"])["model"]["precision"] == "bf16"
    out = project / stage_options("predict")["--out"]
    capsys.readouterr()
    run_in_project(project, "predict")
    assert not _warnings(capsys.readouterr().err)
    probs = np.load(out)["probs"]
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)
    _cpu(monkeypatch, NO_BF16)
    run_in_project(project, "predict")
    assert len(_warnings(capsys.readouterr().err)) == 1
    # The same weights in f32: the same classes up to bf16 rounding of near-ties.
    assert (np.load(out)["probs"].argmax(1) == probs.argmax(1)).mean() >= 0.9


# --------------------------------------------------------------------------- subprocess runs


def _cmd(tag: str) -> list[str]:
    """`python -m stages.train` with dvc.yaml's command line, its outputs renamed by `tag`
    (run from a train_project folder; the resume checkpoints stay where dvc.yaml puts them)."""
    return [
        sys.executable,
        "-m",
        "stages.train",
        *stage_argv(
            "train",
            model=f"model-{tag}",
            metrics=f"train-{tag}.json",
            timings=f"timings-{tag}.json",
            live=f"live-{tag}",
        ),
    ]


def _env(devices: int, tmp: Path) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    return env


def _metrics(tmp: Path, tag: str) -> dict:
    m = json.loads((tmp / f"train-{tag}.json").read_text())
    return {k: m[k] for k in ("test_accuracy", "train_accuracy", "train_loss")}


def _device_count(tmp: Path, tag: str) -> int:
    return json.loads((tmp / f"timings-{tag}.json").read_text())["device_count"]


@pytest.mark.slow
def test_two_fake_devices_agree_with_one(tmp_path):
    train_project(tmp_path, train=32, test=8)
    for n in (1, 2):
        subprocess.run(
            _cmd(f"d{n}"), cwd=tmp_path, env=_env(n, tmp_path), check=True, capture_output=True
        )
    one, two = _metrics(tmp_path, "d1"), _metrics(tmp_path, "d2")
    # XLA_FLAGS is obeyed
    assert _device_count(tmp_path, "d1") == 1 and _device_count(tmp_path, "d2") == 2
    # The sharded batch sums in a different order: equal up to float rounding.
    assert one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=1 / 32)
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, conv_impl, batches, want",
    [
        ("auto", "onednn", (16, 16), 1),  # oneDNN spreads each convolution over every core
        ("auto", "matmul", (16, 16), None),
        ("auto", "matmul", (15, 5), None),
        (1, "matmul", (16, 16), 1),
        (3, "onednn", (18, 18), 3),
    ],
)
def test_cli_splits_the_cpu_into_devices(tmp_path, setting, conv_impl, batches, want):
    """Without XLA_FLAGS the CLI makes `cpu_devices` JAX devices (auto: one device with
    oneDNN's convolutions, else one per core that divides the batch sizes), and trains
    with them."""
    train_project(
        tmp_path,
        train=36,
        test=8,
        cpu_devices=setting,
        epochs=1,
        batch_size=batches[0],
        eval_batch_size=batches[1],
        conv_impl=conv_impl,
    )
    env = {k: v for k, v in _env(1, tmp_path).items() if k != "XLA_FLAGS"}
    subprocess.run(_cmd("cli"), cwd=tmp_path, env=env, check=True, capture_output=True)
    if want is None:
        want = parallel.auto_cpu_devices(parallel.cpu_cores(), batches)
    assert _device_count(tmp_path, "cli") == want
    # The count is saved with the model: predict sets up the host the same way.
    assert read_config(tmp_path / "model-cli")["inference"]["cpu_devices"] == setting


_READ_CONFIG = """
import json, sys
from confusion_embeddings.cnn.checkpoint import read_config
from confusion_embeddings.devices import _backends_running
meta = read_config(sys.argv[1])
print(json.dumps({"conv_impl": meta["model"]["conv_impl"], "jax_started": _backends_running()}))
"""


def test_read_config_before_jax_starts(tmp_path):
    """predict learns the model's settings (convolution, devices, test-time augmentation)
    from read_config before JAX starts: reading them must not start JAX's backends."""
    save_tiny_model(tmp_path / "model", num_classes=3, conv_impl="matmul", cpu_devices=2)
    out = subprocess.run(
        [sys.executable, "-c", _READ_CONFIG, str(tmp_path / "model")],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    ).stdout
    assert json.loads(out) == {"conv_impl": "matmul", "jax_started": False}


def test_read_config_of_a_missing_or_broken_model(tmp_path):
    """read_config (replaces saved_conv_impl): the whole saved config; a folder without a
    model, or with a config the train stage did not write, is a PipelineError naming it."""
    with pytest.raises(PipelineError, match=r"none: no trained model; run `dvc repro train`"):
        read_config(tmp_path / "none")
    model = save_tiny_model(
        tmp_path / "model",
        num_classes=3,
        conv_impl="matmul",
        tta_flip=True,
        tta_translate=2,
        cpu_devices=4,
    )
    meta = read_config(model)
    assert meta["model"]["conv_impl"] == "matmul" and meta["model"]["num_classes"] == 3
    assert meta["inference"] == {"tta_flip": True, "tta_translate": 2, "cpu_devices": 4}
    assert len(meta["pixel_mean"]) == len(meta["pixel_std"]) == 3
    assert ModelConfig.from_dict(meta["model"]) == load_model(model)[3]
    good = (model / "config.json").read_text()
    for broken in (
        "{not json",
        json.dumps({"model": {"conv_impl": "matmul"}}),
        json.dumps({**json.loads(good), "inference": {}}),
        "[]",
    ):
        (model / "config.json").write_text(broken)
        with pytest.raises(PipelineError, match="not a model config written by the train stage"):
            read_config(model)
    (model / "config.json").write_text(good)
    (model / "model.msgpack").unlink()
    with pytest.raises(PipelineError, match="no trained model"):
        read_config(model)


def test_load_model_replaces_the_saved_convolution(tmp_path):
    model = save_tiny_model(tmp_path / "model", num_classes=3, conv_impl="onednn")
    assert load_model(model)[3].conv_impl == "onednn"
    graphdef, params, rest, cfg, inference, norm = load_model(model, conv_impl="xla")
    assert cfg.conv_impl == "xla" and cfg.num_classes == 3
    # The same weights through another convolution: the same logits up to rounding.
    x = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype(np.uint8)
    logits = {}
    for impl in ("xla", "matmul"):
        graphdef, params, rest, cfg, inference, norm = load_model(model, conv_impl=impl)
        logits[impl] = np.asarray(make_inference_fn(graphdef, norm)(params, rest, x))
    np.testing.assert_allclose(logits["xla"], logits["matmul"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    # Enough pictures that an epoch lasts a good fraction of a second: the kill must land
    # between the first checkpoint and the end of the run.
    train_project(tmp_path, train=512, test=8, epochs=3)
    env = _env(1, tmp_path)
    subprocess.run(_cmd("full"), cwd=tmp_path, env=env, check=True, capture_output=True)
    # Kill the second run with SIGKILL as soon as its first epoch's checkpoint exists.
    proc = subprocess.Popen(
        _cmd("killed"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
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
        _cmd("killed"), cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    assert "resuming from" in out.stdout
    assert _metrics(tmp_path, "killed") == _metrics(tmp_path, "full")
    live = tmp_path / "live-killed" / "plots" / "metrics" / "test" / "accuracy.tsv"
    assert len(live.read_text().strip().splitlines()) == 1 + 3  # header + every epoch
